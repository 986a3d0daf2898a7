"""Kills: SIGTERM at any moment ends the command with a line saying so and exit 143.

A SIGTERM during training checkpoints first (tests/train/test_checkpoint.py: kill and resume
with the same `params_sha256`); these are the moments outside the training loop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.helpers.reliability import ENDS_WITHIN_S, ROOT, train_argv

pytestmark = pytest.mark.slow


def test_sigterm_during_start_up_says_so_and_exits_143(tmp_path):
    # Before: killed by the signal's default action, with no word (returncode -15).
    workdir = tmp_path / "run"
    proc = subprocess.Popen(
        train_argv(workdir, "--config.num_epochs=3"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + ENDS_WITHIN_S
    # The lock is taken once the run's inputs are checked, before anything is compiled.
    while not (workdir / ".lock").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "the run never took its workdir's lock"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=ENDS_WITHIN_S)
    assert proc.returncode == 143, err[-3000:]
    stopped = [line for line in err.splitlines() if line.startswith("stopped:")]
    assert len(stopped) == 1, err[-3000:]
    assert "Traceback" not in err
    assert not os.path.exists(workdir / "results.json")
