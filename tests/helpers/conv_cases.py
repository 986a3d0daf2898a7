"""The convolution cases the conv-algorithm tests share: shapes, operands and inputs."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from research.layers import functional as F

# (input shape NHWC, kernel shape HWIO, stride, padding, dilation, groups)
CONV_CASES = [
    ((2, 7, 8, 3), (3, 3, 3, 4), 1, "VALID", 1, 1),
    ((2, 7, 8, 3), (3, 3, 3, 4), 1, "SAME", 1, 1),
    ((2, 9, 10, 3), (3, 2, 3, 5), 2, "SAME", 1, 1),  # odd SAME pad goes bottom/right
    ((2, 9, 10, 2), (3, 3, 2, 4), (2, 3), ((1, 2), (0, 3)), (2, 1), 1),
    ((1, 11, 9, 2), (2, 3, 2, 3), 3, 1, 2, 1),
    ((3, 28, 28, 1), (5, 5, 1, 6), 1, 2, 1, 1),  # LeNet-5 C1 at 28x28
    ((2, 6, 6, 4), (1, 1, 4, 3), 1, "VALID", 1, 1),  # pointwise: one tap
    ((2, 6, 6, 4), (3, 3, 2, 6), 1, "SAME", 1, 2),  # 2 groups: a batched contraction per group
    ((2, 6, 6, 4), (3, 3, 1, 8), 2, 1, 1, 4),  # depthwise, multiplier 2: multiply-adds
    ((2, 7, 7, 6), (3, 3, 2, 6), 2, "SAME", 2, 3),  # 3 groups, strided and dilated
    ((2, 5, 5, 3), (3, 3, 1, 3), 1, "SAME", 1, 3),  # depthwise, multiplier 1 (Xception)
    # Deep enough for patch_matmul's row-major kernel gradient on CPU (patches 576 deep,
    # 64 channels; with tiles of 2-4 in the tile-width test below).
    ((2, 6, 6, 64), (3, 3, 64, 64), 1, "VALID", 1, 1),
]


def conv_inputs(x_shape, k_shape):
    # NumPy draws: an eager jax.random draw compiles once per new shape (seconds on CPU).
    rng = np.random.default_rng(0)
    x, kernel, bias = (
        jnp.asarray(rng.normal(size=shape), jnp.float32)
        for shape in (x_shape, k_shape, (k_shape[-1],))
    )
    return x, kernel, bias


def case_operands(case):
    """A CONV_CASES entry as the arguments of an algorithm: x, kernel, strides, pads, ..."""
    x_shape, k_shape, stride, padding, dilation, groups = case
    x, kernel, _ = conv_inputs(x_shape, k_shape)
    strides = F.pair(stride, "stride", minimum=1)
    dilations = F.pair(dilation, "dilation", minimum=1)
    window = tuple(d * (f - 1) + 1 for f, d in zip(k_shape[:2], dilations, strict=True))
    pads = F.normalize_padding(padding, window, strides, x_shape[1:3])
    return x, kernel, strides, pads, dilations, groups
