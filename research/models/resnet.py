"""ResNet (He, Zhang, Ren and Sun, 2016, "Deep Residual Learning for Image Recognition").

Follows torchvision's `ResNet` (torchvision/models/resnet.py), i.e. "ResNet
v1.5": in a bottleneck block the stride sits on the 3x3 convolution (the paper
put it on the first 1x1). Layer for layer:

  stem_conv 7x7/2 (no bias) -> stem_bn -> ReLU -> stem_pool 3x3/2 (pad 1)
  -> stage1 .. stage4 (widths 64, 128, 256, 512; stages 2-4 start with stride 2)
  -> global average pool -> head

Convolutions have no bias and are followed by BatchNorm (eps 1e-5, PyTorch
momentum 0.1 = Flax momentum 0.9). A block's shortcut is the identity, or a 1x1
strided conv + BatchNorm (`proj_conv`, `proj_bn`) where the shape changes
(torchvision's `downsample`, option B of the paper). Conv kernels use
torchvision's init, He normal with fan_out; the head uses Flax's Dense defaults.

Size variants are partials, as in the Flax ImageNet example:
`ResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock)`.

New blocks. `ResNet` takes any block class that declares its channel
`expansion` as a `ClassVar[int]` and is built as
`block(features=, stride=, zero_init_residual=, dtype=, name=)(x, train=)`,
returning `features * expansion` channels. The pieces `BasicBlock` and
`Bottleneck` are made of are public for such blocks: `CONV_INIT` (the conv
kernels' init), `norm` (the BatchNorm of every conv) and `shortcut` (identity or
projection). `research/models/se_resnet.py` is the worked example: a new block,
then `SEResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2), block=SEBasicBlock)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers import BatchNorm, Conv2D, Dense, GlobalAvgPool, MaxPool2D
from research.models import scan

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), an untruncated normal.
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
BN_EPSILON = 1e-5  # PyTorch BatchNorm2d default
BN_MOMENTUM = 0.9  # PyTorch's default momentum 0.1, in Flax's convention (1 - 0.1)

# Overrides for 28x28x1 / 32x32x3 inputs (the registry's tests, MNIST/CIFAR experiments):
# the CIFAR stem (3x3/1 conv, no max pool, as in He et al. 2016's CIFAR networks and the
# common CIFAR ResNet-18: 11,173,962 parameters at 10 classes). Widths stay the published
# ones: the registry tests' CPU time goes to initializing and compiling the layers, and
# `width=16` saved only a few percent of it for ResNet-18. Paper-size defaults unchanged.
SMALL_INPUTS = {"cifar_stem": True}

# The fast tier's stand-in (registry `stand_in`, on top of SMALL_INPUTS): one block per
# stage in two stages, 8 channels. Still every block type: stage 1's first block keeps
# the stem's width (identity shortcut for BasicBlock, projection for Bottleneck), stage
# 2's first block strides (projection shortcut); a second stage-1 block gives Bottleneck
# its identity shortcut.
STAND_IN = {"stage_sizes": (1, 1), "width": 8}
BOTTLENECK_STAND_IN = {"stage_sizes": (2, 1), "width": 8}


def norm(train: bool, dtype, zero_scale: bool = False, **kwargs) -> BatchNorm:
    """The BatchNorm after every conv: torchvision's eps 1e-5 and momentum 0.1.

    Args:
      train: normalise with the batch's statistics (and update the running ones);
        False uses the running averages.
      dtype: compute dtype.
      zero_scale: initialise the scale to 0 (a block's last BN under
        `zero_init_residual`), else 1.
      **kwargs: more `BatchNorm` fields, usually `name=`.
    """
    return BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        scale_init=nn.initializers.zeros_init() if zero_scale else nn.initializers.ones_init(),
        dtype=dtype,
        **kwargs,
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34): conv1 (stride) -> bn1 -> ReLU -> conv2 -> bn2, + shortcut."""

    expansion: ClassVar[int] = 1

    features: int
    stride: int = 1
    zero_init_residual: bool = False
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        y = basic_branch(self, x, train)
        return nn.relu(y + shortcut(self, x, self.features, train))


def basic_branch(block: nn.Module, x: jax.Array, train: bool) -> jax.Array:
    """A `BasicBlock`'s residual branch: conv1 3x3 (stride) -> bn1 -> ReLU -> conv2 3x3 -> bn2.

    Called from a block's compact `__call__`, so the layers become the block's
    submodules (`conv1`, `bn1`, `conv2`, `bn2`); the block needs the fields
    `features`, `stride`, `zero_init_residual` and `dtype`.
    """
    conv = partial(Conv2D, use_bias=False, kernel_init=CONV_INIT, dtype=block.dtype)
    y = conv(block.features, 3, stride=block.stride, padding=1, name="conv1")(x)
    y = nn.relu(norm(train, block.dtype, name="bn1")(y))
    y = conv(block.features, 3, padding=1, name="conv2")(y)
    return norm(train, block.dtype, block.zero_init_residual, name="bn2")(y)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride, v1.5) -> 1x1 expand x4 (ResNet-50/101/152), + shortcut."""

    expansion: ClassVar[int] = 4

    features: int
    stride: int = 1
    zero_init_residual: bool = False
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        conv = partial(Conv2D, use_bias=False, kernel_init=CONV_INIT, dtype=self.dtype)
        out = self.features * self.expansion
        y = conv(self.features, 1, name="conv1")(x)
        y = nn.relu(norm(train, self.dtype, name="bn1")(y))
        y = conv(self.features, 3, stride=self.stride, padding=1, name="conv2")(y)
        y = nn.relu(norm(train, self.dtype, name="bn2")(y))
        y = conv(out, 1, name="conv3")(y)
        y = norm(train, self.dtype, self.zero_init_residual, name="bn3")(y)
        return nn.relu(y + shortcut(self, x, out, train))


def shortcut(block: nn.Module, x: jax.Array, out: int, train: bool) -> jax.Array:
    """A block's shortcut: identity, or 1x1 strided conv + BN when the stride or the width changes.

    Call it from the block's compact `__call__`: the projection's layers are then
    the block's submodules `proj_conv` and `proj_bn`.

    Args:
      block: the calling block; its `stride` and `dtype` fields are used.
      x: the block's input, `(N, H, W, C_in)`.
      out: the block's output channels.
      train: as in `norm`.
    """
    if block.stride == 1 and x.shape[-1] == out:
        return x
    # Called from the block's compact __call__, so these become the block's submodules.
    x = Conv2D(
        out,
        1,
        stride=block.stride,
        use_bias=False,
        kernel_init=CONV_INIT,
        dtype=block.dtype,
        name="proj_conv",
    )(x)
    return norm(train, block.dtype, name="proj_bn")(x)


class ResNet(nn.Module):
    """torchvision's ResNet (v1.5); see the module docstring.

    Trainable parameters at 224x224x3 with 1000 classes (torchvision's
    published counts): ResNet-18 11,689,512; ResNet-34 21,797,672; ResNet-50
    25,557,032. Running BatchNorm statistics live in "batch_stats".

    Submodules in network order: `stem_conv`, `stem_bn`, `stem_pool` (not with
    `cifar_stem`), `stage{i}_block{j}` (i = 1..4, j = 1..stage_sizes[i-1]),
    `avgpool`, `head`. Sown features: `stem_out`, `stage{i}_block{j}_out` (the
    last block of a stage is the stage's output) and the pooled "features".

    Attributes:
      stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
      block: the block class: `BasicBlock`, `Bottleneck` or any class with a
        `ClassVar[int]` `expansion` and their constructor fields (see the module
        docstring).
      num_classes: outputs of the head.
      width: channels of the stem and of stage 1's 3x3 convs (64 in the
        paper); stage i uses `width * 2**(i-1)`.
      cifar_stem: a 3x3/1 stem conv and no max pool (He et al. 2016's CIFAR
        networks), for 28x28 and 32x32 inputs.
      zero_init_residual: initialize the last BatchNorm scale of every block to
        zero, so each block starts as the identity (Goyal et al. 2017; the
        `zero_init_residual` option of torchvision, off by default there too).
      scan_blocks: run each stage's identical blocks (all but the first, and
        stage 1's first too where the stem already has the stage's width) as one
        `nn.scan` with stacked parameters, `stage{i}_blocks{a}to{b}` (see
        `research.models.scan`: a smaller program, though on CPU no faster to
        compile (measured there), another parameter
        layout, `scan_groups()` and the converters). Default False: one module
        per block.
      dtype: compute dtype (parameters stay float32).
    """

    stage_sizes: Sequence[int]
    block: Any  # a block class with a ClassVar `expansion`: BasicBlock, Bottleneck, ...
    num_classes: int = 1000
    width: int = 64
    cifar_stem: bool = False
    zero_init_residual: bool = False
    scan_blocks: bool = False
    dtype: jnp.dtype | None = None

    def scan_groups(self) -> dict[str, tuple[str, ...]]:
        """Scanned group -> its blocks' default names (see `scan_blocks`); runs of two or more.

        Blocks after a stage's first are identical (stride 1, the stage's width in and
        out); stage 1's first joins them when the stem's width is already the stage's
        output width (`expansion == 1`).
        """
        groups = {}
        for i, size in enumerate(self.stage_sizes, start=1):
            first = 1 if i == 1 and self.block.expansion == 1 else 2
            if size - first + 1 >= 2:
                members = tuple(f"stage{i}_block{j}" for j in range(first, size + 1))
                groups[scan.group_name(f"stage{i}_", first, size)] = members
        return groups

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        expansion = getattr(self.block, "expansion", None)
        if not isinstance(expansion, int) or isinstance(expansion, bool) or expansion < 1:
            raise ValueError(
                f"block must be a block class with a ClassVar[int] expansion >= 1 (BasicBlock, "
                f"Bottleneck, ...), got {self.block!r} with expansion {expansion!r}"
            )
        if not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"width must be an int >= 1, got {self.width!r}")
        if not self.stage_sizes or min(self.stage_sizes) < 1:
            raise ValueError(f"stage_sizes must be non-empty ints >= 1, got {self.stage_sizes!r}")
        if not isinstance(self.scan_blocks, bool):
            raise ValueError(f"scan_blocks must be True or False, got {self.scan_blocks!r}")

        conv = partial(Conv2D, use_bias=False, kernel_init=CONV_INIT, dtype=self.dtype)
        if self.cifar_stem:
            x = conv(self.width, 3, padding=1, name="stem_conv")(x)
        else:
            x = conv(self.width, 7, stride=2, padding=3, name="stem_conv")(x)
        x = nn.relu(norm(train, self.dtype, name="stem_bn")(x))
        if not self.cifar_stem:
            x = MaxPool2D(3, stride=2, padding=1, name="stem_pool")(x)
        self.sow("features", "stem_out", x)

        groups = self.scan_groups() if self.scan_blocks else {}
        starts = {members[0]: (name, members) for name, members in groups.items()}
        for i, size in enumerate(self.stage_sizes, start=1):
            block = partial(
                self.block,
                features=self.width * 2 ** (i - 1),
                zero_init_residual=self.zero_init_residual,
                dtype=self.dtype,
            )
            j = 1
            while j <= size:
                name = f"stage{i}_block{j}"
                if name in starts:  # blocks j..size as one scan (always a stage's last run)
                    group, members = starts[name]
                    x = self._scanned(block(stride=1, name=group), x, members, train)
                    j += len(members)
                    continue
                x = block(stride=2 if i > 1 and j == 1 else 1, name=name)(x, train=train)
                self.sow("features", f"{name}_out", x)
                j += 1

        x = GlobalAvgPool(name="avgpool")(x)  # (N, width * 2**(stages-1) * expansion)
        self.sow("features", "features", x)
        return Dense(self.num_classes, dtype=self.dtype, name="head")(x)

    def _scanned(self, block: nn.Module, x: jax.Array, members, train: bool) -> jax.Array:
        """`block` applied len(members) times (`scan.repeat`); each block's output sown."""
        keep = self.is_mutable_collection("features")
        x, outputs = scan.repeat(block, x, len(members), train=train, keep_outputs=keep)
        for k, member in enumerate(members if keep else ()):
            self.sow("features", f"{member}_out", outputs[k])  # (N, H, W, C) of block k
        return x


ResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock)
ResNet34 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BasicBlock)
ResNet50 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block=Bottleneck)
ResNet101 = partial(ResNet, stage_sizes=(3, 4, 23, 3), block=Bottleneck)
ResNet152 = partial(ResNet, stage_sizes=(3, 8, 36, 3), block=Bottleneck)
