"""Every conv / max-pool algorithm gives the NumPy reference's result, forward and gradient.

Parametrized over the registries in `research.layers.conv_algorithms`: a new
algorithm is tested here with no further edits. The references
(`tests/reference.py`) are loops over the lectures' definitions that never call
JAX, so XLA's own convolution and `reduce_window` are held to them too.
"""

from __future__ import annotations

import os
import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.layers import conv_algorithms as CA
from research.layers import functional as F
from research.layers import onednn
from tests.fast_tier import fast_jit
from tests.reference import conv_ref_taps, pool_ref, ref_pads

CONV_NAMES = CA.CONV_ALGORITHMS.names()
POOL_NAMES = CA.POOL_ALGORITHMS.names()

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


def _conv_inputs(x_shape, k_shape):
    # NumPy draws: an eager jax.random draw compiles once per new shape (seconds on CPU).
    rng = np.random.default_rng(0)
    x, kernel, bias = (
        jnp.asarray(rng.normal(size=shape), jnp.float32)
        for shape in (x_shape, k_shape, (k_shape[-1],))
    )
    return x, kernel, bias


def _case_operands(case):
    """A CONV_CASES entry as the arguments of an algorithm: x, kernel, strides, pads, ..."""
    x_shape, k_shape, stride, padding, dilation, groups = case
    x, kernel, _ = _conv_inputs(x_shape, k_shape)
    strides = F.pair(stride, "stride", minimum=1)
    dilations = F.pair(dilation, "dilation", minimum=1)
    window = tuple(d * (f - 1) + 1 for f, d in zip(k_shape[:2], dilations, strict=True))
    pads = F.normalize_padding(padding, window, strides, x_shape[1:3])
    return x, kernel, strides, pads, dilations, groups


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
        (CA.DEFAULT_POOL_ALGORITHM, CA.POOL_ALGORITHMS),
    ):
        assert all(name in registry for name in table.values())
    assert CA.DEFAULT_CONV_ALGORITHM["cpu"] == "onednn"
    assert CA.DEFAULT_CONV_ALGORITHM["gpu"] == "xla"
    assert CA.DEFAULT_STAND_IN == {"onednn": "tiled"}


def test_algorithm_selection_keyword_over_env_over_default(monkeypatch):
    monkeypatch.delenv(CA.CONV_ENV_VAR, raising=False)
    monkeypatch.delenv(CA.POOL_ENV_VAR, raising=False)
    backend = jax.default_backend()
    assert CA.resolve_conv_algorithm() == CA.default_conv_algorithm()
    assert CA.resolve_pool_algorithm() == CA.DEFAULT_POOL_ALGORITHM.get(backend, "reduce_window")
    assert CA.default_pool_algorithm() == CA.DEFAULT_POOL_ALGORITHM.get(backend, "reduce_window")
    monkeypatch.setenv(CA.CONV_ENV_VAR, "taps")
    monkeypatch.setenv(CA.POOL_ENV_VAR, "reduce_window")
    assert CA.resolve_conv_algorithm() == "taps"
    assert CA.resolve_pool_algorithm() == "reduce_window"
    assert CA.resolve_conv_algorithm("xla") == "xla"
    assert CA.resolve_pool_algorithm("reshape") == "reshape"


def test_override_block_sits_between_keyword_and_environment(monkeypatch):
    monkeypatch.setenv(CA.POOL_ENV_VAR, "reshape")
    monkeypatch.delenv(CA.CONV_ENV_VAR, raising=False)
    x = jnp.ones((1, 4, 4, 1))
    # A new function object each time: JAX caches traces per function, and the
    # block is not part of that cache's key.
    traced = lambda: str(jax.make_jaxpr(lambda x: F.max_pool(x, 2))(x))  # noqa: E731
    assert "reduce_window_max" not in traced()
    with CA.override(pool="reduce_window"):
        assert CA.resolve_pool_algorithm() == "reduce_window"
        assert CA.resolve_pool_algorithm("reshape") == "reshape"  # the keyword still wins
        with CA.override(conv="taps"):  # nested blocks add to the outer one
            assert CA.resolve_conv_algorithm() == "taps"
            assert CA.resolve_pool_algorithm() == "reduce_window"
        assert CA.resolve_conv_algorithm() == CA.default_conv_algorithm()
        # It acts where the layer is traced.
        assert "reduce_window_max" in traced()
    assert CA.resolve_pool_algorithm() == "reshape"
    block = CA.override(pool="strided")
    with pytest.raises(ValueError, match="override gives unknown pool algorithm 'strided'"):
        block.__enter__()


def test_unknown_algorithm_names_raise_value_error(monkeypatch):
    x, kernel, _ = _conv_inputs((1, 5, 5, 1), (3, 3, 1, 1))
    with pytest.raises(ValueError, match=r"algorithm=.*'winograd'.*known: im2col"):
        F.conv2d(x, kernel, algorithm="winograd")
    with pytest.raises(ValueError, match="reduce_window, reshape"):
        F.max_pool(x, 2, algorithm="strided")
    monkeypatch.setenv(CA.CONV_ENV_VAR, "fft")
    with pytest.raises(ValueError, match=f"environment variable {CA.CONV_ENV_VAR}.*'fft'"):
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
            mp.setenv(CA.CONV_ENV_VAR, conv)
            mp.setenv(CA.POOL_ENV_VAR, pool)
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


# --------------------------------------------------------------------------- oneDNN


def _needs_onednn():
    ok, why = onednn.status()
    if not ok and platform.system() == "Linux" and platform.machine() == "x86_64":
        # requirements.txt installs oneDNN here: a failed build is a bug, not a skip.
        pytest.fail(f"oneDNN handlers unavailable on x86-64 Linux: {why}")
    if not ok:
        pytest.skip(why)


def test_onednn_is_the_one_device_cpu_default_where_it_builds_and_tiled_stands_in(
    monkeypatch, caplog
):
    _needs_onednn()
    monkeypatch.delenv(CA.CONV_ENV_VAR, raising=False)
    assert CA.resolve_conv_algorithm() == ("onednn" if jax.device_count() == 1 else "tiled")
    with monkeypatch.context() as m:  # several devices (forced CPU devices, several hosts)
        m.setattr(jax, "device_count", lambda: 2)
        assert CA.resolve_conv_algorithm() == "tiled"
    monkeypatch.setattr(onednn, "status", lambda: (False, "package onednn-cpu-gomp is missing"))
    CA._say_once.cache_clear()
    with caplog.at_level("WARNING"):
        assert CA.resolve_conv_algorithm() == "tiled"
        assert CA.resolve_conv_algorithm() == "tiled"
    said = [r.getMessage() for r in caplog.records if r.name == CA.__name__]
    assert said == [  # once per process, with the reason
        "conv algorithm 'onednn' is unavailable (package onednn-cpu-gomp is missing); "
        "CPU convolutions run 'tiled'"
    ]
    assert CA.resolve_conv_algorithm("onednn") == "onednn"  # asked for: no stand-in, but
    x, k = _conv_inputs((1, 5, 5, 8), (3, 3, 8, 4))[:2]
    with pytest.raises(onednn.OnednnUnavailable, match="'onednn' is unavailable here: package"):
        F.conv2d(x, k, algorithm="onednn")  # an error that says why


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-p{c[3]}")
def test_onednn_conv_itself_matches_xla_forward_and_gradient(case):
    """`onednn.conv` on every case, shallow ones too (which the "onednn" algorithm
    leaves to "tiled"): strides, dilations, uneven pads, groups, depthwise."""
    _needs_onednn()
    x, kernel, *args = _case_operands(case)
    ref = CA.conv_xla(x, kernel, *args)
    weights = jnp.arange(ref.size, dtype=ref.dtype).reshape(ref.shape) / ref.size

    def loss(x, kernel, conv):
        return jnp.sum(jnp.sin(conv(x, kernel, *args)) * weights)

    grad = jax.grad(loss, argnums=(0, 1))
    out = onednn.conv(x, kernel, *args)
    atol = 1e-5 * max(1.0, float(jnp.abs(ref).max()))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=atol)
    for got, want in zip(grad(x, kernel, onednn.conv), grad(x, kernel, CA.conv_xla), strict=True):
        atol = 3e-5 * max(1.0, float(jnp.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol)


def test_onednn_takes_all_but_shallow_dense_convolutions():
    _needs_onednn()
    assert CA.ONEDNN_MIN_IN_CHANNELS == 8

    def custom_calls(x_shape, k_shape, groups=1):
        x, k, _ = _conv_inputs(x_shape, k_shape)
        fn = lambda x, k: F.conv2d(x, k, groups=groups, algorithm="onednn")  # noqa: E731
        return jax.jit(fn).lower(x, k).as_text().count("research_onednn_conv_forward")

    assert custom_calls((2, 28, 28, 1), (5, 5, 1, 32)) == 0  # the lecture CNN's conv1
    assert custom_calls((2, 14, 14, 6), (5, 5, 6, 16)) == 0  # LeNet-5's C3
    assert custom_calls((2, 14, 14, 8), (5, 5, 8, 16)) == 1
    assert custom_calls((2, 8, 8, 4), (3, 3, 1, 4), groups=4) == 1  # depthwise


def test_onednn_runs_as_one_custom_call_per_pass_and_other_dtypes_take_tiled():
    _needs_onednn()
    x, k, _ = _conv_inputs((2, 14, 14, 32), (5, 5, 32, 64))
    loss = lambda x, k: jnp.sum(F.conv2d(x, k, algorithm="onednn") ** 2)  # noqa: E731
    hlo = jax.jit(jax.grad(loss, (0, 1))).lower(x, k).as_text()
    for target in onednn.TARGETS:
        assert hlo.count(f"research_onednn_conv_{target}") == 1, target
    assert "convolution(" not in hlo and "dot(" not in hlo  # no XLA conv, no im2col matmul
    with pytest.raises(TypeError):  # a custom VJP: reverse mode only, as documented
        jax.jvp(lambda x: F.conv2d(x, k, algorithm="onednn"), (x,), (x,))
    # bfloat16 (and any backend but CPU) takes "tiled", bit for bit.
    xb, kb = x.astype(jnp.bfloat16), k.astype(jnp.bfloat16)
    got = F.conv2d(xb, kb, algorithm="onednn")
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(got, F.conv2d(xb, kb, algorithm="tiled"))


def test_onednn_vmapped_trials_equal_each_trial_alone_bit_for_bit():
    """The sweep's trial axis: each trial's convolution runs in turn, unchanged."""
    _needs_onednn()
    x, k, _ = _conv_inputs((3, 10, 10, 64), (5, 5, 64, 128))
    xs, ks = jnp.stack([x, -x, 2 * x]), jnp.stack([k, k[::-1], -k])

    def grads(x, k):
        return jax.grad(lambda x, k: jnp.sum(jnp.sin(F.conv2d(x, k, algorithm="onednn"))), (0, 1))(
            x, k
        )

    stacked = jax.jit(jax.vmap(grads))(xs, ks)
    for trial in range(3):
        alone = jax.jit(grads)(xs[trial], ks[trial])
        for got, want in zip(stacked, alone, strict=True):
            np.testing.assert_array_equal(got[trial], want)
    # Twice the same call: the same bits (fixed thread count, fixed reduction order).
    again = jax.jit(jax.vmap(grads))(xs, ks)
    for a, b in zip(stacked, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_onednn_build_is_cached_and_a_failed_build_says_why(monkeypatch, tmp_path):
    _needs_onednn()
    built = onednn.build()
    assert built == onednn.build() and built.name.startswith("onednn_conv-")
    monkeypatch.setenv(onednn.CACHE_ENV_VAR, str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails: another cache key
    with pytest.raises(onednn.OnednnUnavailable, match="building onednn_conv.cc failed"):
        onednn.build()
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind
    # A cache folder that cannot be written (a read-only home): this user's temporary one.
    with monkeypatch.context() as m:
        m.setattr(os, "access", lambda path, mode: False)
        assert onednn._cache_dir().name == f"research-native-{os.getuid()}"
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(onednn.OnednnUnavailable, match="no C\\+\\+ compiler"):
        onednn.build()


# --------------------------------------------------------------------------- trials at once


def _synthetic_splits(shape, n=160, classes=10):
    from research.data import pipeline

    rng = np.random.default_rng(0)

    def split(m):
        images = rng.normal(size=(m, *shape)).astype(np.float32)
        return pipeline.Split(images, (np.arange(m) % classes).astype(np.int32))

    c = shape[-1]
    return pipeline.Splits(split(n), split(16), split(16), classes, shape, (0.0,) * c, (1.0,) * c)


# model -> (config fields, input shape): LeNet-5, and the airbench network at a small size.
TRIAL_MODELS = {
    "lenet5": ({"model.name": "lenet5", "optim.name": "momentum"}, (28, 28, 1)),
    "airbench": (
        {
            "model.name": "airbench",
            "model.overrides": {"widths": (8, 16, 16), "whiten_images": 16},
            "optim.name": "sgd_nesterov",
        },
        (32, 32, 3),
    ),
}


def _trial_configs(model: str, trials: int = 3):
    from research.config import get_base_config
    from research.sweep import space

    fields, _ = TRIAL_MODELS[model]
    base = space.apply(get_base_config(), {**fields, "batch_size": 16, "progress": False})
    lrs = (0.01, 0.03, 0.1)
    return [space.apply(base, {"seed": i, "optim.learning_rate": lrs[i]}) for i in range(trials)]


def _chunk_params(run, programs, configs, idx):
    """The trials' params after one chunk of `idx.shape[1]` steps (`idx`: (T, steps, B))."""
    from research.train import engine

    init_keys, _, train_keys = engine.trial_keys(configs)
    hps = engine.hyperparams(configs, run.steps_per_epoch)
    states = programs.init(init_keys, train_keys, hps)
    inputs = engine.chunk_inputs(
        programs.mesh, run.splits.train.images, run.splits.train.labels, idx
    )
    states, alive, _ = programs.chunk(states, *inputs.args())
    assert bool(np.all(jax.device_get(alive)))
    return jax.device_get(states.params)


# The airbench case compiles for ~30 CPU seconds: full tier.
@pytest.mark.parametrize("model", ["lenet5", pytest.param("airbench", marks=pytest.mark.slow)])
def test_vmapped_trials_in_the_gpu_form_equal_the_current_path_and_each_trial_alone(
    model, monkeypatch
):
    """The GPU's vmapped algorithms ("trials" conv, "reshape" pool), run here on CPU.

    Three trials (own seed, learning rate and batch order), three steps: the
    parameters equal the current vmapped path's (CPU: "onednn"/"tiled" conv,
    "reduce_window" pool) and each trial's alone (the plain program) to float32
    rounding: rtol 1e-5, atol 1e-6 (the same sums in another order).
    """
    from research.train import engine, loop

    configs = _trial_configs(model)
    run = loop.build_run(configs[0], splits=_synthetic_splits(TRIAL_MODELS[model][1]))
    rows = np.random.default_rng(1).permutation(len(run.splits.train))
    idx = rows[: 3 * 3 * 16].reshape(3, 3, 16).astype(np.int32)  # (T, steps, B), own batches

    current = engine.build_programs(run, "vmap")
    monkeypatch.setitem(CA.VMAPPED_ALGORITHMS, "cpu", dict(CA.VMAPPED_ALGORITHMS["gpu"]))
    new = engine.build_programs(run, "vmap")
    assert new.algorithms == {"conv": "trials", "pool": "reshape"}  # what results.json records
    assert current.algorithms["pool"] == "reduce_window"
    got = _chunk_params(run, new, configs, idx)
    want = _chunk_params(run, current, configs, idx)

    def close(a, b):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    jax.tree.map(close, got, want)
    sequential = engine.build_programs(run, "sequential")
    for t in range(3):
        alone = _chunk_params(run, sequential, configs[t : t + 1], idx[t : t + 1])
        jax.tree.map(lambda a, b, t=t: close(a[t], b[0]), got, alone)
    # The trials really differ.
    leaves = jax.tree.leaves(got)
    assert not np.allclose(leaves[0][0], leaves[0][1])


def _lenet_vmapped_chunk(trials=3):
    """LeNet-5's vmapped chunk as the engine builds it, and its arguments (3 steps)."""
    from research.train import engine, loop

    configs = _trial_configs("lenet5", trials)
    run = loop.build_run(configs[0], splits=_synthetic_splits((28, 28, 1)))
    steps = run.make_steps(engine.trials_mesh())
    init_keys, _, train_keys = engine.trial_keys(configs)
    states = jax.vmap(steps.init)(
        init_keys, train_keys, engine.hyperparams(configs, run.steps_per_epoch)
    )
    train = run.splits.train
    idx = np.zeros((trials, 3, 16), np.int32)
    chunk = jax.vmap(steps.train_chunk, in_axes=(0, 0, None, None, 0))
    return chunk, (states, np.ones(trials, bool), train.images, train.labels, idx)


def test_vmapped_chunk_lowered_for_cuda_has_no_slow_forms_with_the_gpu_algorithms():
    """The program form, checked without a GPU: the chunk lowered for CUDA on this CPU.

    XLA's form (conv "xla", pool "reduce_window") holds LeNet-5's two kernel
    gradients as convolutions with the 3 trials as feature groups, which XLA's
    GPU backend cannot run as kernel-gradient convolutions, and two
    select_and_scatter; the GPU's vmapped algorithms hold neither: the kernel
    gradients are two more dot_generals.
    """
    from research.layers import program_form as PF

    chunk, args = _lenet_vmapped_chunk()
    forms = {}
    for name, algorithms in (
        ("xla", {"conv": "xla", "pool": "reduce_window"}),
        ("gpu", CA.VMAPPED_ALGORITHMS["gpu"]),
    ):
        with CA.override(**algorithms):
            forms[name] = PF.form(PF.lower(chunk, *args, platform="cuda"))
    old, new = forms["xla"], forms["gpu"]
    slow = [c for c in old.convolutions if c.slow]
    assert [(c.role, c.feature_group_count, c.batch_group_count) for c in slow] == [
        ("kernel gradient", 3, 1)
    ] * 2
    assert old.ops["select_and_scatter"] == 2 and len(old.slow_forms()) == 3
    assert new.slow_forms() == []
    assert new.ops["select_and_scatter"] == 0
    assert all(c.batch_group_count == 1 for c in new.convolutions)
    # Forward convs (2) and conv2's input gradient (1), trials as feature groups.
    assert [c.feature_group_count for c in new.convolutions] == [3, 3, 3]
    assert {c.role for c in new.convolutions} == {"forward/input gradient"}
    assert new.ops["dot_general"] == old.ops["dot_general"] + 2
    assert "| kernel gradient |" in old.table() and "select_and_scatter 2" in old.table()


def test_program_form_lists_batch_groups_of_a_grouped_kernel_gradient():
    """`jax.grad` of a grouped convolution: XLA's kernel gradient has batch groups."""
    from research.layers import program_form as PF

    x, k, _ = _conv_inputs((2, 6, 6, 4), (3, 3, 2, 6))

    def loss(k, x, algorithm):
        return jnp.sum(F.conv2d(x, k, groups=2, algorithm=algorithm) ** 2)

    old = PF.form(PF.lower(jax.grad(lambda k, x: loss(k, x, "xla")), k, x))
    new = PF.form(PF.lower(jax.grad(lambda k, x: loss(k, x, "trials")), k, x))
    (kernel_grad,) = [c for c in old.convolutions if c.role == "kernel gradient"]
    assert kernel_grad.batch_group_count == 2 and kernel_grad.feature_group_count == 1
    assert old.slow_forms() == [
        f"convolution {kernel_grad.dims} {kernel_grad.lhs}, {kernel_grad.rhs}: batch_group_count=2"
    ]
    assert new.slow_forms() == [] and len(new.convolutions) == 1  # the forward one
    # And the same gradient.
    np.testing.assert_allclose(
        jax.grad(loss)(k, x, "trials"), jax.grad(loss)(k, x, "xla"), rtol=1e-5, atol=1e-4
    )


def test_vmapped_algorithms_by_backend_and_the_environment_wins(monkeypatch):
    monkeypatch.delenv(CA.CONV_ENV_VAR, raising=False)
    monkeypatch.delenv(CA.POOL_ENV_VAR, raising=False)
    with CA.vmapped_override("gpu"):
        assert (CA.resolve_conv_algorithm(), CA.resolve_pool_algorithm()) == ("trials", "reshape")
    with CA.vmapped_override("cpu"):
        assert CA.resolve_conv_algorithm() == CA.default_conv_algorithm()  # CPU's stays
        assert CA.resolve_pool_algorithm() == "reduce_window"
    with CA.vmapped_override("tpu"):  # not listed: the plain programs' choice
        assert CA.resolve_pool_algorithm() == CA.default_pool_algorithm()
    monkeypatch.setenv(CA.CONV_ENV_VAR, "im2col")
    with CA.vmapped_override("gpu"):
        assert (CA.resolve_conv_algorithm(), CA.resolve_pool_algorithm()) == ("im2col", "reshape")


def test_trials_kernel_gradient_is_one_matmul_equal_to_xla_under_vmap():
    """vmap(grad) of "trials" against "xla": same gradients, no convolution for dK."""
    xs = jnp.stack([_conv_inputs((2, 7, 7, 6), (3, 3, 2, 6))[0] * s for s in (1, -2)])
    ks = jnp.stack([_conv_inputs((2, 7, 7, 6), (3, 3, 2, 6))[1] * s for s in (1, 0.5)])

    def grads(algorithm):
        def loss(x, k):
            y = F.conv2d(x, k, stride=2, padding="SAME", dilation=2, groups=3, algorithm=algorithm)
            return jnp.sum(jnp.sin(y))

        return jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1))))(xs, ks)

    for got, want in zip(grads("trials"), grads("xla"), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
