"""A multilayer perceptron: the lectures' dense baseline ("why convolution?")."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers import Dense, Dropout, Flatten


class MLP(nn.Module):
    """Flatten, then `hidden` ReLU layers, then a linear head.

    Parameters: sum over layers of `fan_in * fan_out + fan_out`; at 28x28x1 with
    the default `hidden=(256, 128)` and 10 classes that is 235,146.

    Attributes:
      num_classes: outputs of the head.
      hidden: widths of the hidden layers, in order.
      dropout: dropout rate after each hidden layer (0: none).
    """

    num_classes: int = 10
    hidden: Sequence[int] = (256, 128)
    dropout: float = 0.0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = Flatten(name="flatten")(x)  # (N, H * W * C)
        for i, width in enumerate(self.hidden):
            x = nn.relu(Dense(width, dtype=self.dtype, name=f"dense{i + 1}")(x))
            self.sow("features", f"dense{i + 1}_out", x)
            if self.dropout:
                x = Dropout(self.dropout, deterministic=not train, name=f"dropout{i + 1}")(x)
        return Dense(self.num_classes, dtype=self.dtype, name="head")(x)
