"""A read-only folder: the run ends at once with one line (exit 74), and a rerun is not refused."""

from __future__ import annotations

import os

import pytest

from tests.helpers.reliability import (
    assert_quiet,
    error_lines,
    read_only,
    run,
    train_argv,
    writable,
)

pytestmark = pytest.mark.slow


def test_read_only_checkpoints_end_the_run_with_one_line_and_release_the_lock(tmp_path):
    # Before the fix the error came after ~7 s but the process lived ~300 s more, holding
    # the workdir's lock, then printed five orbax TimeoutError tracebacks: `run` would
    # exceed its timeout here.
    workdir = tmp_path / "run"
    checkpoints = workdir / "checkpoints"
    checkpoints.mkdir(parents=True)
    proc = run(read_only(checkpoints, train_argv(workdir)))
    writable(checkpoints)
    assert proc.returncode == 74, proc.stderr[-3000:]
    assert error_lines(proc.stderr) == [
        f"error: cannot write {checkpoints}/20: Read-only file system; "
        "the last good checkpoint is kept"
    ]
    assert_quiet(proc.stderr)
    assert os.listdir(checkpoints) == []  # no half-written step

    rerun = run(train_argv(workdir))  # the same command, once the folder is writable
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "in use by" not in rerun.stderr
    assert sorted(os.listdir(checkpoints)) == ["20"]
