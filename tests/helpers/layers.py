"""What the layer tests share."""

from __future__ import annotations

import math

import jax


def param_count(variables) -> int:
    """The number of parameters in `variables["params"]`."""
    return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(variables["params"]))
