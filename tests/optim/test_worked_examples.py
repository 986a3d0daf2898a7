"""The lecture's optimizer update rules, by hand and against NumPy references.

Each registered optimizer follows its NumPy reference (tests/helpers/optim_reference.py)
on a quadratic and a tiny MLP; the first steps are worked out by hand where our rules
differ from optax's builtins (lecture.py's docstring). Registry, schedules, L2,
clipping and errors: test_optim.py.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from research import optim
from research.optim import schedules
from tests.helpers.optim_reference import (
    ATOL,
    HPARAMS,
    MLP_PARAMS,
    PROBLEMS,
    QUAD_THETA0,
    REFERENCES,
    RTOL,
    STEPS,
    f32,
    first_update,
    mlp_grad_jax,
    quad_grad_jax,
    quad_grad_np,
    reference,
    run_optax,
)

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


# --- Our side of each difference from optax (lecture.py's docstring) ---------------------
# optax's own behaviour is optax's to test; these pin the lecture rules where optax's
# builtins differ, each as a worked example of the first steps.

G_SMALL = jnp.array([1e-3, -0.5, 2.0], jnp.float32)


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
