"""Layers: the lecture notes' worked examples, then output sizes and parameter counts.

Sections:
  1. Worked examples from the lecture notes (000-004), with the slides' numbers, each
     checked by hand in a comment; the Sobel, Scharr and line-detector filters.
  2. Output sizes and parameter counts (the lectures' exercises).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.layers import (
    Conv2D,
    MaxPool2D,
    avg_pool,
    conv2d,
    conv_param_count,
    filters,
    max_pool,
    output_size,
)
from tests.helpers.layers import param_count as _count

pytestmark = pytest.mark.usefixtures("fast_prng_compiles")  # tests/layers/conftest.py


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
