"""SE-ResNet (Hu, Shen and Sun, 2018, "Squeeze-and-Excitation Networks"), on our ResNet.

The paper's SE-ResNet module (its Fig. 3): a ResNet block whose residual
branch is rescaled by a squeeze-and-excitation gate before the addition,

  conv1 3x3 (stride) -> bn1 -> ReLU -> conv2 3x3 -> bn2 -> se -> + shortcut -> ReLU

with reduction ratio r = 16. Everything else is `resnet.ResNet` (torchvision's
stem, stages, shortcuts, init and BatchNorm settings), so SE-ResNet-18 is
ResNet-18 plus one `SqueezeExcite` (named `se`) per block: at 224x224x3 and 1000
classes 11,689,512 + 89,080 = 11,778,592 trainable parameters (the registry
entry works the 89,080 out).

This file is the worked example of a new ResNet block: a block class declaring
its `expansion`, made of `resnet`'s public pieces, and a `partial`.
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers import SqueezeExcite
from research.models.resnet import ResNet, basic_branch, shortcut


class SEBasicBlock(nn.Module):
    """`resnet.BasicBlock` with a squeeze-and-excitation gate before the residual addition."""

    expansion: ClassVar[int] = 1

    features: int
    stride: int = 1
    zero_init_residual: bool = False
    reduction: int = 16  # the paper's r
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        y = basic_branch(self, x, train)
        y = SqueezeExcite(self.reduction, dtype=self.dtype, name="se")(y)
        return nn.relu(y + shortcut(self, x, self.features, train))


SEResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2), block=SEBasicBlock)
