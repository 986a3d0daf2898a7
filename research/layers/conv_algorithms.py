"""Interchangeable algorithms behind `functional.conv2d` and `functional.max_pool`.

Every algorithm computes the same function as XLA's own operation (to float32
rounding), forward and gradient; they differ only in speed, which depends on
the backend. `functional.conv2d(..., algorithm=None)` picks one this way, first
match wins:

  1. the `algorithm=` keyword of the call;
  2. an enclosing `with override(conv=..., pool=...)` block, active while a
     function is traced (the sweep's vmapped programs use it);
  3. the environment variable `RESEARCH_CONV_ALGORITHM` (read at trace time);
  4. `DEFAULT_CONV_ALGORITHM[jax.default_backend()]` (measured, see below);
  5. "xla".

Conv algorithms (`CONV_ALGORITHMS`), each `f(x, kernel, strides, pads,
dilations, groups) -> y` on NHWC inputs, HWIO kernels and explicit pads:

  * "xla": `lax.conv_general_dilated`; its gradient is XLA's transposed convs.
  * "im2col": the `f_h * f_w` shifted (strided, dilated) slices of the padded
    input are concatenated along channels into patches `(N, H', W', f_h f_w C)`
    and contracted with the kernel reshaped to `(f_h f_w C, C_out)` in one
    matmul. Autodiff gives the kernel gradient as one matmul too
    (`patches^T @ dy`) and the input gradient as one matmul followed by the
    sum of `f_h * f_w` shifted pads, which XLA fuses into one loop.
  * "taps": `sum_{i,j} slice_ij(x) @ K[i, j]`: `f_h * f_w` matmuls of depth
    `C`, no patch tensor. Cheaper in memory; slower for few input channels.
  * grouped calls (`groups > 1`) in "im2col" and "taps": `_grouped_taps`, a
    batched contraction per group; depthwise (one input channel per group) is
    `f_h * f_w` broadcast multiply-adds, no matmul at all.

Default per backend, from training-step measurements (our scanned
`make_steps` step with Adam, batch 128, 28x28x1, on a shared 2-core CPU at
load ~4.5, medians, interleaved in one process; `scripts/bench.py`):

    conv / max-pool          LeNet-5 (padding=2)   lecture CNN
    xla / reduce_window         481 ms/step        11,191 ms/step
    xla / reshape               486                 9,453
    im2col / reduce_window      120                   -
    im2col / reshape             93 (32 at load 4.7)  291
    taps / reshape              195                   590

so "im2col" on "cpu" (XLA's CPU convolutions, above all their gradients
inside the scanned loop, take a slow generic path); "xla" on "gpu"/"tpu",
whose convolutions are cuDNN/native (not measured here). XLA CPU flags
(thunk runtime off, multi_thread_eigen off, xnnpack, onednn) changed the
im2col step by less than the noise (31-37 ms).

Max-pool algorithms (`POOL_ALGORITHMS`), chosen the same way with
`RESEARCH_POOL_ALGORITHM` and `DEFAULT_POOL_ALGORITHM`:

  * "reduce_window": `lax.reduce_window(max)`; its gradient is XLA's
    select_and_scatter.
  * "reshape": for non-overlapping windows (`stride == window`) without
    padding only, else it falls back to "reduce_window". The input is cropped
    to whole windows and reshaped to `(N, H', f_h, W', f_w, C)`; the max is a
    reduction over the two window axes (no data movement). Its gradient is a
    custom VJP with the same tie rule as select_and_scatter (see below).

Tie rule of max pooling's gradient (both algorithms): when several positions
of a window hold the maximum, the whole gradient of that output goes to the
FIRST of them in row-major window order (top row first, then left to right),
as XLA's select_and_scatter with a `>=` selector does. (`jnp.max`'s own
gradient would split it equally among the ties.)
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.registry import Registry

Pads = tuple[tuple[int, int], tuple[int, int]]
Pair = tuple[int, int]

CONV_ENV_VAR = "RESEARCH_CONV_ALGORITHM"
POOL_ENV_VAR = "RESEARCH_POOL_ALGORITHM"

# --------------------------------------------------------------------------- convolution


def conv_xla(x, kernel, strides: Pair, pads: Pads, dilations: Pair, groups: int = 1):
    """XLA's convolution: the reference every other algorithm is tested against."""
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=strides,
        padding=pads,
        rhs_dilation=dilations,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def _shifted_slices(x, kernel_hw: Pair, strides: Pair, pads: Pads, dilations: Pair):
    """The `f_h * f_w` input slices seen by each kernel tap, in (i, j) row-major order.

    Slice `(i, j)` is `x_padded[:, i*d_h :: s_h, j*d_w :: s_w, :]` cut to the
    output size, so `out[:, y, x] = sum_ij slice_ij[:, y, x] @ K[i, j]`.
    """
    n, h, w, c = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel_hw, strides, dilations
    if any(p != (0, 0) for p in pads):
        x = lax.pad(x, np.array(0, x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
    hp, wp = x.shape[1:3]
    ho = (hp - (dh * (kh - 1) + 1)) // sh + 1
    wo = (wp - (dw * (kw - 1) + 1)) // sw + 1
    slices = []
    for i in range(kh):
        for j in range(kw):
            start = (0, i * dh, j * dw, 0)
            limit = (n, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, c)
            slices.append(lax.slice(x, start, limit, (1, sh, sw, 1)))  # (N, H', W', C)
    return slices


def _grouped_taps(slices, kernel, groups: int):
    """`groups > 1`: per group, the taps' slices against that group's kernel slice.

    Input channel `c` belongs to group `c // (C/G)` and output channel `o` to group
    `o // (O/G)`, as in XLA's `feature_group_count`; so the HWIO kernel
    `(f_h, f_w, C/G, O)` reshapes for free to `(taps, C/G, G, O/G)`. Depthwise
    (`C/G == 1`) needs no contraction at all: each tap is a broadcast multiply, and
    XLA fuses the sum over taps into one loop (a grouped XLA convolution, and
    its gradient, takes a slow generic path on CPU).
    """
    kh, kw, cg, o = kernel.shape
    n, ho, wo, _ = slices[0].shape
    k = kernel.reshape(kh * kw, cg, groups, o // groups)
    if cg == 1:
        y = None
        for t, s in enumerate(slices):
            term = s[..., None] * k[t, 0]  # (N, H', W', G, 1) * (G, O/G)
            y = term if y is None else y + term
    else:
        patches = jnp.stack(slices, axis=3).reshape(n, ho, wo, kh * kw, groups, cg)
        y = jnp.einsum("nhwtgc,tcgo->nhwgo", patches, k)
    return y.reshape(n, ho, wo, o)


def conv_im2col(x, kernel, strides: Pair, pads: Pads, dilations: Pair, groups: int = 1):
    """Patches of all taps side by side along channels, then one matmul."""
    kh, kw, c, o = kernel.shape
    slices = _shifted_slices(x, (kh, kw), strides, pads, dilations)
    if groups != 1:
        return _grouped_taps(slices, kernel, groups)
    patches = slices[0] if len(slices) == 1 else jnp.concatenate(slices, axis=-1)
    # (N, H', W', kh * kw * C) @ (kh * kw * C, O): the (i, j, c) order of both
    # matches HWIO's row-major layout, so the kernel reshape is free.
    return lax.dot_general(
        patches, kernel.reshape(kh * kw * c, o), (((3,), (0,)), ((), ()))
    )  # (N, H', W', O)


def conv_taps(x, kernel, strides: Pair, pads: Pads, dilations: Pair, groups: int = 1):
    """One matmul of depth C per kernel tap, summed."""
    kh, kw = kernel.shape[:2]
    slices = _shifted_slices(x, (kh, kw), strides, pads, dilations)
    if groups != 1:
        return _grouped_taps(slices, kernel, groups)
    y = None
    for k, s in enumerate(slices):
        term = lax.dot_general(s, kernel[k // kw, k % kw], (((3,), (0,)), ((), ())))
        y = term if y is None else y + term
    return y  # (N, H', W', O)


CONV_ALGORITHMS: Registry[Callable[..., jax.Array]] = Registry(
    "conv algorithm",
    {
        "xla": conv_xla,
        "im2col": conv_im2col,
        "taps": conv_taps,
    },
)

# Backends not listed use "xla".
DEFAULT_CONV_ALGORITHM: dict[str, str] = {"cpu": "im2col", "gpu": "xla", "tpu": "xla"}


def resolve_conv_algorithm(algorithm: str | None = None) -> str:
    """The conv algorithm a call uses: keyword, else `override`, else env variable, else default."""
    return _resolve(
        algorithm, _CONV_OVERRIDE, CONV_ENV_VAR, DEFAULT_CONV_ALGORITHM, CONV_ALGORITHMS, "xla"
    )


def conv(x, kernel, strides, pads, dilations, groups: int, algorithm: str | None = None):
    """Runs the resolved algorithm."""
    return CONV_ALGORITHMS.get(resolve_conv_algorithm(algorithm))(
        x, kernel, strides, pads, dilations, groups
    )


# --------------------------------------------------------------------------- max pooling


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


def max_pool_reshape(x, window: Pair, strides: Pair, pads: Pads):
    """Non-overlapping, unpadded windows as two reshaped axes; else reduce_window."""
    if tuple(strides) != tuple(window) or any(p != (0, 0) for p in pads):
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

DEFAULT_POOL_ALGORITHM: dict[str, str] = {"cpu": "reshape"}  # others: "reduce_window"


def resolve_pool_algorithm(algorithm: str | None = None) -> str:
    """The max-pool algorithm a call uses: keyword, `override`, env variable, default."""
    return _resolve(
        algorithm,
        _POOL_OVERRIDE,
        POOL_ENV_VAR,
        DEFAULT_POOL_ALGORITHM,
        POOL_ALGORITHMS,
        "reduce_window",
    )


def max_pool(x, window, strides, pads, algorithm: str | None = None):
    return POOL_ALGORITHMS.get(resolve_pool_algorithm(algorithm))(x, window, strides, pads)


# --------------------------------------------------------------------------- selection


# The algorithm an enclosing `override` block chose, per kind (None: no block).
_CONV_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "conv_override", default=None
)
_POOL_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "pool_override", default=None
)


@contextlib.contextmanager
def override(*, conv: str | None = None, pool: str | None = None) -> Iterator[None]:
    """Within the block, calls without `algorithm=` use these algorithms.

    Takes effect where the layers run in Python, i.e. while a function is traced:
    wrap the traced body, not the call of an already compiled function. JAX
    caches traces per function object and the block is not part of that key, so
    trace inside it only functions that are not also traced outside it.

        with conv_algorithms.override(pool="reduce_window"):
            y = jax.vmap(step)(...)  # traced here, pooled with reduce_window
    """
    for name, registry in ((conv, CONV_ALGORITHMS), (pool, POOL_ALGORITHMS)):
        if name is not None and name not in registry:
            raise ValueError(
                f"override gives unknown {registry.kind} {name!r}; "
                f"known: {', '.join(registry.names())}"
            )
    # A kind the block does not name keeps the enclosing block's choice.
    tokens = [
        var.set(name)
        for var, name in ((_CONV_OVERRIDE, conv), (_POOL_OVERRIDE, pool))
        if name is not None
    ]
    try:
        yield
    finally:
        for token in reversed(tokens):
            token.var.reset(token)


def _resolve(algorithm, override_var, env_var, defaults, registry, fallback) -> str:
    """keyword, else `override` block, else environment variable, else backend default."""
    overridden = override_var.get()
    if algorithm is not None:
        source = "algorithm="
    elif overridden is not None:
        algorithm, source = overridden, "override"
    elif os.environ.get(env_var):
        algorithm, source = os.environ[env_var], f"environment variable {env_var}"
    else:
        algorithm, source = defaults.get(jax.default_backend(), fallback), "default"
    if algorithm not in registry:
        raise ValueError(
            f"{source} gives unknown {registry.kind} {algorithm!r}; "
            f"known: {', '.join(registry.names())}"
        )
    return algorithm
