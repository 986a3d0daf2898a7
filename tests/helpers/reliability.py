"""What the reliability tests share: the training command and the faults they inject.

A fault is made the way a user meets it, in a real process: a read-only or full
`checkpoints/` is a mount seen only by the training process (`unshare -m`, a private
mount namespace), so the test works as root, where permission bits stop nothing.
Where mounts are not allowed, a non-root user gets a folder without write
permission instead, and tests that need a full disk are skipped with one line.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(ROOT, "scripts", "train.py")
DIGITS = os.path.join(ROOT, "experiments", "digits.py")
# One epoch of simple_cnn on digits: 20 steps, a checkpoint at step 20.
ONE_EPOCH = ["--config.num_epochs=1", "--config.progress=False", "--config.log_every_steps=10"]
# Generous: the process must end within this. Before the fix it lived ~300 s after its error.
ENDS_WITHIN_S = 150


def train_argv(workdir, *args) -> list[str]:
    return [sys.executable, TRAIN, f"--config={DIGITS}", f"--workdir={workdir}", *ONE_EPOCH, *args]


def run(argv, timeout=ENDS_WITHIN_S) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@functools.cache
def can_mount() -> bool:
    """Whether this machine lets a process mount a tmpfs in its own mount namespace."""
    try:
        probe = subprocess.run(
            ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def with_mounts(mounts: list[str], argv: list[str]) -> list[str]:
    """`argv` run after the `mount` commands `mounts`, seen by that process alone."""
    if not can_mount():
        pytest.skip("this machine allows no private mounts (unshare -m): no full disk to test")
    setup = "; ".join(f"mount {m}" for m in mounts)
    script = f"set -e; {setup}; exec {shlex.join(argv)}"
    return ["unshare", "-m", "sh", "-c", script]


def read_only(folder, argv: list[str]) -> list[str]:
    """`argv` with `folder` read-only: a read-only bind mount, or no write permission."""
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)  # the caller gives write permission back (`writable`)
        return argv
    folder = shlex.quote(os.fspath(folder))
    return with_mounts([f"--bind {folder} {folder}", f"-o remount,bind,ro {folder}"], argv)


def writable(folder) -> None:
    os.chmod(folder, 0o755)


def full_disk(folder, argv: list[str], *, options="size=200k") -> list[str]:
    """`argv` with a small empty tmpfs (`options`: size=..., nr_inodes=...) on `folder`."""
    return with_mounts([f"-t tmpfs -o {options} tmpfs {shlex.quote(os.fspath(folder))}"], argv)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_quiet(stderr: str) -> None:
    """No traceback, no orbax timeout, no asyncio noise: only the one error line."""
    for noise in ("Traceback", "TimeoutError", "never awaited", "Event loop is closed"):
        assert noise not in stderr, stderr[-3000:]
