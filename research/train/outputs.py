"""What a run writes in its workdir: config.json, metrics.jsonl, TensorBoard events, results.json.

Only process 0 writes (`jax.process_index() == 0`); the other processes of a
multi-host run get a writer that does nothing. Files that a reader may see
half-written (results.json, config.json) are written atomically.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from typing import Any

import jax


def is_writer() -> bool:
    return jax.process_index() == 0


def atomic_write_json(path: str, obj: Any) -> None:
    """Writes JSON to `path` via a temporary file and a rename (never half-written)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


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
        if tensorboard:
            from tensorboardX import SummaryWriter

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


def _clean(value):
    value = float(value) if not isinstance(value, (int, str)) else value
    return value if not isinstance(value, float) or math.isfinite(value) else str(value)


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
