"""Tests for research.optim: every registered optimizer, schedules, L2, clipping, checks.

The lecture's update rules and worked examples are in test_worked_examples.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import optim
from research.config import get_base_config
from research.optim import schedules
from research.registry import UnknownNameError
from tests.helpers.optim_reference import (
    ATOL,
    MLP_PARAMS,
    QUAD_THETA0,
    RTOL,
    f32,
    first_update,
    mlp_grad_jax,
    mlp_loss,
    quad_grad_jax,
    run_optax,
)

# --- Every registered optimizer -----------------------------------------------------------


@pytest.mark.parametrize("inject", [False, True])
@pytest.mark.parametrize("name", optim.names())
def test_jitted_init_and_update(name, inject):
    sched = schedules.cosine(0.1, total_steps=10)
    opt = optim.create(name, learning_rate=sched, inject=inject)
    state = jax.jit(opt.init)(MLP_PARAMS)
    update = jax.jit(opt.update)
    grads = mlp_grad_jax(MLP_PARAMS)
    updates, new_state = update(grads, state, MLP_PARAMS)
    updates, new_state = update(grads, new_state, MLP_PARAMS)
    assert jax.tree.structure(updates) == jax.tree.structure(MLP_PARAMS)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(MLP_PARAMS), strict=True):
        assert u.shape == p.shape and u.dtype == jnp.float32
        assert np.all(np.isfinite(u)) and np.any(u != 0)
    for leaf in jax.tree.leaves(new_state):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
        assert np.all(np.isfinite(leaf))
    counts = [x for x in jax.tree.leaves(new_state) if x.dtype == jnp.int32]
    assert counts and all(int(c) == 2 for c in counts)


@pytest.mark.parametrize("name", optim.names())
def test_every_hyperparameter_has_a_range_and_a_config_field(name):
    fields = get_base_config().optim
    for key, default in optim.defaults(name).items():
        assert key in optim.RANGES, f"{name}.{key} has no valid range in RANGES"
        assert key in fields, f"{name}.{key} has no field config.optim.{key}"
        assert optim.RANGES[key].contains(np.float64(default))


def test_names_and_lecture_defaults():
    assert optim.names() == (
        "adagrad",
        "adam",
        "momentum",
        "nesterov",
        "rmsprop",
        "sgd",
        "sgd_nesterov",
    )
    assert optim.defaults("sgd") == {}
    assert optim.defaults("adagrad") == {"eps": 1e-7}
    assert optim.defaults("rmsprop") == {"decay": 0.9, "eps": 1e-6}
    assert optim.defaults("adam") == {"b1": 0.9, "b2": 0.999, "eps": 1e-8}
    assert optim.defaults("momentum") == optim.defaults("nesterov") == {"momentum": 0.9}
    assert optim.defaults("sgd_nesterov") == {"momentum": 0.9}


def test_sgd_nesterov_is_optax_nesterov_and_the_lecture_only_for_a_constant_rate():
    """PyTorch's form equals optax.sgd(nesterov=True) under a schedule too; the lecture's
    rule (its φ sequence) agrees with it for a constant ε only."""
    sched = schedules.step(f32(0.05), every_steps=5, factor=f32(0.5))
    ours = run_optax(
        optim.create("sgd_nesterov", learning_rate=sched, momentum=0.9),
        quad_grad_jax,
        QUAD_THETA0,
        20,
    )
    theirs = run_optax(
        optax.sgd(sched, momentum=0.9, nesterov=True), quad_grad_jax, QUAD_THETA0, 20
    )
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL)
    lecture = run_optax(
        optim.create("nesterov", learning_rate=sched, momentum=0.9), quad_grad_jax, QUAD_THETA0, 20
    )
    assert np.max(np.abs(lecture[6:] - ours[6:])) > 1e-3
    constant = {"learning_rate": f32(0.05), "momentum": 0.9}
    np.testing.assert_allclose(
        run_optax(optim.create("sgd_nesterov", **constant), quad_grad_jax, QUAD_THETA0, 20),
        run_optax(optim.create("nesterov", **constant), quad_grad_jax, QUAD_THETA0, 20),
        rtol=1e-5,
        atol=1e-6,
    )


# --- L2 as in the lecture's objective -----------------------------------------------------


def optim_cfg(**fields):
    cfg = get_base_config().optim
    for key, value in fields.items():
        cfg[key] = value
    return cfg


def test_l2_update_is_gradient_of_penalised_objective():
    lam, lr = 0.3, 0.1
    opt = optim.from_config(
        optim_cfg(name="sgd", learning_rate=lr, weight_decay=lam), steps_per_epoch=5, num_epochs=2
    )

    def objective(p):  # J = L + λ/2 Σ W², over the kernels only
        penalty = sum(jnp.sum(p[layer]["kernel"] ** 2) for layer in ("hidden", "out"))
        return mlp_loss(p) + lam / 2 * penalty

    updates = first_update(opt, mlp_grad_jax(MLP_PARAMS), MLP_PARAMS)
    want = jax.tree.map(lambda g: -lr * g, jax.jit(jax.grad(objective))(MLP_PARAMS))
    plain = mlp_grad_jax(MLP_PARAMS)
    for layer in ("hidden", "out"):
        np.testing.assert_allclose(
            updates[layer]["kernel"], want[layer]["kernel"], rtol=1e-5, atol=1e-8
        )
        np.testing.assert_allclose(updates[layer]["bias"], -lr * plain[layer]["bias"], rtol=1e-6)
        assert not np.allclose(want[layer]["kernel"], -lr * plain[layer]["kernel"])


def test_weight_mask_rule():
    params = {
        "conv1": {"kernel": jnp.zeros((3, 3, 1, 4)), "bias": jnp.zeros(4)},
        "bn": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
        "dense": {"kernel": jnp.zeros((4, 2)), "bias": jnp.zeros(2)},
        "plain": [jnp.zeros((2, 2)), jnp.zeros(2), jnp.float32(1.0)],
    }
    assert optim.weight_mask(params) == {
        "conv1": {"kernel": True, "bias": False},
        "bn": {"scale": False, "bias": False},
        "dense": {"kernel": True, "bias": False},
        "plain": [True, False, False],
    }


# --- Schedules ----------------------------------------------------------------------------


def lr_at(steps, **fields):
    sched = optim.learning_rate_schedule(
        optim_cfg(learning_rate=0.4, **fields), steps_per_epoch=10, num_epochs=6
    )
    # One compiled call for all steps (op-by-op, each step's schedule ops would dispatch).
    return np.asarray(jax.jit(jax.vmap(sched))(jnp.asarray(steps, jnp.int32)), np.float64)


def test_constant_schedule():
    np.testing.assert_allclose(lr_at([0, 30, 59, 100], schedule="constant"), 0.4, rtol=1e-7)


def test_step_schedule_drops_by_factor_every_n_epochs():
    got = lr_at([0, 19, 20, 39, 40, 59], schedule="step", step_every_epochs=2.0, step_factor=0.5)
    np.testing.assert_allclose(got, [0.4, 0.4, 0.2, 0.2, 0.1, 0.1], rtol=1e-6)


def test_cosine_schedule_ends_at_zero():
    got = lr_at([0, 30, 60, 80], schedule="cosine")
    np.testing.assert_allclose(got, [0.4, 0.2, 0.0, 0.0], rtol=1e-6, atol=1e-8)
    assert lr_at([15], schedule="cosine")[0] == pytest.approx(0.4 * 0.5 * (1 + np.cos(np.pi / 4)))


def test_warmup_cosine_is_linear_then_cosine():
    got = lr_at([0, 4, 9, 10, 35, 60, 61], schedule="warmup_cosine", warmup_epochs=1.0)
    np.testing.assert_allclose(got, [0.04, 0.2, 0.4, 0.4, 0.2, 0.0, 0.0], rtol=1e-6, atol=1e-8)
    # No warmup: plain cosine.
    np.testing.assert_allclose(
        lr_at([0, 30, 60], schedule="warmup_cosine"), lr_at([0, 30, 60], schedule="cosine")
    )


def test_from_config_applies_the_schedule_to_the_optimizer():
    cfg = optim_cfg(
        name="momentum", momentum=0.0, schedule="step", step_every_epochs=1.0, step_factor=0.1
    )
    opt = optim.from_config(cfg, steps_per_epoch=3, num_epochs=2)
    params, state, got = jnp.zeros(2), opt.init(jnp.zeros(2)), []
    for _ in range(4):
        updates, state = opt.update(jnp.ones(2), state, params)
        got.append(float(updates[0]))
    np.testing.assert_allclose(got, [-0.1, -0.1, -0.1, -0.01], rtol=1e-6)


# --- Clipping -----------------------------------------------------------------------------


@pytest.mark.parametrize("norm, want", [(5.0, 1.0), (0.5, 0.5)])
def test_global_norm_clipping(norm, want):
    opt = optim.from_config(
        optim_cfg(name="sgd", learning_rate=1.0, clip_norm=1.0), steps_per_epoch=1, num_epochs=1
    )
    # A two-leaf gradient with global norm `norm`: (3, 4)/5 · norm.
    grads = {"a": jnp.array([0.6 * norm]), "b": jnp.array([0.8 * norm])}
    params = jax.tree.map(jnp.zeros_like, grads)
    updates = first_update(opt, grads, params)
    assert float(optax.tree.norm(updates)) == pytest.approx(want, rel=1e-6)
    np.testing.assert_allclose(updates["a"] / updates["b"], 0.75, rtol=1e-6)


# --- from_config ----------------------------------------------------------------------------


def test_from_config_passes_only_the_optimizers_hyperparameters_and_default_eps():
    cfg = optim_cfg(name="adagrad", learning_rate=0.1, b1=0.5, decay=0.3)
    opt = optim.from_config(cfg, steps_per_epoch=2, num_epochs=1, inject=True)
    state = opt.init(MLP_PARAMS)
    assert sorted(state.hyperparams) == ["eps", "learning_rate", "weight_decay"]
    assert float(state.hyperparams["eps"]) == pytest.approx(1e-7)
    cfg.eps = 1e-3
    assert float(
        optim.from_config(cfg, steps_per_epoch=2, num_epochs=1, inject=True)
        .init(MLP_PARAMS)
        .hyperparams["eps"]
    ) == pytest.approx(1e-3)
    # Same numbers as create() for the same values.
    cfg.clip_norm = 2.0
    chained = optim.from_config(cfg, steps_per_epoch=2, num_epochs=1)
    direct = optax.chain(
        optax.clip_by_global_norm(2.0), optim.create("adagrad", learning_rate=0.1, eps=1e-3)
    )
    grads = jax.tree.map(lambda x: 10 * x, mlp_grad_jax(MLP_PARAMS))
    got, want = first_update(chained, grads, MLP_PARAMS), first_update(direct, grads, MLP_PARAMS)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)


def test_injected_and_plain_from_config_agree():
    cfg = optim_cfg(
        name="nesterov",
        learning_rate=0.05,
        weight_decay=1e-2,
        clip_norm=1.0,
        schedule="warmup_cosine",
        warmup_epochs=1.0,
    )
    kw = dict(steps_per_epoch=4, num_epochs=3)
    plain = run_optax(optim.from_config(cfg, **kw), mlp_grad_jax, MLP_PARAMS, 12)
    injected = run_optax(optim.from_config(cfg, inject=True, **kw), mlp_grad_jax, MLP_PARAMS, 12)
    np.testing.assert_allclose(injected, plain, rtol=1e-6, atol=1e-7)


# --- Sweeps: vmap over injected hyperparameters -----------------------------------------


def test_vmapped_update_over_learning_rates_equals_separate_updates():
    lrs = jnp.array([0.01, 0.05, 0.2], jnp.float32)
    opt = optim.create("momentum", learning_rate=0.1, momentum=0.8, inject=True)
    theta0 = jnp.asarray(QUAD_THETA0)
    states = jax.vmap(lambda lr: optim.set_hyperparams(opt.init(theta0), learning_rate=lr))(lrs)
    thetas = jnp.broadcast_to(theta0, (3, 5))

    @jax.jit
    def step(thetas, states):
        grads = jax.vmap(quad_grad_jax)(thetas)
        updates, states = jax.vmap(opt.update)(grads, states, thetas)
        return thetas + updates, states

    for _ in range(5):
        thetas, states = step(thetas, states)
    np.testing.assert_allclose(states.hyperparams["learning_rate"], lrs)
    for i, lr in enumerate(np.asarray(lrs)):
        alone = optim.create("momentum", learning_rate=float(lr), momentum=0.8)
        want = run_optax(alone, quad_grad_jax, theta0, 5)[-1]
        np.testing.assert_allclose(thetas[i], want, rtol=1e-6, atol=1e-7)


def test_vmapped_from_config_over_weight_decay_including_zero():
    # A float32-exact b2: with 0.999 as a Python float, 1 − ρ₂ is taken in float64 but the
    # injected ρ₂ is a float32 array, a 1e-5 relative difference in Adam's first step.
    cfg = optim_cfg(name="adam", learning_rate=0.01, b2=f32(0.999))
    opt = optim.from_config(cfg, steps_per_epoch=1, num_epochs=1, inject=True)
    lams = jnp.array([0.0, 0.5], jnp.float32)
    states = jax.vmap(lambda lam: optim.set_hyperparams(opt.init(MLP_PARAMS), weight_decay=lam))(
        lams
    )
    grads = mlp_grad_jax(MLP_PARAMS)
    updates, _ = jax.jit(jax.vmap(opt.update, in_axes=(None, 0, None)))(grads, states, MLP_PARAMS)
    for i, lam in enumerate([0.0, 0.5]):
        single = optim.from_config(
            optim_cfg(name="adam", learning_rate=0.01, b2=f32(0.999), weight_decay=lam),
            steps_per_epoch=1,
            num_epochs=1,
        )
        want = first_update(single, grads, MLP_PARAMS)
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-6), updates, want
        )


def test_set_hyperparams_errors():
    state = optim.create("adam", learning_rate=0.1, inject=True).init(jnp.zeros(2))
    with pytest.raises(ValueError, match="not an injected hyperparameter.*b1"):
        optim.set_hyperparams(state, momentum=0.9)
    with pytest.raises(ValueError, match=r"b2 .* must be in \[0, 1\), got 1.5"):
        optim.set_hyperparams(state, b2=1.5)
    with pytest.raises(ValueError, match="inject=True"):
        optim.set_hyperparams(optim.create("adam", learning_rate=0.1).init(jnp.zeros(2)), b1=0.5)
    scheduled = optim.create("sgd", learning_rate=schedules.constant(0.1), inject=True)
    with pytest.raises(ValueError, match="schedule"):
        optim.set_hyperparams(scheduled.init(jnp.zeros(2)), learning_rate=0.2)


# --- Bad inputs -----------------------------------------------------------------------------


def test_unknown_optimizer_lists_known_names():
    with pytest.raises(UnknownNameError, match="adagrad, adam, momentum, nesterov, rmsprop, sgd"):
        optim.create("adamw", learning_rate=0.1)


@pytest.mark.parametrize(
    "name, kwargs, pattern",
    [
        ("sgd", dict(learning_rate=-0.1), r"learning_rate .* must be in \(0, inf\), got -0.1"),
        ("sgd", dict(learning_rate=0.0), r"learning_rate .* must be in \(0, inf\), got 0.0"),
        ("rmsprop", dict(learning_rate=0.1, decay=1.0), r"decay .* must be in \[0, 1\), got 1.0"),
        ("adam", dict(learning_rate=0.1, b1=-0.1), r"b1 .* must be in \[0, 1\), got -0.1"),
        ("adam", dict(learning_rate=0.1, b2=1.0), r"b2 .* must be in \[0, 1\), got 1.0"),
        ("momentum", dict(learning_rate=0.1, momentum=1.2), r"momentum .* \[0, 1\), got 1.2"),
        ("adagrad", dict(learning_rate=0.1, eps=-1e-8), r"eps .* must be in \[0, inf\)"),
        ("sgd", dict(learning_rate="fast"), r"learning_rate .* must be a number in \(0, inf\)"),
        ("sgd", dict(learning_rate=0.1, b1=0.9), r"'sgd' takes no hyperparameter 'b1'.*"),
        ("adam", dict(learning_rate=0.1, decay=0.9), r"accepts: learning_rate, b1, b2, eps"),
    ],
)
def test_create_rejects_bad_values(name, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        optim.create(name, **kwargs)


@pytest.mark.parametrize(
    "fields, pattern",
    [
        (dict(name="adamw"), r"optim.name: unknown optimizer 'adamw'.*Known optimizers: adagrad"),
        (dict(schedule="linear"), r"optim.schedule: unknown schedule 'linear'.*constant"),
        (dict(learning_rate=-1.0), r"optim.learning_rate .* must be in \(0, inf\), got -1.0"),
        (dict(decay=1.0), r"optim.decay .* must be in \[0, 1\), got 1.0"),
        (dict(b1=-0.1), r"optim.b1 .* must be in \[0, 1\), got -0.1"),
        (dict(weight_decay=-0.1), r"optim.weight_decay .* must be in \[0, inf\)"),
        (dict(clip_norm=-1.0), r"optim.clip_norm .* must be in \[0, inf\)"),
        (dict(step_factor=0.0), r"optim.step_factor .* must be in \(0, 1\]"),
        (dict(schedule="step"), r"optim.step_every_epochs must be > 0"),
        (dict(schedule="warmup_cosine", warmup_epochs=5.0), r"optim.warmup_epochs must be shorter"),
    ],
)
def test_from_config_rejects_bad_fields(fields, pattern):
    with pytest.raises(ValueError, match=pattern):
        optim.from_config(optim_cfg(**fields), steps_per_epoch=10, num_epochs=5)
