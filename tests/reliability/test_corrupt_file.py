"""Corrupt files: a damaged prepared-data cache is named, said to be rebuilt, and rebuilt."""

from __future__ import annotations

import glob
import logging
import os

import numpy as np
import pytest

from research import data
from tests.helpers.images import write_image_folder
from tests.helpers.reliability import run, train_argv


def _damage(path: str, how: str) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if how == "truncated":
            f.truncate(size // 2)
        else:  # one byte flipped inside the first chunk's records
            f.seek(1000)
            byte = f.read(1)
            f.seek(1000)
            f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("how", ["flipped", "truncated"])
def test_a_damaged_prepared_cache_is_named_and_rebuilt(tmp_path, caplog, how):
    # Before: RuntimeError "Corrupted Riegeli/records file" after a 45-line traceback.
    folder, cache = tmp_path / "photos", tmp_path / "cache"
    write_image_folder(folder, per_class=30)
    name = f"folder:{folder}"
    first = data.load(name, cache_dir=str(cache))
    (train,) = glob.glob(f"{cache}/**/*-train.array_record-*", recursive=True)
    _damage(train, how)

    with caplog.at_level(logging.WARNING):
        again = data.load(name, cache_dir=str(cache))
    warned = [r.getMessage() for r in caplog.records if r.name == "research.data.tfds_cache"]
    assert len(warned) == 1, warned
    assert warned[0].startswith(f"prepared file {train} is damaged (")
    assert warned[0].endswith("); rebuilding it from the original files")
    np.testing.assert_array_equal(again.train_images, first.train_images)
    np.testing.assert_array_equal(again.train_labels, first.train_labels)

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        data.load(name, cache_dir=str(cache))  # rebuilt: read as it is, no warning
    assert [r for r in caplog.records if r.name == "research.data.tfds_cache"] == []


@pytest.mark.slow
def test_a_damaged_checkpoint_is_named_once_in_one_line(tmp_path):
    # Before: the warning came twice (a RuntimeWarning and a log line), each with
    # orbax's "<bound method pybind11...>" print of a TensorStore spec in it.
    workdir = tmp_path / "run"
    argv = train_argv(workdir, "--config.num_epochs=2", "--config.keep_checkpoints=3")
    assert run(argv).returncode == 0
    for path in glob.glob(f"{workdir}/checkpoints/40/state/ocdbt.process_0/d/*"):
        with open(path, "r+b") as f:
            f.seek(16)
            f.write(b"\x00garbage\xff" * 4)
    os.remove(workdir / "results.json")
    again = run(argv)
    assert again.returncode == 0, again.stderr[-3000:]
    named = [line for line in again.stderr.splitlines() if "is damaged" in line]
    assert len(named) == 1, again.stderr[-3000:]
    assert f"checkpoint {workdir}/checkpoints/40 is damaged or incomplete (" in named[0]
    assert named[0].endswith(f"moved to {workdir}/checkpoints.damaged, using an older one")
    assert "bound method" not in again.stderr and "Traceback" not in again.stderr
