"""The training loop: one loop for one trial or a group of trials.

`train(run, members)` trains the trials of one group (`programs.group_key`) to
`num_epochs`, each in its own workdir; `train_and_evaluate(config, workdir)` is
the group of one that `scripts/train.py` runs. For both, once:

  * divergence: a trial whose loss turns NaN/Inf is frozen at its last good
    state (inside the compiled chunk, see `steps.train_chunk`) and recorded as
    diverged at its step; the others go on. `on_diverge="stop"` (the command
    line) raises `TrainingDiverged` after the results are written;
  * pruning: `on_epoch`, called with each epoch's validation metrics, may name
    trials to stop there (a sweep's pruner); they are frozen the same way and
    recorded as pruned at that step;
  * callbacks (`callbacks`, `config.early_stopping`) may stop a trial after an
    epoch: frozen the same way, then tested, recorded as done with `stopped_early`;
  * `config.checkpoint_best`: every epoch's end is saved with its metric, and
    orbax keeps the best step beside the latest ones;
  * checkpoints and resume: each trial's state is saved in its own workdir
    (`checkpoints/<step>`, with its `TrialStatus`); a group restores the newest
    step that all its trials have, so a killed group resumes to the same
    parameters as an uninterrupted one;
  * a finished run (its workdir holds results.json) started again says so and
    keeps its record: results.json, timings included, is never rewritten;
  * SIGTERM/SIGINT: a checkpoint of every trial, then `Interrupted`;
  * metrics.jsonl, TensorBoard, curves.png and results.json (`records`), written
    by process 0; a workdir is locked while a group uses it.

The compiled programs are in `programs`, the data feeds in `feeds`, the first
states (fresh, data-dependent or pretrained) in `starts`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from research.train import callbacks as callbacks_lib
from research.train import feeds, outputs, records, starts
from research.train.assemble import Run, build_run, prepare_data
from research.train.checkpoint import Checkpointer
from research.train.programs import (
    Member,
    Programs,
    build_programs,
    group_key,
    hyperparams,
    on_mesh,
    put_like,
    trial_keys,
)
from research.train.progress import progress_bar
from research.train.status import TrialStatus
from research.train.steps import TrainState

# build_run, prepare_data and Run live in `assemble`; callers import them from here too.
__all__ = [
    "Interrupted",
    "Outcome",
    "Run",
    "TrainingDiverged",
    "TrialStatus",
    "build_run",
    "prepare_data",
    "train",
    "train_and_evaluate",
]

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the message names the step."""


class Interrupted(RuntimeError):
    """SIGTERM or SIGINT arrived; a checkpoint was written first."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What training one trial gave: its results record and its final state."""

    results: dict[str, Any]
    state: TrainState


@dataclasses.dataclass
class _Group:
    """A group in training: where it stands, carried from chunk to chunk."""

    members: list[Member]
    ckpts: list[Checkpointer | None]
    feed: Any  # a `feeds.DeviceFeed` or `feeds.StreamFeed`
    states: Any  # the stacked TrainState
    status: TrialStatus
    start: int  # the step this process started (or resumed) at
    step: int
    val: list[dict[str, float]] | None = None  # the last validation, per trial
    val_step: int = -1  # the step it was taken at
    stoppers: list = dataclasses.field(default_factory=list)  # EarlyStopping | None, per trial
    train: callbacks_lib.EpochMeans = dataclasses.field(default_factory=callbacks_lib.EpochMeans)

    def save(self) -> None:
        """Each trial's state as checkpoint `step` of its own workdir.

        The record keeps the trial's status and the data loader's position, for a
        resume to check.
        """
        data_state = self.feed.state(self.step)
        for i, c in enumerate(self.ckpts):
            if c is not None:
                state = jax.tree_util.tree_map(lambda x, i=i: x[i], self.states)
                extra = self.status.checkpoint_record(i)
                if data_state is not None:
                    extra["data"] = data_state
                if self.stoppers and self.stoppers[i] is not None:
                    extra["early_stopping"] = self.stoppers[i].state()
                now = self.val is not None and self.val_step == self.step  # an epoch's end
                metrics = {f"val_{k}": v for k, v in self.val[i].items()} if now else None
                c.save(state, step=self.step, extra=extra, metrics=metrics)


# on_epoch(epoch, {position: validation metrics}) -> positions to stop (see `train`).
OnEpoch = Callable[[int, dict[int, dict[str, float]]], Iterable[int]]


def train(
    run: Run,
    members: Sequence[Member],
    *,
    parallel: str = "sequential",
    programs: Programs | None = None,
    on_diverge: str = "record",
    on_epoch: OnEpoch | None = None,
    callbacks: Sequence[callbacks_lib.CallbackLike] = (),
) -> list[Outcome]:
    """Trains the trials of one group to `num_epochs`, each resumed from its workdir.

    Args:
      run: `research.train.assemble.build_run` of any member's config.
      members: the trials, all with `run`'s `group_key`.
      parallel: "sequential" (one after another, the plain program) or "vmap".
      programs: `build_programs(run, parallel)`, to reuse compiled functions.
      on_diverge: "record" (a diverged trial is recorded, the others go on) or
        "stop" (also raise `TrainingDiverged` once the results are written).
      on_epoch: called after each epoch's validation (none without a validation
        split) as `on_epoch(epoch, val)`: `epoch` counts the epochs done (1 after
        the first), `val` maps the position in `members` of each trial still
        training to its validation metrics (`{"loss": ..., "accuracy": ...}`).
        It returns the positions of trials to stop there: each is frozen like a
        diverged trial (its state no longer changes, the others go on) and its
        results have `status: "pruned"`, `pruned_step`, the validation metrics
        of that epoch and no test metrics.
      callbacks: asked per trial still training after `on_epoch`; one may stop it,
        then tested and recorded as done (`research.train.callbacks`).

    Returns:
      One `Outcome` per member, in order. A member whose workdir already holds
      results.json (a finished run) gets that record, unchanged and not rewritten.

    Raises:
      ValueError: members of different groups; a workdir that is in use
        (`outputs.WorkdirBusy`) or holds a different run.
      TrainingDiverged: with `on_diverge="stop"`.
      Interrupted: SIGTERM/SIGINT (checkpoints written).
      OSError: a write failed (disk full, read-only); older checkpoints are kept.
    """
    if on_diverge not in ("record", "stop"):
        raise ValueError(f"on_diverge={on_diverge!r} must be 'record' or 'stop'")
    members = list(members)
    if len({group_key(m.config) for m in members}) > 1:
        raise ValueError("engine.train: the members differ in more than seed and hyperparameters")
    callbacks = callbacks_lib.check(callbacks)
    programs = programs or build_programs(run, parallel)
    if programs.parallel == "sequential":
        return [
            out
            for k, m in enumerate(members)
            for out in _train(run, programs, [m], on_diverge, _shifted(on_epoch, k), (callbacks, k))
        ]
    return _train(run, programs, members, on_diverge, on_epoch, (callbacks, 0))


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    splits: Any = None,
    run: Run | None = None,
    callbacks: Sequence[callbacks_lib.CallbackLike] = (),
) -> dict[str, Any]:
    """Trains per `config` (resuming from `workdir`), evaluates, writes results.json.

    Args:
      config: the run's config.
      workdir: its folder (created, or resumed if it holds the same run).
      splits: prepared data (`prepare_data`) to use instead of loading
        `config.data` (tests, sweeps).
      run: a `build_run(config)` result (the CLI builds it first, so that input
        errors are reported before anything else happens).
      callbacks: called after each epoch's validation with its metrics; one may
        stop the run (`research.train.callbacks`).

    Returns the results dict (also written to `workdir/results.json` by process 0);
    for a finished run, the record already there (nothing is trained or written).

    Raises:
      TrainingDiverged: the loss became NaN/Inf (results.json says so too).
      Interrupted: SIGTERM/SIGINT, after a checkpoint.
    """
    if run is None:
        run = build_run(config, splits=splits)
    (outcome,) = train(run, [Member(config, workdir)], on_diverge="stop", callbacks=callbacks)
    return outcome.results


def _shifted(on_epoch: OnEpoch | None, k: int) -> OnEpoch | None:
    """`on_epoch` for a group of one: member 0 is member `k` of the whole list."""
    if on_epoch is None:
        return None
    return lambda epoch, val: {i - k for i in on_epoch(epoch, {i + k: v for i, v in val.items()})}


def _train(run: Run, programs: Programs, members, on_diverge: str, on_epoch, callbacks):
    locked: list[str] = []
    ckpts: list[Checkpointer | None] = []
    try:
        for m in members:
            if m.workdir:
                outputs.lock_workdir(m.workdir)
                locked.append(m.workdir)
                outputs.prepare_workdir(m.config, m.workdir)
        keep, best = run.config.keep_checkpoints, run.config.checkpoint_best
        ckpts = [
            Checkpointer(os.path.join(m.workdir, "checkpoints"), keep=keep, best=best)
            if m.workdir
            else None
            for m in members
        ]
        return _fit(run, programs, members, ckpts, on_diverge, on_epoch, callbacks)
    finally:
        for c in ckpts:
            if c is not None:
                c.close()
        for w in locked:
            outputs.unlock_workdir(w)


def _fit(run, programs, members, ckpts, on_diverge, on_epoch, callbacks) -> list[Outcome]:
    t_start = time.perf_counter()
    finished = [_finished_record(m.workdir) for m in members]
    group = _start(run, programs, members, ckpts)
    timing = records.Timing()
    if any(r is None for r in finished):
        _loop(run, programs, group, timing, on_epoch, callbacks)
        if len(run.splits.val) and group.val_step != group.step:
            group.val = feeds.evaluate(run, programs, group.states, run.splits.val)
        test = feeds.evaluate(run, programs, group.states, run.splits.test)
    wall = time.perf_counter() - t_start
    outcomes = []
    for i, m in enumerate(members):
        state = jax.tree_util.tree_map(lambda x, i=i: x[i], group.states)
        if finished[i] is not None:
            log.warning(
                "%s holds a finished run: its results.json is kept as it is "
                "(train in a new workdir to run again)",
                m.workdir,
            )
            outcomes.append(Outcome(finished[i], state))
            continue
        status = group.status
        record = records.results_record(
            m.config,
            run,
            state,
            # A pruned trial was frozen right after this validation: the same numbers.
            val=(group.val[i] if group.val is not None and status.diverged[i] is None else {}),
            test=test[i] if status.alive[i] or status.stopped[i] else {},
            timing=timing,
            wall_seconds=wall,
            programs=programs,
            group_size=len(members),
            diverged_step=status.diverged[i],
            pruned_step=status.pruned[i],
            checkpoints=ckpts[i],
            resumed_from_step=group.start,
            stopped_early=status.stopped[i],
        )
        if m.workdir and outputs.is_writer():
            records.write_results(m.config, m.workdir, record)
        outcomes.append(Outcome(record, state))
    first = next((o.results for o in outcomes if o.results["status"] == "diverged"), None)
    if on_diverge == "stop" and first is not None:
        raise TrainingDiverged(first["error"])
    return outcomes


def _finished_record(workdir: str | None) -> dict | None:
    """The results.json of a finished run in `workdir` (None: none, or unreadable)."""
    if not workdir:
        return None
    try:
        with open(os.path.join(workdir, "results.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None  # not finished (or its record was cut short): train and write it


def _start(run: Run, programs: Programs, members: list[Member], ckpts) -> _Group:
    """The group's states at its first step: resumed from checkpoints, else started."""
    count = len(members)
    padded = members + members[-1:] * (-count % programs.multiple)
    configs = [m.config for m in padded]
    init_keys, data_keys, train_keys = trial_keys(configs)
    hps = hyperparams(configs, run.steps_per_epoch)
    chunk = configs[0].log_every_steps or run.steps_per_epoch
    feed = feeds.open_feed(run, programs, data_keys, chunk)
    states = programs.init(init_keys, train_keys, hps)
    status = TrialStatus.fresh(count, len(padded))
    states, start, saved = _resume(programs, states, ckpts, status)
    for record in saved:
        feed.check(record, start)
    stoppers = [callbacks_lib.from_config(m.config) for m in members]
    for stopper, record in zip(stoppers, saved, strict=False):
        if stopper is not None and "early_stopping" in record:
            stopper.load_state(record["early_stopping"])
    if start == 0 and hasattr(run.model, "data_init"):
        states = starts.data_init(run, programs, states, hps)
    if start == 0 and run.config.transfer.pretrained:
        states = starts.from_pretrained(run, programs, states, hps, members)
    return _Group(members, ckpts, feed, states, status, start, start, stoppers=stoppers)


def _loop(run: Run, programs: Programs, group: _Group, timing: records.Timing, on_epoch, callbacks):
    """Trains `group` chunk by chunk to its last step, or until every trial stopped."""
    members, status = group.members, group.status
    logs = [
        outputs.MetricsLog(m.workdir, resume_step=group.start) if m.workdir else None
        for m in members
    ]
    bar = None
    if len(members) == 1 and members[0].workdir:
        bar = progress_bar(run.config, run.total_steps, group.start)
    try:
        with _stop_requests() as stop, group.feed.chunks(group.start) as chunks:
            for plan, run_chunk in chunks:
                t0 = time.perf_counter()
                group.states, alive, metrics = run_chunk(
                    group.states, on_mesh(status.alive, programs.mesh)
                )
                # Block on every chunk: on CPU with several (forced host) devices,
                # sharded programs dispatched back to back can deadlock.
                jax.block_until_ready(group.states)
                metrics = jax.device_get(metrics)  # (T, S) each: one host sync per chunk
                status.after_chunk(jax.device_get(alive), metrics["loss"], group.step)
                size = plan.rows.shape[0]
                timing.add(
                    time.perf_counter() - t0,
                    first=group.step == group.start,
                    examples=int(plan.rows.size),
                )
                group.step = plan.step + size
                epoch = plan.epoch + (plan.position + size) / run.steps_per_epoch
                group.train.add(metrics)
                for i, metrics_log in enumerate(logs):
                    if metrics_log is not None and status.alive[i]:
                        summary = {f"train_{k}": float(np.mean(v[i])) for k, v in metrics.items()}
                        metrics_log.write(group.step, epoch=epoch, **summary)
                if bar is not None:
                    bar.update(size)
                    bar.set_postfix({k: f"{float(np.mean(v[0])):.4f}" for k, v in metrics.items()})
                if not status.any_alive():
                    break
                if plan.epoch_end:
                    _end_epoch(run, programs, group, plan.epoch + 1, logs, on_epoch, callbacks)
                    if not status.any_alive():
                        break  # every trial stopped at this epoch's end
                if stop:
                    group.save()
                    raise Interrupted(
                        f"stopped by signal {stop[0]} at step {group.step}; "
                        f"{_where(group.ckpts)}. Run the same command again to resume.",
                        stop[0],
                    )
    finally:
        for metrics_log in logs:
            if metrics_log is not None:
                metrics_log.close()
        if bar is not None:
            bar.close()


def _end_epoch(run, programs, group: _Group, epochs: int, logs, on_epoch, callbacks) -> None:
    """After `epochs` epochs: validation, `on_epoch`'s and the callbacks' stops, and a
    checkpoint if due (every epoch with `checkpoint_best`; at an early stop of the group)."""
    status, cfg = group.status, run.config
    train_means, stops = group.train.take(), {}
    if len(run.splits.val):
        group.val = feeds.evaluate(run, programs, group.states, run.splits.val)
        group.val_step = group.step
        for i, metrics_log in enumerate(logs):
            if metrics_log is not None and status.alive[i]:
                values = {f"val_{k}": v for k, v in group.val[i].items()}
                metrics_log.write(group.step, epoch=epochs, **values)
        if on_epoch is not None:
            live = {i: group.val[i] for i in range(status.count) if status.alive[i]}
            for i in set(on_epoch(epochs, live)) & set(live):
                status.prune(i, group.step)
        stops = callbacks_lib.ask_trials(
            status.alive[: status.count],
            group.stoppers,
            *callbacks,
            epoch=epochs,
            step=group.step,
            val=group.val,
            train=train_means,
        )
        for i, reason in stops.items():
            status.stop(i, group.step, epochs, reason)
            log.info("trial %d stopped at epoch %d: %s", i + callbacks[1], epochs, reason)
    every = cfg.checkpoint_every_epochs
    if (
        epochs == cfg.num_epochs
        or (every and epochs % every == 0)
        or (cfg.checkpoint_best and len(run.splits.val))
        or (stops and not status.any_alive())
    ):
        group.save()


def _where(ckpts) -> str:
    dirs = [c.directory for c in ckpts if c is not None]
    if len(dirs) == 1:
        return f"checkpoint written to {dirs[0]}"
    return f"checkpoints written in {len(dirs)} trial folders"


def _resume(programs: Programs, states, ckpts, status: TrialStatus) -> tuple[Any, int, list]:
    """The newest step every trial has a good checkpoint of, restored; else a fresh start.

    Sets `status` from the checkpoints' records, and returns `(states, step, records)`.
    """
    if not any(c is not None and c.steps() for c in ckpts):
        return states, 0, []
    rep = NamedSharding(programs.mesh, P())
    like = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=rep), states
    )
    restored = [c.restore(like) if c is not None else None for c in ckpts]
    if any(r is None for r in restored):
        return states, 0, []  # some trial has nothing to resume from: all start again
    target = min(r.step for r in restored)
    for i, r in enumerate(restored):
        if r.step != target:
            restored[i] = ckpts[i].restore(like, step=target)
            if restored[i] is None:
                return states, 0, []
    status.restore([r.record for r in restored])
    trees = [jax.device_get(r.state) for r in restored]
    trees += trees[-1:] * (len(status.alive) - len(trees))  # the padding repeats the last trial
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *trees)
    log.info("resumed from checkpoints at step %d", target)
    return put_like(stacked, states), target, [r.record for r in restored]


@contextlib.contextmanager
def _stop_requests():
    """Turns SIGTERM/SIGINT into a flag the loop checks between chunks of steps."""
    requested: list[int] = []

    def handler(signum, frame):
        requested.append(signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Outside the main thread no handler can be installed: no clean stop there.
        with contextlib.suppress(ValueError):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
