"""Where a sweep's state lives: an Optuna study that any number of workers share.

A sweep is one Optuna study, named after the hash of its config (`study_name`:
the base config, the axes and every sweep field that changes which trials run
or how they are judged), in the storage `sweep.storage` names:

  * "" (the default): the journal file `DIR/optuna.journal`;
  * a path: a journal file there (`JournalFileBackend`: appends under a lock
    file, fine on NFS);
  * a database URL: `sqlite:///sweep.db`, `postgresql://user@host/db`,
    `mysql+pymysql://...` (`RDBStorage`).

Every trial of the sweep is one Optuna trial with

  * params: its swept fields, named as dotted config fields (`optim.learning_rate`);
  * user attrs: `trial_id` (its folder `DIR/trials/<trial_id>/`), `overrides`
    (the swept fields exactly, e.g. tuples), then, once finished, the fields of
    its results.json (`status`, `test_accuracy`, `test_loss`, `params_sha256`,
    ...), `final_train_loss`, `steps_per_epoch`, `workdir` and `worker`;
  * intermediate values: the validation metric at each epoch end (step = epochs
    done);
  * value: the final validation metric (`objective`).

So `optuna.load_study(study_name=..., storage=...)` and optuna-dashboard show a
sweep with no code of ours. A sweep's `pretrain` stages are a second study,
`<name>.pretrain`, run the same way before the trials.

Workers share the study through its trial states, whose transitions the storage
makes atomic (`Queue`): a worker runs a trial only after moving it from WAITING
to RUNNING itself, and a second worker's move fails. While it runs, the worker's
`Heartbeats` thread rewrites the trial's `heartbeat` attr; a RUNNING trial whose
heartbeat stood still for `sweep.grace_seconds` (as seen by the watching
worker's own clock: no clocks are compared across hosts) is taken over: moved
to FAIL (again an atomic transition: one worker wins) and enqueued anew with the
same params and `trial_id`, so the next worker resumes it from its folder's
checkpoints. Optuna's own heartbeats are not used: they exist for RDB storages
only and for `study.optimize`, while a sweep asks for trials and tells results.

On SQLite, every transaction starts with `BEGIN IMMEDIATE`: pysqlite otherwise
reads outside the transaction that writes, and two workers could both move the
same trial. (PostgreSQL and MySQL lock the row: `SELECT ... FOR UPDATE`.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import ml_collections
import optuna
from optuna.trial import FrozenTrial, TrialState

from research.sweep import space

log = logging.getLogger(__name__)

JOURNAL_NAME = "optuna.journal"  # the default storage: a journal file in the sweep folder
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
LIVE = (TrialState.WAITING, TrialState.RUNNING)


def storage_url(setting: str, workdir: str) -> str:
    """The storage `sweep.storage = setting` names, as a URL or a journal file path."""
    if not setting:
        return os.path.abspath(os.path.join(workdir, JOURNAL_NAME))
    if "://" in setting:
        return setting
    return os.path.abspath(setting)


def shown(url: str) -> str:
    """`url` with any password replaced by ***, for logs and manifests."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in credentials else ''}@{host}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage at `url` (see the module doc); a journal file is created.

    Raises:
      ValueError: the URL names no database Optuna can open (the message says why).
    """
    if "://" not in url:
        os.makedirs(os.path.dirname(url) or ".", exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 120}  # seconds a writer waits for the lock
    for attempt in range(5):
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
            break
        except (ImportError, ModuleNotFoundError) as err:
            raise ValueError(f"sweep.storage={shown(url)!r}: {err}") from None
        except Exception as err:  # a bad URL or an unreachable server: one line names it
            # Workers that start together on a new database race to create its tables:
            # the losers fail once, then find them made.
            if attempt == 4:
                raise ValueError(f"sweep.storage={shown(url)!r} cannot be opened: {err}") from None
            time.sleep(0.5 * (attempt + 1))
    if url.startswith("sqlite"):
        _immediate_transactions(storage.engine)
    return storage


def _immediate_transactions(engine) -> None:
    """SQLAlchemy's recipe for SQLite: one `BEGIN IMMEDIATE` per transaction.

    pysqlite by default starts a transaction only at the first write, so a
    read-then-write (Optuna's state transitions) is not atomic across processes;
    with BEGIN IMMEDIATE every transaction holds the write lock from its start.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, record):
        dbapi_connection.isolation_level = None  # let SQLAlchemy's BEGIN below do it

    @event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners are dropped


def study_name(config: ml_collections.ConfigDict) -> str:
    """`sweep-<hash>` of the sweep config: the base config, the axes and the search.

    `space.sweep_id`: cosmetic fields (`progress`, ...) and
    `space.OPERATIONAL_FIELDS` are left out, so the same sweep run with another
    storage, path or report is the same study, and any change to which trials
    run or what they compute is a new one.
    """
    return f"sweep-{space.sweep_id(config)}"


def objective(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """The validation metric that is each trial's value, and its direction.

    `val_accuracy` (maximize) for classifiers; `val_loss` (minimize) for models
    without an accuracy (the autoencoder).
    """
    from research import models

    if models.spec(config.model.name).task == "classify":
        return "val_accuracy", "maximize"
    return "val_loss", "minimize"


def _create_or_load(name: str, storage, direction: str, sampler=None, pruner=None):
    """`(study, created)`: `created` is True in exactly one of the workers that race here."""
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            direction=direction,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=False,
        )
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(
            study_name=name, storage=storage, sampler=sampler, pruner=pruner
        ), False


@dataclasses.dataclass
class Sweep:
    """The studies of one sweep config in one storage.

    Attributes:
      url: the storage (a journal file path or a database URL).
      name: the trials' study name (`study_name`).
      trials: the trials' study; `stages` the `sweep.pretrain` stages' study (None: none).
      created: this worker created the trials' study (and so enqueues its trials).
      stages_created: this worker created the stages' study.
      metric, direction: `objective(config)`.
      replaced: earlier studies of this workdir with another config, as
        `(name, fields that differ)`.
    """

    url: str
    name: str
    trials: optuna.Study
    stages: optuna.Study | None
    created: bool
    stages_created: bool
    metric: str
    direction: str
    replaced: list[tuple[str, list[str]]]


def open_sweep(config, workdir: str, *, sampler=None, pruner=None) -> Sweep:
    """Creates or joins the sweep's studies; the creator records the config on them.

    Raises:
      ValueError: a storage that cannot be opened.
    """
    url = storage_url(config.sweep.storage, workdir)
    storage = open_storage(url)
    name = study_name(config)
    metric, direction = objective(config)
    study, created = _create_or_load(name, storage, direction, sampler, pruner)
    stages, stages_created = None, False
    if len(config.sweep.pretrain):
        stages, stages_created = _create_or_load(f"{name}.pretrain", storage, direction)
    fields = space.sweep_fields(config)
    here = os.path.abspath(workdir)
    if created:
        study.set_user_attr("config", json.loads(config.to_json_best_effort(sort_keys=True)))
        study.set_user_attr("fields", fields)
        study.set_user_attr("workdir", here)
        study.set_user_attr("metric", metric)
    replaced = []
    for other in optuna.get_all_study_summaries(storage, include_best_trial=False):
        attrs = other.user_attrs
        if other.study_name == name or attrs.get("workdir") != here or "fields" not in attrs:
            continue
        old = attrs["fields"]
        diff = sorted(k for k in old.keys() | fields.keys() if old.get(k) != fields.get(k))
        replaced.append((other.study_name, diff))
    return Sweep(url, name, study, stages, created, stages_created, metric, direction, replaced)


def worker_name() -> str:
    """This process as `host:pid`, the name workers record on the trials they run."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclasses.dataclass(frozen=True)
class Job:
    """What a queue runs: one sweep trial (or stage) as an Optuna trial to enqueue.

    Attributes:
      id: the trial id (`space.Trial.id`, the folder name), its `trial_id` attr.
      params: its Optuna params, with `distributions` (the same keys).
      attrs: further user attrs (`overrides`, ...).
    """

    id: str
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    distributions: dict[str, Any] = dataclasses.field(default_factory=dict)
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)


def trial_key(trial: FrozenTrial) -> str | None:
    """The sweep trial id an Optuna trial runs (None: not sampled yet)."""
    return trial.user_attrs.get("trial_id")


def yielded(trial: FrozenTrial) -> bool:
    """A trial its worker gave up because another one runs (or ran) its sweep trial."""
    return "yielded" in trial.user_attrs


class Queue:
    """The Optuna trials of one study as a queue that many workers share.

    Each sweep trial id is run by its *canonical* Optuna trial: the lowest-numbered
    WAITING or RUNNING one with that id, while no trial with that id has finished.
    A worker that moved a trial to RUNNING but finds it is not canonical (a
    duplicate enqueued by a race) fails it with a `yielded` attr. Everything else
    follows from the storage's atomic transitions (see the module doc).
    """

    def __init__(
        self,
        study: optuna.Study,
        beats: Heartbeats,
        *,
        grace_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.study = study
        self.beats = beats
        self.grace = grace_seconds
        self.clock = clock
        self.worker = worker_name()
        self._storage = study._storage  # the state transitions have no Study-level API
        self._study_id = study._study_id
        self._seen: dict[int, tuple[Any, float]] = {}  # trial number -> (heartbeat, since)
        self._orphaned: dict[str, float] = {}  # trial id -> since

    def all(self) -> list[FrozenTrial]:
        """Every Optuna trial of the study, fresh from the storage."""
        return self.study.get_trials(deepcopy=False)

    def enqueue(self, job: Job, **attrs) -> None:
        """A WAITING trial for `job`, with its params and attrs plus `attrs`.

        `intermediate_values` (a retry's copy of the failed trial's) is not an attr.
        """
        values = attrs.pop("intermediate_values", None)
        template = optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=job.params,
            distributions=job.distributions,
            user_attrs={"trial_id": job.id, **job.attrs, **attrs},
            intermediate_values=values,
        )
        self._storage.create_new_trial(self._study_id, template_trial=template)

    def claim(self, trial: FrozenTrial) -> bool:
        """Moves a WAITING trial to RUNNING; True if this worker did it (and now beats for it)."""
        try:
            if not self._storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING):
                return False
        except (optuna.exceptions.UpdateFinishedTrialError, optuna.exceptions.StorageInternalError):
            return False
        self.beats.add(trial._trial_id)
        self.set_attr(trial, "worker", self.worker)
        return True

    def set_attr(self, trial: FrozenTrial, key: str, value) -> bool:
        """A user attr on any unfinished trial; False if it has finished meanwhile."""
        try:
            self._storage.set_trial_user_attr(trial._trial_id, key, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        return True

    def fail(self, trial: FrozenTrial, **attrs) -> bool:
        """Sets `attrs`, then moves an unfinished trial to FAIL; True if this worker did it."""
        self.beats.discard(trial._trial_id)
        for key, value in attrs.items():
            if not self.set_attr(trial, key, value):
                return False
        try:
            self.study.tell(trial.number, state=TrialState.FAIL)
        except (
            optuna.exceptions.UpdateFinishedTrialError,
            optuna.exceptions.StorageInternalError,
            ValueError,  # tell's "already finished" on some storages
        ):
            return False
        return True

    def canonical(self, trial: FrozenTrial, trials: Iterable[FrozenTrial]) -> str:
        """ "" if `trial` (RUNNING here) should run; else why not (the `yielded` reason)."""
        key = trial_key(trial)
        for other in trials:
            if other.number == trial.number or trial_key(other) != key:
                continue
            if other.state in FINISHED:
                return f"trial {key} finished as #{other.number}"
            if other.state in LIVE and other.number < trial.number:
                return f"duplicate of #{other.number}"
        return ""

    def stale(self, trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
        """RUNNING trials of other workers whose heartbeat stood still for the grace period.

        Staleness is measured on this worker's clock from the first time it saw
        the current heartbeat value, so it needs no clock agreement across hosts.
        """
        now = self.clock()
        out, running = [], set()
        for t in trials:
            if t.state != TrialState.RUNNING or t._trial_id in self.beats:
                continue
            running.add(t.number)
            beat = t.user_attrs.get("heartbeat")
            seen = self._seen.get(t.number)
            if seen is None or seen[0] != beat:
                self._seen[t.number] = (beat, now)
            elif now - seen[1] > self.grace:
                out.append(t)
        self._seen = {n: v for n, v in self._seen.items() if n in running}
        return out

    def orphans(self, ids: Iterable[str], trials: Iterable[FrozenTrial]) -> list[str]:
        """Ids with no WAITING, RUNNING or finished trial for the grace period (seen here)."""
        covered = {trial_key(t) for t in trials if t.state in LIVE or t.state in FINISHED}
        now = self.clock()
        out = []
        missing = [i for i in ids if i not in covered]
        for i in missing:
            since = self._orphaned.setdefault(i, now)
            if now - since > self.grace:
                out.append(i)
        self._orphaned = {i: s for i, s in self._orphaned.items() if i in missing}
        return out

    def take_over(self, trial: FrozenTrial, job: Job | None) -> bool:
        """Fails a stale trial and enqueues `job` again (None: the trial had no job yet).

        True if this worker took it (exactly one of the workers that try does).
        """
        beat = trial.user_attrs.get("heartbeat") or {}
        reason = (
            f"heartbeat of {beat.get('worker', trial.user_attrs.get('worker', 'its worker'))} "
            f"stood still for {self.grace:g} s"
        )
        attrs = {"failed": reason, "taken_over_by": self.worker}
        if job is None:
            attrs["yielded"] = "abandoned before its trial was chosen"
        if not self.fail(trial, **attrs):
            return False
        if job is not None:
            self.enqueue(
                job,
                retry_of=trial.number,
                intermediate_values=dict(trial.intermediate_values),
            )
        return True


class Heartbeats:
    """A thread that marks the trials this worker runs as alive.

    Every `seconds` it sets each trial's `heartbeat` user attr to
    `{"worker", "beat", "time"}` (`beat` counts up: watchers look for change, not
    for a recent time). A trial that has finished (or was taken over) is dropped.
    """

    def __init__(self, storage, seconds: float):
        self._storage = storage
        self.seconds = seconds
        self.worker = worker_name()
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._count = 0

    def __contains__(self, trial_id: int) -> bool:
        with self._lock:
            return trial_id in self._ids

    def add(self, trial_id: int) -> None:
        with self._lock:
            self._ids.add(trial_id)
        self._beat([trial_id])

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._ids.discard(trial_id)

    def _beat(self, ids: Iterable[int]) -> None:
        self._count += 1
        value = {"worker": self.worker, "beat": self._count, "time": time.time()}
        for trial_id in ids:
            try:
                self._storage.set_trial_user_attr(trial_id, "heartbeat", value)
            except optuna.exceptions.UpdateFinishedTrialError:
                self.discard(trial_id)  # finished, or taken over by another worker
            except Exception as err:  # a storage hiccup: the next beat tries again
                log.warning("heartbeat of trial %s not written: %s", trial_id, err)

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            with self._lock:
                ids = sorted(self._ids)
            self._beat(ids)

    def __enter__(self) -> Heartbeats:
        self._thread = threading.Thread(target=self._run, name="sweep-heartbeats", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


@dataclasses.dataclass(frozen=True)
class Record:
    """One trial of a sweep as the storage holds it, for the reports.

    Attributes:
      trial: the sweep trial (id, overrides, config, pretrain stage).
      state: "complete", "pruned", "running", "waiting", "fail" or "missing"
        (no Optuna trial yet), from its canonical Optuna trial.
      results: that trial's user attrs (results.json's fields once finished).
      values: the validation metric per epoch (the intermediate values).
      number: the Optuna trial number (None: missing).
    """

    trial: space.Trial
    state: str
    results: dict[str, Any]
    values: dict[int, float]
    number: int | None

    @property
    def finished(self) -> bool:
        return self.state in ("complete", "pruned")

    @property
    def id(self) -> str:
        return self.trial.id

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.trial.config

    @property
    def overrides(self) -> dict[str, Any]:
        return self.trial.overrides

    @property
    def pretrain(self) -> str:
        return self.trial.pretrain


def _best_of(trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The Optuna trial that stands for one sweep trial: finished, else live, else the last."""
    for states in (FINISHED, LIVE):
        chosen = [t for t in trials if t.state in states]
        if chosen:
            return min(chosen, key=lambda t: t.number)
    return trials[-1] if trials else None


def records(trials: list[space.Trial], optuna_trials: Iterable[FrozenTrial]) -> list[Record]:
    """A `Record` per sweep trial, in the order of `trials`."""
    by_id: dict[str, list[FrozenTrial]] = {}
    for t in sorted(optuna_trials, key=lambda t: t.number):
        if trial_key(t) is not None:
            by_id.setdefault(trial_key(t), []).append(t)
    out = []
    for trial in trials:
        chosen = _best_of(by_id.get(trial.id, []))
        if chosen is None:
            out.append(Record(trial, "missing", {}, {}, None))
            continue
        out.append(
            Record(
                trial,
                chosen.state.name.lower(),
                dict(chosen.user_attrs),
                dict(chosen.intermediate_values),
                chosen.number,
            )
        )
    return out


@contextlib.contextmanager
def report_lock(workdir: str):
    """Holds `DIR/.report.lock` (fcntl): workers that finish together write tables in turn."""
    from research.platform import fcntl

    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, ".report.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
