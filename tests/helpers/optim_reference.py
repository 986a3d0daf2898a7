"""NumPy references of the lecture's optimizers, and the problems they are run on.

Written from the lecture's formulas, never calling optax: the optimizer tests hold
`research.optim` to them (tests/optim/test_worked_examples.py, tests/optim/test_optim.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

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


def first_update(opt, grads, params):
    """The updates of `opt`'s first step (jitted: one compile beats op-by-op dispatch)."""
    return jax.jit(lambda g, p: opt.update(g, opt.init(p), p)[0])(grads, params)
