"""Layers: the lecture notes' worked examples, a NumPy/SciPy reference, errors and the registry.

Sections:
  1. Worked examples from the lecture notes (000-004), with the slides' numbers, each
     checked by hand in a comment.
  2. Output sizes and parameter counts (the lectures' exercises).
  3. Agreement with an independent NumPy/SciPy reference (tests/reference.py, which
     never calls JAX) on random configurations, forward and gradient.
  4. dtype, jit and grad.
  5. Bad hyperparameters raise ValueError naming the argument, the value and the
     input shape before XLA is called.
  6. The Flax modules, and a test parametrized over `LAYERS`: a new layer is tested by
     its registry line, which carries its example (`LayerSpec`), with no edit here.
  7. Squeeze-and-excitation, with a worked example.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.layers import (
    LAYERS,
    AvgPool2D,
    Conv2D,
    DepthwiseConv2D,
    Flatten,
    GlobalAvgPool,
    LayerSpec,
    MaxPool2D,
    SeparableConv2D,
    SqueezeExcite,
    avg_pool,
    conv2d,
    conv_algorithms,
    conv_param_count,
    filters,
    functional,
    max_pool,
    output_size,
    squeeze_excite,
)
from tests.helpers.fast_tier import fast_jit
from tests.helpers.reference import conv_ref_scipy, conv_ref_taps, pool_ref, ref_pads


@pytest.fixture(autouse=True)
def _fast_prng_compiles():
    """Parameter init here uses the non-partitionable threefry. With jax 0.10's default
    (partitionable) threefry, XLA:CPU takes 3-5 s of CPU to compile each random draw of a
    multi-dimensional shape (a conv kernel), versus ~0.3 s without; the draws are just as
    random and nothing here depends on their values."""
    with jax.threefry_partitionable(False):
        yield


def _hwio(k2d) -> np.ndarray:
    """A 2-D filter as a one-in, one-out HWIO kernel."""
    return np.asarray(k2d, np.float32)[:, :, None, None]


def _image(rows) -> np.ndarray:
    """A 2-D grid of numbers as an (H, W, 1) image."""
    return np.asarray(rows, np.float32)[:, :, None]


# =========================================================================== 1. worked examples


def test_binary_image_with_x_kernel():
    # Lecture notes 001 and 003: 5x5 binary image, 3x3 kernel with ones on the corners and
    # the centre; the slide shows the first convolved value, 4.
    image = [
        [1, 1, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 1, 1],
        [0, 0, 1, 1, 0],
        [0, 1, 1, 0, 0],
    ]
    kernel = [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    # By hand, out[y, x] = I[y, x] + I[y, x+2] + I[y+1, x+1] + I[y+2, x] + I[y+2, x+2]:
    #   (0,0) 1+1+1+0+1 = 4   (0,1) 1+0+1+0+1 = 3   (0,2) 1+0+1+1+1 = 4
    #   (1,0) 0+1+0+0+1 = 2   (1,1) 1+1+1+0+1 = 4   (1,2) 1+0+1+1+0 = 3
    #   (2,0) 0+1+0+0+1 = 2   (2,1) 0+1+1+1+0 = 3   (2,2) 1+1+1+1+0 = 4
    expected = [[4, 3, 4], [2, 4, 3], [2, 3, 4]]
    out = conv2d(_image(image), _hwio(kernel))
    assert out.shape == (3, 3, 1)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    assert out[0, 0, 0] == 4  # the value printed on the slide


def test_vertical_edge_six_by_six():
    # Lecture notes 001, "Learning to detect edges" (Andrew Ng's example).
    image = [
        [3, 0, 1, 2, 7, 4],
        [1, 5, 8, 9, 3, 1],
        [2, 7, 2, 5, 1, 3],
        [0, 1, 3, 1, 7, 8],
        [4, 2, 1, 6, 2, 8],
        [2, 4, 5, 2, 3, 9],
    ]
    # With kernel [[1, 0, -1]] * 3, out[y, x] = colsum(x) - colsum(x + 2) over rows y..y+2.
    #   rows 0-2 column sums 6 12 11 16 11  8 -> 6-11, 12-16, 11-11, 16-8  = -5  -4   0   8
    #   rows 1-3 column sums 3 13 13 15 11 12 -> 3-13, 13-15, 13-11, 15-12 = -10 -2   2   3
    #   rows 2-4 column sums 6 10  6 12 10 19 -> 6-6, 10-12, 6-10, 12-19   =  0  -2  -4  -7
    #   rows 3-5 column sums 6  7  9  9 12 25 -> 6-9, 7-9, 9-12, 9-25      = -3  -2  -3 -16
    expected = [[-5, -4, 0, 8], [-10, -2, 2, 3], [0, -2, -4, -7], [-3, -2, -3, -16]]
    out = conv2d(_image(image), _hwio(filters.VERTICAL_EDGE))
    assert out.shape == (4, 4, 1)  # 6 - 3 + 1
    np.testing.assert_array_equal(out[:, :, 0], expected)


def test_six_by_six_with_the_first_kernel_of_001():
    # Lecture notes 001, first "Convolution" slide: a 6x6 image and the kernel
    # [[1, 2, -1], [0, 1, 2], [-2, 1, 0]]; only the inputs survived OCR, so the output is
    # checked by hand at the corners. Top-left window [[5, 2, 3], [2, 4, 1], [5, 1, 0]]:
    #   5*1 + 2*2 + 3*-1 + 2*0 + 4*1 + 1*2 + 5*-2 + 1*1 + 0*0 = 5+4-3+0+4+2-10+1+0 = 3.
    # Bottom-right window [[5, 2, 4], [0, 2, 1], [8, 7, 0]]:
    #   5 + 4 - 4 + 0 + 2 + 2 - 16 + 7 + 0 = 0.
    image = [
        [5, 2, 3, 1, 2, 4],
        [2, 4, 1, 0, 3, 1],
        [5, 1, 0, 2, 8, 3],
        [0, 2, 1, 5, 2, 4],
        [2, 7, 0, 0, 2, 1],
        [1, 3, 2, 8, 7, 0],
    ]
    out = conv2d(_image(image), _hwio([[1, 2, -1], [0, 1, 2], [-2, 1, 0]]))
    assert out.shape == (4, 4, 1)
    assert out[0, 0, 0] == 3
    assert out[3, 3, 0] == 0


def test_one_dimensional_example_as_a_one_row_image():
    # Lecture notes 004: f = [5, 1, 2], g = [3, 1, 4, 5, 6, 0, 0, 1], and
    # "(g * f)[n] = sum_i g[n + i] f[i]": a cross-correlation with f as the filter (the
    # slide's upper limit N should read len(f) - 1). "The 4th element" counts from 1, so it
    # is n = 3 counting from 0: g[3] f[0] + g[4] f[1] + g[5] f[2] = 5*5 + 6*1 + 0*2 = 31,
    # the slide's "5 * 5 + 1 * 6 + 0 * 2". As an image g is H=1, W=8, C=1 and f is a 1x3
    # kernel, so output column n is exactly (g * f)[n]; there are 8 - 3 + 1 = 6 of them:
    #   n=0: 3*5 + 1*1 + 4*2 = 24   n=1: 1*5 + 4*1 + 5*2 = 19   n=2: 4*5 + 5*1 + 6*2 = 37
    #   n=3: 5*5 + 6*1 + 0*2 = 31   n=4: 6*5 + 0*1 + 0*2 = 30   n=5: 0*5 + 0*1 + 1*2 = 2
    f = np.array([5, 1, 2], np.float32)
    g = np.array([3, 1, 4, 5, 6, 0, 0, 1], np.float32)
    out = conv2d(g[None, :, None], f[None, :, None, None])  # (1, 8, 1) * (1, 3, 1, 1)
    assert out.shape == (1, 6, 1)
    np.testing.assert_array_equal(out[0, :, 0], [24, 19, 37, 31, 30, 2])
    assert out[0, 4 - 1, 0] == 31


# Lecture notes 004, the CS231n demo: input 5x5x3 shown padded by 1 to 7x7x3, two 3x3x3
# filters W0 and W1 with biases 1 and 0, stride 2, output 3x3x2. The OCR'd table is read
# row by row below. As printed, three of its entries contradict the published output; the
# repairs (searched exhaustively offline; the tests compute from these inputs, nothing is
# fitted at test time):
#
#   * x[:, :, 1] row 2 (0-based; the slide's third row) reads "0 1 2 2 1 1 2": six values
#     between the padding zeros where five belong, and a 2 where the right padding zero
#     must be. Read as "0 1 2 2 1 2 0" (a doubled "1" dropped, the padding zero restored).
#     Of all 3^5 values in {0, 1, 2} for that row's five pixels, together with all 3^9
#     values in {-1, 0, 1} for w0[:, :, 1], exactly one pair reproduces the nine published
#     o[:, :, 0] values, and it has this row.
#   * That pair has w0[:, :, 1] row 2 = "1 1 -1" where the OCR reads "1 -1 -1" (a
#     spurious minus sign).
#   * With that row, exactly one w1[:, :, 1] in {-1, 0, 1}^(3x3) reproduces the nine
#     o[:, :, 1] values: the OCR'd one with row 0 = "-1 1 0" where the OCR reads "-1 1 -1".
#   For any other reading of that row, no one or two further edits anywhere in x, W0 or
#   W1 (x in {0, 1, 2}, w in {-1, 0, 1}) reproduce all 18 outputs.
#
# Every other OCR'd number (all of x[:, :, 0] and x[:, :, 2], the other rows of
# x[:, :, 1], 16 of the 18 filter rows, both biases and all 18 outputs) is used as
# printed. `test_multichannel_ocr_filters_fail_exactly_where_repaired` pins the two filter
# repairs down: with the filters as OCR'd, the 12 outputs that do not involve a repaired
# tap still match the slide, and the 6 that do (o[0, :, 0] and o[1:, :2, 1]) do not.
_MC_X_PADDED = np.stack(
    [
        [  # x[:, :, 0]
            [0, 0, 0, 0, 0, 0, 0],
            [0, 1, 0, 2, 1, 1, 0],
            [0, 0, 0, 2, 2, 1, 0],
            [0, 1, 0, 0, 0, 2, 0],
            [0, 2, 1, 0, 2, 0, 0],
            [0, 2, 0, 2, 2, 0, 0],
            [0, 0, 0, 0, 0, 0, 0],
        ],
        [  # x[:, :, 1]
            [0, 0, 0, 0, 0, 0, 0],
            [0, 0, 1, 2, 1, 1, 0],
            [0, 1, 2, 2, 1, 2, 0],  # OCR: "0 1 2 2 1 1 2" (see above)
            [0, 1, 0, 1, 0, 2, 0],
            [0, 0, 2, 0, 1, 0, 0],
            [0, 1, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0],
        ],
        [  # x[:, :, 2]
            [0, 0, 0, 0, 0, 0, 0],
            [0, 2, 1, 1, 2, 2, 0],
            [0, 2, 2, 2, 2, 0, 0],
            [0, 0, 0, 1, 1, 0, 0],
            [0, 0, 2, 0, 1, 2, 0],
            [0, 2, 2, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 0, 0],
        ],
    ],
    axis=-1,
).astype(np.float32)  # (7, 7, 3)
_MC_W0_OCR = [  # w0[:, :, c] for c = 0, 1, 2, as printed
    [[0, -1, 1], [0, 1, 1], [-1, 0, -1]],
    [[-1, -1, 0], [1, -1, 1], [1, -1, -1]],
    [[-1, -1, 1], [0, 1, 1], [-1, 1, 0]],
]
_MC_W1_OCR = [
    [[-1, 0, 0], [0, 0, 1], [1, -1, 1]],
    [[-1, 1, -1], [-1, 0, 0], [-1, 0, -1]],
    [[1, -1, 0], [-1, 1, -1], [1, -1, 0]],
]
_MC_BIAS = np.array([1, 0], np.float32)  # b0, b1
_MC_OUT = np.stack(
    [
        [[7, 8, 3], [-3, -8, -5], [7, 6, -2]],  # o[:, :, 0]
        [[-3, -5, 1], [-4, 2, 0], [0, -1, -4]],  # o[:, :, 1]
    ],
    axis=-1,
).astype(np.float32)


def _mc_kernel(w0, w1) -> np.ndarray:
    """Two filters given as [c][row][col] -> HWIO (3, 3, 3, 2)."""
    return np.stack([np.transpose(w0, (1, 2, 0)), np.transpose(w1, (1, 2, 0))], -1).astype(
        np.float32
    )


def _mc_repaired_kernel() -> np.ndarray:
    w0 = np.array(_MC_W0_OCR)
    w1 = np.array(_MC_W1_OCR)
    w0[1, 2, 1] = 1  # w0[:, :, 1] row 2: OCR "1 -1 -1" -> "1 1 -1"
    w1[1, 0, 2] = 0  # w1[:, :, 1] row 0: OCR "-1 1 -1" -> "-1 1 0"
    return _mc_kernel(w0, w1)


def _mc_input() -> np.ndarray:
    # The demo shows the input already padded: the border must be zeros, and the real
    # input is the inner 5x5x3.
    border = np.ones((7, 7), bool)
    border[1:-1, 1:-1] = False
    assert not _MC_X_PADDED[border].any()
    return _MC_X_PADDED[1:-1, 1:-1]


def test_multichannel_two_filters_stride_two():
    x = _mc_input()
    out = conv2d(x, _mc_repaired_kernel(), _MC_BIAS, stride=2, padding=1)
    assert out.shape == (3, 3, 2)  # floor((5 + 2 - 3) / 2) + 1 = 3, two filters
    np.testing.assert_array_equal(out, _MC_OUT)
    # By hand, o[0, 0, 0] = b0 + sum over the top-left 3x3x3 window of the padded input:
    #   channel 0: rows [0 0 0], [0 1 0], [0 0 0] with w0 [[0 -1 1], [0 1 1], [-1 0 -1]] -> 1
    #   channel 1: rows [0 0 0], [0 0 1], [0 1 2] with w0 [[-1 -1 0], [1 -1 1], [1 1 -1]]
    #              -> 1*1 + 1*1 + 2*-1 = 0
    #   channel 2: rows [0 0 0], [0 2 1], [0 2 2] with w0 [[-1 -1 1], [0 1 1], [-1 1 0]]
    #              -> 2*1 + 1*1 + 2*1 + 2*0 = 5
    #   1 + 0 + 5 + bias 1 = 7, the slide's first output.
    assert out[0, 0, 0] == 7


def test_multichannel_ocr_filters_fail_exactly_where_repaired():
    out = np.asarray(
        conv2d(_mc_input(), _mc_kernel(_MC_W0_OCR, _MC_W1_OCR), _MC_BIAS, stride=2, padding=1)
    )
    wrong = np.zeros((3, 3, 2), bool)
    wrong[0, :, 0] = True  # w0[2, 1, 1] meets the nonzero x[:, :, 1] row 2 only from o row 0
    wrong[1:, :2, 1] = True  # w1[0, 2, 1] meets x[:, :, 1] rows 2 and 4 at columns 2 and 4
    np.testing.assert_array_equal(out[~wrong], _MC_OUT[~wrong])
    assert (out[wrong] != _MC_OUT[wrong]).all()


def test_kernel_gradient_of_the_backward_pass_slide():
    # Lecture notes 004, "How do we update filters?": a 3x3 input X and a 2x2 kernel W give
    # a 2x2 output h, and each kernel gradient is X correlated with dL/dh,
    #   dW_ab = sum_ij X_(i+a)(j+b) * dL/dh_ij   (0-indexed; the slide's dW_11 is
    #   X_11 dh_11 + X_12 dh_12 + X_21 dh_21 + X_22 dh_22, 1-indexed).
    # With X = [[1, 2, 3], [4, 5, 6], [7, 8, 9]] and dL/dh = [[1, 0], [-1, 2]]:
    #   dW_00 = 1*1 + 2*0 + 4*-1 + 5*2 = 7     dW_01 = 2*1 + 3*0 + 5*-1 + 6*2 = 9
    #   dW_10 = 4*1 + 5*0 + 7*-1 + 8*2 = 13    dW_11 = 5*1 + 6*0 + 8*-1 + 9*2 = 15
    # and the bias gradient is sum_ij dL/dh_ij = 2. L = sum(h * dL/dh) has that upstream
    # gradient, whatever W is.
    x = _image([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    upstream = np.array([[1, 0], [-1, 2]], np.float32)[:, :, None]  # (2, 2, 1)
    kernel = _hwio([[0.5, -1.0], [2.0, 0.25]])
    loss = lambda k, b: jnp.sum(conv2d(x, k, b) * upstream)  # noqa: E731
    d_kernel, d_bias = jax.grad(loss, argnums=(0, 1))(kernel, np.zeros(1, np.float32))
    assert d_kernel.shape == (2, 2, 1, 1)
    np.testing.assert_array_equal(d_kernel[:, :, 0, 0], [[7, 9], [13, 15]])
    np.testing.assert_array_equal(d_bias, [2])
    # The same sum, written out from the slide's formula.
    by_formula = [
        [
            sum(x[i + a, j + b, 0] * upstream[i, j, 0] for i in (0, 1) for j in (0, 1))
            for b in (0, 1)
        ]
        for a in (0, 1)
    ]
    np.testing.assert_array_equal(d_kernel[:, :, 0, 0], by_formula)


_POOL_GRID = [[4, 3, 1, 5], [1, 3, 4, 8], [4, 5, 4, 3], [6, 5, 9, 4]]


def test_max_pool_lecture_grid():
    # Lecture notes 001: 2x2 windows, stride 2. Windows: [4, 3, 1, 3] -> 4 (the slide's
    # "Max([4, 3, 1, 3]) = 4"), [1, 5, 4, 8] -> 8, [4, 5, 6, 5] -> 6, [4, 3, 9, 4] -> 9.
    out = max_pool(_image(_POOL_GRID), 2, stride=2)
    np.testing.assert_array_equal(out[:, :, 0], [[4, 8], [6, 9]])


def test_avg_pool_lecture_grid():
    # Lecture notes 001: "Avg([4, 3, 1, 3]) = 2.75", and the slide's table prints
    #   2.8 4.5
    #   5.3 5.0
    # 2.8 is 2.75 rounded. 5.3 is an error on the slide (or in its OCR): the bottom-left
    # window [4, 5, 6, 5] sums to 20 and averages to 5.0. The others: [1, 5, 4, 8] -> 4.5,
    # [4, 3, 9, 4] -> 5.0.
    out = avg_pool(_image(_POOL_GRID), 2, stride=2)
    np.testing.assert_allclose(out[:, :, 0], [[2.75, 4.5], [5.0, 5.0]], rtol=0, atol=0)
    np.testing.assert_allclose(out[0, 0, 0], 2.8, atol=0.05)


def test_max_pool_feature_map_of_000():
    # Lecture notes 000: the feature map [[7, 3, 0, 1], [-1, -2, 4, 0]] pooled with 2x2
    # windows gives [7, 4]: max(7, 3, -1, -2) = 7, max(0, 1, 4, 0) = 4.
    out = max_pool(_image([[7, 3, 0, 1], [-1, -2, 4, 0]]), 2)
    assert out.shape == (1, 2, 1)
    np.testing.assert_array_equal(out[0, :, 0], [7, 4])


def _step_edge(bright_left: bool = True) -> np.ndarray:
    """6x6: columns 0-2 at 10, columns 3-5 at 0 (or the reverse)."""
    row = [10, 10, 10, 0, 0, 0] if bright_left else [0, 0, 0, 10, 10, 10]
    return np.array([row] * 6, np.float32)


@pytest.mark.parametrize(
    "name, centre_weight",
    [("vertical_edge", 1), ("sobel_x", 2), ("scharr_x", 10)],
)
def test_x_filters_respond_to_a_vertical_step_edge(name, centre_weight):
    # A window straddling the edge sees 10 under the left column and 0 under the right
    # one, so it gives 10 * (sum of the left column): 10 * (1+1+1) = 30 for the plain
    # edge detector, 10 * (1+2+1) = 40 for Sobel and 10 * (3+10+3) = 160 for Scharr.
    # Windows entirely on one side give 0.
    kx = filters.FILTERS[name]
    left_column = float(kx[:, 0].sum())
    assert kx[1, 0] == centre_weight
    k = filters.as_kernel(kx, kx.T)  # (3, 3, 1, 2): the x filter and its y twin
    out = np.asarray(conv2d(_step_edge()[:, :, None], k))
    row = [0, 10 * left_column, 10 * left_column, 0]
    np.testing.assert_array_equal(out[:, :, 0], [row] * 4)
    np.testing.assert_array_equal(out[:, :, 1], np.zeros((4, 4)))  # the y filter is blind
    # Dark-to-bright flips the sign; a horizontal edge swaps the roles of x and y.
    np.testing.assert_array_equal(
        conv2d(_step_edge(False)[:, :, None], k)[:, :, 0], [[-v for v in row]] * 4
    )
    out_h = np.asarray(conv2d(_step_edge().T[:, :, None], k))
    np.testing.assert_array_equal(out_h[:, :, 0], np.zeros((4, 4)))
    np.testing.assert_array_equal(out_h[:, :, 1], np.array([row] * 4).T)


def test_line_detectors_respond_most_on_their_line():
    image = np.zeros((5, 5), np.float32)
    image[:, 2] = 1  # a vertical line
    diagonal = np.eye(5, dtype=np.float32)
    k = filters.as_kernel(
        filters.VERTICAL_LINE,
        filters.HORIZONTAL_LINE,
        filters.OBLIQUE_LINE,
        filters.ANTI_OBLIQUE_LINE,
    )
    out = np.asarray(conv2d(image[:, :, None], k))  # (3, 3, 4)
    np.testing.assert_array_equal(out[:, :, 0], [[0, 3, 0]] * 3)  # full match on the line
    np.testing.assert_array_equal(out[:, :, 1], np.ones((3, 3)))  # one pixel of the line
    out = np.asarray(conv2d(diagonal[:, :, None], k))
    np.testing.assert_array_equal(np.diag(out[:, :, 2]), [3, 3, 3])
    assert out[:, :, 2].max() == 3 and out[:, :, 3].max() == 1


def test_as_kernel_repeats_the_filter_over_input_channels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 6, 3)).astype(np.float32)
    k = filters.as_kernel(filters.SOBEL_X, in_channels=3)
    assert k.shape == (3, 3, 3, 1) and k.dtype == np.float32
    np.testing.assert_allclose(
        conv2d(x, k), conv2d(x.sum(-1, keepdims=True), _hwio(filters.SOBEL_X)), atol=1e-5
    )
    with pytest.raises(ValueError, match="one shape"):
        filters.as_kernel(filters.SOBEL_X, np.ones((5, 5), np.float32))


# =========================================================================== 2. sizes, counts


def _conv_shape(x_shape, k_shape, **kwargs) -> tuple[int, ...]:
    """conv2d's output shape, traced without running (or compiling) anything."""
    sds = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    return jax.eval_shape(lambda x, k: conv2d(x, k, **kwargs), sds(x_shape), sds(k_shape)).shape


def test_valid_and_same_output_sizes():
    # 001: "valid" 6x6 * 3x3 -> 4x4; p = 1 -> 6 + 2 - 3 + 1 = 6; "same" needs p = (f - 1) / 2.
    assert output_size(6, 3) == 4
    assert output_size(6, 3, padding="VALID") == 4
    assert output_size(6, 3, padding=1) == 6
    assert _conv_shape((1, 6, 6, 1), (3, 3, 1, 1)) == (1, 4, 4, 1)
    for f in (1, 3, 5, 7):
        p = (f - 1) // 2  # 002: F = 3 -> pad 1, F = 5 -> pad 2, F = 7 -> pad 3
        assert output_size(6, f, padding=p) == 6 == output_size(6, f, padding="SAME")
        for padding in (p, "SAME"):
            assert _conv_shape((1, 6, 6, 1), (f, f, 1, 1), padding=padding) == (1, 6, 6, 1)


def test_seven_by_seven_strides():
    # 002: 7x7 input, 3x3 filter: stride 1 -> 5, stride 2 -> 3, and stride 3 "doesn't fit":
    # (7 - 3) / 3 + 1 = 2.33. Like XLA, PyTorch and Keras we floor, so the output is 2 and
    # the last input column is never read. The lecture's point is that the windows do not
    # tile the input evenly; that is not an error here (nor in those libraries).
    assert output_size(7, 3, stride=1) == 5
    assert output_size(7, 3, stride=2) == 3
    assert output_size(7, 3, stride=3) == 2 == math.floor((7 - 3) / 3 + 1)
    assert output_size(7, 3, stride=1, padding=1) == 7  # 002: "pad with 1 pixel border"
    for stride, n in ((1, 5), (2, 3), (3, 2)):
        assert _conv_shape((1, 7, 7, 1), (3, 3, 1, 1), stride=stride) == (1, n, n, 1)
    assert _conv_shape((1, 7, 7, 1), (3, 3, 1, 1), padding=1) == (1, 7, 7, 1)
    x = np.arange(49, dtype=np.float32).reshape(1, 7, 7, 1)
    out = conv2d(x, np.ones((3, 3, 1, 1), np.float32), stride=3)
    # Windows start at rows/columns 0 and 3; row and column 6 are never read.
    window_sums = [[x[0, r : r + 3, c : c + 3, 0].sum() for c in (0, 3)] for r in (0, 3)]
    np.testing.assert_array_equal(out[0, :, :, 0], window_sums)


def test_cs231n_volume_and_parameter_count():
    # 002: input 32x32x3, 10 filters 5x5, stride 1, pad 2 -> (32 + 2*2 - 5) / 1 + 1 = 32,
    # so 32x32x10; "each filter has 5*5*3 + 1 = 76 params => 76*10 = 760".
    assert output_size(32, 5, stride=1, padding=2) == 32
    assert conv_param_count(3, 10, 5) == 760 == (5 * 5 * 3 + 1) * 10
    layer = Conv2D(features=10, kernel_size=5, stride=1, padding=2)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(layer.init, jax.random.key(0), x)
    assert jax.eval_shape(layer.apply, variables, x).shape == (1, 32, 32, 10)
    assert _count(variables) == 760


def test_shrinking_volumes_and_one_filter():
    # 002: a 5x5x3 filter on 32x32x3 is a 5*5*3 = 75-dimensional dot product (+ bias) per
    # position, giving 28x28; six filters give 28x28x6, and repeated 5x5 convs shrink
    # 32 -> 28 -> 24.
    assert conv_param_count(3, 1, 5) == 75 + 1
    assert output_size(32, 5) == 28 and output_size(28, 5) == 24
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    k = jax.ShapeDtypeStruct((5, 5, 3, 6), jnp.float32)
    assert jax.eval_shape(conv2d, x, k).shape == (1, 28, 28, 6)


def test_ten_three_by_three_by_three_filters():
    # 001: "10 filters that are 3x3x3 in one layer": (3*3*3 + 1) * 10 = 280.
    assert conv_param_count(3, 10, 3) == 280
    x = jax.ShapeDtypeStruct((1, 6, 6, 3), jnp.float32)
    variables = jax.eval_shape(Conv2D(features=10, kernel_size=3).init, jax.random.key(0), x)
    assert _count(variables) == 280


@pytest.mark.parametrize("f, s", [(2, 2), (3, 2)])  # 001's "f=2, s=2" and "f=3, s=2"
def test_pooling_size_formula(f, s):
    # 001: floor((n_H - f) / s + 1) x floor((n_W - f) / s + 1) x n_C; no parameters.
    for n_h, n_w in ((4, 4), (5, 7), (8, 6), (9, 3)):
        expected = (math.floor((n_h - f) / s + 1), math.floor((n_w - f) / s + 1), 3)
        x = jax.ShapeDtypeStruct((n_h, n_w, 3), jnp.float32)
        assert jax.eval_shape(lambda x: max_pool(x, f, stride=s), x).shape == expected
        assert jax.eval_shape(lambda x: avg_pool(x, f, stride=s), x).shape == expected
        assert output_size(n_h, f, stride=s) == expected[0]
    assert MaxPool2D(f, stride=s).init(jax.random.key(0), jnp.zeros((1, 4, 4, 3))) == {}


def test_output_size_with_dilation_and_same():
    assert output_size(10, 3, dilation=2) == 6  # effective size 2 * (3 - 1) + 1 = 5
    assert output_size(7, 3, stride=2, padding="SAME") == 4  # ceil(7 / 2)
    assert output_size(7, 3, padding=(0, 2)) == 7  # (before, after)
    with pytest.raises(ValueError, match="larger than the padded input"):
        output_size(4, 3, dilation=2)


# =========================================================================== 3. reference


def _random_padding(rng, form, top):
    """One padding of the given form, at most `top = (top_h, top_w)` pixels a side."""
    if form == "int":
        return int(rng.integers(1, min(top) + 1)) if min(top) else 0
    if form == "pair":
        return tuple(int(rng.integers(0, t + 1)) for t in top)
    if form == "explicit":  # asymmetric on purpose
        return tuple((int(rng.integers(0, t + 1)), int(rng.integers(0, t + 1))) for t in top)
    return form  # "VALID" / "SAME"


_FORMS = ["VALID", "SAME", "int", "pair", "explicit"]


def _conv_cases(count, seed=20240917):
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        kind = ["dense", "grouped", "depthwise"][len(cases) % 3]
        c_in = int(rng.integers(1, 5))
        if kind == "dense":
            groups, c_out = 1, int(rng.integers(1, 5))
        elif kind == "grouped":
            groups = int(rng.integers(2, 4))
            c_in, c_out = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
        else:  # depthwise: groups == C_in, C_out = multiplier * C_in
            groups, c_out = c_in, c_in * int(rng.integers(1, 3))
        kernel = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        spatial = (int(rng.integers(4, 12)), int(rng.integers(4, 12)))
        eff = tuple(d * (f - 1) + 1 for f, d in zip(kernel, dilation, strict=True))
        padding = _random_padding(rng, _FORMS[len(cases) % len(_FORMS)], (2, 2))
        pads = ref_pads(padding, spatial, eff, stride)
        if any(n + lo + hi < f for n, (lo, hi), f in zip(spatial, pads, eff, strict=True)):
            continue  # the window does not fit; errors are tested separately
        batch = int(rng.integers(1, 3))
        cases.append(
            dict(
                x_shape=(batch, *spatial, c_in),
                k_shape=(*kernel, c_in // groups, c_out),
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
            )
        )
    return cases


def _case_id(case):
    return "-".join(f"{k}={v}" for k, v in case.items()).replace(" ", "")


CONV_CASES = _conv_cases(24)


def _conv_inputs(case, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=case["x_shape"]).astype(np.float32)
    k = rng.normal(size=case["k_shape"]).astype(np.float32)
    b = rng.normal(size=case["k_shape"][-1:]).astype(np.float32)
    eff = tuple(d * (f - 1) + 1 for f, d in zip(case["k_shape"][:2], case["dilation"], strict=True))
    pads = ref_pads(case["padding"], case["x_shape"][1:3], eff, case["stride"])
    return x, k, b, pads


def _call_conv(case, x, k, b, algorithm=None):
    return conv2d(
        x,
        k,
        b,
        stride=case["stride"],
        padding=case["padding"],
        dilation=case["dilation"],
        groups=case["groups"],
        algorithm=algorithm,
    )


def _conv_algorithms() -> tuple[str, ...]:
    """XLA's convolution and this backend's default algorithm, for every case: dense,
    grouped and depthwise calls all go through the default algorithm (im2col on CPU
    runs grouped and depthwise calls as a contraction per group / multiply-adds).
    tests/test_conv_algorithms.py holds every registered algorithm to the same
    references on its own cases."""
    return tuple(sorted({"xla", conv_algorithms.resolve_conv_algorithm(None)}))


def _close(actual, expected, scale, what=""):
    """float32 tolerance: rtol 1e-5 and atol 1e-5 times the size of the summed terms."""
    atol = 1e-5 * max(1.0, scale)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=atol, err_msg=what)


@functools.cache
def _conv_jax(i):
    """conv2d's output and gradients for CONV_CASES[i], with XLA's and the default conv
    algorithm, in one jitted computation (one XLA compile per case, shared by the forward
    and gradient tests). Returns the inputs and {algorithm: (y, (dL/dx, dL/dK, dL/db))}."""
    case = CONV_CASES[i]
    x, k, b, pads = _conv_inputs(case, seed=i)
    args = (case["stride"], pads, case["dilation"], case["groups"])
    w = np.random.default_rng(1000 + i).normal(size=conv_ref_taps(x, k, *args).shape)
    w = w.astype(np.float32)  # the upstream gradient dL/dy

    def run(x, k, b):
        results = {}
        for name in _conv_algorithms():

            def loss(x, k, b, name=name):
                y = _call_conv(case, x, k, b, algorithm=name)
                return jnp.sum(y * w), y

            (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(x, k, b)
            results[name] = (y, grads)
        return results

    return (x, k, b, w, args), fast_jit(run)(x, k, b)


_CONV_IDS = [_case_id(case) for case in CONV_CASES]


@pytest.mark.parametrize("i", range(len(CONV_CASES)), ids=_CONV_IDS)
def test_conv2d_matches_numpy_reference(i):
    (x, k, b, _, args), results = _conv_jax(i)
    expected = conv_ref_scipy(x.astype(np.float64), k.astype(np.float64), b, *args)
    # The two references agree with each other (so neither has an indexing slip).
    np.testing.assert_allclose(conv_ref_taps(x, k.astype(np.float64), *args) + b, expected)
    scale = np.abs(conv_ref_taps(np.abs(x), np.abs(k).astype(np.float64), *args)).max()
    for name, (out, _) in results.items():
        assert out.shape == expected.shape and out.dtype == jnp.float32, name
        _close(out, expected, scale, name)


@pytest.mark.parametrize("i", range(len(CONV_CASES)), ids=_CONV_IDS)
def test_conv2d_gradient_matches_numpy_reference(i):
    (x, k, _, w, args), results = _conv_jax(i)
    x64, k64, w64 = (a.astype(np.float64) for a in (x, k, w))
    _, gx_ref, gk_ref = conv_ref_taps(x64, k64, *args, upstream=w64)
    scale_x = np.abs(conv_ref_taps(x64, np.abs(k64), *args, upstream=np.abs(w64))[1]).max()
    scale_k = np.abs(conv_ref_taps(np.abs(x64), k64, *args, upstream=np.abs(w64))[2]).max()
    for name, (_, (gx, gk, gb)) in results.items():
        assert gx.shape == x.shape and gk.shape == k.shape, name
        _close(gx, gx_ref, scale_x, f"{name}: dL/dx")
        _close(gk, gk_ref, scale_k, f"{name}: dL/dK")
        _close(gb, w64.sum(axis=(0, 1, 2)), np.abs(w64).sum(axis=(0, 1, 2)).max(), name)


def test_reference_handles_the_slide_example():
    # The scipy reference on 001's edge example: the references are right before we
    # compare anything else with them.
    x = np.array([[3, 0, 1, 2, 7, 4], [1, 5, 8, 9, 3, 1], [2, 7, 2, 5, 1, 3]], np.float64)[
        None, :, :, None
    ]
    y = conv_ref_scipy(x, _hwio(filters.VERTICAL_EDGE), 0.0, (1, 1), ((0, 0), (0, 0)), (1, 1), 1)
    np.testing.assert_array_equal(y[0, 0, :, 0], [-5, -4, 0, 8])


def _pool_cases(count, seed=7):
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        window = (int(rng.integers(1, 4)), int(rng.integers(2, 4)))
        stride = None if len(cases) % 4 == 0 else (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        spatial = (int(rng.integers(3, 10)), int(rng.integers(3, 10)))
        # Pooling pads stay below the window (a window of pure padding is an error).
        top = tuple(f - 1 for f in window)
        padding = _random_padding(rng, _FORMS[len(cases) % len(_FORMS)], top)
        pads = ref_pads(padding, spatial, window, stride or window)
        if any(n + lo + hi < f for n, (lo, hi), f in zip(spatial, pads, window, strict=True)):
            continue
        batch, channels = int(rng.integers(1, 3)), int(rng.integers(1, 4))
        cases.append(
            dict(x_shape=(batch, *spatial, channels), window=window, stride=stride, padding=padding)
        )
    return cases


POOL_CASES = _pool_cases(12)
# (kind, count_include_pad, algorithm): max pooling by every registered algorithm, then
# average pooling without and with the padded zeros in the count.
POOL_KINDS = [
    *(("max", False, name) for name in conv_algorithms.POOL_ALGORITHMS.names()),
    ("avg", False, None),
    ("avg", True, None),
]


def _call_pool(case, x, *, kind, include, algorithm):
    kw = dict(stride=case["stride"], padding=case["padding"])
    if kind == "max":
        return max_pool(x, case["window"], algorithm=algorithm, **kw)
    return avg_pool(x, case["window"], count_include_pad=include, **kw)


@functools.cache
def _pool_jax(i):
    """Outputs and input gradients of the three pooling kinds for POOL_CASES[i], jitted
    together (one compile per case)."""
    case = POOL_CASES[i]
    rng = np.random.default_rng(i)
    x = rng.normal(size=case["x_shape"]).astype(np.float32)
    stride = case["stride"] or case["window"]
    pads = ref_pads(case["padding"], case["x_shape"][1:3], case["window"], stride)
    ws = [  # one upstream gradient per kind
        rng.normal(size=pool_ref(x, case["window"], stride, pads, kind).shape).astype(np.float32)
        for kind, _, _ in POOL_KINDS
    ]

    def run(x):
        outs, grads = [], []
        for (kind, include, algorithm), w in zip(POOL_KINDS, ws, strict=True):
            call = functools.partial(
                _call_pool, case, kind=kind, include=include, algorithm=algorithm
            )
            outs.append(call(x))
            grads.append(jax.grad(lambda x, call=call, w=w: jnp.sum(call(x) * w))(x))
        return outs, grads

    outs, grads = fast_jit(run)(x)
    return (x, stride, pads, ws), outs, grads


_POOL_IDS = [_case_id(case) for case in POOL_CASES]


@pytest.mark.parametrize("i", range(len(POOL_CASES)), ids=_POOL_IDS)
def test_pooling_matches_numpy_reference(i):
    (x, stride, pads, _), outs, _ = _pool_jax(i)
    window = POOL_CASES[i]["window"]
    for (kind, include, algorithm), out in zip(POOL_KINDS, outs, strict=True):
        what = f"{kind} count_include_pad={include} algorithm={algorithm}"
        expected = pool_ref(x.astype(np.float64), window, stride, pads, kind, include)
        assert out.shape == expected.shape and out.dtype == jnp.float32, what
        assert np.isfinite(out).all(), what
        _close(out, expected, np.abs(x).max(), what)


@pytest.mark.parametrize("i", range(len(POOL_CASES)), ids=_POOL_IDS)
def test_pooling_gradient_matches_numpy_reference(i):
    (x, stride, pads, ws), _, grads = _pool_jax(i)
    window = POOL_CASES[i]["window"]
    x64 = x.astype(np.float64)
    for (kind, include, algorithm), w, grad in zip(POOL_KINDS, ws, grads, strict=True):
        what = f"{kind} count_include_pad={include} algorithm={algorithm}"
        w64 = w.astype(np.float64)
        _, expected = pool_ref(x64, window, stride, pads, kind, include, upstream=w64)
        _, scale = pool_ref(x64, window, stride, pads, kind, include, upstream=np.abs(w64))
        assert grad.shape == x.shape, what
        _close(grad, expected, np.abs(scale).max(), what)


def test_avg_pool_border_counts_by_hand():
    # 3x3 ones, 2x2 windows, stride 2, padding 1: every window holds one real pixel in the
    # corner, two on the edges ... with count_include_pad=False each average is 1; with
    # True the corner window is 1/4, edge windows 2/4 and the centre 4/4.
    x = np.ones((3, 3, 1), np.float32)
    np.testing.assert_array_equal(avg_pool(x, 2, stride=2, padding=1)[:, :, 0], np.ones((2, 2)))
    out = avg_pool(x, 2, stride=2, padding=1, count_include_pad=True)
    np.testing.assert_array_equal(out[:, :, 0], [[0.25, 0.5], [0.5, 1.0]])
    # Max pooling never lets a padded position win, even for negative inputs.
    np.testing.assert_array_equal(max_pool(-x, 2, stride=2, padding=1), -np.ones((2, 2, 1)))


# =========================================================================== 4. dtype, jit, grad


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_output_dtype_is_input_dtype(dtype):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 4)), dtype)
    k = jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)  # kernel dtype does not leak
    b = jnp.zeros((4,), jnp.float32)

    def run(x):
        loss = lambda x: jnp.sum(conv2d(x, k, groups=2).astype(jnp.float32))  # noqa: E731
        return {
            "conv": conv2d(x, k, b, groups=2, padding="SAME"),
            "max_pool": max_pool(x, 2, padding=1),
            "avg_pool": avg_pool(x, 3, stride=2, padding=1),
            "avg_pool_include_pad": avg_pool(x, 3, stride=2, padding=1, count_include_pad=True),
            "grad": jax.grad(loss)(x),
        }

    # Traced as eager code runs it (eval_shape) and compiled (jit): same dtypes.
    for outs in (jax.eval_shape(run, x), jax.jit(run)(x)):
        assert {name: y.dtype for name, y in outs.items()} == dict.fromkeys(outs, dtype)
    # bfloat16 is the float32 answer to bfloat16 precision (8 significant bits).
    x32 = np.asarray(x.astype(jnp.float32))
    k_rounded = np.asarray(k.astype(dtype).astype(jnp.float32))
    np.testing.assert_allclose(
        np.asarray(outs["conv"].astype(jnp.float32)),
        conv_ref_scipy(x32, k_rounded, 0.0, (1, 1), ((1, 1), (1, 1)), (1, 1), 2),
        rtol=2e-2,
        atol=5e-2,
    )


def test_jit_and_grad_agree_with_eager():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 7, 7, 3)).astype(np.float32)
    k = rng.normal(size=(3, 3, 3, 5)).astype(np.float32)

    def net(x, k):
        y = conv2d(x, k, stride=2, padding="SAME", dilation=1)
        return avg_pool(max_pool(y, 2, stride=1, padding=((0, 1), (0, 1))), 2, padding="SAME")

    loss = lambda x, k: jnp.sum(net(x, k) ** 2)  # noqa: E731
    np.testing.assert_allclose(jax.jit(net)(x, k), net(x, k), rtol=1e-6, atol=1e-6)
    # The gradients' values are checked against NumPy in section 3; here, that a jitted
    # gradient through all three functions traces, compiles and is finite and nonzero.
    for g in jax.jit(jax.grad(loss, argnums=(0, 1)))(x, k):
        assert np.isfinite(g).all() and np.abs(g).sum() > 0


def test_three_dimensional_input_gives_three_dimensional_output():
    x = np.random.default_rng(2).normal(size=(5, 5, 2)).astype(np.float32)
    k = np.ones((3, 3, 2, 1), np.float32)
    np.testing.assert_array_equal(conv2d(x, k), conv2d(x[None], k)[0])
    np.testing.assert_array_equal(max_pool(x, 2), max_pool(x[None], 2)[0])


# =========================================================================== 5. errors


# The jax.lax operations that conv2d and the pools (and every algorithm behind them) are
# built from. The error tests replace them with `_reached_xla`: an error must come from
# the argument checks, before any of them runs.
_LAX_OPS = ("conv_general_dilated", "reduce_window", "dot_general", "pad", "slice")


def _reached_xla(*args, **kwargs):
    raise AssertionError("an XLA operation ran before the arguments were checked")


def _guard_xla(monkeypatch):
    """Every way a layer reaches XLA raises: the lax operations, and the FFI call
    of the "onednn" conv algorithm."""
    for op in _LAX_OPS:
        monkeypatch.setattr(jax.lax, op, _reached_xla)
    monkeypatch.setattr(jax.ffi, "ffi_call", _reached_xla)


_X = np.zeros((1, 5, 5, 4), np.float32)
_X_SHAPE = "(1, 5, 5, 4)"
_K = np.zeros((3, 3, 4, 2), np.float32)

# (call, substrings the message must contain: the argument, the value, the input shape)
BAD_CALLS = {
    "conv_stride_zero": (lambda: conv2d(_X, _K, stride=0), ["stride", "0"]),
    "conv_stride_negative": (lambda: conv2d(_X, _K, stride=(1, -2)), ["stride", "(1, -2)"]),
    "conv_kernel_too_big": (lambda: conv2d(_X, np.zeros((7, 3, 4, 2))), ["kernel", "7", "5"]),
    "conv_dilated_too_big": (lambda: conv2d(_X, _K, dilation=3), ["kernel", "7", "height 5"]),
    "conv_groups": (lambda: conv2d(_X, np.zeros((3, 3, 1, 3)), groups=3), ["groups=3", "4"]),
    "conv_groups_zero": (lambda: conv2d(_X, _K, groups=0), ["groups", "0"]),
    "conv_depth": (lambda: conv2d(_X, np.zeros((3, 3, 3, 2))), ["kernel input depth 3", "4"]),
    "conv_padding_string": (lambda: conv2d(_X, _K, padding="FULL"), ["padding", "'FULL'"]),
    "conv_padding_negative": (lambda: conv2d(_X, _K, padding=-1), ["padding", "-1"]),
    "conv_bias_shape": (lambda: conv2d(_X, _K, np.zeros(3)), ["bias", "(2,)", "(3,)"]),
    "max_pool_stride": (lambda: max_pool(_X, 2, stride=0), ["stride", "0"]),
    "max_pool_window": (lambda: max_pool(_X, 6), ["window", "6", "5"]),
    "avg_pool_window": (lambda: avg_pool(_X, (2, 9)), ["window", "9", "width 5"]),
    "avg_pool_padding": (lambda: avg_pool(_X, 2, padding="same-ish"), ["padding", "same-ish"]),
    "pool_padding_not_below_window": (lambda: max_pool(_X, 2, padding=2), ["padding", "2"]),
    "avg_pool_padding_explicit": (
        lambda: avg_pool(_X, 3, padding=((0, 0), (3, 1))),
        ["padding", "((0, 0), (3, 1))", "window 3"],
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_bad_hyperparameters_raise_before_xla(name, monkeypatch):
    call, needles = BAD_CALLS[name]
    _guard_xla(monkeypatch)
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    for needle in [*needles, _X_SHAPE]:
        assert needle in message, f"{needle!r} missing from {message!r}"


def test_the_xla_guard_trips_on_valid_calls(monkeypatch):
    # The guard above is only evidence if valid calls do reach the replaced operations.
    _guard_xla(monkeypatch)
    for call in (
        lambda: conv2d(_X, _K),
        lambda: conv2d(_X, _K, algorithm="xla"),
        lambda: conv2d(_X, _K, algorithm="tiled"),
        lambda: conv2d(_X, np.zeros((3, 3, 2, 2)), groups=2),
        lambda: max_pool(_X, 3, stride=1, padding=1),
        lambda: avg_pool(_X, 2),
    ):
        with pytest.raises(AssertionError, match="before the arguments were checked"):
            call()


def test_module_errors_name_the_input():
    with pytest.raises(ValueError, match=r"groups=3.*input shape \(1, 5, 5, 4\)"):
        Conv2D(features=6, kernel_size=3, groups=3).init(jax.random.key(0), _X)
    with pytest.raises(ValueError, match=r"\(N, H, W, C\).*\(5, 5, 4\)"):
        GlobalAvgPool().init(jax.random.key(0), _X[0])


# =========================================================================== 6. modules


def _count(variables) -> int:
    return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(variables["params"]))


def _shapes(variables):
    return jax.tree_util.tree_map(lambda p: p.shape, variables["params"])


KEY = jax.random.key(0)


def _random_variables(layer, x, seed=0):
    """Variables of `layer.init`'s shapes filled with NumPy normals (nonzero biases too).
    The module-vs-function tests need some parameters, not Flax's initial ones; the
    initializers themselves run in `test_every_registered_layer_inits_and_applies`."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(layer.init, KEY, x)
    return jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)


def _rand(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_conv2d_module_is_the_functional_call():
    layer = Conv2D(features=6, kernel_size=(3, 2), stride=(2, 1), padding="SAME", groups=2)
    x = _rand((2, 7, 6, 4))
    variables = _random_variables(layer, x)
    assert _shapes(variables) == {"kernel": (3, 2, 2, 6), "bias": (6,)}
    assert _count(variables) == conv_param_count(4, 6, (3, 2), groups=2) == 3 * 2 * 2 * 6 + 6
    p = variables["params"]
    expected = conv2d(x, p["kernel"], p["bias"], stride=(2, 1), padding="SAME", groups=2)
    np.testing.assert_array_equal(layer.apply(variables, x), expected)
    no_bias = jax.eval_shape(Conv2D(features=6, kernel_size=3, use_bias=False).init, KEY, x)
    assert _shapes(no_bias) == {"kernel": (3, 3, 4, 6)}


def test_depthwise_conv2d_parameters_and_channel_routing():
    layer = DepthwiseConv2D(kernel_size=3, depth_multiplier=2, padding=1)
    x = _rand((1, 5, 5, 4))
    variables = _random_variables(layer, x)
    assert _shapes(variables) == {"depthwise": {"kernel": (3, 3, 1, 8), "bias": (8,)}}
    assert _count(variables) == 3 * 3 * 4 * 2 + 8
    p = variables["params"]["depthwise"]
    y = layer.apply(variables, x)
    np.testing.assert_array_equal(y, conv2d(x, p["kernel"], p["bias"], padding=1, groups=4))
    # Output channel c * m + k sees input channel c only: perturb channel 1 and only
    # outputs 2 and 3 move.
    moved = np.abs(np.asarray(layer.apply(variables, x.at[..., 1].add(1.0)) - y)).sum(
        axis=(0, 1, 2)
    )
    assert (moved[[2, 3]] > 0).all() and (moved[[0, 1, 4, 5, 6, 7]] == 0).all()


def test_separable_conv2d_parameter_count_and_output():
    layer = SeparableConv2D(features=64, kernel_size=3)
    x = _rand((1, 8, 8, 32))
    variables = _random_variables(layer, x)
    assert _shapes(variables) == {
        "depthwise": {"depthwise": {"kernel": (3, 3, 1, 32)}},
        "pointwise": {"kernel": (1, 1, 32, 64), "bias": (64,)},
    }
    assert _count(variables) == 3 * 3 * 32 + 32 * 64 + 64 == 2400
    p = variables["params"]
    depthwise = conv2d(x, p["depthwise"]["depthwise"]["kernel"], groups=32)
    expected = conv2d(depthwise, p["pointwise"]["kernel"], p["pointwise"]["bias"])
    y = layer.apply(variables, x)
    assert y.shape == (1, 6, 6, 64)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-4)


def test_pooling_and_reshaping_modules_are_the_functional_calls():
    x = _rand((2, 5, 6, 3))
    for layer, expected in (
        (MaxPool2D(3, stride=2, padding=1), max_pool(x, 3, stride=2, padding=1)),
        (AvgPool2D(2, padding="SAME"), avg_pool(x, 2, padding="SAME")),
        (
            AvgPool2D(2, padding="SAME", count_include_pad=True),
            avg_pool(x, 2, padding="SAME", count_include_pad=True),
        ),
        (GlobalAvgPool(), x.mean(axis=(1, 2))),
        (Flatten(), x.reshape(2, -1)),
    ):
        variables = layer.init(KEY, x)  # no parameters: nothing random to compile
        assert _count({"params": variables.get("params", {})}) == 0
        np.testing.assert_array_equal(layer.apply(variables, x), expected)
    # Flatten is row-major (H, W, C): element (h, w, c) lands at (h * W + w) * C + c.
    flat = Flatten().apply({}, x)
    assert flat.shape == (2, 5 * 6 * 3)
    assert flat[1, (4 * 6 + 2) * 3 + 1] == x[1, 4, 2, 1]


def test_module_compute_dtype_and_param_dtype():
    # Shapes and dtypes only, so traced with eval_shape: nothing is compiled.
    x = jax.ShapeDtypeStruct((1, 6, 6, 4), jnp.float32)
    for layer in (
        Conv2D(features=8, kernel_size=3, dtype=jnp.bfloat16),
        DepthwiseConv2D(kernel_size=3, dtype=jnp.bfloat16),
        SeparableConv2D(features=8, kernel_size=3, dtype=jnp.bfloat16),
    ):
        variables = jax.eval_shape(layer.init, KEY, x)
        assert {p.dtype for p in jax.tree_util.tree_leaves(variables)} == {jnp.dtype("float32")}
        assert jax.eval_shape(layer.apply, variables, x).dtype == jnp.bfloat16
    # No compute dtype: the input's dtype is kept.
    layer = Conv2D(features=8, kernel_size=3)
    variables = jax.eval_shape(layer.init, KEY, x)
    x16 = jax.ShapeDtypeStruct(x.shape, jnp.bfloat16)
    assert jax.eval_shape(layer.apply, variables, x16).dtype == jnp.bfloat16
    assert jax.eval_shape(layer.apply, variables, x).dtype == jnp.float32


@pytest.mark.parametrize("name", LAYERS.names())
def test_every_registered_layer_runs_its_example(name):
    # The registry entry carries the example (constructor arguments, input and output
    # shapes), so a new layer is tested here by its LAYERS line alone.
    spec = LAYERS.get(name)
    assert isinstance(spec, LayerSpec), f"LAYERS[{name!r}] must be a LayerSpec"
    layer = spec.build(**spec.example)
    assert isinstance(layer, nn.Module)
    x = _rand(spec.input_shape)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}

    def run(x):  # init, then apply with those variables: one compiled program
        variables = layer.init(rngs, x, **spec.apply_kwargs)
        return layer.apply(variables, x, rngs=rngs, **spec.apply_kwargs)

    y = fast_jit(run)(x)
    assert y.shape == spec.output_shape
    assert y.dtype == jnp.float32
    assert np.isfinite(np.asarray(y)).all()


def test_unknown_layer_name_lists_known_names():
    with pytest.raises(ValueError, match="conv2d") as err:
        LAYERS.get("conv_2d")
    for name in LAYERS.names():
        assert name in str(err.value)


def test_adaptive_avg_pool_bins_and_errors():
    # 4x2 -> 2x1: each output is the mean of a 2x2 block (bins divide evenly).
    x = np.arange(8, dtype=np.float32).reshape(4, 2, 1)  # (H, W, C), 3-D in -> 3-D out
    y = functional.adaptive_avg_pool(x, (2, 1))
    np.testing.assert_allclose(np.asarray(y)[..., 0], [[1.5], [5.5]])
    # 3 -> 2 overlaps: bins [0, 2) and [1, 3), as PyTorch's AdaptiveAvgPool2d.
    np.testing.assert_allclose(functional.adaptive_bins(3, 2), [[0.5, 0.5, 0], [0, 0.5, 0.5]])
    with pytest.raises(ValueError, match="output_size"):
        functional.adaptive_avg_pool(x, 0)
    with pytest.raises(ValueError, match="adaptive_avg_pool expects x of shape"):
        functional.adaptive_avg_pool(np.zeros((2, 2), np.float32), 1)


# =========================================================================== 7. squeeze-excite


def test_squeeze_excite_worked_example():
    # Two channels, reduction to one unit: W1 = [[1], [-1]], b1 = [0], W2 = [[ln3/2, -ln3/2]],
    # b2 = [0, 0].
    # Image 0: channel means s = (4, 2) -> z = ReLU(4 - 2) = 2 -> W2 z = (ln 3, -ln 3)
    #   -> e = sigmoid: (3/4, 1/4), since sigmoid(ln 3) = 3 / (3 + 1).
    # Image 1: s = (1, 3) -> z = ReLU(1 - 3) = 0 -> e = sigmoid(0) = (1/2, 1/2).
    ln3 = float(np.log(3.0))
    x = np.zeros((2, 2, 2, 2), np.float32)
    x[0, :, :, 0] = [[1, 3], [5, 7]]  # mean 4
    x[0, :, :, 1] = 2  # mean 2
    x[1, :, :, 0] = [[0, 2], [1, 1]]  # mean 1
    x[1, :, :, 1] = [[3, 3], [6, 0]]  # mean 3
    w1, b1 = np.array([[1.0], [-1.0]], np.float32), np.zeros(1, np.float32)
    w2, b2 = np.array([[ln3 / 2, -ln3 / 2]], np.float32), np.zeros(2, np.float32)
    y = np.asarray(squeeze_excite(x, w1, b1, w2, b2))
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y[0, :, :, 0], [[0.75, 2.25], [3.75, 5.25]], rtol=1e-6)
    np.testing.assert_allclose(y[0, :, :, 1], [[0.5, 0.5], [0.5, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(y[1], x[1] / 2, rtol=1e-6)
    # A 3-D (H, W, C) input gives a 3-D output, as in functional.py.
    np.testing.assert_allclose(squeeze_excite(x[0], w1, b1, w2, b2), y[0], rtol=1e-6)


def test_squeeze_excite_module_parameters_and_errors():
    x = _rand((2, 5, 5, 32))
    layer = SqueezeExcite()  # r = 16: 32 -> 2 -> 32
    variables = _random_variables(layer, x)
    assert _shapes(variables) == {
        "reduce": {"kernel": (32, 2), "bias": (2,)},
        "expand": {"kernel": (2, 32), "bias": (32,)},
    }
    assert _count(variables) == 32 * 2 + 2 + 2 * 32 + 32 == 162
    p = variables["params"]
    expected = squeeze_excite(
        x, p["reduce"]["kernel"], p["reduce"]["bias"], p["expand"]["kernel"], p["expand"]["bias"]
    )
    np.testing.assert_array_equal(layer.apply(variables, x), expected)
    # Narrow inputs keep one unit; 256 channels give 256*16 + 16 + 16*256 + 256 = 8,464.
    narrow = jax.eval_shape(
        SqueezeExcite().init, KEY, jax.ShapeDtypeStruct((1, 4, 4, 8), jnp.float32)
    )
    assert _shapes(narrow)["reduce"]["kernel"] == (8, 1)
    wide = jax.eval_shape(
        SqueezeExcite().init, KEY, jax.ShapeDtypeStruct((1, 4, 4, 256), jnp.float32)
    )
    assert _count(wide) == 8_464
    with pytest.raises(ValueError, match=r"w2 must have shape \(2, 32\).*got \(2, 31\)"):
        squeeze_excite(
            x, p["reduce"]["kernel"], p["reduce"]["bias"], np.zeros((2, 31)), p["expand"]["bias"]
        )
    with pytest.raises(ValueError, match="reduction must be an int >= 1, got 0"):
        SqueezeExcite(reduction=0).init(KEY, x)
