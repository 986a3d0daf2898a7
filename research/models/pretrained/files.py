"""Reading weights files as data, never as code.

* `.pth` / `.pt`: `torch.load(..., weights_only=True)`, torch's restricted
  unpickler, which builds tensors and plain containers only. A file that would
  need anything else (a pickled model class, any custom object) is refused
  with one line saying so; nothing in it runs.
* `.safetensors`: a JSON header and raw arrays (`safetensors.numpy`; no torch needed).
* `.h5` / `.weights.h5` (Keras): read with h5py, arrays and their names only,
  in either layout Keras writes: the legacy one of the published Keras
  Applications weights and of `model.save("x.h5")` (layer groups listed in a
  `layer_names` attribute), or Keras 3's `model.save_weights("x.weights.h5")`
  (`layers/<group>/vars/<i>`, the layer's name in the `vars` group's `name`
  attribute). A model's saved configuration is never read, so no layer or
  function is ever deserialized.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
KERAS_SUFFIXES = (".h5", ".hdf5")  # ".weights.h5" ends in ".h5"
SAFETENSORS_SUFFIXES = (".safetensors",)


def sha256_file(path: str) -> str:
    """SHA-256 of the file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_exists(path: str) -> None:
    if not os.path.isfile(path):
        raise ValueError(f"weights file {path!r} does not exist")


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A `.pth`/`.pt` or `.safetensors` file -> {parameter name: float array}.

    Raises:
      ValueError: no such file, an unknown suffix, a file that would need code to
        load, or one that holds something else than a name -> tensor mapping.
    """
    _check_exists(path)
    lower = path.lower()
    if lower.endswith(SAFETENSORS_SUFFIXES):
        return _read_safetensors(path)
    if not lower.endswith(TORCH_SUFFIXES):
        raise ValueError(
            f"weights file {path!r}: expected a PyTorch state_dict "
            f"({', '.join(TORCH_SUFFIXES)}) or {SAFETENSORS_SUFFIXES[0]}"
        )
    import torch  # optional (requirements-bench.txt): only .pth files need it

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message names the refused global, e.g. "GLOBAL mymodule.Net".
        found = re.search(r"GLOBAL [\w.]+", str(err))
        detail = found.group(0) if found else str(err).strip().splitlines()[0][:200]
        raise ValueError(
            f"weights file {path!r} would need to run code to load ({detail}), refused: "
            f"only tensors are read; save model.state_dict(), not the model"
        ) from None
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ValueError(
            f"weights file {path!r} holds a {type(loaded).__name__}, not a state_dict "
            f"(parameter name -> tensor); save model.state_dict()"
        )
    return {k: v.detach().cpu().float().numpy() for k, v in loaded.items()}


# How a file `torch.save` wrote begins: a zip archive (torch >= 1.6) or a bare pickle.
_PICKLE_STARTS = (b"PK\x03\x04", b"\x80")


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    """A `.safetensors` file's arrays; a pickle under that name is refused, never loaded."""
    from safetensors.numpy import load_file  # optional (requirements-bench.txt)

    with open(path, "rb") as f:
        start = f.read(4)
    if start.startswith(_PICKLE_STARTS):
        raise ValueError(
            f"weights file {path!r} is a pickle (a torch.save file), not safetensors: "
            f"refused, nothing in it is run; a state_dict saved with torch.save belongs "
            f"in a {TORCH_SUFFIXES[0]} file"
        )
    try:
        return dict(load_file(path))
    except Exception as err:  # noqa: BLE001 - SafetensorError and friends: not this format
        detail = " ".join(str(err).split())[:200]
        raise ValueError(
            f"weights file {path!r} is not a valid safetensors file ({detail}); nothing was loaded"
        ) from None


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def read_keras_h5(path: str) -> dict[str, list[np.ndarray]]:
    """A Keras `.h5` / `.weights.h5` file -> {layer name: its weights in Keras's order}.

    Raises:
      ValueError: no such file, or an HDF5 file in neither Keras layout.
    """
    _check_exists(path)
    if not path.lower().endswith(KERAS_SUFFIXES):
        raise ValueError(f"weights file {path!r}: expected a Keras .h5 or .weights.h5 file")
    import h5py  # optional (requirements-bench.txt): only Keras files need it

    with h5py.File(path, "r") as f:
        root = f.get("model_weights", f)  # a whole-model .h5 keeps its weights there
        if "layer_names" in root.attrs:  # legacy layout (Keras Applications, model.save(".h5"))
            weights = {}
            for layer in (_text(n) for n in root.attrs["layer_names"]):
                group = root[layer]
                names = [_text(n) for n in group.attrs.get("weight_names", [])]
                if names:
                    weights[layer] = [np.asarray(group[n][()]) for n in names]
            return weights
        if "layers" in root:  # Keras 3 model.save_weights(".weights.h5")
            weights = {}
            for group in root["layers"].values():
                variables = group.get("vars")
                if variables is None or not len(variables):
                    continue
                layer = _text(variables.attrs.get("name", group.name.rsplit("/", 1)[-1]))
                weights[layer] = [np.asarray(variables[str(i)][()]) for i in range(len(variables))]
            return weights
    raise ValueError(
        f"weights file {path!r} is HDF5 but in neither Keras layout (no 'layer_names' "
        f"attribute, no 'layers' group)"
    )


def read_keras_model(model: Any) -> dict[str, list[np.ndarray]]:
    """A Keras model object -> {layer name: its weights in Keras's order}."""
    return {
        layer.name: [np.asarray(w) for w in layer.get_weights()]
        for layer in model.layers
        if layer.weights
    }
