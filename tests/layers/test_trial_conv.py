"""Trials at once: vmapped trials in the GPU form equal each trial alone.

The single-run conv / max-pool algorithms are in test_conv_algorithms.py.
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
from tests.helpers.conv_cases import conv_inputs as _conv_inputs

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
    monkeypatch.setitem(AC.VMAPPED_ALGORITHMS, "cpu", dict(AC.VMAPPED_ALGORITHMS["gpu"]))
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
        ("gpu", AC.VMAPPED_ALGORITHMS["gpu"]),
    ):
        with AC.override(**algorithms):
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
    monkeypatch.delenv(AC.CONV_ENV_VAR, raising=False)
    monkeypatch.delenv(AC.POOL_ENV_VAR, raising=False)
    with AC.vmapped_override("gpu"):
        assert (CA.resolve_conv_algorithm(), PA.resolve_pool_algorithm()) == ("trials", "reshape")
    with AC.vmapped_override("cpu"):
        assert CA.resolve_conv_algorithm() == CA.default_conv_algorithm()  # CPU's stays
        assert PA.resolve_pool_algorithm() == "reduce_window"
    with AC.vmapped_override("tpu"):  # not listed: the plain programs' choice
        assert PA.resolve_pool_algorithm() == PA.default_pool_algorithm()
    monkeypatch.setenv(AC.CONV_ENV_VAR, "im2col")
    with AC.vmapped_override("gpu"):
        assert (CA.resolve_conv_algorithm(), PA.resolve_pool_algorithm()) == ("im2col", "reshape")


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
