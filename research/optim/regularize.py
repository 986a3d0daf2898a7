"""L2 regularisation as in the lecture's objective, and which parameters it covers.

The lecture's objective is J(W, b) = (data term) + λ/2 Σ_l Σ_ij (W_ij^(l))²: the
penalty covers the weights W of every layer and none of the biases b. Its
gradient is λW, so `add_l2(λ)` adds λW to the gradient of each weight and leaves
the other gradients alone, *before* the optimizer sees them (this is L2 in the
loss, not the decoupled weight decay of `optax.adamw`, which is added after
Adam's scaling and gives different numbers).

Which leaves are weights (`weight_mask`): a leaf is a weight if the last key of
its path is `kernel` (the W of Flax `Dense` and `Conv`) or, for other pytrees, if
it has at least two dimensions. Biases, BatchNorm `scale`/`bias` and every other
vector or scalar are left out. optax's `add_decayed_weights` with no mask would
decay them all.
"""

from __future__ import annotations

import jax
import optax

WEIGHT_NAMES = ("kernel",)  # leaf names that are always weights (Flax Dense/Conv)


def _leaf_name(path) -> str | None:
    """The last key of a pytree path as a string (dict key or attribute), if any."""
    if not path:
        return None
    last = path[-1]
    if isinstance(last, jax.tree_util.DictKey):
        return str(last.key)
    if isinstance(last, jax.tree_util.GetAttrKey):
        return last.name
    return None


def is_weight(path, leaf) -> bool:
    """Whether the leaf at `path` is a weight W of the lecture's L2 penalty."""
    return _leaf_name(path) in WEIGHT_NAMES or getattr(leaf, "ndim", 0) >= 2


def weight_mask(params: optax.Params) -> optax.Params:
    """A pytree of bools like `params`: True for weights (penalised), False otherwise.

    Args:
      params: the parameter pytree, e.g. `variables["params"]` of a Flax model.

    Returns:
      The mask, with the structure of `params`. Inspect it to see what `add_l2`
      touches.
    """
    return jax.tree_util.tree_map_with_path(is_weight, params)


def add_l2(weight_decay, mask=weight_mask) -> optax.GradientTransformation:
    """Adds λW to the gradient of every weight: the gradient of λ/2 Σ W².

    Update rule: g_W ← g_W + λ W for weights; other gradients pass unchanged.

    Args:
      weight_decay: λ ≥ 0, a number, a jnp scalar or a schedule.
      mask: a pytree of bools like the parameters, or a function of the
        parameters returning one; `weight_mask` by default; None: every parameter.

    Returns:
      The transformation; it needs `params` in `update`.
    """
    return optax.add_decayed_weights(weight_decay, mask=mask)
