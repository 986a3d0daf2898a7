"""The trials of one Optuna study as a queue that any number of workers share.

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

An attempt that raised, or lost its worker, counts as failed (an `error` attr on
its FAIL trial); after `sweep.max_retries` failed attempts the trial is failed
for good (`gave_up`) and no longer holds the sweep up. Every Optuna call goes
through `research.sweep.study`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from research.sweep import study as optuna_api

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
LIVE = (TrialState.WAITING, TrialState.RUNNING)


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

    A trial that failed (its training raised) or lost its worker is enqueued
    again, with an `error` attr on the failed attempt, until `max_retries`
    attempts have failed: the last one also gets `gave_up`, and the trial is
    settled, failed for good (`given_up`).
    """

    def __init__(
        self,
        study: optuna_api.StudyHandle,
        beats: Heartbeats,
        *,
        grace_seconds: float,
        max_retries: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.study = study
        self.beats = beats
        self.grace = grace_seconds
        self.max_retries = max_retries
        self.clock = clock
        self.worker = worker_name()
        self._seen: dict[int, tuple[Any, float]] = {}  # trial number -> (heartbeat, since)
        self._orphaned: dict[str, float] = {}  # trial id -> since

    def all(self) -> list[FrozenTrial]:
        """Every Optuna trial of the study, fresh from the storage."""
        return self.study.trials()

    def beating(self, trial: FrozenTrial) -> bool:
        """True if this worker runs `trial` (its heartbeat is ours)."""
        return self.study.trial_id(trial.number) in self.beats

    def enqueue(self, job: Job, **attrs) -> None:
        """A WAITING trial for `job`, with its params and attrs plus `attrs`.

        `intermediate_values` (a retry's copy of the failed trial's) is not an attr.
        """
        values = attrs.pop("intermediate_values", None)
        user_attrs = {"trial_id": job.id, **job.attrs, **attrs}
        self.study.enqueue(job.params, job.distributions, user_attrs, values)

    def claim(self, trial: FrozenTrial) -> bool:
        """Moves a WAITING trial to RUNNING; True if this worker did it (and now beats for it)."""
        if not self.study.claim(trial.number):
            return False
        self.started(trial.number)
        return True

    def started(self, number: int) -> None:
        """Trial `number` runs here: heartbeats start, and it is marked as this worker's."""
        self.beats.add(self.study.trial_id(number))
        self.study.set_trial_attr(number, "worker", self.worker)

    def stopped(self, trial: FrozenTrial) -> None:
        self.beats.discard(self.study.trial_id(trial.number))

    def set_attr(self, trial: FrozenTrial, key: str, value) -> bool:
        """A user attr on any unfinished trial; False if it has finished meanwhile."""
        return self.study.set_trial_attr(trial.number, key, value)

    def fail(self, trial: FrozenTrial, **attrs) -> bool:
        """Sets `attrs`, then moves an unfinished trial to FAIL; True if this worker did it."""
        self.stopped(trial)
        for key, value in attrs.items():
            if not self.set_attr(trial, key, value):
                return False
        return self.study.finish(trial.number, "fail")

    def failures(self, key: str, trials: Iterable[FrozenTrial]) -> int:
        """How many attempts at sweep trial `key` failed (raised or lost their worker)."""
        return sum(
            1
            for t in trials
            if trial_key(t) == key and t.state == TrialState.FAIL and "error" in t.user_attrs
        )

    def given_up(self, trials: Iterable[FrozenTrial]) -> set[str]:
        """The sweep trial ids failed for good (`max_retries` failed attempts)."""
        return {
            trial_key(t)
            for t in trials
            if t.state == TrialState.FAIL and "gave_up" in t.user_attrs and trial_key(t)
        }

    def retry_or_give_up(
        self, trial: FrozenTrial, error: str, job: Job | None, trials: list[FrozenTrial], **attrs
    ) -> str:
        """Fails an attempt that raised or lost its worker; enqueues it again, or gives up.

        Returns "retry", "gave up" or "" (another worker finished or took the trial first).
        """
        key = trial_key(trial)
        count = 1 + (self.failures(key, trials) if key is not None else 0)
        final = job is not None and count >= self.max_retries
        if final:
            attrs["gave_up"] = f"failed {count} of sweep.max_retries={self.max_retries} times"
        if not self.fail(trial, error=error, **attrs):
            return ""
        if job is None or final:
            return "gave up" if final else "retry"
        self.enqueue(
            job, retry_of=trial.number, intermediate_values=dict(trial.intermediate_values)
        )
        return "retry"

    def canonical(self, trial: FrozenTrial, trials: Iterable[FrozenTrial]) -> str:
        """ "" if `trial` (RUNNING here) should run; else why not (the `yielded` reason)."""
        key = trial_key(trial)
        for other in trials:
            if other.number == trial.number or trial_key(other) != key:
                continue
            if other.state in FINISHED:
                return f"trial {key} finished as #{other.number}"
            if other.state == TrialState.FAIL and "gave_up" in other.user_attrs:
                return f"trial {key} failed for good as #{other.number}"
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
            if t.state != TrialState.RUNNING or self.beating(t):
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
        """Ids with no WAITING, RUNNING, finished or given-up trial for the grace period."""
        trials = list(trials)
        covered = {trial_key(t) for t in trials if t.state in LIVE or t.state in FINISHED}
        covered |= self.given_up(trials)
        now = self.clock()
        out = []
        missing = [i for i in ids if i not in covered]
        for i in missing:
            since = self._orphaned.setdefault(i, now)
            if now - since > self.grace:
                out.append(i)
        self._orphaned = {i: s for i, s in self._orphaned.items() if i in missing}
        return out

    def take_over(
        self, trial: FrozenTrial, job: Job | None, trials: list[FrozenTrial] | None = None
    ) -> str:
        """Fails a stale trial and enqueues `job` again (None: the trial had no job yet).

        Losing its worker counts as a failed attempt (`retry_or_give_up`). Returns
        "retry" or "gave up" if this worker took it (exactly one of the workers
        that try does), else "".
        """
        beat = trial.user_attrs.get("heartbeat") or {}
        reason = (
            f"heartbeat of {beat.get('worker', trial.user_attrs.get('worker', 'its worker'))} "
            f"stood still for {self.grace:g} s"
        )
        attrs = {"failed": reason, "taken_over_by": self.worker}
        if job is None:
            attrs["yielded"] = "abandoned before its trial was chosen"
            return "retry" if self.fail(trial, **attrs) else ""
        return self.retry_or_give_up(
            trial, f"lost its worker: {reason}", job, trials or self.all(), **attrs
        )


class Heartbeats:
    """A thread that marks the trials this worker runs as alive.

    Every `seconds` it sets each trial's `heartbeat` user attr to
    `{"worker", "beat", "time"}` (`beat` counts up: watchers look for change, not
    for a recent time). A trial that has finished (or was taken over) is dropped.
    Trials are named by their storage ids (`StudyHandle.trial_id`), which span studies.
    """

    def __init__(self, storage: optuna_api.Storage, seconds: float):
        self.backend = storage
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
                if not optuna_api.set_attr_by_id(self.backend, trial_id, "heartbeat", value):
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
