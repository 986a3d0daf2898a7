"""AlexNet, as in torchvision: the one-GPU variant of Krizhevsky's "One weird trick" (2014)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers import AdaptiveAvgPool2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D


class AlexNet(nn.Module):
    """torchvision's `alexnet`: 61,100,840 parameters at 224x224x3 with 1000 classes.

    This is the one-GPU network of Krizhevsky, "One weird trick for parallelizing
    convolutional neural networks" (2014), not the two-GPU 2012 paper's (96, 256,
    384, 384, 256 kernels, local response normalization). Layer for layer:

        conv1 64@11x11 s4 p2 -> pool 3/2 -> conv2 192@5x5 p2 -> pool 3/2
        -> conv3 384@3x3 p1 -> conv4 256@3x3 p1 -> conv5 256@3x3 p1 -> pool 3/2
        -> adaptive avg pool 6x6 -> dropout -> dense1 4096 -> dropout -> dense2 4096 -> head

    with ReLU after every conv and hidden dense layer. Shapes at 224x224: 55, 27,
    27, 13, 13, 13, 13, 6, so the adaptive pool is the identity there. Initial
    weights are this codebase's defaults (LeCun normal), not PyTorch's.

    Small inputs (`small_input=True`): conv1 becomes 64@3x3 stride 1 padding 1
    (11x11 stride 4 leaves nothing after three pools at 28x28); the feature maps
    are then 28 -> 13 -> 6 -> 2 at 28x28 and 32 -> 15 -> 7 -> 3 at 32x32.

    Attributes:
      num_classes: outputs of the head.
      small_input: 3x3 stride-1 stem for 28x28 / 32x32 inputs.
      width_multiplier: scales every conv's kernels (rounded, at least 1); 1.0 is
        the published network. For small, fast experiments and test stand-ins.
      pooled_size: side of the adaptive average pooling before the classifier
        (6 in torchvision); None flattens the last feature maps as they are.
      fc_width: width of dense1 and dense2 (4096 in torchvision).
      dropout: dropout rate before dense1 and dense2.
    """

    num_classes: int = 1000
    small_input: bool = False
    width_multiplier: float = 1.0
    pooled_size: int | None = 6
    fc_width: int = 4096
    dropout: float = 0.5
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if not self.width_multiplier > 0:
            raise ValueError(f"width_multiplier must be > 0, got {self.width_multiplier!r}")
        if self.small_input:
            stem = dict(kernel_size=3, stride=1, padding=1)
        else:
            stem = dict(kernel_size=11, stride=4, padding=2)
        convs = [  # (name, features, conv kwargs, max pool 3/2 after it)
            ("conv1", 64, stem, True),
            ("conv2", 192, dict(kernel_size=5, padding=2), True),
            ("conv3", 384, dict(kernel_size=3, padding=1), False),
            ("conv4", 256, dict(kernel_size=3, padding=1), False),
            ("conv5", 256, dict(kernel_size=3, padding=1), True),
        ]
        for i, (name, features, kwargs, pool) in enumerate(convs):
            features = max(1, int(features * self.width_multiplier + 0.5))
            x = nn.relu(Conv2D(features, **kwargs, dtype=self.dtype, name=name)(x))
            self.sow("features", f"{name}_out", x)
            if pool:  # named after the conv before it: pool1, pool2, pool5 (as in Caffe)
                x = MaxPool2D(3, stride=2, name=f"pool{i + 1}")(x)
        if self.pooled_size is not None:
            x = AdaptiveAvgPool2D(self.pooled_size, name="avgpool")(x)
        x = Flatten(name="flatten")(x)  # (N, 6 * 6 * 256) at 224x224
        for i in (1, 2):
            x = Dropout(self.dropout, deterministic=not train, name=f"dropout{i}")(x)
            x = nn.relu(Dense(self.fc_width, dtype=self.dtype, name=f"dense{i}")(x))
        self.sow("features", "features", x)
        return Dense(self.num_classes, dtype=self.dtype, name="head")(x)


# The registry's overrides for 28x28x1 and 32x32x3 inputs: a 3x3 stride-1 stem (an 11x11
# stride-4 one leaves nothing after three pools), the last 2x2 / 3x3 maps flattened as they
# are (no upsampling to 6x6) and 512-wide dense layers (0.8M dense parameters at 28x28
# instead of 21M with 4096).
SMALL_INPUTS = {"small_input": True, "pooled_size": None, "fc_width": 512}

# The fast tier's stand-in (registry `stand_in`, on top of SMALL_INPUTS): every layer of
# the network at 1/8 of the conv widths and 16-wide dense layers.
STAND_IN = {"width_multiplier": 0.125, "fc_width": 16}
