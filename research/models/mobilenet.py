"""MobileNet v1 (Howard et al., 2017, "MobileNets: Efficient Convolutional Neural Networks
for Mobile Vision Applications").

Follows Keras Applications' `MobileNet` (keras/src/applications/mobilenet.py,
`include_top=True`) layer for layer, with Keras's layer names:

  conv1 3x3/2 32 "same" (no bias) -> conv1_bn -> ReLU6
  13 depthwise-separable blocks, i = 1..13:
    [stride 2: zero-pad bottom/right by 1, then VALID]
    conv_dw_i 3x3 depthwise (no bias) -> conv_dw_i_bn -> ReLU6
    -> conv_pw_i 1x1 (no bias) -> conv_pw_i_bn -> ReLU6
    (64; 128/2, 128; 256/2, 256; 512/2, 512 x5; 1024/2, 1024 channels)
  -> global average pool -> dropout 1e-3 -> head 1x1 conv with bias (Keras's
  "conv_preds") -> (N, num_classes) logits (Keras's reshape; its softmax is the loss's)

Padding, exactly as Keras: conv1's "same" with stride 2 is TensorFlow's SAME
(`ceil(n / 2)` outputs, the odd pad pixel at the bottom/right, which is also
`functional.conv2d`'s "SAME"); a strided depthwise conv is a `ZeroPadding2D(((0, 1),
(0, 1)))` followed by a VALID conv, which differs from SAME on odd inputs
(7 -> 3 here, 4 with SAME), so it is written as explicit padding. Stride-1 3x3
convs pad 1 on every side.

BatchNorm uses Keras's defaults (epsilon 1e-3, momentum 0.99; Flax's momentum
convention is Keras's). Kernels use Keras's default glorot-uniform init (our
depthwise kernel `(3, 3, 1, C)` has the fan-in + fan-out of Keras's `(3, 3, C, 1)`,
so the same distribution); the head's bias starts at zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers import BatchNorm, Conv2D, DepthwiseConv2D, Dropout, GlobalAvgPool

_KERNEL_INIT = nn.initializers.glorot_uniform()  # Keras's default kernel_initializer
_BN_EPSILON = 1e-3  # Keras BatchNormalization default
_BN_MOMENTUM = 0.99  # Keras BatchNormalization default (same convention as Flax)
_STRIDE2_PADDING = ((0, 1), (0, 1))  # Keras's ZeroPadding2D(((0, 1), (0, 1))) before VALID

# (pointwise filters, stride) of Keras's 13 `_depthwise_conv_block`s (block_id 1..13).
MOBILENET_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    *((512, 1),) * 5,
    (1024, 2),
    (1024, 1),
)

# Overrides for 28x28x1 / 32x32x3 inputs (the registry's `small_overrides`): a stride-1
# conv1, as in common CIFAR MobileNets. With Keras's stride-2 conv1 a 28x28 input reaches
# block 12 at 1x1, where the 3x3 window no longer fits the padded 2x2 map (32x32 would
# work: 16, 8, 4, 2, 1); stride 1 gives 28 -> 14 -> 7 -> 3 -> 1 and 32 -> 16 -> 8 -> 4 -> 2.
SMALL_INPUTS = {"small_input": True}

# The fast tier's stand-in (registry `stand_in`): conv1 and three blocks (stride 1,
# stride 2, stride 1) at a quarter of the width: every layer type of the full network.
STAND_IN = {"alpha": 0.25, "blocks": ((64, 1), (128, 2), (128, 1))}


def _relu6(x: jax.Array) -> jax.Array:
    return jnp.clip(x, 0, 6)  # Keras's ReLU(6.0)


class MobileNetV1(nn.Module):
    """Keras Applications' MobileNet (v1); see the module docstring.

    At 224x224x3 with 1000 classes, `alpha=1`, `depth_multiplier=1`: 4,231,976
    trainable parameters, the "Trainable params" of Keras's `model.summary()`
    (its total adds the 21,888 BatchNorm moving means and variances, which live
    in our "batch_stats" collection).

    Submodules in network order (Keras's names): `conv1`, `conv1_bn`, then for
    i = 1..len(blocks) `conv_dw_{i}`, `conv_dw_{i}_bn`, `conv_pw_{i}`,
    `conv_pw_{i}_bn`; `avgpool`, `dropout`, `head` (Keras's `conv_preds`, a 1x1
    conv: its kernel is `(1, 1, C, num_classes)` as in Keras). Sown features:
    `conv1_out`, `block{i}_out` after each block and the pooled "features".

    Attributes:
      num_classes: outputs of the head.
      alpha: width multiplier; every layer has `int(filters * alpha)` channels
        (Keras's rounding).
      depth_multiplier: depthwise kernels per input channel (Keras's
        `depth_multiplier`; the paper's resolution multiplier is the input size).
      dropout: dropout rate before the head (Keras: 1e-3).
      blocks: `(pointwise filters, stride)` per depthwise-separable block;
        `MOBILENET_V1_BLOCKS` is the published network.
      small_input: a stride-1 conv1, for 28x28 and 32x32 inputs.
      dtype: compute dtype (parameters stay float32).
    """

    num_classes: int = 1000
    alpha: float = 1.0
    depth_multiplier: int = 1
    dropout: float = 1e-3
    blocks: Sequence[tuple[int, int]] = MOBILENET_V1_BLOCKS
    small_input: bool = False
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha!r}")
        if not isinstance(self.depth_multiplier, int) or self.depth_multiplier < 1:
            raise ValueError(f"depth_multiplier must be an int >= 1, got {self.depth_multiplier!r}")
        if not self.blocks or any(s not in (1, 2) for _, s in self.blocks):
            raise ValueError(
                f"blocks must be a non-empty sequence of (filters, stride 1 or 2), "
                f"got {self.blocks!r}"
            )

        def width(filters: int) -> int:
            return max(1, int(filters * self.alpha))

        conv = partial(Conv2D, use_bias=False, kernel_init=_KERNEL_INIT, dtype=self.dtype)
        norm = partial(
            BatchNorm,
            use_running_average=not train,
            momentum=_BN_MOMENTUM,
            epsilon=_BN_EPSILON,
            dtype=self.dtype,
        )

        stride = 1 if self.small_input else 2
        x = conv(width(32), 3, stride=stride, padding="SAME", name="conv1")(x)
        x = _relu6(norm(name="conv1_bn")(x))
        self.sow("features", "conv1_out", x)

        for i, (filters, s) in enumerate(self.blocks, start=1):
            x = DepthwiseConv2D(
                3,
                depth_multiplier=self.depth_multiplier,
                stride=s,
                padding=1 if s == 1 else _STRIDE2_PADDING,
                use_bias=False,
                kernel_init=_KERNEL_INIT,
                dtype=self.dtype,
                name=f"conv_dw_{i}",
            )(x)
            x = _relu6(norm(name=f"conv_dw_{i}_bn")(x))
            x = conv(width(filters), 1, name=f"conv_pw_{i}")(x)
            x = _relu6(norm(name=f"conv_pw_{i}_bn")(x))
            self.sow("features", f"block{i}_out", x)

        x = GlobalAvgPool(name="avgpool")(x)  # (N, int(1024 * alpha))
        self.sow("features", "features", x)
        x = Dropout(self.dropout, deterministic=not train, name="dropout")(x)
        x = Conv2D(self.num_classes, 1, kernel_init=_KERNEL_INIT, dtype=self.dtype, name="head")(
            x[:, None, None, :]
        )  # (N, 1, 1, num_classes): Keras's 1x1 conv_preds
        return x.reshape((x.shape[0], self.num_classes))
