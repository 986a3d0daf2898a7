"""Tests for research.optim: the lecture's update rules, schedules, L2, clipping, checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from research import optim
from research.config import get_base_config
from research.optim import schedules
from research.registry import UnknownNameError

RTOL, ATOL = 1e-5, 1e-6  # float32 precision
STEPS = 100


def f32(x: float) -> float:
    """x as float32 holds it, so the float64 references use the same constants."""
    return float(np.float32(x))


# --- NumPy references, written from the lecture's formulas -----------------------------
# Each runs `steps` updates from theta (float64) with gradients from `grad(theta)` and
# returns the trajectory (steps + 1, n); `lr(t)` is ε at update t (0-based).


def ref_sgd(grad, theta, steps, lr):
    out = [theta]
    for t in range(steps):
        theta = theta - lr(t) * grad(theta)
        out.append(theta)
    return np.stack(out)


def ref_momentum(grad, theta, steps, lr, momentum):
    v, out = np.zeros_like(theta), [theta]
    for t in range(steps):
        v = momentum * v - lr(t) * grad(theta)
        theta = theta + v
        out.append(theta)
    return np.stack(out)


def ref_nesterov(grad, theta, steps, lr, momentum):
    """The lecture's θ recurrence; returns the look-ahead points φ = θ + αv it evaluates."""
    v, out = np.zeros_like(theta), [theta]
    for t in range(steps):
        v = momentum * v - lr(t) * grad(theta + momentum * v)
        theta = theta + v
        out.append(theta + momentum * v)
    return np.stack(out)


def ref_adagrad(grad, theta, steps, lr, eps):
    r, out = np.zeros_like(theta), [theta]
    for t in range(steps):
        g = grad(theta)
        r = r + g * g
        theta = theta - lr(t) / (eps + np.sqrt(r)) * g
        out.append(theta)
    return np.stack(out)


def ref_rmsprop(grad, theta, steps, lr, decay, eps):
    r, out = np.zeros_like(theta), [theta]
    for t in range(steps):
        g = grad(theta)
        r = decay * r + (1 - decay) * g * g
        theta = theta - lr(t) / (eps + np.sqrt(r)) * g
        out.append(theta)
    return np.stack(out)


def ref_adam(grad, theta, steps, lr, b1, b2, eps):
    s, r, out = np.zeros_like(theta), np.zeros_like(theta), [theta]
    for t in range(1, steps + 1):
        g = grad(theta)
        s = b1 * s + (1 - b1) * g
        r = b2 * r + (1 - b2) * g * g
        s_hat, r_hat = s / (1 - b1**t), r / (1 - b2**t)
        theta = theta - lr(t - 1) * s_hat / (np.sqrt(r_hat) + eps)
        out.append(theta)
    return np.stack(out)


def ref_sgd_nesterov(grad, theta, steps, lr, momentum):
    """PyTorch's SGD(nesterov=True): b <- αb + g; θ <- θ - ε_t (g + αb) (not the lecture's)."""
    b, out = np.zeros_like(theta), [theta]
    for t in range(steps):
        g = grad(theta)
        b = momentum * b + g
        theta = theta - lr(t) * (g + momentum * b)
        out.append(theta)
    return np.stack(out)


REFERENCES = {
    "sgd": ref_sgd,
    "sgd_nesterov": ref_sgd_nesterov,
    "momentum": ref_momentum,
    "nesterov": ref_nesterov,
    "adagrad": ref_adagrad,
    "rmsprop": ref_rmsprop,
    "adam": ref_adam,
}
# Hyperparameters per optimizer for the agreement tests (float32-exact values).
HPARAMS = {
    "sgd": dict(learning_rate=f32(0.1)),
    "momentum": dict(learning_rate=f32(0.05), momentum=f32(0.9)),
    "nesterov": dict(learning_rate=f32(0.05), momentum=f32(0.9)),
    "sgd_nesterov": dict(learning_rate=f32(0.05), momentum=f32(0.9)),
    "adagrad": dict(learning_rate=f32(0.1), eps=f32(1e-7)),
    # ρ = 0.99: with ρ = 0.9 the quadratic's coordinate with a small gradient gets steps
    # ε/√r so large that float32 rounding grows ~3x per step, and the comparison would
    # measure chaos rather than the formula (float32 and float64 NumPy runs disagree too).
    "rmsprop": dict(learning_rate=f32(0.003), decay=f32(0.99), eps=f32(1e-6)),
    "adam": dict(learning_rate=f32(0.01), b1=f32(0.9), b2=f32(0.999), eps=f32(1e-8)),
}


def reference(name, grad, theta, steps, learning_rate, **hparams):
    lr = learning_rate if callable(learning_rate) else (lambda t: learning_rate)
    return REFERENCES[name](grad, np.asarray(theta, np.float64), steps, lr, **hparams)


def run_optax(opt, grad_fn, params, steps):
    """Trajectory of `opt` from `params` as flat float32 vectors (steps + 1, n)."""

    @jax.jit
    def step(params, state):
        updates, state = opt.update(grad_fn(params), state, params)
        return optax.apply_updates(params, updates), state

    state, out = opt.init(params), [ravel_pytree(params)[0]]
    for _ in range(STEPS if steps is None else steps):
        params, state = step(params, state)
        out.append(ravel_pytree(params)[0])
    return np.stack(out)


# --- Problems: a quadratic and a tiny MLP -------------------------------------------------

_rng = np.random.default_rng(0)
_q, _ = np.linalg.qr(_rng.normal(size=(5, 5)))
QUAD_A = _q @ np.diag([0.5, 0.8, 1.0, 1.5, 2.0]) @ _q.T  # SPD, eigenvalues 0.5 … 2
QUAD_B = _rng.normal(size=5)
QUAD_THETA0 = np.float32(3 * _rng.normal(size=5))


def quad_grad_np(theta):
    """∇ of L(θ) = ½ θᵀAθ − bᵀθ, in float64."""
    return QUAD_A @ theta - QUAD_B


def quad_grad_jax(theta):
    return jnp.asarray(QUAD_A, jnp.float32) @ theta - jnp.asarray(QUAD_B, jnp.float32)


MLP_X = np.float32(_rng.normal(size=(16, 4)))
MLP_Y = np.float32(_rng.normal(size=(16, 2)))
MLP_PARAMS = {
    "hidden": {
        "kernel": jnp.asarray(_rng.normal(size=(4, 8)) / 2, jnp.float32),
        "bias": jnp.asarray(_rng.normal(size=8) / 10, jnp.float32),
    },
    "out": {
        "kernel": jnp.asarray(_rng.normal(size=(8, 2)) / 3, jnp.float32),
        "bias": jnp.zeros(2, jnp.float32),
    },
}


def mlp_loss(params):
    h = jnp.tanh(MLP_X @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    pred = h @ params["out"]["kernel"] + params["out"]["bias"]
    return 0.5 * jnp.mean(jnp.sum((pred - MLP_Y) ** 2, axis=-1))


mlp_grad_jax = jax.jit(jax.grad(mlp_loss))
_, _unravel = ravel_pytree(MLP_PARAMS)


def mlp_grad_np(flat):
    """The jax gradient at a float64 point, as float64 (for the NumPy references)."""
    params = _unravel(jnp.asarray(flat, jnp.float32))
    return np.asarray(ravel_pytree(mlp_grad_jax(params))[0], np.float64)


PROBLEMS = {
    "quadratic": (quad_grad_jax, quad_grad_np, jnp.asarray(QUAD_THETA0)),
    "mlp": (mlp_grad_jax, mlp_grad_np, MLP_PARAMS),
}


# --- The lecture's rules ------------------------------------------------------------------


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("name", optim.names())
def test_matches_lecture_recurrence(name, problem):
    assert name in REFERENCES, f"add a NumPy reference of {name!r} to REFERENCES"
    grad_jax, grad_np, params = PROBLEMS[problem]
    hp = HPARAMS[name]
    got = run_optax(optim.create(name, **hp), grad_jax, params, STEPS)
    want = reference(name, grad_np, ravel_pytree(params)[0], STEPS, **hp)
    # The run moved: agreement is not just both staying at θ0.
    assert np.linalg.norm(want[-1] - want[0]) > 0.1
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", optim.names())
def test_matches_lecture_with_schedule(name):
    """ε may be a schedule; the recurrence uses ε_t at update t."""
    hp = dict(HPARAMS[name])
    peak = hp.pop("learning_rate")
    sched = schedules.step(peak, every_steps=7, factor=f32(0.5))
    got = run_optax(optim.create(name, learning_rate=sched, **hp), quad_grad_jax, QUAD_THETA0, 30)
    want = reference(
        name, quad_grad_np, QUAD_THETA0, 30, learning_rate=lambda t: peak * 0.5 ** (t // 7), **hp
    )
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_nesterov_phi_is_theta_plus_alpha_v_in_the_first_steps():
    """Worked example, L(θ) = ½θ², ε = 0.1, α = 0.5, θ0 = 1: φ1 = 0.85, φ2 = 0.6975."""
    # Lecture: v1 = -0.1·∇L(1) = -0.1, θ1 = 0.9, φ1 = θ1 + α v1 = 0.85;
    # v2 = 0.5·(-0.1) - 0.1·φ1 = -0.135, θ2 = 0.765, φ2 = 0.765 - 0.0675 = 0.6975.
    got = run_optax(
        optim.create("nesterov", learning_rate=0.1, momentum=0.5), lambda x: x, jnp.ones(1), 2
    )
    np.testing.assert_allclose(got[:, 0], [1.0, 0.85, 0.6975], rtol=1e-6)


def test_every_float_hyperparameter_may_be_a_jnp_scalar_or_schedule():
    hp = HPARAMS["adam"]
    as_arrays = {k: jnp.float32(v) for k, v in hp.items()}
    as_schedules = {k: schedules.constant(v) for k, v in hp.items()}
    want = run_optax(optim.create("adam", **hp), quad_grad_jax, QUAD_THETA0, 10)
    for variant in (as_arrays, as_schedules):
        got = run_optax(optim.create("adam", **variant), quad_grad_jax, QUAD_THETA0, 10)
        np.testing.assert_allclose(got, want, rtol=1e-6)


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


# --- Our side of each difference from optax (lecture.py's docstring) ---------------------
# optax's own behaviour is optax's to test; these pin the lecture rules where optax's
# builtins differ, each as a worked example of the first steps.

G_SMALL = jnp.array([1e-3, -0.5, 2.0], jnp.float32)


def first_update(opt, grads, params):
    """The updates of `opt`'s first step (jitted: one compile beats op-by-op dispatch)."""
    return jax.jit(lambda g, p: opt.update(g, opt.init(p), p)[0])(grads, params)


def one_step(opt, grads):
    return np.asarray(first_update(opt, grads, jnp.zeros_like(grads)), np.float64)


def test_adagrad_accumulator_starts_at_zero_and_delta_is_outside_the_root():
    # r1 = g², so the first step is -ε g / (δ + |g|) ≈ -ε sign(g): with ε = 0.1, δ = 1e-7,
    # g = 1e-3 gives -0.1 * 1e-3 / (1e-3 + 1e-7) = -0.09999, g = -0.5 gives +0.1.
    # (A start at r0 = 0.1, or δ inside the root, would make the 1e-3 step ~300x smaller.)
    lr, eps = 0.1, 1e-7
    got = one_step(optim.create("adagrad", learning_rate=lr, eps=eps), G_SMALL)
    np.testing.assert_allclose(got, [-0.1 * 1e-3 / (1e-3 + 1e-7), 0.1, -0.1], rtol=1e-6)
    # A tiny gradient, 1e-4: δ + √r = 1.001e-4, so the step is -0.1 / 1.001 = -0.0999.
    tiny = one_step(optim.create("adagrad", learning_rate=lr, eps=eps), jnp.array([1e-4]))
    np.testing.assert_allclose(tiny, [-0.1 / 1.001], rtol=1e-5)


def test_rmsprop_delta_is_outside_the_root():
    # r1 = (1 - ρ) g² = 0.1 g², so the first step is -ε g / (δ + √0.1 |g|). With ε = 0.01,
    # δ = 1e-6: g = 1e-6 -> -0.01 / (1 + √0.1) = -0.0075975; g = 1e-3 -> -0.01 / (1e-3 +
    # √0.1) ≈ -0.031613 (δ inside the root would give -0.01e-6 / √(1e-13 + 1e-6) ≈ -1e-5
    # for the first).
    g = jnp.array([1e-6, 1e-3], jnp.float32)
    got = one_step(optim.create("rmsprop", learning_rate=0.01, decay=0.9, eps=1e-6), g)
    np.testing.assert_allclose(
        got, [-0.01 / (1 + np.sqrt(0.1)), -0.01 * 1e-3 / (1e-6 + np.sqrt(0.1) * 1e-3)], rtol=1e-5
    )
    assert got[0] == pytest.approx(-0.0075975, rel=1e-4)


@pytest.mark.parametrize(
    "name, expected",
    [
        # L(θ) = θ (g = 1 everywhere), α = 0.5, ε = 0.1, 0.1, 0.01 (a 10x drop at step 2):
        # v1 = -0.1, v2 = 0.5 * -0.1 - 0.1 = -0.15, v3 = 0.5 * -0.15 - 0.01 = -0.085, so θ is
        # 0, -0.1, -0.25, -0.335. Each gradient keeps the ε of its own step: rescaling the
        # whole velocity by the new ε (optax's sgd) would step -0.01 * 1.75 = -0.0175 last.
        ("momentum", [0.0, -0.1, -0.25, -0.335]),
        # The same v; the parameters are the look-ahead points φ = θ + αv:
        # -0.1 - 0.05 = -0.15, -0.25 - 0.075 = -0.325, -0.335 - 0.0425 = -0.3775.
        ("nesterov", [0.0, -0.15, -0.325, -0.3775]),
    ],
)
def test_momentum_keeps_each_gradients_own_learning_rate(name, expected):
    sched = schedules.step(0.1, every_steps=2, factor=0.1)
    opt = optim.create(name, learning_rate=sched, momentum=0.5)
    got = run_optax(opt, jnp.ones_like, jnp.zeros(1), 3)
    np.testing.assert_allclose(got[:, 0], expected, rtol=1e-6, atol=1e-7)


def test_l2_enters_the_gradient_before_adam_normalises_it():
    # L2 is in the objective (add_l2, before the optimizer), not decoupled weight decay: the
    # first Adam step is -ε sign(g + λW) on kernels (ŝ/√r̂ = sign for one step) and
    # -ε sign(g) on biases, which the penalty leaves out.
    lam, lr = 0.5, 0.01
    grads, params = mlp_grad_jax(MLP_PARAMS), MLP_PARAMS
    l2_adam = optax.chain(optim.add_l2(lam), optim.create("adam", learning_rate=lr))
    ours = first_update(l2_adam, grads, params)
    k, gk = params["hidden"]["kernel"], grads["hidden"]["kernel"]
    np.testing.assert_allclose(ours["hidden"]["kernel"], -lr * np.sign(gk + lam * k), rtol=1e-4)
    gb = grads["hidden"]["bias"]
    np.testing.assert_allclose(ours["hidden"]["bias"], -lr * np.sign(gb), rtol=1e-4)
    # The penalty flips some steps, so this is not the plain Adam step.
    assert (np.sign(gk + lam * k) != np.sign(gk)).any()


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
