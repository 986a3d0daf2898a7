"""A run's workdir: its lock, config.json, metrics.jsonl, TensorBoard events, results.json.

TensorBoard's hparams plugin gets each finished run's config and final metrics
(`write_hparams`): every scalar config field by its dotted name, and the final
`test_*`/`val_*` metrics as scalars tagged `hparams/<name>`.

Only process 0 writes (`jax.process_index() == 0`); the other processes of a
multi-host run get a writer that does nothing. Files that a reader may see
half-written (results.json, config.json) are written atomically, and a failed
write leaves no temporary file behind.

A workdir is locked while a run uses it (`lock_workdir`): a second process
that tries to train in it is refused with a message naming the holder. The
lock is an `fcntl.flock` on `<workdir>/.lock`, which the operating system
releases when its process dies, so a lock left by a killed run is simply taken.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import subprocess
import tempfile
import time
from typing import Any

import jax

from research import config as config_lib
from research.platform import fcntl

# Fields that change how a run is displayed or stored, not what it computes:
# a resumed run may change them.
COSMETIC_FIELDS = ("progress", "log_every_steps", "checkpoint_every_epochs", "keep_checkpoints")


def is_writer() -> bool:
    return jax.process_index() == 0


def atomic_write_json(path: str, obj: Any) -> None:
    """Writes JSON to `path` via a temporary file and a rename (never half-written)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as open() makes the other files, not mkstemp's 0600
        with os.fdopen(fd, "w") as f:
            json.dump(finite(obj), f, indent=2, sort_keys=True, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def finite(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, Inf) replaced by None: valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def git_commit() -> str:
    """The commit of the code that ran, with "+dirty" if the tree had changes."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


class MetricsLog:
    """Appends one JSON line per logged step or epoch, mirrored to TensorBoard.

    On resume, lines from beyond the restored step are dropped first, so an
    interrupted and resumed run has the same metrics.jsonl as an uninterrupted one.
    """

    def __init__(self, workdir: str, *, resume_step: int = 0, tensorboard: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = is_writer()
        self._tb = None
        if not self.enabled:
            return
        self._truncate_after(resume_step)
        os.makedirs(workdir, exist_ok=True)
        open(self.path, "a").close()  # a run always has its metrics file, if empty
        if tensorboard:
            from tensorboardX import SummaryWriter  # heavy: loaded only when a run writes one

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        keep = [line for line in read_jsonl(self.path) if line["step"] <= step]
        with open(self.path, "w") as f:
            for record in keep:
                f.write(json.dumps(record, sort_keys=True) + "\n")

    def write(self, step: int, **values: float) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _clean(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


HPARAM_METRICS = ("test_accuracy", "test_loss", "val_accuracy", "val_loss")  # when present


def write_hparams(workdir: str, config, record: dict) -> None:
    """The run's config and final metrics for TensorBoard's hparams plugin (process 0).

    Written into the run's own `tensorboard/` folder (one more event file), so the
    hparams table row is the run itself. Config fields that are not scalars (tuples,
    dicts) are written as their JSON text; None is left out.
    """
    if not is_writer():
        return
    # heavy: tensorboardX loads only when a run writes its event files
    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams

    flat = flatten(json.loads(config.to_json_best_effort(sort_keys=True)))
    params = {
        k: v if isinstance(v, bool | int | float | str) else json.dumps(v, sort_keys=True)
        for k, v in flat.items()
        if v is not None
    }
    metrics = {
        f"hparams/{k}": float(record[k])
        for k in HPARAM_METRICS
        if isinstance(record.get(k), int | float) and math.isfinite(record[k])
    }
    step = int(record.get("steps") or 0)
    writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
    try:
        for summary in hparams(params, metrics):
            writer.file_writer.add_summary(summary, step)
        for tag, value in metrics.items():
            writer.add_scalar(tag, value, step)
    finally:
        writer.close()


def _clean(value):
    value = float(value) if not isinstance(value, (int, str)) else value
    return value if not isinstance(value, float) or math.isfinite(value) else str(value)


def read_jsonl(path: str) -> list[dict]:
    """The records of a JSON-lines file; a last line cut short (a full disk) is dropped."""
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i + 1 < len(lines):
                raise
    return records


class WorkdirBusy(ValueError):
    """Another live process holds the workdir's lock; the message names it."""


_HELD: dict[str, list] = {}  # workdir -> [open lock file, reference count], this process


def lock_workdir(workdir: str) -> None:
    """Takes the lock of `workdir` for this process (re-entrant; see `unlock_workdir`).

    Only process 0 of a multi-host run locks (the others write nothing).

    Raises:
      WorkdirBusy: a live process holds it (the message names its pid, host and start).
    """
    if not is_writer():
        return
    key = os.path.abspath(workdir)
    if key in _HELD:
        _HELD[key][1] += 1
        return
    created = not os.path.exists(key)
    os.makedirs(key, exist_ok=True)
    f = open(os.path.join(key, ".lock"), "a+")  # noqa: SIM115 - held until unlock_workdir
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise WorkdirBusy(
            f"workdir {workdir} is in use by {holder}; wait for it to finish or choose "
            f"another workdir"
        ) from None
    try:
        f.seek(0)
        f.truncate()
        f.write(
            f"process {os.getpid()} on {socket.gethostname()} "
            f"(since {time.strftime('%Y-%m-%d %H:%M:%S')})\n"
        )
        f.flush()
    except OSError as err:  # a full disk: name the file, leave no empty lock behind
        if os.fstat(f.fileno()).st_size == 0:
            os.unlink(f.name)
        with contextlib.suppress(OSError):
            f.close()  # its unwritten line fails again on the way out
        if created:  # nor the workdir this call made (rmdir: only when still empty)
            with contextlib.suppress(OSError):
                os.rmdir(key)
        raise OSError(err.errno, err.strerror, f.name) from None
    _HELD[key] = [f, 1]


def unlock_workdir(workdir: str) -> None:
    """Releases one `lock_workdir` of this process; the last one frees the lock."""
    key = os.path.abspath(workdir)
    if key not in _HELD:
        return
    _HELD[key][1] -= 1
    if _HELD[key][1] == 0:
        f = _HELD.pop(key)[0]
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def prepare_workdir(config, workdir: str) -> None:
    """Creates the workdir, or checks that an existing one holds this same run.

    A workdir with a different config is refused (nothing in it is touched).
    Fields in `COSMETIC_FIELDS` may differ, and a field the earlier run's config
    lacks (one added to the base config since) counts as the same when it holds
    its default, so runs written by an older version still resume.

    Raises:
      ValueError: naming the fields that differ.
    """
    path = os.path.join(workdir, "config.json")
    current = json.loads(config.to_json_best_effort(sort_keys=True))
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        old, new = flatten(previous), flatten(current)
        defaults = _base_defaults()
        diff = sorted(
            key
            for key in old.keys() | new.keys()
            if key.split(".")[0] not in COSMETIC_FIELDS
            and old.get(key, defaults.get(key)) != new.get(key)
        )
        if diff:
            raise ValueError(
                f"workdir {workdir} holds a run with a different config (fields differ: "
                f"{', '.join(diff)}); resume with the same config or choose a new workdir"
            )
    if is_writer():
        atomic_write_json(path, current)


def _base_defaults() -> dict[str, Any]:
    return flatten(json.loads(config_lib.get_base_config().to_json_best_effort(sort_keys=True)))


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested dict as {dotted key: leaf}; empty dicts are leaves."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
