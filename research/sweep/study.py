"""Every call the sweep makes to Optuna, in one place, through Optuna's public API only.

A sweep talks to an Optuna study in two ways: as a study (`optuna.Study`:
create or load, ask, tell, user attrs, trials) and as a shared queue of trials
whose state transitions the storage makes atomic (`optuna.storages.BaseStorage`,
the documented interface every storage implements: `create_new_trial`,
`set_trial_state_values`, `set_trial_user_attr`, ...). `StudyHandle` wraps both
for one study, keyed by trial *number*: the storage's trial ids come from
`get_trial_id_from_study_id_trial_number`, not from private fields, so the
rest of `research.sweep` never touches an Optuna object's internals, and a new
Optuna version needs checking here only (tests/sweep/test_sweep_workers.py runs this
adapter against the journal and SQLite storages).
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

Storage = optuna.storages.BaseStorage

# What a transition that lost a race raises: the trial finished meanwhile, or (on a
# database under contention) the storage gave up; `tell` raises ValueError on some.
LOST = (optuna.exceptions.UpdateFinishedTrialError, optuna.exceptions.StorageInternalError)


def journal(path: str) -> Storage:
    """A journal file storage at `path` (`JournalFileBackend`: appends under a lock file)."""
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))


def database(url: str, engine_kwargs: dict[str, Any]) -> Storage:
    """An `RDBStorage` on the SQLAlchemy URL `url` (the caller catches and words its errors)."""
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def engine_of(storage: Storage):
    """The SQLAlchemy engine of a database storage (`RDBStorage.engine`, public)."""
    return storage.engine


def summaries(storage: Storage) -> list[tuple[str, dict[str, Any]]]:
    """`(name, user attrs)` of every study in `storage`."""
    return [
        (s.study_name, dict(s.user_attrs))
        for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    ]


class StudyHandle:
    """One study of a storage: its trials, attrs and transitions, by trial number.

    Attributes:
      study: the `optuna.Study` (for samplers, pruners and Optuna users' code).
      storage: its storage.
      name: the study's name.
    """

    def __init__(self, study: optuna.Study, storage: Storage):
        self.study = study
        self.storage = storage
        self.name = study.study_name
        self._study_id = storage.get_study_id_from_name(self.name)
        self._trial_ids: dict[int, int] = {}  # trial number -> storage trial id (never changes)

    @classmethod
    def open(
        cls, name: str, storage: Storage, direction: str, sampler=None, pruner=None
    ) -> tuple[StudyHandle, bool]:
        """`(handle, created)`: loads the study, else creates it.

        `created` is True in exactly one of the workers that race here. An existing
        study is only read (a journal gets no record appended).
        """
        try:
            study = optuna.load_study(
                study_name=name, storage=storage, sampler=sampler, pruner=pruner
            )
            return cls(study, storage), False
        except KeyError:
            pass
        try:
            study = optuna.create_study(
                study_name=name,
                storage=storage,
                direction=direction,
                sampler=sampler,
                pruner=pruner,
                load_if_exists=False,
            )
            return cls(study, storage), True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(
                study_name=name, storage=storage, sampler=sampler, pruner=pruner
            )
            return cls(study, storage), False

    @classmethod
    def load(cls, name: str, storage: Storage) -> StudyHandle:
        """An existing study (KeyError if there is none of that name)."""
        return cls(optuna.load_study(study_name=name, storage=storage), storage)

    # ------------------------------------------------------------------ the study

    @property
    def user_attrs(self) -> dict[str, Any]:
        return self.study.user_attrs

    def set_user_attr(self, key: str, value: Any) -> None:
        self.study.set_user_attr(key, value)

    def set_sampler(self, sampler) -> None:
        self.study.sampler = sampler

    def trials(self) -> list[FrozenTrial]:
        """Every trial of the study, fresh from the storage."""
        return self.study.get_trials(deepcopy=False)

    def trial_id(self, number: int) -> int:
        """The storage's id of trial `number` (for heartbeats, which span studies)."""
        if number not in self._trial_ids:
            self._trial_ids[number] = self.storage.get_trial_id_from_study_id_trial_number(
                self._study_id, number
            )
        return self._trial_ids[number]

    # ------------------------------------------------------------------ transitions

    def enqueue(
        self,
        params: dict[str, Any],
        distributions: dict[str, Any],
        user_attrs: dict[str, Any],
        intermediate_values: dict[int, float] | None = None,
    ) -> None:
        """A new WAITING trial with these params, attrs and (a retry's) intermediate values."""
        template = optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=params,
            distributions=distributions,
            user_attrs=user_attrs,
            intermediate_values=intermediate_values,
        )
        self.storage.create_new_trial(self._study_id, template_trial=template)

    def claim(self, number: int) -> bool:
        """Moves WAITING trial `number` to RUNNING; True if this call did it (atomic)."""
        try:
            return bool(
                self.storage.set_trial_state_values(self.trial_id(number), TrialState.RUNNING)
            )
        except LOST:
            return False

    def ask(self) -> int:
        """A new RUNNING trial from the sampler (or a WAITING one it pops): its number."""
        return self.study.ask().number

    def trial(self, number: int) -> optuna.Trial:
        """Trial `number` as an `optuna.Trial`, for a sampler's `suggest_*` calls."""
        return optuna.Trial(self.study, self.trial_id(number))

    def set_trial_attr(self, number: int, key: str, value: Any) -> bool:
        """A user attr on an unfinished trial; False if it finished meanwhile."""
        return set_attr_by_id(self.storage, self.trial_id(number), key, value)

    def report(self, number: int, value: float, step: int) -> bool:
        """The trial's intermediate value at `step`; False if it finished meanwhile."""
        try:
            optuna.Trial(self.study, self.trial_id(number)).report(value, step)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        return True

    def should_prune(self, number: int) -> bool:
        """The study's pruner's verdict on the trial's intermediate values."""
        return optuna.Trial(self.study, self.trial_id(number)).should_prune()

    def finish(self, number: int, state: str, value: float | None = None) -> bool:
        """Moves an unfinished trial to "complete" (with `value`), "pruned" or "fail".

        True if this call did it; False if it had finished (or was taken over) meanwhile.
        """
        states = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED}
        try:
            if state == "complete":
                self.study.tell(number, value)
            else:
                self.study.tell(number, state=states.get(state, TrialState.FAIL))
        except (*LOST, ValueError):  # ValueError: tell's "already finished" on some storages
            return False
        return True


def set_attr_by_id(storage: Storage, trial_id: int, key: str, value: Any) -> bool:
    """A user attr on trial `trial_id` of any study; False if it has finished."""
    try:
        storage.set_trial_user_attr(trial_id, key, value)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    return True
