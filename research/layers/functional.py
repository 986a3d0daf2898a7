"""Convolution and pooling as pure functions on `jax.lax`. No Flax here.

Layer contract (every function in this module):
  * Inputs are NHWC: `(batch, height, width, channels)`. A 3-D `(H, W, C)` input
    is accepted too and gives a 3-D output, so worked examples read naturally.
  * Kernels are HWIO: `(kernel_h, kernel_w, in_channels // groups, out_channels)`.
  * Convolution is cross-correlation, exactly as the lectures define it:
        out[n, y, x, o] = bias[o] + sum_{i, j, c} K[i, j, c, o] * in[n, y*s + i*d, x*s + j*d, c]
    (no kernel flip), with stride `s` and dilation `d`.
  * The output dtype is the input dtype (float32 by default); nothing is upcast
    or downcast behind the caller's back.
  * Every function is jit- and grad-compatible. Hyperparameters are checked
    eagerly, in Python, on static shapes: a bad one raises `ValueError` naming
    the argument, its value and the input shape before XLA is called.

Sizes follow the lectures' formula `floor((n + 2p - f) / s) + 1`, with a
dilated kernel's effective size `d * (f - 1) + 1` in place of `f`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.layers import conv_algorithms, pool_algorithms

IntOrPair = int | Sequence[int]
# "VALID" | "SAME" | p | (p_h, p_w) | ((top, bottom), (left, right))
Padding = str | int | Sequence[int] | Sequence[Sequence[int]]

__all__ = [
    "as_nhwc",
    "avg_pool",
    "conv2d",
    "conv_param_count",
    "max_pool",
    "normalize_padding",
    "output_size",
    "pair",
]


# --------------------------------------------------------------------------- argument checks


def pair(value: IntOrPair, name: str, *, minimum: int, shape=None) -> tuple[int, int]:
    """Checks a hyperparameter given as an int or an `(h, w)` pair; returns `(h, w)`.

    Part of the layer contract: a new layer checks its kernel size, stride or
    window with it, so a bad value fails in Python with the usual message.

    Args:
      value: an int (both sides) or a pair of ints (bools are refused).
      name: the argument's name, for the message.
      minimum: the smallest valid value.
      shape: the input's shape, added to the message when given.

    Raises:
      ValueError: e.g. "stride must be >= 1, got 0 (input shape (1, 5, 5, 2))".
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        hw = (int(value), int(value))
    elif (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        hw = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}{_on(shape)}")
    if min(hw) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}{_on(shape)}")
    return hw


def _on(shape) -> str:
    return "" if shape is None else f" (input shape {tuple(shape)})"


_PADDING_FORMS = "padding must be 'VALID', 'SAME', an int, a pair or ((top, bottom), (left, right))"


def normalize_padding(
    padding: Padding,
    window: tuple[int, int],
    stride: tuple[int, int],
    spatial: tuple[int, int],
    *,
    shape=None,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Resolves any accepted padding form to explicit `((top, bottom), (left, right))`.

    "SAME" pads so that the output is `ceil(n / s)`, putting the odd pixel at the
    bottom/right as TensorFlow and XLA do. `window` is the effective (dilated)
    window size.
    """
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return ((0, 0), (0, 0))
        if mode == "SAME":
            pads = []
            for n, f, s in zip(spatial, window, stride, strict=True):
                out = -(-n // s)
                total = max((out - 1) * s + f - n, 0)
                pads.append((total // 2, total - total // 2))
            return (pads[0], pads[1])
        raise ValueError(f"{_PADDING_FORMS}; got {padding!r}{_on(shape)}")
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        p = int(padding)
        pads = ((p, p), (p, p))
    elif isinstance(padding, Sequence) and len(padding) == 2:
        if all(isinstance(p, (int, np.integer)) for p in padding):
            pads = ((int(padding[0]),) * 2, (int(padding[1]),) * 2)
        elif all(isinstance(p, Sequence) and len(p) == 2 for p in padding):
            pads = tuple((int(p[0]), int(p[1])) for p in padding)
        else:
            raise ValueError(f"{_PADDING_FORMS}; got {padding!r}{_on(shape)}")
    else:
        raise ValueError(f"{_PADDING_FORMS}; got {padding!r}{_on(shape)}")
    if min(min(p) for p in pads) < 0:
        raise ValueError(f"padding must be >= 0, got {padding!r}{_on(shape)}")
    return pads  # type: ignore[return-value]


def _check_fits(spatial, pads, window, stride, *, what: str, shape) -> tuple[int, int]:
    """Output spatial size; raises if the (effective) window exceeds the padded input."""
    out = []
    for axis, n, (lo, hi), f, s in zip(
        ("height", "width"), spatial, pads, window, stride, strict=True
    ):
        padded = n + lo + hi
        if f > padded:
            raise ValueError(
                f"{what} {f} is larger than the padded input {axis} {padded} "
                f"(input {axis} {n} + padding {lo}+{hi}){_on(shape)}"
            )
        out.append((padded - f) // s + 1)
    return out[0], out[1]


def as_nhwc(x, fn: str) -> tuple[jax.Array, bool]:
    """`x` as an NHWC array, and whether a batch axis was added (the layer contract).

    A layer calls it first and drops the added axis from its result
    (`y[0] if squeezed else y`), so `(H, W, C)` inputs give `(H', W', C')` outputs.

    Args:
      x: `(N, H, W, C)` or `(H, W, C)` array-like.
      fn: the calling function's name, for the message.

    Raises:
      ValueError: any other rank, e.g. "conv2d expects x of shape (N, H, W, C) or
        (H, W, C), got shape (5, 5)".
    """
    x = jnp.asarray(x)
    if x.ndim == 3:
        return x[None], True
    if x.ndim != 4:
        raise ValueError(f"{fn} expects x of shape (N, H, W, C) or (H, W, C), got shape {x.shape}")
    return x, False


# --------------------------------------------------------------------------- sizes and counts


def output_size(
    n: int,
    kernel: int,
    *,
    stride: int = 1,
    padding: int | str | Sequence[int] = 0,
    dilation: int = 1,
) -> int:
    """Output length along one axis: the lectures' `floor((n + 2p - f) / s) + 1`.

    Args:
      n: input length (pixels).
      kernel: kernel (or pooling window) length `f`.
      stride: step `s` between windows.
      padding: zeros added on *each* side (`p`), a `(before, after)` pair, or
        "VALID" (p = 0) / "SAME" (output `ceil(n / s)`).
      dilation: spacing `d` between kernel taps; the effective size is `d(f - 1) + 1`.

    Returns:
      The output length. Raises `ValueError` if the window does not fit.

    >>> output_size(6, 3)                       # valid: 6 - 3 + 1
    4
    >>> output_size(32, 5, stride=1, padding=2)  # 'same' for f = 5
    32
    >>> output_size(7, 3, stride=2)
    3
    """
    for name, value, minimum in (("n", n, 1), ("kernel", kernel, 1), ("stride", stride, 1)):
        if not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    if not isinstance(dilation, (int, np.integer)) or dilation < 1:
        raise ValueError(f"dilation must be an int >= 1, got {dilation!r}")
    effective = dilation * (kernel - 1) + 1
    if isinstance(padding, str):
        if padding.upper() == "SAME":
            return -(-n // stride)
        if padding.upper() != "VALID":
            raise ValueError(f"padding must be 'VALID', 'SAME', an int or a pair, got {padding!r}")
        lo = hi = 0
    elif isinstance(padding, (int, np.integer)):
        lo = hi = int(padding)
    else:
        lo, hi = (int(p) for p in padding)
    if min(lo, hi) < 0:
        raise ValueError(f"padding must be >= 0, got {padding!r}")
    padded = n + lo + hi
    if effective > padded:
        raise ValueError(
            f"kernel {kernel} (effective {effective} with dilation {dilation}) is larger than "
            f"the padded input {padded}"
        )
    return (padded - effective) // stride + 1


def conv_param_count(
    in_channels: int,
    out_channels: int,
    kernel_size: IntOrPair,
    *,
    groups: int = 1,
    bias: bool = True,
) -> int:
    """Trainable parameters of a conv layer: `f_h * f_w * (c_in / groups) * c_out (+ c_out)`.

    >>> conv_param_count(3, 10, 3)   # 10 filters of 3x3x3, one bias each
    280
    >>> conv_param_count(3, 10, 5)   # 10 filters of 5x5x3: 76 parameters each
    760
    """
    kh, kw = pair(kernel_size, "kernel_size", minimum=1)
    if groups < 1 or in_channels % groups or out_channels % groups:
        raise ValueError(
            f"groups={groups} must be >= 1 and divide in_channels={in_channels} and "
            f"out_channels={out_channels}"
        )
    return kh * kw * (in_channels // groups) * out_channels + (out_channels if bias else 0)


# --------------------------------------------------------------------------- convolution


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    stride: IntOrPair = 1,
    padding: Padding = "VALID",
    dilation: IntOrPair = 1,
    groups: int = 1,
    algorithm: str | None = None,
) -> jax.Array:
    """2-D cross-correlation, as in the lectures (and PyTorch's and Keras's Conv2D).

    Args:
      x: input, `(N, H, W, C_in)` or `(H, W, C_in)`.
      kernel: `(f_h, f_w, C_in // groups, C_out)`.
      bias: optional `(C_out,)`, added to every output position.
      stride: int or `(s_h, s_w)`.
      padding: "VALID" (none), "SAME" (output `ceil(n / s)`), an int `p` on every
        side, a pair `(p_h, p_w)`, or explicit `((top, bottom), (left, right))`.
      dilation: int or `(d_h, d_w)`: spacing between kernel taps (a trous).
      groups: split input and output channels into this many independent
        groups; `groups == C_in` with `C_out = k * C_in` is a depthwise conv.
      algorithm: how to compute it, a name in `conv_algorithms.CONV_ALGORITHMS`
        ("xla", "im2col", "taps", "tiled", "onednn", "trials"). None (default) takes an
        enclosing `algorithm_choice.override` block, else the environment
        variable `RESEARCH_CONV_ALGORITHM`, else the backend's default
        (`conv_algorithms.default_conv_algorithm()`: "onednn" on a one-device
        CPU, "tiled" where it cannot serve, "xla" elsewhere). All give the same
        result (to float rounding) and gradient, grouped or not.

    Returns:
      `(N, H_out, W_out, C_out)` (or 3-D for a 3-D input) in `x`'s dtype.
    """
    x, squeeze = as_nhwc(x, "conv2d")
    kernel = jnp.asarray(kernel)
    shape = x.shape
    if kernel.ndim != 4:
        raise ValueError(
            f"kernel must have shape (f_h, f_w, C_in // groups, C_out), got {kernel.shape}"
            f"{_on(shape)}"
        )
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"groups must be an int >= 1, got {groups!r}{_on(shape)}")
    c_in, c_out = shape[-1], kernel.shape[-1]
    if c_in % groups:
        raise ValueError(f"input channels {c_in} are not divisible by groups={groups}{_on(shape)}")
    if c_out % groups:
        raise ValueError(
            f"output channels {c_out} (kernel shape {kernel.shape}) are not divisible by "
            f"groups={groups}{_on(shape)}"
        )
    if kernel.shape[2] != c_in // groups:
        raise ValueError(
            f"kernel input depth {kernel.shape[2]} (kernel shape {kernel.shape}) does not match "
            f"input channels {c_in} / groups {groups} = {c_in // groups}{_on(shape)}"
        )
    strides = pair(stride, "stride", minimum=1, shape=shape)
    dilations = pair(dilation, "dilation", minimum=1, shape=shape)
    window = tuple(d * (f - 1) + 1 for f, d in zip(kernel.shape[:2], dilations, strict=True))
    pads = normalize_padding(padding, window, strides, shape[1:3], shape=shape)
    _check_fits(shape[1:3], pads, window, strides, what="kernel (effective size)", shape=shape)
    if bias is not None:
        bias = jnp.asarray(bias)
        if bias.shape != (c_out,):
            raise ValueError(f"bias must have shape ({c_out},), got {bias.shape}{_on(shape)}")

    y = conv_algorithms.conv(
        x, kernel.astype(x.dtype), strides, pads, dilations, groups, algorithm=algorithm
    )
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y[0] if squeeze else y


# --------------------------------------------------------------------------- pooling


def _pool_args(x, window, stride, padding, fn):
    x, squeeze = as_nhwc(x, fn)
    shape = x.shape
    win = pair(window, "window", minimum=1, shape=shape)
    strides = win if stride is None else pair(stride, "stride", minimum=1, shape=shape)
    pads = normalize_padding(padding, win, strides, shape[1:3], shape=shape)
    # A pad as wide as the window lets a border window cover padding only: max_pool
    # would return -inf there and avg_pool (count_include_pad=False) 0 / 0 = NaN.
    # "SAME" never pads that much; explicit padding must stay below the window.
    for axis, (lo, hi), f in zip(("height", "width"), pads, win, strict=True):
        if max(lo, hi) >= f:
            raise ValueError(
                f"padding {padding!r} gives {lo}+{hi} along {axis}, which must be smaller than "
                f"the pooling window {f} on each side (a window would cover only padding)"
                f"{_on(shape)}"
            )
    _check_fits(shape[1:3], pads, win, strides, what="pooling window", shape=shape)
    return x, squeeze, win, strides, pads


def max_pool(
    x: jax.Array,
    window: IntOrPair,
    *,
    stride: IntOrPair | None = None,
    padding: Padding = "VALID",
    algorithm: str | None = None,
) -> jax.Array:
    """Max pooling over `window`-sized patches of each channel independently.

    Args:
      x: `(N, H, W, C)` or `(H, W, C)`.
      window: int or `(f_h, f_w)`.
      stride: int or pair; defaults to `window` (non-overlapping windows).
      padding: as in `conv2d`; padded positions never win the max.
      algorithm: a name in `pool_algorithms.POOL_ALGORITHMS` ("reduce_window",
        "reshape"); None takes an enclosing `algorithm_choice.override` block,
        else `RESEARCH_POOL_ALGORITHM`, else the backend's default ("reshape"
        on CPU, used for non-overlapping unpadded windows only). Same values
        and gradient either way: where several positions of a window tie for
        the max, the gradient goes to the first of them in row-major window
        order.
    """
    x, squeeze, win, strides, pads = _pool_args(x, window, stride, padding, "max_pool")
    y = pool_algorithms.max_pool(x, win, strides, pads, algorithm=algorithm)
    return y[0] if squeeze else y


def avg_pool(
    x: jax.Array,
    window: IntOrPair,
    *,
    stride: IntOrPair | None = None,
    padding: Padding = "VALID",
    count_include_pad: bool = False,
) -> jax.Array:
    """Average pooling over `window`-sized patches of each channel independently.

    Args:
      x: `(N, H, W, C)` or `(H, W, C)`.
      window: int or `(f_h, f_w)`.
      stride: int or pair; defaults to `window`.
      padding: as in `conv2d`.
      count_include_pad: if False (default, as Keras), a window on the border is
        averaged over its real pixels only; if True, padded zeros count too
        (PyTorch's default).
    """
    x, squeeze, win, strides, pads = _pool_args(x, window, stride, padding, "avg_pool")
    full_pads = ((0, 0), *pads, (0, 0))
    zero = np.array(0, x.dtype)  # concrete, as in max_pool
    total = lax.reduce_window(x, zero, lax.add, (1, *win, 1), (1, *strides, 1), full_pads)
    if count_include_pad or all(p == (0, 0) for p in pads):
        y = total / jnp.array(math.prod(win), x.dtype)
    else:
        # Count the real pixels under each window: the same reduction over ones.
        ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
        counts = lax.reduce_window(ones, zero, lax.add, (1, *win, 1), (1, *strides, 1), full_pads)
        y = total / counts
    return y[0] if squeeze else y


def adaptive_bins(n_in: int, n_out: int) -> np.ndarray:
    """The `(n_out, n_in)` matrix that averages PyTorch's adaptive pooling bins along one axis.

    Bin `i` covers `[floor(i * n_in / n_out), ceil((i + 1) * n_in / n_out))`, so bins
    overlap when `n_out` does not divide `n_in`, and repeat pixels when `n_out > n_in`.

    >>> adaptive_bins(3, 2)
    array([[0.5, 0.5, 0. ],
           [0. , 0.5, 0.5]], dtype=float32)
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"adaptive pooling needs sizes >= 1, got input {n_in}, output {n_out}")
    matrix = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool(x: jax.Array, output_size: IntOrPair) -> jax.Array:
    """Average pooling to a fixed `output_size`, with PyTorch's `AdaptiveAvgPool2d` bins.

    The mean over a rectangular bin is separable, so the whole pooling is one
    einsum with the two bin matrices of `adaptive_bins`. Identity when the input
    already has `output_size`.

    Args:
      x: `(N, H, W, C)` or `(H, W, C)`.
      output_size: int or `(out_h, out_w)`, each >= 1.
    """
    x, squeeze = as_nhwc(x, "adaptive_avg_pool")
    out_h, out_w = pair(output_size, "output_size", minimum=1, shape=x.shape)
    if x.shape[1:3] != (out_h, out_w):
        rows = jnp.asarray(adaptive_bins(x.shape[1], out_h), x.dtype)  # (out_h, H)
        cols = jnp.asarray(adaptive_bins(x.shape[2], out_w), x.dtype)  # (out_w, W)
        x = jnp.einsum("ih,jw,nhwc->nijc", rows, cols, x)  # (N, out_h, out_w, C)
    return x[0] if squeeze else x
