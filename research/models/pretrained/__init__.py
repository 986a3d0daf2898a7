"""Published ImageNet weights (torchvision, Keras Applications) in the zoo, exactly.

  * `from_torchvision(name, state_dict)` and `from_keras(name, model_or_file)`
    return `{"params": ..., "batch_stats": ...}` for
    `research.models.create(name, num_classes=1000)`, applied as
    `model.apply(variables, x_nhwc, train=False)`. In eval mode the zoo model
    then computes the source model's logits: tests/models/test_pretrained.py checks a
    relative error below 1e-4 in float32, with random weights and random
    BatchNorm statistics, at the paper's input size and at 193x193 (where
    padding, ceil-mode and adaptive pooling differ).
  * `files`: weights files read as data (`torch.load(weights_only=True)`,
    safetensors, h5py), never as code.
  * `research.train.imported.write_run` (beside the run layout it writes) makes
    the weights a finished run (orbax checkpoint, config, results and
    `pretrained.json` with the source's preprocessing), which
    `--config.transfer.pretrained=DIR` takes like any run of ours;
    `scripts/import_weights.py` is its command line.
  * `preprocessing`: what the source network expects of its input
    (`preprocessing_for(workdir)`), whether data fits it (`check_compatible`) and
    the transfer runs' policy (source mean/std, no resizing; see there).

Covered: torchvision alexnet, vgg11, vgg16, googlenet (without the auxiliary
classifiers), resnet18, resnet34, resnet50; Keras xception, vgg16, mobilenet_v1.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from research.models.pretrained import files, keras_zoo, preprocessing, torchvision_zoo
from research.models.pretrained.preprocessing import (
    Preprocessing,
    check_compatible,
    normalize,
    preprocessing_for,
)
from research.models.pretrained.torchvision_zoo import from_torchvision

SOURCES = {"torchvision": torchvision_zoo.MODELS, "keras": keras_zoo.MODELS}


def from_keras(
    name: str,
    model_or_weights_file: Any,
    *,
    overrides: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Keras Applications weights -> variables of `research.models.create(name, num_classes=1000)`.

    Args:
      name: a zoo name: xception, vgg16, mobilenet_v1.
      model_or_weights_file: a Keras model (e.g. `keras.applications.Xception(
        weights=None, classifier_activation=None)` after training or loading), or the
        path of a `.h5` / `.weights.h5` file (read with h5py: arrays only).
      overrides, input_shape: as in `from_torchvision`. Keras's VGG16 flattens its last
        7x7 map without adaptive pooling, so it exists at other sizes only with another
        first dense layer: import such a model with `overrides={"pooled_size": None}`
        and its `input_shape`.

    Returns:
      `{"params": ..., "batch_stats": ...}` (float32 NumPy arrays).

    Raises:
      ValueError: an unsupported name, an unreadable file, or a weight that is
        missing, misshapen or left over (one line naming it and both shapes).
    """
    keras_zoo.MODELS.get(name)  # an unknown name fails before any file is read
    if isinstance(model_or_weights_file, (str, os.PathLike)):
        weights = files.read_keras_h5(os.fspath(model_or_weights_file))
    else:
        weights = files.read_keras_model(model_or_weights_file)
    return keras_zoo.convert_keras_weights(
        name, weights, overrides=overrides, input_shape=input_shape
    )


__all__ = [
    "SOURCES",
    "Preprocessing",
    "check_compatible",
    "files",
    "from_keras",
    "from_torchvision",
    "normalize",
    "preprocessing",
    "preprocessing_for",
]
