"""The complete Keras CNN of the lecture notes (28x28x1 inputs), layer for layer.

model.add(Conv2D(32, kernel_size=(5,5), activation='relu', input_shape=(28, 28, 1), padding='same'))
model.add(MaxPooling2D(pool_size=(2,2), strides=2))
model.add(Conv2D(64, kernel_size=(5,5), activation='relu'))
model.add(Conv2D(128, kernel_size=(5,5), activation='relu'))
model.add(Conv2D(64, kernel_size=(5,5), activation='relu'))
model.add(MaxPooling2D(pool_size=(2,2), strides=2))
model.add(Flatten())
model.add(Dense(1024, activation='relu'))
model.add(Dropout(0.1))
model.add(Dense(10, activation='softmax'))
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D


class LectureCNN(nn.Module):
    """The lecture's Keras CNN: 538,698 parameters at 28x28x1 with 10 classes.

    Shapes at 28x28x1: conv1 (same) 28x28x32 -> pool 14x14x32 -> conv2 10x10x64
    -> conv3 6x6x128 -> conv4 2x2x64 -> pool 1x1x64 -> dense 1024 -> head.
    The final softmax is left to the loss (the head returns logits). On 32x32
    inputs the same layers give 2x2x64 after the last pool.
    """

    num_classes: int = 10
    dropout: float = 0.1
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = nn.relu(Conv2D(32, 5, padding="SAME", dtype=self.dtype, name="conv1")(x))
        self.sow("features", "conv1_out", x)
        x = MaxPool2D(2, stride=2, name="pool1")(x)
        for i, width in ((2, 64), (3, 128), (4, 64)):
            x = nn.relu(Conv2D(width, 5, dtype=self.dtype, name=f"conv{i}")(x))
            self.sow("features", f"conv{i}_out", x)
        x = MaxPool2D(2, stride=2, name="pool2")(x)
        x = Flatten(name="flatten")(x)  # (N, 64) at 28x28
        x = nn.relu(Dense(1024, dtype=self.dtype, name="dense1")(x))
        self.sow("features", "features", x)
        x = Dropout(self.dropout, deterministic=not train, name="dropout")(x)
        return Dense(self.num_classes, dtype=self.dtype, name="head")(x)
