"""GoogLeNet (Inception v1; Szegedy et al., 2015, "Going Deeper with Convolutions").

Follows torchvision's `GoogLeNet` (torchvision/models/googlenet.py) without the
two auxiliary classifiers, layer for layer:

  conv1 7x7/2 64 -> pool1 3x3/2 -> conv2 1x1 64 -> conv3 3x3 192 -> pool2 3x3/2
  -> inception3a, 3b -> pool3 3x3/2 -> inception4a..4e -> pool4 2x2/2
  -> inception5a, 5b -> global average pool -> dropout 0.2 -> head

Every convolution is torchvision's `BasicConv2d`: conv without bias, BatchNorm
(eps 1e-3, PyTorch momentum 0.1 = Flax momentum 0.9), ReLU. The max pools use
PyTorch's `ceil_mode=True` (reproduced with extra bottom/right padding that
never wins the max), so at 224x224 the maps are 112 -> 56 -> 28 -> 14 -> 7.

Known deviation, kept on purpose: torchvision's "5x5" branch uses a 3x3
convolution (a bug that became the published weights' architecture, see
https://github.com/pytorch/vision/issues/906). `branch3_kernel_size=5` gives
the paper's 5x5 branch (7,005,832 parameters at 1000 classes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers import BatchNorm, Conv2D, Dense, Dropout, GlobalAvgPool, MaxPool2D

# torchvision's init: truncated normal, std 0.01, cut at 2 std, for conv and linear kernels.
_KERNEL_INIT = nn.initializers.truncated_normal(stddev=0.01)
_BN_EPSILON = 1e-3  # torchvision BasicConv2d: BatchNorm2d(eps=0.001)
_BN_MOMENTUM = 0.9  # PyTorch's default momentum 0.1, in Flax's convention (1 - 0.1)

# Inception blocks as torchvision's arguments (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5,
# pool_proj); the paper's Table 1. A 3x3/2 max pool follows stage 3, a 2x2/2 one stage 4.
_STAGES: tuple[tuple[str, tuple[tuple[int, ...], ...]], ...] = (
    ("3", ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64))),
    (
        "4",
        (
            (192, 96, 208, 16, 48, 64),
            (160, 112, 224, 24, 64, 64),
            (128, 128, 256, 24, 64, 64),
            (112, 144, 288, 32, 64, 64),
            (256, 160, 320, 32, 128, 128),
        ),
    ),
    ("5", ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128))),
)
_POOL_AFTER = {"3": (3, "pool3"), "4": (2, "pool4")}  # stage -> (window, name); stride 2

# Overrides for 28x28x1 / 32x32x3 inputs (the registry's tests, MNIST/CIFAR experiments):
# a 3x3/1 conv1 and no pool1/pool2, so the inception stages see 28x28 / 32x32 maps (as in
# common CIFAR GoogLeNets) rather than 4x4 / 1x1 ones. Widths stay the published ones: the
# registry tests' CPU time goes to initializing and compiling ~60 distinct layers, and
# `width_multiplier=0.25` saved only a few percent of it. Paper-size defaults unchanged.
SMALL_INPUTS = {"small_input": True}

# The fast tier's stand-in (registry `stand_in`, on top of SMALL_INPUTS): one inception
# block per stage (3a, 4a, 5a) at 1/8 of the widths, with every pool between them.
STAND_IN = {"stage_sizes": (1, 1, 1), "width_multiplier": 0.125}


def _ceil_mode_padding(spatial: Sequence[int], window: int, stride: int) -> tuple:
    """Bottom/right padding that makes a VALID pool give PyTorch's `ceil_mode=True` size.

    PyTorch: `out = ceil((n - f) / s) + 1`, dropping the last window if it would
    start beyond the input. Padded positions are -inf for max pooling, so they
    never win.
    """
    pads = []
    for n in spatial:
        out = max(math.ceil((n - window) / stride), 0) + 1
        if (out - 1) * stride >= n:
            out -= 1
        pads.append((0, max((out - 1) * stride + window - n, 0)))
    return tuple(pads)


def _ceil_max_pool(x: jax.Array, window: int, *, name: str) -> jax.Array:
    padding = _ceil_mode_padding(x.shape[1:3], window, 2)
    return MaxPool2D(window, stride=2, padding=padding, name=name)(x)


class ConvBN(nn.Module):
    """torchvision's `BasicConv2d`: conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = Conv2D(
            self.features,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            use_bias=False,
            kernel_init=_KERNEL_INIT,
            dtype=self.dtype,
            name="conv",
        )(x)
        x = BatchNorm(
            use_running_average=not train,
            momentum=_BN_MOMENTUM,
            epsilon=_BN_EPSILON,
            dtype=self.dtype,
            name="bn",
        )(x)
        return nn.relu(x)


class Inception(nn.Module):
    """Four parallel branches, concatenated on channels (torchvision's `Inception`).

    branch1: 1x1; branch2: 1x1 reduce -> 3x3; branch3: 1x1 reduce -> k x k
    (k = 3 in torchvision, 5 in the paper); branch4: 3x3/1 max pool -> 1x1 proj.
    Output channels: `ch1x1 + ch3x3 + ch5x5 + pool_proj`.
    """

    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int
    branch3_kernel_size: int = 3
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        conv = partial(ConvBN, dtype=self.dtype)
        k = self.branch3_kernel_size
        b1 = conv(self.ch1x1, 1, name="branch1")(x, train=train)
        b2 = conv(self.ch3x3red, 1, name="branch2_reduce")(x, train=train)
        b2 = conv(self.ch3x3, 3, padding=1, name="branch2_conv")(b2, train=train)
        b3 = conv(self.ch5x5red, 1, name="branch3_reduce")(x, train=train)
        b3 = conv(self.ch5x5, k, padding=k // 2, name="branch3_conv")(b3, train=train)
        b4 = MaxPool2D(3, stride=1, padding=1, name="branch4_pool")(x)
        b4 = conv(self.pool_proj, 1, name="branch4_proj")(b4, train=train)
        return jnp.concatenate([b1, b2, b3, b4], axis=-1)  # (N, H, W, sum of branch widths)


class GoogLeNet(nn.Module):
    """torchvision's GoogLeNet without auxiliary classifiers (see the module docstring).

    At 224x224x3 with 1000 classes: 6,624,904 trainable parameters (conv
    kernels, BatchNorm scale and bias, head), torchvision's published count for
    `googlenet`. Running BatchNorm statistics live in "batch_stats".

    Submodules in network order: `conv1`, `pool1`, `conv2`, `conv3`, `pool2`,
    `inception3a`, `inception3b`, `pool3`, `inception4a`..`inception4e`,
    `pool4`, `inception5a`, `inception5b`, `avgpool`, `dropout`, `head`. Sown
    features: `conv{1,2,3}_out`, `inception{3a..5b}_out` and the pooled 1024-d
    "features".

    Attributes:
      num_classes: outputs of the head.
      dropout: dropout rate before the head (torchvision: 0.2).
      small_input: a 3x3/1 `conv1` and no `pool1`/`pool2`, for 28x28 and 32x32
        inputs (the inception stages then see 28x28 / 32x32 maps, not 7x7 / 8x8).
      width_multiplier: scales every layer's channels (rounded, at least 1);
        1.0 is the published network. For small, fast experiments.
      branch3_kernel_size: kernel of the "5x5" branch: 3 (torchvision,
        default) or 5 (the paper).
      stage_sizes: how many of each stage's inception blocks to build (the
        first ones), (2, 5, 2) in the paper; fewer make a shallow test stand-in.
      dtype: compute dtype (parameters stay float32).
    """

    num_classes: int = 1000
    dropout: float = 0.2
    small_input: bool = False
    width_multiplier: float = 1.0
    branch3_kernel_size: int = 3
    stage_sizes: Sequence[int] = tuple(len(blocks) for _, blocks in _STAGES)
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        full = tuple(len(blocks) for _, blocks in _STAGES)
        if len(self.stage_sizes) != len(full) or not all(
            isinstance(n, int) and 1 <= n <= m for n, m in zip(self.stage_sizes, full, strict=True)
        ):
            raise ValueError(
                f"stage_sizes must give 1..{list(full)} blocks for the 3 stages, "
                f"got {self.stage_sizes!r}"
            )
        if not self.width_multiplier > 0:
            raise ValueError(f"width_multiplier must be > 0, got {self.width_multiplier!r}")
        k = self.branch3_kernel_size
        if not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ValueError(f"branch3_kernel_size must be an odd int >= 1 (3 or 5), got {k!r}")

        def width(c: int) -> int:
            return max(1, int(c * self.width_multiplier + 0.5))

        conv = partial(ConvBN, dtype=self.dtype)
        if self.small_input:
            x = conv(width(64), 3, padding=1, name="conv1")(x, train=train)
        else:
            x = conv(width(64), 7, stride=2, padding=3, name="conv1")(x, train=train)
        self.sow("features", "conv1_out", x)
        if not self.small_input:
            x = _ceil_max_pool(x, 3, name="pool1")
        x = conv(width(64), 1, name="conv2")(x, train=train)
        self.sow("features", "conv2_out", x)
        x = conv(width(192), 3, padding=1, name="conv3")(x, train=train)
        self.sow("features", "conv3_out", x)
        if not self.small_input:
            x = _ceil_max_pool(x, 3, name="pool2")

        for (stage, blocks), size in zip(_STAGES, self.stage_sizes, strict=True):
            for letter, channels in zip("abcde", blocks[:size], strict=False):
                name = f"inception{stage}{letter}"
                x = Inception(
                    *(width(c) for c in channels),
                    branch3_kernel_size=k,
                    dtype=self.dtype,
                    name=name,
                )(x, train=train)
                self.sow("features", f"{name}_out", x)
            if stage in _POOL_AFTER:
                window, pool_name = _POOL_AFTER[stage]
                x = _ceil_max_pool(x, window, name=pool_name)

        x = GlobalAvgPool(name="avgpool")(x)  # (N, 1024 * width_multiplier)
        self.sow("features", "features", x)
        x = Dropout(self.dropout, deterministic=not train, name="dropout")(x)
        return Dense(self.num_classes, kernel_init=_KERNEL_INIT, dtype=self.dtype, name="head")(x)
