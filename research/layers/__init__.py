"""Layers: pure functions (`functional`), Flax modules on top, and fixed `filters`.

To add a layer type: write one file next to this one (`squeeze_excite.py` is the
worked example) holding its pure function (the layer contract at the top of
`functional.py`: NHWC in, the input's dtype out, bad arguments raise ValueError
before XLA runs; the public helpers `as_nhwc`, `pair` and `cast` keep it) and a
Flax module that owns the parameters and calls it; then add one `LayerSpec` line
to `LAYERS` below, with an example: constructor arguments, an input shape and
the output shape they must give. The layer tests (`tests/layers/test_modules.py`) are
parametrized over `LAYERS`: they build every entry from its example, init and
apply it jitted, and check the output's shape, dtype and finiteness, with no
edit in `tests/`. Worked numerical examples of a new layer's arithmetic are
still worth a test of their own (docs/extending.md walks through one).
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn

from research.layers import filters, functional
from research.layers.functional import (
    adaptive_avg_pool,
    as_nhwc,
    avg_pool,
    conv2d,
    conv_param_count,
    max_pool,
    output_size,
    pair,
)
from research.layers.modules import (
    AdaptiveAvgPool2D,
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    DepthwiseConv2D,
    Dropout,
    Flatten,
    GlobalAvgPool,
    MaxPool2D,
    SeparableConv2D,
    cast,
)
from research.layers.squeeze_excite import SqueezeExcite, squeeze_excite
from research.registry import Registry

EXAMPLE_INPUT = (2, 6, 6, 4)  # (N, H, W, C) of a `LayerSpec` example unless it says otherwise


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """A registered layer and the example its registry-parametrized tests run.

    Attributes:
      build: the Flax module class.
      example: constructor arguments of the example, `build(**example)`.
      output_shape: the shape `apply` must return on an `input_shape` input.
      input_shape: shape of the example's (random normal, float32) input.
      apply_kwargs: keyword arguments of the example's `init` and `apply` calls,
        e.g. `{"deterministic": False}` for dropout.
    """

    build: Callable[..., nn.Module]
    example: Mapping[str, Any]
    output_shape: tuple[int, ...]
    input_shape: tuple[int, ...] = EXAMPLE_INPUT
    apply_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


LAYERS: Registry[LayerSpec] = Registry(
    "layer",
    {
        "conv2d": LayerSpec(Conv2D, dict(features=5, kernel_size=3), (2, 4, 4, 5)),
        "depthwise_conv2d": LayerSpec(
            DepthwiseConv2D, dict(kernel_size=3, depth_multiplier=2), (2, 4, 4, 8)
        ),
        "separable_conv2d": LayerSpec(
            SeparableConv2D, dict(features=5, kernel_size=3, padding="SAME"), (2, 6, 6, 5)
        ),
        "max_pool2d": LayerSpec(MaxPool2D, dict(window=2), (2, 3, 3, 4)),
        "avg_pool2d": LayerSpec(AvgPool2D, dict(window=3, stride=2, padding=1), (2, 3, 3, 4)),
        "adaptive_avg_pool2d": LayerSpec(AdaptiveAvgPool2D, dict(output_size=(2, 5)), (2, 2, 5, 4)),
        "global_avg_pool": LayerSpec(GlobalAvgPool, {}, (2, 4)),
        "flatten": LayerSpec(Flatten, {}, (2, 6 * 6 * 4)),
        "dense": LayerSpec(Dense, dict(features=7), (2, 6, 6, 7)),
        "dropout": LayerSpec(
            Dropout, dict(rate=0.5), (2, 6, 6, 4), apply_kwargs={"deterministic": False}
        ),
        "batch_norm": LayerSpec(BatchNorm, dict(use_running_average=True), (2, 6, 6, 4)),
        "squeeze_excite": LayerSpec(SqueezeExcite, dict(reduction=4), (2, 6, 6, 16), (2, 6, 6, 16)),
    },
)

__all__ = [
    "EXAMPLE_INPUT",
    "LAYERS",
    "LayerSpec",
    "AdaptiveAvgPool2D",
    "AvgPool2D",
    "BatchNorm",
    "Conv2D",
    "Dense",
    "DepthwiseConv2D",
    "Dropout",
    "Flatten",
    "GlobalAvgPool",
    "MaxPool2D",
    "SeparableConv2D",
    "SqueezeExcite",
    "adaptive_avg_pool",
    "as_nhwc",
    "avg_pool",
    "cast",
    "conv2d",
    "conv_param_count",
    "filters",
    "functional",
    "max_pool",
    "output_size",
    "pair",
    "squeeze_excite",
]
