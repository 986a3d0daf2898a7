"""A full disk: one line naming the path (exit 74), nothing left behind, nothing lingering."""

from __future__ import annotations

import os

import pytest

from tests.helpers.reliability import assert_quiet, error_lines, full_disk, run, train_argv

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("options", ["size=200k", "nr_inodes=1"], ids=["bytes", "inodes"])
def test_full_disk_under_checkpoints_ends_the_run_with_one_line(tmp_path, options):
    # A checkpoint of simple_cnn takes 656 KB and 26 files. With no inode left, even the
    # step's folder cannot be made: before the fix, orbax's other writers then waited
    # ~300 s for it and `run` timed out; with no bytes left, the arrays fail to write.
    workdir = tmp_path / "run"
    checkpoints = workdir / "checkpoints"
    checkpoints.mkdir(parents=True)
    proc = run(full_disk(checkpoints, train_argv(workdir), options=options))
    assert proc.returncode == 74, proc.stderr[-3000:]
    assert error_lines(proc.stderr) == [
        f"error: cannot write {checkpoints}/20: No space left on device; "
        "the last good checkpoint is kept"
    ]
    assert_quiet(proc.stderr)

    rerun = run(train_argv(workdir))  # room again (the tmpfs was the process's own)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sorted(os.listdir(checkpoints)) == ["20"]


def test_full_disk_at_start_up_names_the_path_and_leaves_nothing(tmp_path):
    # Before: "error: cannot write: No space left on device", an empty .lock left, and
    # the empty workdir the run had made.
    disk = tmp_path / "disk"
    disk.mkdir()
    fill = f"dd if=/dev/zero of={disk}/fill bs=4k count=100"  # more than the disk holds
    # The tmpfs is the process's own, so what it leaves is listed from inside.
    script = f'{fill} 2>/dev/null; "$@"; rc=$?; echo "left: $(ls -A {disk})"; exit $rc'
    argv = ["sh", "-c", script, "sh", *train_argv(disk / "run")]
    proc = run(full_disk(disk, argv, options="size=64k"))
    assert proc.returncode == 74, proc.stderr[-3000:]
    assert error_lines(proc.stderr) == [
        f"error: cannot write {disk}/run/.lock: No space left on device"
    ]
    assert_quiet(proc.stderr)
    assert proc.stdout.splitlines()[-1] == "left: fill"  # no run/, no empty run/.lock
