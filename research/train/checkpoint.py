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
    """

    def __init__(self, directory: str, *, keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._keep = max(keep, 1)
        with root_logging_kept():
            self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory,
            # Synchronous: `save` waits for every write anyway, and an asynchronous save
            # that fails leaves orbax's other writers waiting (5 minutes) for a signal
            # that never comes, keeping the process alive after its error.
            options=ocp.CheckpointManagerOptions(
                max_to_keep=self._keep, create=True, enable_async_checkpointing=False
            ),
        )

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, state, *, step: int, extra: dict | None = None) -> None:
        """Writes `state` as checkpoint `step` (with `extra` in its record) and waits for it.

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
        try:
            with _orbax_logs_silenced(), root_logging_kept():
                self._manager.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)
                    ),
                )
                self._manager.wait_until_finished()
        except Exception as err:
            _ignore_closed_loop_callbacks()
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
        for s in candidates:
            if s not in self._manager.all_steps():
                continue
            try:
                return self._restore(s, ocp.args.StandardRestore(abstract))
            except Exception as err:  # noqa: BLE001 - any failure means "unusable"
                self._set_aside(s, err)
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


def read(workdir: str, *, what: str = "checkpoint") -> Restored:
    """The newest good checkpoint of the run in `workdir`, as plain nested dicts of arrays.

    For transfer learning and the studies: no state to shape it like is needed.
    The checksum is verified; damaged checkpoints are set aside (as in `restore`).

    Args:
      workdir: a run's workdir (its `checkpoints/` is read).
      what: how the caller names this folder in messages (e.g. a config field).

    Raises:
      FileNotFoundError: no checkpoints folder, or no usable checkpoint in it.
    """
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"{what} {workdir!r}: no checkpoints folder at {directory}; "
            f"point it at the workdir of a finished training run"
        )
    ckpt = Checkpointer(directory)
    try:
        for step in reversed(ckpt.steps()):
            try:
                return ckpt._restore(step, ocp.args.StandardRestore())
            except Exception as err:  # noqa: BLE001 - damaged: try the previous one
                ckpt._set_aside(step, err)
    finally:
        ckpt.close()
    raise FileNotFoundError(f"{what} {workdir!r}: no usable checkpoint in {directory}")


class _DropOrbax(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}orbax{os.sep}" not in record.pathname


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


class _DropLostWrites(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for a write that failed with
    an operating-system error: orbax's other write tasks of a failed save, reported with
    their tracebacks whenever they are collected (the save itself raised one OSError)."""

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        return err is None or _os_errno(err) is None


def _ignore_closed_loop_callbacks() -> None:
    """After a failed save (disk full), TensorStore may still complete orbax's pending
    writes and call back into orbax's event loop, which is closed by then; Python
    prints each such `RuntimeError('Event loop is closed')` as a bare traceback, at any
    moment from the first failed write on, and asyncio logs each failed write task it
    collects (`_DropLostWrites`). They are harmless (the save is reported as failed,
    once), so a process whose save failed does not print them. Installed on the first
    failed save only (a documented exception to leaving the caller's hooks alone):
    a run that never fails a write leaves `sys.excepthook` as it found it."""
    previous, previous_unraisable = sys.excepthook, sys.unraisablehook
    if getattr(previous, "_drops_closed_loop", False):
        return
    logging.getLogger("asyncio").addFilter(_DropLostWrites())

    def closed_loop(kind, value) -> bool:
        return kind is RuntimeError and str(value) == "Event loop is closed"

    def hook(kind, value, tb):
        if not closed_loop(kind, value):
            previous(kind, value, tb)

    def unraisable(info):
        if not closed_loop(info.exc_type, info.exc_value):
            previous_unraisable(info)

    hook._drops_closed_loop = True
    sys.excepthook, sys.unraisablehook = hook, unraisable


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
