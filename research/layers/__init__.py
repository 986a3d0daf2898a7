"""Layers: pure functions (`functional`), Flax modules on top, and fixed `filters`.

To add a layer type: write its pure function in `functional.py` (or a new file
next to it) and a module in `modules.py` (or a new file) that owns the
parameters and calls it, then add one line to `LAYERS` below; the layer tests
parametrized over `LAYERS` pick it up.
"""

from research.layers import filters, functional
from research.layers.functional import (
    adaptive_avg_pool,
    avg_pool,
    conv2d,
    conv_param_count,
    max_pool,
    output_size,
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
)
from research.registry import Registry

LAYERS = Registry(
    "layer",
    {
        "conv2d": Conv2D,
        "depthwise_conv2d": DepthwiseConv2D,
        "separable_conv2d": SeparableConv2D,
        "max_pool2d": MaxPool2D,
        "avg_pool2d": AvgPool2D,
        "adaptive_avg_pool2d": AdaptiveAvgPool2D,
        "global_avg_pool": GlobalAvgPool,
        "flatten": Flatten,
        "dense": Dense,
        "dropout": Dropout,
        "batch_norm": BatchNorm,
    },
)

__all__ = [
    "LAYERS",
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
    "adaptive_avg_pool",
    "avg_pool",
    "conv2d",
    "conv_param_count",
    "filters",
    "functional",
    "max_pool",
    "output_size",
]
