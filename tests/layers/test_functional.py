"""Layers: the functional ops against a NumPy/SciPy reference, dtypes, and their errors.

Sections (the worked examples are in test_worked_examples.py, the modules in
test_modules.py):
  3. Agreement with an independent NumPy/SciPy reference (tests/helpers/reference.py,
     which never calls JAX) on random configurations, forward and gradient.
  4. dtype, jit and grad.
  5. Bad hyperparameters raise ValueError naming the argument, the value and the
     input shape before XLA is called.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.layers import (
    Conv2D,
    GlobalAvgPool,
    avg_pool,
    conv2d,
    conv_algorithms,
    filters,
    max_pool,
    pool_algorithms,
)
from tests.helpers.fast_tier import fast_jit
from tests.helpers.reference import conv_ref_scipy, conv_ref_taps, pool_ref, ref_pads

pytestmark = pytest.mark.usefixtures("fast_prng_compiles")  # tests/layers/conftest.py


def _hwio(k2d) -> np.ndarray:
    """A 2-D filter as a one-in, one-out HWIO kernel."""
    return np.asarray(k2d, np.float32)[:, :, None, None]


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
    tests/layers/test_conv_algorithms.py holds every registered algorithm to the same
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
    *(("max", False, name) for name in pool_algorithms.POOL_ALGORITHMS.names()),
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
