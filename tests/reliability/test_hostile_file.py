"""Hostile files: weights that would run code or lie about their format get one line."""

from __future__ import annotations

import importlib.util
import os
import pickle
import sys

import numpy as np
import pytest
from conftest import requires

from research.models.pretrained import files

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
