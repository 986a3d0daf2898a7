"""LeNet-5 (LeCun, Bottou, Bengio and Haffner, 1998), the modern common variant."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers import AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D

_ACTIVATIONS = {"relu": nn.relu, "tanh": nn.tanh, "sigmoid": nn.sigmoid}
_POOLS = {"max": MaxPool2D, "avg": AvgPool2D}


class LeNet5(nn.Module):
    """C1 6@5x5 -> S2 pool 2 -> C3 16@5x5 -> S4 pool 2 -> F5 120 -> F6 84 -> head.

    Follows the widely used simplification of the paper's network (as in the
    d2l.ai and PyTorch tutorials): C3 connects every input map (the paper used
    a sparse connection table), subsampling is a plain pooling layer (the paper's
    had a trainable coefficient and bias), and the output is a linear layer
    rather than Euclidean RBF units. At the paper's 32x32x1 input with 10
    classes this has 61,706 parameters (paper: "about 60,000").

    For 28x28 inputs (MNIST), `padding=2` on C1 gives the paper's 28x28 C1 maps
    and so the same parameter count.

    Attributes:
      num_classes: outputs of the head.
      padding: zero padding of C1 (0 at the paper's 32x32, 2 for 28x28 inputs).
      activation: "relu" (default, trains fastest), "tanh" or "sigmoid".
      pool: "max" (default) or "avg" (closer to the paper's subsampling).
    """

    num_classes: int = 10
    padding: int = 0
    activation: str = "relu"
    pool: str = "max"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.pool not in _POOLS:
            raise ValueError(f"pool must be one of {sorted(_POOLS)}, got {self.pool!r}")
        act, pool = _ACTIVATIONS[self.activation], _POOLS[self.pool]
        x = act(Conv2D(6, 5, padding=self.padding, dtype=self.dtype, name="conv1")(x))
        self.sow("features", "conv1_out", x)
        x = pool(2, name="pool1")(x)
        x = act(Conv2D(16, 5, dtype=self.dtype, name="conv2")(x))
        self.sow("features", "conv2_out", x)
        x = pool(2, name="pool2")(x)
        x = Flatten(name="flatten")(x)  # (N, 5 * 5 * 16) at 32x32
        x = act(Dense(120, dtype=self.dtype, name="dense1")(x))
        x = act(Dense(84, dtype=self.dtype, name="dense2")(x))
        self.sow("features", "features", x)
        return Dense(self.num_classes, dtype=self.dtype, name="head")(x)
