"""The shifted input slices under each kernel tap: the patches of im2col-style convolutions.

`shifted_slices(x, kernel_hw, strides, pads, dilations)` returns the `f_h * f_w`
slices of the padded NHWC input seen by the kernel's taps, in row-major `(i, j)`
order, each cut to the output size, so that a convolution is

    out[:, y, x] = sum_ij slice_ij[:, y, x] @ K[i, j]

Used by `conv_algorithms` ("im2col", "taps") and by `trial_conv`'s kernel gradient;
`lax_conv`, XLA's own convolution in the layer contract's layouts, by both. `Pads`
and `Pair` are the explicit pads and `(h, w)` pairs every conv and pool algorithm takes.
"""

from __future__ import annotations

import numpy as np
from jax import lax

Pads = tuple[tuple[int, int], tuple[int, int]]
Pair = tuple[int, int]


def shifted_slices(x, kernel_hw: Pair, strides: Pair, pads: Pads, dilations: Pair):
    """The `f_h * f_w` input slices seen by each kernel tap, in (i, j) row-major order.

    Slice `(i, j)` is `x_padded[:, i*d_h :: s_h, j*d_w :: s_w, :]` cut to the
    output size `(N, H', W', C)`.
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


def lax_conv(x, kernel, strides: Pair, pads: Pads, dilations: Pair, groups: int = 1):
    """XLA's convolution of NHWC `x` with an HWIO `kernel` (no algorithm recorded)."""
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=strides,
        padding=pads,
        rhs_dilation=dilations,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )
