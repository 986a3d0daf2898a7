"""Hostile files: weights that would run code or lie about their format, and links leading
out of a `folder:PATH`, get one line."""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import sys

import numpy as np
import pytest

from research import data
from research.data.tfds_builders import folder as folder_lib
from research.models.pretrained import files
from tests.helpers.images import write_image_folder
from tests.helpers.requirements import requires

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "import_weights.py")


def _touch(path: str) -> None:
    with open(path, "w") as f:
        f.write("code ran")


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (_touch, (self.marker,))


def _import_weights_main(argv: list[str]) -> int:
    sys.path.insert(0, os.path.dirname(SCRIPT))  # its `import _checkout`
    try:
        spec = importlib.util.spec_from_file_location("import_weights", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(os.path.dirname(SCRIPT))
    return module.main(argv)


@pytest.mark.parametrize("protocol", [2, 5])
def test_a_pickle_named_safetensors_is_refused_like_a_pickle(tmp_path, capsys, protocol):
    # Before: rc 1 and a traceback ending in `SafetensorError: header too large`.
    requires("safetensors")
    marker, path = tmp_path / "ran", tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"conv1.weight": _RunsCodeWhenUnpickled(str(marker))}, protocol))
    with pytest.raises(ValueError, match=r"is a pickle .*not safetensors: refused"):
        files.read_state_dict(str(path))

    out = tmp_path / "run"
    argv = ["--source=torchvision", "--model=resnet18", f"--out={out}", f"--weights-file={path}"]
    assert _import_weights_main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: weights file {str(path)!r} is a pickle (a torch.save file), not safetensors: "
        "refused, nothing in it is run; a state_dict saved with torch.save belongs in a "
        ".pth file\n"
    )
    assert not marker.exists(), "the pickle's code ran"
    assert not out.exists()


def test_a_torch_zip_named_safetensors_is_refused(tmp_path):
    requires("safetensors")
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"PK\x03\x04" + bytes(100))  # how every torch.save file begins
    with pytest.raises(ValueError, match=r"is a pickle \(a torch.save file\), not safetensors"):
        files.read_state_dict(str(path))


def test_a_truncated_safetensors_file_gets_one_line(tmp_path):
    requires("safetensors")
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": np.ones((64, 64), "float32")}, str(path))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"is not a valid safetensors file \(.+\); nothing was"):
        files.read_state_dict(str(path))


# ------------------------------------------------------------- folder:PATH symbolic links


def test_a_link_leading_outside_the_folder_is_refused(tmp_path):
    # Before: an image outside the folder was trained on, a linked class folder became a class.
    folder = tmp_path / "photos"
    write_image_folder(folder, per_class=4)
    write_image_folder(tmp_path / "elsewhere", classes=("owl",), per_class=2)
    outside = tmp_path / "elsewhere" / "train" / "owl"
    (folder / "train" / "cat" / "999.png").symlink_to(outside / "000.png")
    with pytest.raises(ValueError) as refused:
        data.load(f"folder:{folder}", cache_dir=str(tmp_path / "cache"))
    assert str(refused.value) == (
        f"folder:{folder}: train/cat/999.png is a symbolic link to {outside}/000.png, "
        "outside the folder; copy it in, or give a folder that holds both"
    )
    os.remove(folder / "train" / "cat" / "999.png")
    (folder / "train" / "owl").symlink_to(outside)
    with pytest.raises(ValueError, match=r": train/owl is a symbolic link to .*, outside the"):
        folder_lib.scan(folder)


def test_links_inside_the_folder_are_followed_and_dangling_ones_named(tmp_path, caplog):
    folder = tmp_path / "photos"
    write_image_folder(folder, per_class=4)
    cat = folder / "train" / "cat"
    (cat / "100.png").symlink_to(folder / "train" / "dog" / "000.png")  # inside: followed
    (cat / "101.png").symlink_to(tmp_path / "gone.png")  # dangling
    (folder / "train" / "yak").symlink_to(tmp_path / "no-such-folder")  # dangling class
    with caplog.at_level(logging.WARNING):
        scanned = folder_lib.scan(folder)
    assert scanned.classes == ("cat", "dog", "eel")
    assert len(scanned.files["train"]) == 13  # 4 + 4 + 4 images and the inside link
    warned = [r.getMessage() for r in caplog.records if r.name.endswith("folder")]
    assert warned == [
        f"folder:{folder}: skipped 2 dangling symbolic link(s): train/yak, train/cat/101.png"
    ]
