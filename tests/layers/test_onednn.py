"""The oneDNN convolution: the CPU default where it builds, equal to XLA's, built once.

The other conv / max-pool algorithms are in test_conv_algorithms.py.
"""

from __future__ import annotations

import os
import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.layers import algorithm_choice as AC
from research.layers import conv_algorithms as CA
from research.layers import functional as F
from research.layers import onednn
from tests.helpers.conv_cases import CONV_CASES
from tests.helpers.conv_cases import case_operands as _case_operands
from tests.helpers.conv_cases import conv_inputs as _conv_inputs

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
    monkeypatch.delenv(AC.CONV_ENV_VAR, raising=False)
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
