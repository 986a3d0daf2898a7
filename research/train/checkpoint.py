"""Checkpoints with orbax, verified on restore: the one place that writes and reads them.

Layout of a run's workdir:

  checkpoints/<step>/           the `TrainState` ("state") and a JSON record
                                ("record": `step`, `state_sha256`, and what the
                                engine needs to resume, e.g. `alive`)
  checkpoints.damaged/<step>-N  a checkpoint found damaged, moved aside

Orbax writes a step to a temporary folder and renames it when complete, so a
run killed mid-save leaves no half-written step behind. A step whose files were
damaged afterwards fails to restore or fails the checksum: it is moved to
`checkpoints.damaged/` with a warning naming it, the previous step is used, and
the damaged step is written again when training reaches it.

With a best metric (`config.checkpoint_best`, e.g. "val_loss"), each save carries
that epoch's value as orbax's checkpoint metrics, and orbax's own preservation
policy keeps the latest `keep` steps and the best one
(`AnyPreservationPolicy([LatestN(keep), BestN(n=1)])`; ties go to the later step).
Each step's record then names the metric (`best_metric`), so `read(..., best=True)`
finds the best step with no config.

Every reader goes through here: resume (`Checkpointer.restore`, shaped like a
given state), and transfer learning and the studies (`read`, the newest good
checkpoint of a finished run as plain arrays). Both verify the checksum.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import logging
import os
import re
import shutil
import sys
from typing import Any

import jax
import numpy as np

from research.logs import root_logging_kept

log = logging.getLogger(__name__)


with root_logging_kept():
    import orbax.checkpoint as ocp

DAMAGED_DIR = "checkpoints.damaged"  # beside checkpoints/, where damaged steps are moved
BEST_MODES = {"val_accuracy": "max", "val_loss": "min"}  # metrics a best checkpoint can use


def tree_sha256(tree: Any) -> str:
    """SHA-256 of every array's bytes, leaves in flattened-path order (`tree_flatten`).

    Two runs that end with the same `params_sha256` have bit-identical parameters.
    """
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        digest.update(np.ascontiguousarray(np.asarray(jax.device_get(leaf))).tobytes())
    return digest.hexdigest()


CHECKSUM = "paths-sha256"  # the record's `checksum` kind: `state_sha256` of `state_checksum`


def state_checksum(tree: Any) -> str:
    """SHA-256 of a state's arrays by their paths: the same for a `TrainState` and for the
    nested dicts and lists that orbax restores it as without a target (`read`)."""
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    keyed = sorted((_path(path), leaf) for path, leaf in leaves)
    for name, leaf in keyed:
        array = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _path(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


@dataclasses.dataclass(frozen=True)
class Restored:
    """A checkpoint that restored and verified.

    Attributes:
      state: the saved tree (shaped like the `like` given to `restore`, or plain
        nested dicts of arrays from `read`).
      step: the checkpoint's step.
      record: its JSON record (`step`, `state_sha256`, and the extras saved with it).
      directory: the checkpoint's folder.
    """

    state: Any
    step: int
    record: dict
    directory: str


class Checkpointer:
    """Saves and restores the states of one run under `directory/<step>`.

    Args:
      directory: the checkpoint folder (`<workdir>/checkpoints`; created if needed).
      keep: how many of the most recent checkpoints to keep.
      best: "" or a metric of `BEST_MODES`: also keep the best step by it (each `save`
        then passes that step's value in `metrics`).
    """

    def __init__(self, directory: str, *, keep: int = 2, best: str = ""):
        if best and best not in BEST_MODES:
            raise ValueError(f"best={best!r} must be '' or one of {', '.join(BEST_MODES)}")
        self.directory = os.path.abspath(directory)
        self._keep = max(keep, 1)
        self.best = best
        with root_logging_kept():
            self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        # Synchronous: `save` waits for every write anyway, and an asynchronous save
        # that fails leaves orbax's other writers waiting (5 minutes) for a signal
        # that never comes, keeping the process alive after its error.
        if not self.best:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self._keep, create=True, enable_async_checkpointing=False
            )
        else:
            policies = ocp.checkpoint_managers
            metric, mode = self.best, BEST_MODES[self.best]
            options = ocp.CheckpointManagerOptions(
                create=True,
                enable_async_checkpointing=False,
                best_fn=lambda m: m[metric],  # orbax writes metrics only when this is set
                best_mode=mode,
                preservation_policy=policies.AnyPreservationPolicy(
                    [
                        policies.LatestN(n=self._keep),
                        policies.BestN(
                            get_metric_fn=lambda m: m[metric],
                            reverse=mode == "min",  # ascending order, the last n are kept
                            n=1,
                            keep_checkpoints_without_metrics=False,
                        ),
                    ]
                ),
            )
        return ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(
        self, state, *, step: int, extra: dict | None = None, metrics: dict | None = None
    ) -> None:
        """Writes `state` as checkpoint `step` (with `extra` in its record) and waits for it.

        `metrics` (`{best metric: value}`, with `best` on) ranks the step for the best
        checkpoint; a step saved without it (an interrupted run's) is kept only while
        it is among the latest.

        A step that is already on disk is not written again (a resumed run reaching
        the step it resumed from). Raises `OSError` naming the folder when the disk
        refuses the write; orbax's temporary folder is removed then, and the older
        checkpoints are untouched.
        """
        if step in self._manager.all_steps():
            return
        record = {
            "step": int(step),
            "checksum": CHECKSUM,
            "state_sha256": state_checksum(state),
            **(extra or {}),
        }
        if self.best:
            record["best_metric"] = self.best
            metrics = {self.best: float(metrics[self.best])} if metrics else None
        else:
            metrics = None
        try:
            with _orbax_logs_silenced(), root_logging_kept(), _orbax_noise_dropped():
                self._manager.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)
                    ),
                    metrics=metrics,
                )
                self._manager.wait_until_finished()
        except Exception as err:
            self._remove_temporary()
            code = _os_errno(err)
            if code is not None:
                path = os.path.join(self.directory, str(step))
                raise OSError(code, os.strerror(code), path) from err
            raise

    def _remove_temporary(self) -> None:
        """Deletes orbax's half-written temporary folders (a save that failed)."""
        for path in glob.glob(os.path.join(self.directory, "*.orbax-checkpoint-tmp*")):
            shutil.rmtree(path, ignore_errors=True)
        with root_logging_kept():
            with contextlib.suppress(Exception):
                self._manager.close()
            self._manager = self._open()

    def restore(self, like, *, step: int | None = None) -> Restored | None:
        """The newest checkpoint (or `step`) that restores and verifies, shaped like `like`.

        Returns None when there is none. A damaged checkpoint is moved to
        `checkpoints.damaged/` with a warning naming it, and the next older one is tried
        (with `step` given, None is returned instead).
        """
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        candidates = [step] if step is not None else list(reversed(self.steps()))
        present = (s for s in candidates if s in self._manager.all_steps())
        return self._first_good(present, ocp.args.StandardRestore(abstract))

    def _first_good(self, steps, state_args) -> Restored | None:
        """The first of `steps` (any iterable, read lazily) that restores and verifies;
        each one that does not is set aside (`_set_aside`). None when none does."""
        with _orbax_noise_dropped() as failed:
            for step in steps:
                try:
                    return self._restore(step, state_args)
                except Exception as err:  # noqa: BLE001 - any failure means "unusable"
                    failed.append(step)
                    self._set_aside(step, err)
        return None

    def _restore(self, step: int, state_args) -> Restored:
        with root_logging_kept():
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=state_args, record=ocp.args.JsonRestore())
            )
        state, record = restored["state"], dict(restored["record"])
        if record.get("checksum") == CHECKSUM:
            if state_checksum(state) != record.get("state_sha256"):
                raise ValueError("checksum mismatch")
        elif not isinstance(state, dict) and tree_sha256(state) != record.get("state_sha256"):
            # Written before the path checksum: its sum is over a TrainState's leaves in
            # order, which `read` (plain dicts, other order) cannot check.
            raise ValueError("checksum mismatch")
        return Restored(state, int(step), record, os.path.join(self.directory, str(step)))

    def _set_aside(self, step: int, err: Exception) -> None:
        source = os.path.join(self.directory, str(step))
        target_dir = os.path.join(os.path.dirname(self.directory), DAMAGED_DIR)
        message = (
            f"checkpoint {source} is damaged or incomplete ({_reason(err)}); moved to "
            f"{target_dir}, using an older one"
        )
        if jax.process_index() == 0:
            os.makedirs(target_dir, exist_ok=True)
            n = 0
            while os.path.exists(os.path.join(target_dir, f"{step}-{n}")):
                n += 1
            with contextlib.suppress(OSError):
                os.replace(source, os.path.join(target_dir, f"{step}-{n}"))
        log.warning(message)  # once: one line on the command line (absl), caught by caplog
        with root_logging_kept():
            self._manager.close()
            self._manager = self._open()

    def close(self) -> None:
        with root_logging_kept():
            self._manager.close()


def read(workdir: str, *, what: str = "checkpoint", best: bool = False) -> Restored:
    """The newest good checkpoint of the run in `workdir`, as plain nested dicts of arrays.

    For transfer learning, the studies and `research.restore`: no state to shape it
    like is needed. The checksum is verified; damaged checkpoints are set aside (as
    in `restore`).

    Args:
      workdir: a run's workdir (its `checkpoints/` is read).
      what: how the caller names this folder in messages (e.g. a config field).
      best: the best checkpoint by the run's `checkpoint_best` metric instead (the
        next best if it is damaged).

    Raises:
      FileNotFoundError: no checkpoints folder, or no usable checkpoint in it; with
        `best`, a run that kept no best checkpoint (`checkpoint_best` was off).
    """
    if best:
        return _read_best(workdir, what)
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"{what} {workdir!r}: no checkpoints folder at {directory}; "
            f"point it at the workdir of a finished training run"
        )
    ckpt = Checkpointer(directory)
    try:
        restored = ckpt._first_good(reversed(ckpt.steps()), ocp.args.StandardRestore())
    finally:
        ckpt.close()
    if restored is not None:
        return restored
    raise FileNotFoundError(f"{what} {workdir!r}: no usable checkpoint in {directory}")


def _read_best(workdir: str, what: str) -> Restored:
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    plain = Checkpointer(directory) if os.path.isdir(directory) else None
    metric = None
    try:
        for step in reversed(plain.steps() if plain else []):
            with contextlib.suppress(Exception):  # a damaged record: look at an older one
                record = plain._manager.restore(
                    step, args=ocp.args.Composite(record=ocp.args.JsonRestore())
                )["record"]
                metric = record.get("best_metric")
                break
    finally:
        if plain is not None:
            plain.close()
    if metric not in BEST_MODES:
        raise FileNotFoundError(
            f"{what} {workdir!r}: no best checkpoint in {directory}; train with "
            f"checkpoint_best='val_accuracy' or 'val_loss' to keep one"
        )
    ckpt = Checkpointer(directory, best=metric)

    def best_first():  # the next best once a damaged one is set aside
        while (step := ckpt._manager.best_step()) is not None:
            yield step

    try:
        restored = ckpt._first_good(best_first(), ocp.args.StandardRestore())
    finally:
        ckpt.close()
    if restored is not None:
        return restored
    raise FileNotFoundError(f"{what} {workdir!r}: no usable best checkpoint in {directory}")


_ORBAX = f"{os.sep}orbax{os.sep}"  # in a path: orbax's own code


class _DropOrbax(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _ORBAX not in record.pathname


@contextlib.contextmanager
def _orbax_logs_silenced():
    """Orbax logs every failed write with its whole traceback (from its own threads);
    `save` raises one `OSError` naming the folder instead, so those records are dropped."""
    logger, drop = logging.getLogger("absl"), _DropOrbax()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


class _DropLostTasks(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for one of orbax's tasks
    that a failed save or restore abandoned: a write that failed with an
    operating-system error, or a read raised in orbax's code."""

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        return err is None or (_os_errno(err) is None and not _raised_in_orbax(err))


def _raised_in_orbax(err: BaseException) -> bool:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and _ORBAX in tb.tb_frame.f_code.co_filename


@contextlib.contextmanager
def _orbax_noise_dropped():
    """Yields a list; the caller appends to it when the save or restore failed (an
    exception out of the block counts as a failure too).

    A failed save (disk full) or restore (a damaged file) abandons orbax's other
    concurrent writes or reads. TensorStore may still complete them and call back into
    orbax's event loop, closed by then: Python prints each `RuntimeError('Event loop is
    closed')` as a bare traceback, at any moment from the failure on. Each abandoned
    read prints "Exception ignored in: <coroutine ...>" with a whole TensorStore spec
    when it is collected, and asyncio logs each failed task it collects
    (`_DropLostTasks`). They are harmless (the failure is reported once: the save's
    `OSError`, `_set_aside`'s warning), so they are dropped: `sys.excepthook`,
    `sys.unraisablehook` and a filter on the "asyncio" logger are set for the time of
    each save and restore, and put back after one that succeeds. After a failure they
    stay (the noise can come at any later moment): the one documented exception to
    leaving the caller's hooks alone."""
    failed: list = []
    previous, previous_unraisable = sys.excepthook, sys.unraisablehook
    if _dropping(previous) and _dropping(previous_unraisable):  # a failure set them already
        yield failed
        return
    asyncio_log, lost_tasks = logging.getLogger("asyncio"), _DropLostTasks()
    asyncio_log.addFilter(lost_tasks)

    def closed_loop(kind, value) -> bool:
        return kind is RuntimeError and str(value) == "Event loop is closed"

    def hook(kind, value, tb):
        if not closed_loop(kind, value):
            previous(kind, value, tb)

    def unraisable(info):
        code = getattr(info.object, "cr_code", None)  # an abandoned orbax coroutine
        if code is not None and _ORBAX in code.co_filename:
            return
        if not closed_loop(info.exc_type, info.exc_value):
            previous_unraisable(info)

    hook._drops_orbax_noise = unraisable._drops_orbax_noise = True
    sys.excepthook, sys.unraisablehook = hook, unraisable
    yield failed  # an exception (the failed save) leaves them in place
    if not failed:
        sys.excepthook, sys.unraisablehook = previous, previous_unraisable
        asyncio_log.removeFilter(lost_tasks)


def _dropping(hook) -> bool:
    """Whether `hook` is one `_orbax_noise_dropped` left in place after a failure."""
    return getattr(hook, "_drops_orbax_noise", False)


def _reason(err: BaseException) -> str:
    """The first line of the innermost cause of `err`: TensorStore's own words (e.g.
    "FAILED_PRECONDITION: Error reading ... ZSTD_decompressStream() failed"), not orbax's
    wrapper, whose text is a printed bound method of a whole TensorStore spec."""
    seen = set()
    while id(err) not in seen and (err.__cause__ or err.__context__) is not None:
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else 'no detail'}"


def _os_errno(err: BaseException) -> int | None:
    """The operating-system error number behind `err`, if any.

    Orbax wraps them: an `OSError` in the exception chain, or TensorStore's
    `ValueError("RESOURCE_EXHAUSTED: ... [os_error_code='28']")`.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno is not None:
            return err.errno
        match = re.search(r"os_error_code='(\d+)'", str(err))
        if match:
            return int(match.group(1))
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
