"""Layers: the Flax modules, the registry and squeeze-and-excitation.

Sections:
  6. The Flax modules, and a test parametrized over `LAYERS`: a new layer is tested by
     its registry line, which carries its example (`LayerSpec`), with no edit here.
  7. Squeeze-and-excitation, with a worked example.
"""

from __future__ import annotations

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
    conv_param_count,
    functional,
    max_pool,
    squeeze_excite,
)
from tests.helpers.fast_tier import fast_jit
from tests.helpers.layers import param_count as _count

pytestmark = pytest.mark.usefixtures("fast_prng_compiles")  # tests/layers/conftest.py


# =========================================================================== 6. modules


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
