"""Independent NumPy/SciPy references for convolution and pooling, forward and gradient.

They never call JAX: tests hold `research.layers` (every conv and pool algorithm)
to them. Used by tests/layers/test_functional.py and tests/layers/test_conv_algorithms.py. The
references follow the lectures' definitions written as plain loops; each is
checked against a worked example in tests/layers/test_functional.py.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import signal


def ref_pads(padding, spatial, window, stride):
    """Any accepted padding form -> ((top, bottom), (left, right)), written independently."""
    if isinstance(padding, str):
        if padding == "VALID":
            return ((0, 0), (0, 0))
        pads = []  # "SAME": output ceil(n / s), the odd pixel at the bottom / right (TF, XLA)
        for n, f, s in zip(spatial, window, stride, strict=True):
            total = max((math.ceil(n / s) - 1) * s + f - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    if isinstance(padding[0], int):
        return ((padding[0],) * 2, (padding[1],) * 2)
    return tuple(tuple(p) for p in padding)


def pad_hw(x, pads, value=0.0):
    return np.pad(x, ((0, 0), *pads, (0, 0)), constant_values=value)


def conv_ref_scipy(x, k, b, stride, pads, dilation, groups):
    """Forward with scipy.signal.correlate2d: dilation by zero-stuffing the kernel, stride
    by subsampling the stride-1 result, groups by slicing channels."""
    fh, fw, cig, c_out = k.shape
    cog = c_out // groups
    dk = np.zeros((dilation[0] * (fh - 1) + 1, dilation[1] * (fw - 1) + 1, cig, c_out))
    dk[:: dilation[0], :: dilation[1]] = k
    xp = pad_hw(x, pads)
    ho = (xp.shape[1] - dk.shape[0]) // stride[0] + 1
    wo = (xp.shape[2] - dk.shape[1]) // stride[1] + 1
    y = np.zeros((x.shape[0], ho, wo, c_out))
    for n in range(x.shape[0]):
        for o in range(c_out):
            g = o // cog
            for c in range(cig):
                full = signal.correlate2d(xp[n, :, :, g * cig + c], dk[:, :, c, o], mode="valid")
                y[n, :, :, o] += full[:: stride[0], :: stride[1]][:ho, :wo]
    return y + b


def conv_ref_taps(x, k, stride, pads, dilation, groups, upstream=None):
    """The lectures' formula as a loop over kernel taps (i, j):
        y[n, p, q, o] += sum_c K[i, j, c, o] * xpad[n, p*s + i*d, q*s + j*d, g*cig + c].
    With `upstream` w (dL/dy), also returns dL/dx and dL/dK by the same loop."""
    fh, fw, cig, c_out = k.shape
    cog = c_out // groups
    (sh, sw), (dh, dw) = stride, dilation
    xp = pad_hw(x, pads)
    ho = (xp.shape[1] - (dh * (fh - 1) + 1)) // sh + 1
    wo = (xp.shape[2] - (dw * (fw - 1) + 1)) // sw + 1
    y = np.zeros((x.shape[0], ho, wo, c_out))
    gxp, gk = np.zeros_like(xp), np.zeros_like(k, dtype=np.float64)
    for g in range(groups):
        ci, co = slice(g * cig, (g + 1) * cig), slice(g * cog, (g + 1) * cog)
        for i in range(fh):
            for j in range(fw):
                rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
                cols = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
                patch = xp[:, rows, cols, ci]  # (N, Ho, Wo, cig)
                y[..., co] += patch @ k[i, j, :, co]
                if upstream is not None:
                    gk[i, j, :, co] = np.einsum("nhwc,nhwo->co", patch, upstream[..., co])
                    gxp[:, rows, cols, ci] += upstream[..., co] @ k[i, j, :, co].T
    if upstream is None:
        return y
    (top, _), (left, _) = pads
    gx = gxp[:, top : top + x.shape[1], left : left + x.shape[2]]
    return y, gx, gk


def pool_ref(x, window, stride, pads, kind, count_include_pad=False, upstream=None):
    """Pooling by an explicit loop over output positions; `kind` is "max" or "avg".
    With `upstream`, also returns dL/dx (max: routed to the first arg-max; avg: spread
    evenly)."""
    (fh, fw), (sh, sw) = window, stride
    h, w = x.shape[1:3]
    xp = pad_hw(x, pads, -np.inf if kind == "max" else 0.0)
    real = pad_hw(np.ones((1, h, w, 1)), pads)[0, :, :, 0]  # 1 on input pixels, 0 on padding
    ho, wo = (xp.shape[1] - fh) // sh + 1, (xp.shape[2] - fw) // sw + 1
    y = np.zeros((x.shape[0], ho, wo, x.shape[3]))
    gxp = np.zeros_like(xp)
    for p in range(ho):
        for q in range(wo):
            rows, cols = slice(p * sh, p * sh + fh), slice(q * sw, q * sw + fw)
            win = xp[:, rows, cols]  # (N, fh, fw, C)
            if kind == "max":
                y[:, p, q] = win.max(axis=(1, 2))
                if upstream is not None:
                    flat = win.reshape(win.shape[0], -1, win.shape[3])
                    # (N, C): argmax takes the first maximum in row-major window order,
                    # the tie rule pool_algorithms documents for max pooling's gradient.
                    arg = flat.argmax(axis=1)
                    for n in range(win.shape[0]):
                        for c in range(win.shape[3]):
                            a, b = divmod(int(arg[n, c]), fw)
                            gxp[n, p * sh + a, q * sw + b, c] += upstream[n, p, q, c]
            else:
                count = fh * fw if count_include_pad else real[rows, cols].sum()
                y[:, p, q] = win.sum(axis=(1, 2)) / count
                if upstream is not None:
                    gxp[:, rows, cols] += upstream[:, p, q][:, None, None] / count
    if upstream is None:
        return y
    (top, _), (left, _) = pads
    return y, gxp[:, top : top + h, left : left + w]
