"""The interchangeable max-pooling algorithms behind `functional.max_pool`.

Every algorithm computes the same function as `lax.reduce_window(max)`, forward
and gradient (to the tie rule below); they differ only in speed. `max_pool` runs
the one `resolve_pool_algorithm` picks: the call's `algorithm=`, else an
enclosing `algorithm_choice.override(pool=...)` block, else
`RESEARCH_POOL_ALGORITHM`, else `DEFAULT_POOL_ALGORITHM` for the backend
("reshape" on CPU, "reduce_window" elsewhere); `algorithm_choice` describes the
order and the record of what ran.

Max-pool algorithms (`POOL_ALGORITHMS`), each `f(x, window, strides, pads) -> y`
on NHWC inputs and explicit pads:

  * "reduce_window": `lax.reduce_window(max)`; its gradient is XLA's
    select_and_scatter.
  * "reshape": for non-overlapping windows (`stride == window`) without
    padding only, else it falls back to "reduce_window". The input is cropped
    to whole windows and reshaped to `(N, H', f_h, W', f_w, C)`; the max is a
    reduction over the two window axes (no data movement). Its gradient is a
    custom VJP with the same tie rule as select_and_scatter (see below). A
    reduction also keeps XLA from fusing the max into the next layer's patch
    loop, which reads each pooled value many times: the element-wise max of
    the `f_h * f_w` window slices, fused there, made the LeNet-5 step slower
    (docs/performance-cpu.md).

The custom gradient of "reshape" is reverse-mode only: `jax.grad`, `jax.vjp` and
`vmap` of it work, `jax.jvp` through it raises a TypeError. For forward-mode
derivatives pick "reduce_window" (the default off CPU).

Tie rule of max pooling's gradient (both algorithms): when several positions
of a window hold the maximum, the whole gradient of that output goes to the
FIRST of them in row-major window order (top row first, then left to right),
as XLA's select_and_scatter with a `>=` selector does. (`jnp.max`'s own
gradient would split it equally among the ties.)
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.layers import algorithm_choice as choice
from research.layers.patches import Pads, Pair
from research.registry import Registry


def max_pool_reduce_window(x, window: Pair, strides: Pair, pads: Pads):
    """`lax.reduce_window(max)`; gradient by select_and_scatter (first max wins)."""
    # A concrete (NumPy) init value: JAX only recognises max/add monoids, and so
    # differentiates reduce_window under jit, when the init is not a tracer.
    init = np.array(
        -np.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min, x.dtype
    )
    return lax.reduce_window(
        x, init, lax.max, (1, *window, 1), (1, *strides, 1), ((0, 0), *pads, (0, 0))
    )


def _first_max_mask(x6, y):
    """Marks the first maximum of each window of `x6` `(N, H', f_h, W', f_w, C)`."""
    fh, fw = x6.shape[2], x6.shape[4]
    is_max = x6 == y[:, :, None, :, None, :]
    order = (np.arange(fh)[:, None, None] * fw + np.arange(fw)).astype(np.int32)  # (f_h, 1, f_w)
    order = order.reshape(1, 1, fh, 1, fw, 1)
    rank = jnp.where(is_max, order, fh * fw)
    first = jnp.min(rank, axis=(2, 4), keepdims=True)
    return rank == first


@jax.custom_vjp
def _max_windows(x6):
    return jnp.max(x6, axis=(2, 4))  # (N, H', W', C)


def _max_windows_fwd(x6):
    y = jnp.max(x6, axis=(2, 4))
    return y, (x6, y)


def _max_windows_bwd(res, g):
    x6, y = res
    mask = _first_max_mask(x6, y)
    return (jnp.where(mask, g[:, :, None, :, None, :], jnp.zeros((), g.dtype)),)


_max_windows.defvjp(_max_windows_fwd, _max_windows_bwd)


def reshape_applies(window: Pair, strides: Pair, pads: Pads) -> bool:
    """Whether "reshape" pooling computes these windows itself: non-overlapping, unpadded."""
    return tuple(strides) == tuple(window) and all(tuple(p) == (0, 0) for p in pads)


def max_pool_reshape(x, window: Pair, strides: Pair, pads: Pads):
    """Non-overlapping, unpadded windows as two reshaped axes; else reduce_window."""
    if not reshape_applies(window, strides, pads):
        return max_pool_reduce_window(x, window, strides, pads)
    n, h, w, c = x.shape
    (fh, fw) = window
    ho, wo = h // fh, w // fw
    if (ho * fh, wo * fw) != (h, w):
        x = x[:, : ho * fh, : wo * fw, :]  # VALID drops the incomplete last windows
    return _max_windows(x.reshape(n, ho, fh, wo, fw, c))  # (N, H', W', C)


POOL_ALGORITHMS: Registry[Callable[..., jax.Array]] = Registry(
    "pool algorithm",
    {
        "reduce_window": max_pool_reduce_window,
        "reshape": max_pool_reshape,
    },
)
choice.register_family("pool", POOL_ALGORITHMS)  # what `resolve` and `override` accept

DEFAULT_POOL_ALGORITHM: dict[str, str] = {"cpu": "reshape"}  # others: "reduce_window"


def default_pool_algorithm() -> str:
    """This backend's default max-pool algorithm."""
    return DEFAULT_POOL_ALGORITHM.get(jax.default_backend(), "reduce_window")


def resolve_pool_algorithm(algorithm: str | None = None) -> str:
    """The max-pool algorithm a call uses: keyword, `override`, env variable, default."""
    return choice.resolve("pool", algorithm, default_pool_algorithm)


def max_pool(x, window, strides, pads, algorithm: str | None = None):
    """Runs the resolved algorithm; under `algorithm_choice.recording()`, notes which one ran."""
    name = resolve_pool_algorithm(algorithm)
    plain = reshape_applies(window, strides, pads)
    kind = "max_pool non-overlapping" if plain else "max_pool overlapping or padded"
    with choice.layer_kind(kind):
        choice.record("pool", name if name != "reshape" or plain else "reduce_window")
    return POOL_ALGORITHMS.get(name)(x, window, strides, pads)
