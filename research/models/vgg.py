"""VGG (Simonyan and Zisserman, 2015), as in torchvision (without batch normalization)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers import AdaptiveAvgPool2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D

# torchvision's initialization: Kaiming normal (fan_out, ReLU gain) for convolutions,
# N(0, 0.01) for dense layers, zero biases. Without batch norm, a 16-layer VGG trains
# poorly from a fan-in LeCun start (each ReLU layer halves the signal's variance).
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_DENSE_INIT = nn.initializers.normal(0.01)


class VGG(nn.Module):
    """torchvision's `vgg11` / `vgg16` family: 3x3 convolution blocks, each ending in a 2x2 pool.

    `config` lists the blocks as `(width, convs)`: block `i` has `convs` 3x3
    stride-1 padding-1 convolutions of `width` kernels (`block{i}_conv{j}`, ReLU
    after each), then a 2x2 stride-2 max pool (`pool{i}`). The classifier is
    torchvision's: adaptive average pool to 7x7 (`avgpool`), then
    dense1 4096 -> ReLU -> dropout -> dense2 4096 -> ReLU -> dropout -> head.
    At 224x224 the five pools leave 7x7x512, so the adaptive pool is the identity.

    Parameters at 224x224x3 with 1000 classes (torchvision docs): VGG-11
    (configuration "A") 132,863,336; VGG-13 ("B") 133,047,848; VGG-16 ("D")
    138,357,544; VGG-19 ("E") 143,667,240. Of VGG-16's, 123,642,856 are the
    classifier's (102,764,544 in dense1 alone) and 14,714,688 the convolutions'.

    Small inputs: five VALID 2x2 pools take 28 -> 14 -> 7 -> 3 -> 1 -> 0, so the
    registry's small overrides pool with `pool_padding="SAME"` (28 -> 14 -> 7 -> 4
    -> 2 -> 1 and 32 -> 16 -> 8 -> 4 -> 2 -> 1), flatten the final 1x1x512 map
    without adaptive pooling, and use 512-wide dense layers, as in the usual
    CIFAR VGGs.

    Attributes:
      config: `(width, convs)` per block, e.g. `VGG16_CONFIG`.
      num_classes: outputs of the head.
      width_multiplier: scales every block's width (rounded, at least 1), for
        "small VGG" experiments; 1.0 is the published network.
      pool_padding: padding of the max pools: "VALID" (torchvision) or "SAME".
      pooled_size: side of the adaptive average pooling before the classifier
        (7 in torchvision); None flattens the last feature maps as they are, as
        Keras Applications' VGG16 does (the same function at 224x224, where the
        pool is the identity; at other sizes Keras's dense1 has another shape, see
        `research.models.pretrained.from_keras`).
      fc_width: width of dense1 and dense2 (4096 in torchvision).
      dropout: dropout rate after dense1 and dense2.
    """

    config: Sequence[tuple[int, int]]
    num_classes: int = 1000
    width_multiplier: float = 1.0
    pool_padding: str = "VALID"
    pooled_size: int | None = 7
    fc_width: int = 4096
    dropout: float = 0.5
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be > 0, got {self.width_multiplier!r}")
        for i, (width, convs) in enumerate(self.config, start=1):
            features = max(1, round(width * self.width_multiplier))
            for j in range(1, convs + 1):
                conv = Conv2D(
                    features,
                    3,
                    padding=1,
                    kernel_init=_CONV_INIT,
                    dtype=self.dtype,
                    name=f"block{i}_conv{j}",
                )
                x = nn.relu(conv(x))
            self.sow("features", f"block{i}_out", x)
            x = MaxPool2D(2, stride=2, padding=self.pool_padding, name=f"pool{i}")(x)
        if self.pooled_size is not None:
            x = AdaptiveAvgPool2D(self.pooled_size, name="avgpool")(x)
        x = Flatten(name="flatten")(x)  # (N, 7 * 7 * 512) at 224x224
        dense = partial(Dense, kernel_init=_DENSE_INIT, dtype=self.dtype)
        x = nn.relu(dense(self.fc_width, name="dense1")(x))
        x = Dropout(self.dropout, deterministic=not train, name="dropout1")(x)
        x = nn.relu(dense(self.fc_width, name="dense2")(x))
        self.sow("features", "features", x)
        x = Dropout(self.dropout, deterministic=not train, name="dropout2")(x)
        return dense(self.num_classes, name="head")(x)


# (width, 3x3 convolutions) per block: torchvision's cfgs "A", "B", "D", "E".
VGG11_CONFIG = ((64, 1), (128, 1), (256, 2), (512, 2), (512, 2))
VGG13_CONFIG = ((64, 2), (128, 2), (256, 2), (512, 2), (512, 2))
VGG16_CONFIG = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
VGG19_CONFIG = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))

VGG11 = partial(VGG, config=VGG11_CONFIG)
VGG13 = partial(VGG, config=VGG13_CONFIG)
VGG16 = partial(VGG, config=VGG16_CONFIG)
VGG19 = partial(VGG, config=VGG19_CONFIG)

# The registry's overrides for 28x28x1 and 32x32x3 inputs: 'SAME' pools, so five of them
# leave 1x1x512 at both sizes, flattened as is, and 512-wide dense layers (CIFAR VGGs).
SMALL_INPUTS = {"pool_padding": "SAME", "pooled_size": None, "fc_width": 512}

# The fast tier's stand-in (registry `stand_in`, on top of SMALL_INPUTS): two blocks, of
# one and two 8-wide convs, and 16-wide dense layers; every layer type of the family.
STAND_IN = {"config": ((8, 1), (8, 2)), "fc_width": 16}
