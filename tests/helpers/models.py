"""What the model tests share: the init keys and traced (never compiled) parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from research.optim.freeze import param_path

RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}


def traced(model, input_shape, batch=1):
    """`(output, variables)` of `model.init_with_output` as shapes: traced, not compiled."""
    x = jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init_with_output(RNGS, x), x)


def param_paths(model, input_shape) -> dict[str, tuple[int, ...]]:
    """`"stage1_block1/conv1/kernel" -> shape` for every trainable parameter (traced)."""
    params = traced(model, input_shape)[1]["params"]
    return {param_path(p): leaf.shape for p, leaf in jax.tree_util.tree_leaves_with_path(params)}
