"""Xception (Chollet, 2017, "Xception: Deep Learning with Depthwise Separable Convolutions").

Follows Keras Applications' `Xception` (keras/applications/xception.py) layer
for layer, with Keras's layer names:

  entry flow   block1: conv 3x3/2 32 -> conv 3x3 64 (both VALID, no bias, BN, ReLU)
               block2..4: [ReLU] sepconv 3x3 -> BN -> ReLU -> sepconv 3x3 -> BN
                          -> max pool 3x3/2 SAME, + shortcut 1x1/2 conv + BN
                          (128, 256, 728 channels; block2 has no leading ReLU)
  middle flow  block5..12: 3 x (ReLU -> sepconv 3x3 728 -> BN), + identity
  exit flow    block13: ReLU -> sepconv 728 -> BN -> ReLU -> sepconv 1024 -> BN
                        -> max pool 3x3/2, + shortcut 1x1/2 conv + BN
               block14: sepconv 1536 -> BN -> ReLU -> sepconv 2048 -> BN -> ReLU
  -> global average pool -> head (Keras's "predictions"; no dropout)

Separable convs are `SeparableConv2D(use_bias=False)`: a depthwise 3x3 then a
pointwise 1x1, `9 * C_in + C_in * C_out` parameters, as Keras's. BatchNorm uses
Keras's defaults (epsilon 1e-3, momentum 0.99); kernels use Keras's default
glorot-uniform init (for the depthwise kernel, our `(3, 3, 1, C)` layout has the
same fan-in + fan-out as Keras's `(3, 3, C, 1)`, so the same distribution).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers import BatchNorm, Conv2D, Dense, GlobalAvgPool, MaxPool2D, SeparableConv2D
from research.models import scan

_KERNEL_INIT = nn.initializers.glorot_uniform()  # Keras's default kernel_initializer
_BN_EPSILON = 1e-3  # Keras BatchNormalization default
_BN_MOMENTUM = 0.99  # Keras BatchNormalization default (same convention as Flax)

# Overrides for 28x28x1 / 32x32x3 inputs (the registry's tests, quick CPU experiments):
# stride-1 SAME entry convs, so the four pooling blocks take 32x32 to 16, 8, 4, 2 (the
# paper's stem would leave 13x13 after block1 and 1x1 at the exit), plus 2 middle blocks
# instead of 8 and 1/8 of every width (189k parameters at 10 classes) to keep the
# tests and CPU experiments cheap (full width with 8 middle blocks takes ~2 s per Adam
# step on a batch of 8 at 28x28 on 2 CPU cores, ~15% more CPU time in the tests).
# For a full-size model on small inputs use `small_input=True` alone. Paper-size
# defaults unchanged.
SMALL_INPUTS = {"small_input": True, "middle_blocks": 2, "width_multiplier": 0.125}

# The fast tier's stand-in (registry `stand_in`, on top of SMALL_INPUTS): one middle block
# (the entry and exit flows are fixed) at 1/16 of the widths.
STAND_IN = {"middle_blocks": 1, "width_multiplier": 0.0625}


def _norm(train: bool, dtype, name: str, momentum: float = _BN_MOMENTUM) -> BatchNorm:
    return BatchNorm(
        use_running_average=not train,
        momentum=momentum,
        epsilon=_BN_EPSILON,
        dtype=dtype,
        name=name,
    )


class XceptionBlock(nn.Module):
    """A residual block of 3x3 separable convs (Keras's `block{k}_sepconv{i}` layers).

    Each separable conv is preceded by a ReLU (except the first when
    `relu_first=False`) and followed by BatchNorm. With `downsample`, a 3x3/2
    SAME max pool ends the block and the shortcut is a 1x1/2 conv + BN
    (`residual_conv`, `residual_bn`); otherwise the shortcut is the identity.

    Attributes:
      features: output channels of each separable conv, in order.
      downsample: halve the resolution (entry and exit flow) or not (middle flow).
      relu_first: apply a ReLU before the first separable conv (False in block2,
        whose input is already the ReLU of block1).
      dtype: compute dtype.
    """

    features: Sequence[int]
    downsample: bool
    relu_first: bool = True
    bn_momentum: float = _BN_MOMENTUM
    scan_blocks: bool = False
    dtype: jnp.dtype | None = None

    def scan_groups(self) -> dict[str, tuple[str, ...]]:
        """Scanned group -> its blocks' default names: the middle flow, if it has two or more."""
        if self.middle_blocks < 2:
            return {}
        last = 4 + self.middle_blocks
        return {scan.group_name("", 5, last): tuple(f"block{k}" for k in range(5, last + 1))}

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.downsample:
            residual = Conv2D(
                self.features[-1],
                1,
                stride=2,
                padding="SAME",
                use_bias=False,
                kernel_init=_KERNEL_INIT,
                dtype=self.dtype,
                name="residual_conv",
            )(x)
            residual = _norm(train, self.dtype, "residual_bn", self.bn_momentum)(residual)
        else:
            residual = x
        for i, features in enumerate(self.features, start=1):
            if i > 1 or self.relu_first:
                x = nn.relu(x)
            x = SeparableConv2D(
                features,
                3,
                padding="SAME",
                use_bias=False,
                kernel_init=_KERNEL_INIT,
                dtype=self.dtype,
                name=f"sepconv{i}",
            )(x)
            x = _norm(train, self.dtype, f"sepconv{i}_bn", self.bn_momentum)(x)
        if self.downsample:
            x = MaxPool2D(3, stride=2, padding="SAME", name="pool")(x)
        return x + residual


class Xception(nn.Module):
    """Keras Applications' Xception; see the module docstring.

    At 299x299x3 with 1000 classes: 22,855,952 trainable parameters, the
    "Trainable params" of Keras's `model.summary()` (its 22,910,480 total adds
    the 54,528 BatchNorm moving means and variances, which live in our
    "batch_stats" collection).

    Submodules in network order (Keras's names): `block1_conv1`,
    `block1_conv1_bn`, `block1_conv2`, `block1_conv2_bn`, `block2`..`block4`
    (entry), `block5`..`block{4+m}` (middle, m = `middle_blocks`),
    `block{5+m}` (exit), `block{6+m}_sepconv1`, `block{6+m}_sepconv1_bn`,
    `block{6+m}_sepconv2`, `block{6+m}_sepconv2_bn`, `avg_pool`, `head`; with
    the default m = 8 these are Keras's block13 and block14. Sown features:
    `block{k}_out` after every block and the pooled 2048-d "features".

    Attributes:
      num_classes: outputs of the head.
      middle_blocks: blocks in the middle flow (8 in the paper).
      width_multiplier: scales every layer's channels (rounded, at least 1);
        1.0 is the published network.
      small_input: stride-1 SAME entry convs (instead of 3x3/2 and 3x3 VALID),
        for 28x28 and 32x32 inputs.
      scan_blocks: run the middle flow's identical blocks as one `nn.scan` with
        stacked parameters, `blocks5to{4+m}` (when m >= 2; see
        `research.models.scan`: a smaller program, though on CPU no faster to
        compile (measured there), another parameter
        layout, `scan_groups()` and the converters). Default False: one module
        per block.
      bn_momentum: BatchNorm running-average momentum (Flax/Keras convention:
        the weight of the old value). Keras's 0.99 needs several hundred steps
        before the running statistics fit; a run of ~100 steps evaluates with
        statistics still ~40% at their initial values, which is chance
        accuracy at 0.9+ training accuracy; use 0.9 for short runs.
      dtype: compute dtype (parameters stay float32).
    """

    num_classes: int = 1000
    middle_blocks: int = 8
    width_multiplier: float = 1.0
    small_input: bool = False
    bn_momentum: float = _BN_MOMENTUM
    scan_blocks: bool = False
    dtype: jnp.dtype | None = None

    def scan_groups(self) -> dict[str, tuple[str, ...]]:
        """Scanned group -> its blocks' default names: the middle flow, if it has two or more."""
        if self.middle_blocks < 2:
            return {}
        last = 4 + self.middle_blocks
        return {scan.group_name("", 5, last): tuple(f"block{k}" for k in range(5, last + 1))}

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if not isinstance(self.middle_blocks, int) or self.middle_blocks < 0:
            raise ValueError(f"middle_blocks must be an int >= 0, got {self.middle_blocks!r}")
        if not self.width_multiplier > 0:
            raise ValueError(f"width_multiplier must be > 0, got {self.width_multiplier!r}")
        if not 0 <= self.bn_momentum < 1:
            raise ValueError(f"bn_momentum must be in [0, 1), got {self.bn_momentum!r}")
        if not isinstance(self.scan_blocks, bool):
            raise ValueError(f"scan_blocks must be True or False, got {self.scan_blocks!r}")

        def width(c: int) -> int:
            return max(1, int(c * self.width_multiplier + 0.5))

        conv = partial(Conv2D, use_bias=False, kernel_init=_KERNEL_INIT, dtype=self.dtype)
        block = partial(XceptionBlock, bn_momentum=self.bn_momentum, dtype=self.dtype)
        norm = partial(_norm, train, self.dtype, momentum=self.bn_momentum)

        # Entry flow.
        stride, padding = (1, "SAME") if self.small_input else (2, "VALID")
        x = conv(width(32), 3, stride=stride, padding=padding, name="block1_conv1")(x)
        x = nn.relu(norm("block1_conv1_bn")(x))
        x = conv(width(64), 3, padding=padding, name="block1_conv2")(x)
        x = nn.relu(norm("block1_conv2_bn")(x))
        self.sow("features", "block1_out", x)
        for k, (channels, relu_first) in enumerate(((128, False), (256, True), (728, True)), 2):
            x = block(
                (width(channels),) * 2, downsample=True, relu_first=relu_first, name=f"block{k}"
            )(x, train=train)
            self.sow("features", f"block{k}_out", x)

        # Middle flow.
        middle = partial(block, (width(728),) * 3, downsample=False)
        groups = self.scan_groups() if self.scan_blocks else {}
        for group, members in groups.items():  # the whole middle flow, as one scan
            keep = self.is_mutable_collection("features")
            x, outputs = scan.repeat(
                middle(name=group), x, len(members), train=train, keep_outputs=keep
            )
            for k, member in enumerate(members if keep else ()):
                self.sow("features", f"{member}_out", outputs[k])  # (N, H, W, C) of block k
        for k in range(5, 5 + self.middle_blocks) if not groups else ():
            x = middle(name=f"block{k}")(x, train=train)
            self.sow("features", f"block{k}_out", x)

        # Exit flow.
        k = 5 + self.middle_blocks
        x = block((width(728), width(1024)), downsample=True, name=f"block{k}")(x, train=train)
        self.sow("features", f"block{k}_out", x)
        k += 1
        for i, channels in enumerate((1536, 2048), start=1):
            x = SeparableConv2D(
                width(channels),
                3,
                padding="SAME",
                use_bias=False,
                kernel_init=_KERNEL_INIT,
                dtype=self.dtype,
                name=f"block{k}_sepconv{i}",
            )(x)
            x = nn.relu(norm(f"block{k}_sepconv{i}_bn")(x))
        self.sow("features", f"block{k}_out", x)

        x = GlobalAvgPool(name="avg_pool")(x)  # (N, 2048 * width_multiplier)
        self.sow("features", "features", x)
        return Dense(self.num_classes, kernel_init=_KERNEL_INIT, dtype=self.dtype, name="head")(x)
