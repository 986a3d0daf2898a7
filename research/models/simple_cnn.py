"""A small VGG-style CNN for tiny images (the default model on 8x8 `digits`)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers import BatchNorm, Conv2D, Dense, Dropout, Flatten, MaxPool2D


class SimpleCNN(nn.Module):
    """Stages of [3x3 'same' conv + ReLU, 2x2 max pool], then one dense layer and the head.

    Not a published architecture: the smallest honest CNN for 8x8 inputs, where
    LeNet-5's two 5x5 'valid' convolutions do not fit. At 8x8x1 with the
    defaults: 8x8x32 -> 4x4x32 -> 4x4x64 -> 2x2x64 -> 128 -> head, 53,002
    parameters for 10 classes.

    Attributes:
      num_classes: outputs of the head.
      widths: channels of each stage's convolution.
      dense: width of the hidden dense layer.
      dropout: dropout rate before the head (0: none).
      batch_norm: BatchNorm after each convolution (which then has no bias).
    """

    num_classes: int = 10
    widths: Sequence[int] = (32, 64)
    dense: int = 128
    dropout: float = 0.0
    batch_norm: bool = False
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        for i, width in enumerate(self.widths, start=1):
            x = Conv2D(
                width,
                3,
                padding="SAME",
                use_bias=not self.batch_norm,
                dtype=self.dtype,
                name=f"conv{i}",
            )(x)
            if self.batch_norm:
                x = BatchNorm(use_running_average=not train, dtype=self.dtype, name=f"bn{i}")(x)
            x = nn.relu(x)
            self.sow("features", f"conv{i}_out", x)
            x = MaxPool2D(2, name=f"pool{i}")(x)
        x = Flatten(name="flatten")(x)  # (N, H/2^k * W/2^k * widths[-1])
        x = nn.relu(Dense(self.dense, dtype=self.dtype, name="dense1")(x))
        self.sow("features", "features", x)
        if self.dropout:
            x = Dropout(self.dropout, deterministic=not train, name="dropout")(x)
        return Dense(self.num_classes, dtype=self.dtype, name="head")(x)
