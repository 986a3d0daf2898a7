"""Keras Applications' ImageNet classifiers -> the zoo: layer names, layouts, published weights.

Keras stores each layer's weights as an ordered list, the same for a model
object (`layer.get_weights()`), a legacy `.h5` file (the published weights) and
a Keras 3 `.weights.h5` file:

  Conv2D, Dense           [kernel, (bias)]       same layout as ours (HWIO, (in, out))
  SeparableConv2D         [depthwise_kernel, pointwise_kernel, (bias)]
  DepthwiseConv2D         [kernel, (bias)]       depthwise kernel (kh, kw, C, 1) ->
                                                 ours (kh, kw, 1, C), reshaped
  BatchNormalization      [gamma, beta, moving_mean, moving_variance]
                          -> params scale, bias; batch_stats mean, var

Layers are matched by name. Xception's four residual 1x1 convolutions and their
BatchNorms are unnamed in Keras ("conv2d", "conv2d_1", ... "batch_normalization",
... in a fresh session; "conv2d_1".."conv2d_4" in the published file), so they
are matched in creation order: by the number at the end of their names.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from research.models.pretrained import convert
from research.models.pretrained.preprocessing import (
    Preprocessing,
    keras_caffe_mode,
    keras_tf_mode,
)
from research.registry import Registry

_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"

# Keras layer name -> its weights, in Keras's order.
KerasWeights = Mapping[str, Sequence[Any]]


@dataclasses.dataclass(frozen=True)
class KerasModel:
    """One zoo model as Keras Applications publishes it.

    Attributes:
      names: (our module paths, the source's layer names) -> {our module: Keras layer}.
      weights: the published weights: the `keras.applications` constructor and "imagenet".
      url, file_hash: the published weights with their top (Keras's `get_file` origin
        and md5, "" where Keras checks none).
      preprocessing: the input those weights expect.
    """

    names: Callable[[Sequence[str], Sequence[str]], dict[str, str]]
    weights: str
    url: str
    file_hash: str
    preprocessing: Preprocessing


def _unnamed(layers: Sequence[str], kind: str) -> list[str]:
    """Keras's automatic names of `kind` ("conv2d"), in creation order."""
    found = [n for n in layers if re.fullmatch(rf"{kind}(_\d+)?", n)]
    return sorted(found, key=lambda n: int(n.rsplit("_", 1)[1]) if n != kind else 0)


def _xception_names(modules: Sequence[str], layers: Sequence[str]) -> dict[str, str]:
    residual_blocks = sorted(
        {int(m.split("/")[0].removeprefix("block")) for m in modules if "/residual_" in m}
    )
    convs, norms = _unnamed(layers, "conv2d"), _unnamed(layers, "batch_normalization")
    table = {}
    for m in modules:
        match = re.fullmatch(r"block(\d+)/residual_(conv|bn)", m)
        if match:
            rank = residual_blocks.index(int(match[1]))
            found = convs if match[2] == "conv" else norms
            # A missing layer is reported by `assemble` under this (absent) name.
            table[m] = found[rank] if rank < len(found) else f"<unnamed {match[2]} #{rank}>"
        elif m == "head":
            table[m] = "predictions"
        else:
            table[m] = re.sub(r"^block(\d+)/", r"block\1_", m)  # block5/sepconv1 -> block5_sepconv1
    return table


def _vgg16_names(modules: Sequence[str], layers: Sequence[str]) -> dict[str, str]:
    table = {"dense1": "fc1", "dense2": "fc2", "head": "predictions"}
    return {m: table.get(m, m) for m in modules}


def _mobilenet_names(modules: Sequence[str], layers: Sequence[str]) -> dict[str, str]:
    # The zoo's mobilenet_v1 uses Keras's layer names; its classifier is Keras's
    # 1x1 conv "conv_preds" (loaded as a Dense kernel).
    return {m: "conv_preds" if m == "head" else m for m in modules}


MODELS: Registry[KerasModel] = Registry(
    "keras model",
    {
        "xception": KerasModel(
            _xception_names,
            "keras.applications.Xception(weights='imagenet')",
            _URL + "xception/xception_weights_tf_dim_ordering_tf_kernels.h5",
            "0a58e3b7378bc2990ea3b43d5981f1f6",
            keras_tf_mode(299),
        ),
        "vgg16": KerasModel(
            _vgg16_names,
            "keras.applications.VGG16(weights='imagenet')",
            _URL + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5",
            "64373286793e3c8b2b4e3219cbf3544b",
            keras_caffe_mode(224),
        ),
        "mobilenet_v1": KerasModel(
            _mobilenet_names,
            "keras.applications.MobileNet(weights='imagenet')",
            _URL + "mobilenet/mobilenet_1_0_224_tf.h5",
            "",
            keras_tf_mode(224),
        ),
    },
)


def _slot(module: str, leaf: str, batch_norm: bool) -> tuple[str, int, bool]:
    """Our (module, leaf) -> (Keras layer part of `module`, index in its weights, depthwise?)."""
    if batch_norm:
        return module, {"scale": 0, "bias": 1, "mean": 2, "var": 3}[leaf], False
    if module.endswith("/depthwise/depthwise"):  # our SeparableConv2D's depthwise half
        return module.removesuffix("/depthwise/depthwise"), 0, True
    if module.endswith("/pointwise"):  # ... and its pointwise half (then the bias)
        return module.removesuffix("/pointwise"), {"kernel": 1, "bias": 2}[leaf], False
    if module.endswith("/depthwise"):  # our DepthwiseConv2D (a grouped Conv2D inside)
        return module.removesuffix("/depthwise"), {"kernel": 0, "bias": 1}[leaf], leaf == "kernel"
    return module, {"kernel": 0, "bias": 1}[leaf], False


def convert_keras_weights(
    name: str,
    weights: KerasWeights,
    *,
    overrides: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Keras layer weights (`files.read_keras_*`) -> the zoo's variables; see `from_keras`."""
    source = MODELS.get(name)
    where = f"keras {name}"
    _, expected = convert.expected_variables(name, overrides or {}, input_shape)
    slots = {}
    for path in expected:
        _, module, leaf = convert.module_and_leaf(path)
        slots[path] = _slot(module, leaf, convert.is_batch_norm(module, expected))
    names = source.names(sorted({layer for layer, _, _ in slots.values()}), list(weights))
    # Flatten to "layer[i]" keys, so `assemble` checks presence, shapes and leftovers.
    flat = {f"{layer}[{i}]": w for layer, ws in weights.items() for i, w in enumerate(ws)}
    plan = {}
    for path, (layer, index, depthwise) in slots.items():
        shape = expected[path]
        if depthwise:
            layout = convert.KERAS_DEPTHWISE
        elif len(shape) == 2 and len(np.shape(flat.get(f"{names[layer]}[{index}]", ()))) == 4:
            layout = convert.KERAS_1X1_AS_DENSE  # a 1x1 Conv2D classifier (MobileNet)
        else:
            layout = convert.SAME
        plan[path] = (f"{names[layer]}[{index}]", layout)
    return convert.assemble(where, expected, plan, flat)
