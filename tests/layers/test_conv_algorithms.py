"""Every conv / max-pool algorithm gives the NumPy reference's result, forward and gradient.

Parametrized over the registries in `research.layers.conv_algorithms` and
`pool_algorithms`: a new algorithm is tested here with no further edits. The references
(`tests/helpers/reference.py`) are loops over the lectures' definitions that never call
JAX, so XLA's own convolution and `reduce_window` are held to them too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.layers import algorithm_choice as AC
from research.layers import conv_algorithms as CA
from research.layers import functional as F
from research.layers import pool_algorithms as PA
from tests.helpers.conv_cases import CONV_CASES
from tests.helpers.conv_cases import case_operands as _case_operands
from tests.helpers.conv_cases import conv_inputs as _conv_inputs
from tests.helpers.fast_tier import fast_jit
from tests.helpers.reference import conv_ref_taps, pool_ref, ref_pads

CONV_NAMES = CA.CONV_ALGORITHMS.names()
POOL_NAMES = PA.POOL_ALGORITHMS.names()


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


@pytest.mark.parametrize("algorithm", CONV_NAMES)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-p{c[3]}")
def test_conv_algorithm_matches_numpy_reference_forward_and_gradient(algorithm, case):
    x_shape, k_shape, stride, padding, dilation, groups = case
    x, kernel, bias = _conv_inputs(x_shape, k_shape)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    strides, dilations = _pair(stride), _pair(dilation)
    window = tuple(d * (f - 1) + 1 for f, d in zip(k_shape[:2], dilations, strict=True))
    args = (strides, ref_pads(padding, x_shape[1:3], window, strides), dilations, groups)
    x64, k64 = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    # A non-uniform upstream gradient dL/dy, so every output position's gradient matters.
    upstream = np.random.default_rng(1).normal(size=conv_ref_taps(x64, k64, *args).shape)
    y_ref, gx_ref, gk_ref = conv_ref_taps(x64, k64, *args, upstream=upstream)

    def loss(x, kernel, bias):
        y = F.conv2d(x, kernel, bias, algorithm=algorithm, **kw)
        return jnp.sum(y * upstream.astype(np.float32)), y

    grad = fast_jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    (_, y), (gx, gk, gb) = grad(x, kernel, bias)
    assert y.shape == y_ref.shape and y.dtype == jnp.float32
    # float32 against float64: tolerances scaled by the size of the summed terms.
    scale = np.abs(conv_ref_taps(np.abs(x64), np.abs(k64), *args)).max()
    np.testing.assert_allclose(y, y_ref + np.asarray(bias), rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-4, atol=1e-5 * np.abs(gx_ref).max())
    np.testing.assert_allclose(gk, gk_ref, rtol=1e-4, atol=1e-5 * np.abs(gk_ref).max())
    np.testing.assert_allclose(gb, upstream.sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-4)


# Ungrouped cases (tiled's own path; grouped ones take im2col's).
TILED_CASES = [c for c in CONV_CASES if c[5] == 1]


@pytest.mark.parametrize("case", TILED_CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-p{c[3]}")
def test_tiled_matches_xla_at_every_tile_width(case):
    """Every tile width, including ones whose last tile overhangs the image."""
    x, kernel, strides, pads, dilations, _ = _case_operands(case)
    ref = CA.conv_xla(x, kernel, strides, pads, dilations)
    weights = jnp.arange(ref.size, dtype=ref.dtype).reshape(ref.shape) / ref.size

    def loss(x, kernel, conv):
        return jnp.sum(jnp.sin(conv(x, kernel, strides, pads, dilations)) * weights)

    grad = fast_jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
    want = grad(x, kernel, CA.conv_xla)
    wo = ref.shape[2]
    # im2col (1), small tiles, overhanging last tiles, a whole row, and one past it (clipped).
    for tile in sorted({t for t in (1, 2, 3, wo // 2, wo - 1, wo, wo + 1) if t >= 1}):

        def tiled(x, kernel, strides, pads, dilations, tile=tile):
            return CA.conv_tiled(x, kernel, strides, pads, dilations, tile=tile)

        out = fast_jit(lambda x, k, tiled=tiled: tiled(x, k, strides, pads, dilations))(x, kernel)
        # Sums of up to 576 products: rounding scales with the largest output.
        atol_out = 1e-5 * max(1.0, float(jnp.abs(ref).max()))
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=atol_out, err_msg=f"tile={tile}")
        got = grad(x, kernel, tiled)
        for g, w in zip(got, want, strict=True):
            # Sums over the whole batch: rounding scales with the largest entry.
            atol = 3e-5 * max(1.0, float(jnp.abs(w).max()))
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=atol, err_msg=f"tile={tile}")


def test_tile_width_rule():
    assert (CA.TILE_LANES, CA.NARROW_LANES, CA.PATCH_COST, CA.BAND_IMAGES) == (128, 24, 48, 8)
    # Narrow layers fill a 24-wide row. LeNet-5 at 28x28: C1 (28 columns, 6 channels)
    # -> 4 columns per tile (7 tiles), C3 (10 columns, 16 channels) -> 2.
    assert CA.tile_width(28, 6, 5, image_rows=28) == 4
    assert CA.tile_width(10, 16, 5, image_rows=10) == 2
    assert CA.tile_width(13, 6, 5) == 4  # 13 is prime: no divisor near 4, the last tile overhangs
    assert CA.tile_width(14, 6, 5) == 7  # a divisor within 2x of 4 is preferred (no overhang)
    assert CA.tile_width(3, 6, 3) == 3  # capped at the output width
    assert CA.tile_width(28, 6, 1) == 1  # 1x1 kernels have no overlap to share
    # Wider layers by the cost model. The lecture CNN: conv1 (32 channels)
    # cost(1) = 5 * (48 + 32) = 400, cost(2) = 6 * (24 + 32) = 336, cost(3) = 7 * (16 + 32)
    # * 30 / 28 = 360 (the last of 10 tiles overhangs): 2.
    assert CA.tile_width(28, 32, 5, image_rows=28) == 2
    assert CA.tile_width(10, 64, 5, image_rows=10) == 2  # 5 * 112 = 560 > 6 * 88 = 528
    assert CA.tile_width(6, 128, 5, image_rows=6) == 1  # 128 channels fill the row
    # conv4's 2x2 outputs: a band of 2 (2 x 64 lanes) outweighs 8 images' patches (8 x 2 rows).
    assert CA.tile_width(2, 64, 5, image_rows=2) == 1
    # 3x3 kernels share less: 3 * (48 + 64) = 336 < 4 * (24 + 64) = 352 keeps 64 channels
    # at im2col; 32 channels take 2 (240 > 224). Strides widen the window: AlexNet's conv1.
    assert CA.tile_width(32, 64, 3, image_rows=32) == 1
    assert CA.tile_width(32, 32, 3, image_rows=32) == 2
    assert CA.tile_width(55, 64, 11, stride=4, image_rows=55) == 1  # 11 * 112 < 15 * 88 * 56 / 55


def test_patch_matmul_rowmajor_kernel_gradient():
    """On CPU, deep patches with 64-256 channels take the custom gradient; it is autodiff's."""
    assert CA.rowmajor_kernel_gradient(36, 1600, 128)  # the lecture CNN's conv3: 6x6 outputs
    assert not CA.rowmajor_kernel_gradient(16, 2304, 512)  # 512 channels
    assert not CA.rowmajor_kernel_gradient(512, 90, 64)  # shallow patches
    assert not CA.rowmajor_kernel_gradient(256, 1152, 128)  # 16x16 outputs: > 1152 / 16 rows
    rng = np.random.default_rng(0)

    def grads(m, k, n):
        p, b, g = (
            jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in ((m, k), (k, n), (m, n))
        )
        # 600 rows from 20 images: 30 rows each, within 512 / 16.
        fn = jax.grad(lambda p, b: jnp.sum(CA.patch_matmul(p, b, 20) * g), argnums=(0, 1))
        return fn, (p, b), (g @ b.T, p.T @ g)

    for (m, k, n), custom in (((600, 512, 64), True), ((600, 256, 64), False)):
        fn, args, want = grads(m, k, n)
        for got, w in zip(fn(*args), want, strict=True):
            np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-3)
        assert ("optimization_barrier" in str(jax.make_jaxpr(fn)(*args))) == custom
    # "tiled" rows (tile > 1) transpose dy by an identity matmul: the same bits.
    fn, args, _ = grads(600, 512, 64)
    g = jnp.asarray(rng.normal(size=(600, 64)), jnp.float32)
    by_matmul = jax.grad(lambda p, b: jnp.sum(CA.patch_matmul(p, b, 20, tile=2) * g), (0, 1))
    by_copy = jax.grad(lambda p, b: jnp.sum(CA.patch_matmul(p, b, 20) * g), (0, 1))
    for got, want in zip(jax.jit(by_matmul)(*args), jax.jit(by_copy)(*args), strict=True):
        np.testing.assert_array_equal(got, want)
    dots = [str(jax.make_jaxpr(f)(*args)).count("dot_general") for f in (by_matmul, by_copy)]
    assert dots[0] == dots[1] + 1  # the identity matmul
    p, b = args
    stacked = jax.vmap(by_matmul)(jnp.stack([p, -p]), jnp.stack([b, b]))
    np.testing.assert_allclose(stacked[1][1], -by_copy(p, b)[1], rtol=1e-5, atol=1e-3)
    # vmap (the sweep's trial axis) of the custom gradient: each trial's own gradient.
    fn, (p, b), _ = grads(600, 512, 64)
    stacked = jax.vmap(fn)(jnp.stack([p, -p]), jnp.stack([b, b]))
    np.testing.assert_allclose(stacked[1][1], -fn(p, b)[1], rtol=1e-5, atol=1e-3)
    # Reverse mode only, as documented.
    with pytest.raises(TypeError):
        jax.jvp(lambda p: CA.patch_matmul(p, b, 20), (p,), (p,))


@pytest.mark.parametrize("algorithm", CONV_NAMES)
def test_conv_algorithm_worked_example_and_3d_input(algorithm):
    # The lectures' 6x6 image with a vertical-edge filter: a 4x4 map of 0s and 30s.
    image = jnp.array([[10.0] * 3 + [0.0] * 3] * 6)[:, :, None]  # (H, W, C)
    vertical = jnp.array([[1.0, 0.0, -1.0]] * 3)[:, :, None, None]  # (3, 3, 1, 1)
    out = F.conv2d(image, vertical, algorithm=algorithm)
    assert out.shape == (4, 4, 1)
    np.testing.assert_allclose(out[..., 0], [[0, 30, 30, 0]] * 4)


def test_conv_algorithms_registry_and_defaults():
    assert {"xla", "im2col", "taps", "tiled"} <= set(CONV_NAMES)
    assert {"reduce_window", "reshape"} <= set(POOL_NAMES)
    for table, registry in (
        (CA.DEFAULT_CONV_ALGORITHM, CA.CONV_ALGORITHMS),
        (PA.DEFAULT_POOL_ALGORITHM, PA.POOL_ALGORITHMS),
    ):
        assert all(name in registry for name in table.values())
    assert CA.DEFAULT_CONV_ALGORITHM["cpu"] == "onednn"
    assert CA.DEFAULT_CONV_ALGORITHM["gpu"] == "xla"
    assert CA.DEFAULT_STAND_IN == {"onednn": "tiled"}


def test_algorithm_selection_keyword_over_env_over_default(monkeypatch):
    monkeypatch.delenv(AC.CONV_ENV_VAR, raising=False)
    monkeypatch.delenv(AC.POOL_ENV_VAR, raising=False)
    backend = jax.default_backend()
    assert CA.resolve_conv_algorithm() == CA.default_conv_algorithm()
    assert PA.resolve_pool_algorithm() == PA.DEFAULT_POOL_ALGORITHM.get(backend, "reduce_window")
    assert PA.default_pool_algorithm() == PA.DEFAULT_POOL_ALGORITHM.get(backend, "reduce_window")
    monkeypatch.setenv(AC.CONV_ENV_VAR, "taps")
    monkeypatch.setenv(AC.POOL_ENV_VAR, "reduce_window")
    assert CA.resolve_conv_algorithm() == "taps"
    assert PA.resolve_pool_algorithm() == "reduce_window"
    assert CA.resolve_conv_algorithm("xla") == "xla"
    assert PA.resolve_pool_algorithm("reshape") == "reshape"


def test_override_block_sits_between_keyword_and_environment(monkeypatch):
    monkeypatch.setenv(AC.POOL_ENV_VAR, "reshape")
    monkeypatch.delenv(AC.CONV_ENV_VAR, raising=False)
    x = jnp.ones((1, 4, 4, 1))
    # A new function object each time: JAX caches traces per function, and the
    # block is not part of that cache's key.
    traced = lambda: str(jax.make_jaxpr(lambda x: F.max_pool(x, 2))(x))  # noqa: E731
    assert "reduce_window_max" not in traced()
    with AC.override(pool="reduce_window"):
        assert PA.resolve_pool_algorithm() == "reduce_window"
        assert PA.resolve_pool_algorithm("reshape") == "reshape"  # the keyword still wins
        with AC.override(conv="taps"):  # nested blocks add to the outer one
            assert CA.resolve_conv_algorithm() == "taps"
            assert PA.resolve_pool_algorithm() == "reduce_window"
        assert CA.resolve_conv_algorithm() == CA.default_conv_algorithm()
        # It acts where the layer is traced.
        assert "reduce_window_max" in traced()
    assert PA.resolve_pool_algorithm() == "reshape"
    block = AC.override(pool="strided")
    with pytest.raises(ValueError, match="override gives unknown pool algorithm 'strided'"):
        block.__enter__()


def test_unknown_algorithm_names_raise_value_error(monkeypatch):
    x, kernel, _ = _conv_inputs((1, 5, 5, 1), (3, 3, 1, 1))
    with pytest.raises(ValueError, match=r"algorithm=.*'winograd'.*known: im2col"):
        F.conv2d(x, kernel, algorithm="winograd")
    with pytest.raises(ValueError, match="reduce_window, reshape"):
        F.max_pool(x, 2, algorithm="strided")
    monkeypatch.setenv(AC.CONV_ENV_VAR, "fft")
    with pytest.raises(ValueError, match=f"environment variable {AC.CONV_ENV_VAR}.*'fft'"):
        F.conv2d(x, kernel)


# --------------------------------------------------------------------------- max pooling

# (input shape, window, stride, padding)
POOL_CASES = [
    ((2, 8, 8, 3), 2, None, "VALID"),  # the fast path
    ((2, 9, 7, 3), 2, None, "VALID"),  # incomplete last windows dropped
    ((2, 9, 9, 2), (3, 2), None, "VALID"),
    ((2, 8, 8, 3), 2, 2, "SAME"),  # SAME without padding: still the fast path
    ((2, 7, 7, 3), 2, None, "SAME"),  # padded: falls back to reduce_window
    ((2, 7, 7, 3), 3, 2, "VALID"),  # overlapping: falls back
    ((2, 6, 6, 1), 2, 1, 1),
]


def _tied_input(shape):
    # Small integers: many windows hold their maximum more than once.
    return jnp.asarray(np.round(2 * np.random.default_rng(1).normal(size=shape)), jnp.float32)


@pytest.mark.parametrize("algorithm", POOL_NAMES)
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: f"{c[0]}-w{c[1]}-s{c[2]}-p{c[3]}")
def test_max_pool_algorithm_matches_numpy_reference_exactly(algorithm, case):
    shape, window, stride, padding = case
    x = _tied_input(shape)
    windows = _pair(window)
    strides = windows if stride is None else _pair(stride)
    pads = ref_pads(padding, shape[1:3], windows, strides)
    x64 = np.asarray(x, np.float64)
    out_shape = pool_ref(x64, windows, strides, pads, "max").shape
    # Integer upstream gradients: sums of them are exact, so the comparison can be too.
    upstream = (1.0 + np.arange(np.prod(out_shape))).reshape(out_shape)
    want, want_grad = pool_ref(x64, windows, strides, pads, "max", upstream=upstream)

    def loss(x):
        y = F.max_pool(x, window, stride=stride, padding=padding, algorithm=algorithm)
        return jnp.sum(y * upstream.astype(np.float32)), y

    grad, y = fast_jit(jax.grad(loss, has_aux=True))(x)
    np.testing.assert_array_equal(y, want)
    # Ties (many: small integers) go to the first maximum in row-major window order, as
    # the reference's argmax does.
    np.testing.assert_array_equal(grad, want_grad)


@pytest.mark.parametrize("algorithm", POOL_NAMES)
def test_max_pool_gradient_tie_rule_first_in_row_major_order(algorithm):
    # One 2x2 window per quadrant; ties on every second quadrant.
    x = jnp.array(
        [
            [1.0, 1.0, 0.0, 5.0],
            [1.0, 0.0, 5.0, 5.0],
            [2.0, 3.0, -np.inf, -np.inf],
            [3.0, 1.0, -np.inf, -np.inf],
        ]
    )[None, :, :, None]  # (1, 4, 4, 1)
    g = jax.grad(
        lambda x: jnp.sum(
            F.max_pool(x, 2, algorithm=algorithm) * jnp.array([[[1.0], [2.0]], [[3.0], [4.0]]])
        )
    )(x)
    np.testing.assert_array_equal(
        g[0, :, :, 0],
        [
            [1, 0, 0, 2],  # top-left: three 1s tie, the first gets it; top-right: first 5
            [0, 0, 0, 0],
            [0, 3, 4, 0],  # bottom-left: 3 then 3, the top one wins; all -inf: the first
            [0, 0, 0, 0],
        ],
    )


@pytest.mark.slow
def test_lenet_trains_identically_with_each_algorithm():
    """One Adam step of LeNet-5 gives the same parameters with every conv/pool choice."""
    from research import models, optim
    from research.train.steps import make_steps

    model = models.create("lenet5", num_classes=10, padding=2)
    images = jax.random.uniform(jax.random.PRNGKey(2), (16, 28, 28, 1))
    labels = jnp.arange(16, dtype=jnp.int32) % 10
    idx = jnp.arange(16, dtype=jnp.int32).reshape(2, 8)
    results = {}
    for conv, pool in (
        ("xla", "reduce_window"),
        ("im2col", "reshape"),
        ("taps", "reshape"),
        ("tiled", "reshape"),
    ):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(AC.CONV_ENV_VAR, conv)
            mp.setenv(AC.POOL_ENV_VAR, pool)
            steps = make_steps(
                model, optim.create("adam", learning_rate=1e-3), input_shape=(28, 28, 1)
            )
            state = steps.init(jax.random.PRNGKey(0), jax.random.PRNGKey(1))
            alive = jnp.asarray(True)
            state, alive, metrics = steps.train_chunk(state, alive, images, labels, idx)
            assert bool(alive)
            results[conv] = (jax.device_get(state.params), jax.device_get(metrics["loss"]))
    ref_params, ref_loss = results.pop("xla")
    for params, loss in results.values():
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params, ref_params
        )
