"""The lecture's six update rules, written as optax gradient transformations.

Each function returns an `optax.GradientTransformation`: `init(params)` makes a
`NamedTuple` state and `update(grads, state, params)` returns the step
Δθ, to be added with `optax.apply_updates(params, updates)`. The learning rate
ε is folded into the step (optax's convention), so no `optax.scale` follows.
Every float hyperparameter may be a Python float, a jnp scalar or an optax
schedule (a function of the step count, starting at 0); a schedule is evaluated
at the count held in the state.

Symbols follow the lecture (CSCE 633, "Multilayer Perceptron – Optimization")
and its source, Goodfellow, Bengio & Courville, *Deep Learning*, ch. 8:
ε learning rate, α momentum, ρ decay, δ small constant, g the gradient, r and s
accumulated squared and plain gradients, t the step number (1 on the first
update). Defaults the lecture does not give come from that chapter: AdaGrad
δ = 1e-7 (Alg. 8.4), RMSProp δ = 1e-6 (Alg. 8.5), Adam ρ₁ = 0.9, ρ₂ = 0.999,
δ = 1e-8 (Alg. 8.7); α = 0.9 and RMSProp's ρ = 0.9 are the usual values
(also the base config's).

Where optax 0.2.8's builtins differ from the lecture (read from optax's source:
why these rules are written here rather than taken from optax). The lecture's
rule wins here; `tests/optim/test_worked_examples.py` pins our side of each difference, with the
lecture recurrences and a worked example of the first steps, and leaves optax's
side to optax:

* **SGD with momentum.** `optax.sgd(ε, momentum=α)` keeps m ← αm + g and steps
  −ε_t m, so the *current* ε_t multiplies every past gradient. The lecture keeps
  v ← αv − ε_t g, so each gradient is scaled by the ε of its own step. The two
  agree for a constant ε and differ under a schedule.
* **Nesterov.** `optax.sgd(ε, momentum=α, nesterov=True)` steps −ε_t (g + αm).
  With a constant ε this is exactly the φ-sequence below; under a schedule it
  differs for the same reason as momentum. optax also does not say which point
  its parameters are (they are φ = θ + αv, not the lecture's θ).
* **AdaGrad.** `optax.adagrad` starts the accumulator at r₀ = 0.1 (lecture: 0)
  and puts δ inside the root, g/√(r + δ) (lecture: g/(δ + √r)). Both change
  the first steps by orders of magnitude for small gradients.
* **RMSProp.** `optax.rmsprop` puts δ inside the root by default
  (`eps_in_sqrt=True`) and defaults δ to 1e-8 (lecture's source: 1e-6, outside
  the root). `optax.rmsprop(ε, decay=ρ, eps=δ, eps_in_sqrt=False)` matches.
* **Adam.** `optax.adam(ε, b1, b2, eps)` matches the lecture (δ outside the
  root, `eps_root=0`, bias correction with t starting at 1).
* **Plain SGD.** `optax.sgd(ε)` matches.

The slide writes AdaGrad as Δθ ← ε/(δ + √r) ⊙ g, θ ← θ + Δθ: the minus sign is
missing (a typo; Goodfellow's Algorithm 8.4 and the other rules on the slide
descend). We descend. The slide also omits Adam's moment updates; they are
taken from Algorithm 8.7.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

ScalarOrSchedule = optax.ScalarOrSchedule


def _at(hparam: ScalarOrSchedule, count: jax.Array) -> jax.Array | float:
    """A hyperparameter's value at step `count`: schedules are called, numbers pass."""
    return hparam(count) if callable(hparam) else hparam


def _divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """numerator / denominator, with 0 where the denominator is 0.

    The denominators below are δ + √r (or √r̂ + δ). They are 0 only when δ = 0 and
    every gradient so far was 0, in which case the numerator is 0 too; the step is
    then 0 rather than 0/0 = NaN, so δ = 0 is safe for parameters without gradient.
    """
    return numerator / jnp.where(denominator > 0, denominator, 1)


def _zeros(params: optax.Params) -> optax.Params:
    return optax.tree.zeros_like(params)


def _count() -> jax.Array:
    return jnp.zeros([], jnp.int32)


class SgdState(NamedTuple):
    """State of `sgd`: only the step count, for schedules."""

    count: jax.Array  # int32 (), updates applied so far


def sgd(learning_rate: ScalarOrSchedule) -> optax.GradientTransformation:
    """Stochastic gradient descent.

    Update rule: θ ← θ − ε g.

    Args:
      learning_rate: ε, a number or a schedule of the step count.

    Returns:
      The transformation; its updates are −ε g.
    """

    def init_fn(params):
        del params
        return SgdState(count=_count())

    def update_fn(grads, state, params=None):
        del params
        lr = _at(learning_rate, state.count)
        updates = jax.tree.map(lambda g: -lr * g, grads)
        updates = optax.tree.cast_like(updates, grads)
        return updates, SgdState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


class MomentumState(NamedTuple):
    """State of `momentum`."""

    count: jax.Array  # int32 (), updates applied so far
    velocity: optax.Updates  # v, same tree as the parameters


def momentum(
    learning_rate: ScalarOrSchedule, momentum: ScalarOrSchedule = 0.9
) -> optax.GradientTransformation:
    """SGD with (heavy-ball) momentum, in the lecture's form.

    Update rule: v ← αv − ε g;  θ ← θ + v, with v starting at 0.

    ε enters the velocity at the step it was used, so under a learning-rate
    schedule this is *not* `optax.sgd(ε, momentum=α)` (see the module docstring).

    Args:
      learning_rate: ε, a number or a schedule of the step count.
      momentum: α in [0, 1), how much of the previous velocity is kept.

    Returns:
      The transformation; its updates are the new velocity v.
    """

    def init_fn(params):
        return MomentumState(count=_count(), velocity=_zeros(params))

    def update_fn(grads, state, params=None):
        del params
        lr, alpha = _at(learning_rate, state.count), _at(momentum, state.count)
        velocity = jax.tree.map(lambda v, g: alpha * v - lr * g, state.velocity, grads)
        velocity = optax.tree.cast_like(velocity, state.velocity)
        updates = optax.tree.cast_like(velocity, grads)
        return updates, MomentumState(count=optax.safe_increment(state.count), velocity=velocity)

    return optax.GradientTransformation(init_fn, update_fn)


class NesterovState(NamedTuple):
    """State of `nesterov`."""

    count: jax.Array  # int32 (), updates applied so far
    velocity: optax.Updates  # v of the lecture's recurrence


def nesterov(
    learning_rate: ScalarOrSchedule, momentum: ScalarOrSchedule = 0.9
) -> optax.GradientTransformation:
    """Nesterov momentum, holding the look-ahead point φ = θ + αv.

    Lecture rule: v ← αv − ε ∇L(θ + αv);  θ ← θ + v, with v starting at 0.

    A gradient transformation only sees the gradient at the parameters it
    holds, so the parameters held here are the look-ahead point φ = θ + αv, where
    the lecture evaluates its gradient; the gradient passed to `update` is then
    exactly ∇L(θ + αv). With φ_t = θ_t + α_t v_t and g = ∇L(φ_t):

        v_{t+1} = α v_t − ε_t g
        φ_{t+1} − φ_t = v_{t+1} + α v_{t+1} − α v_t = α v_{t+1} − ε_t g

    (using α v_t = v_{t+1} + ε_t g), so the update is α v_{t+1} − ε_t g and the φ
    sequence follows the lecture's θ sequence exactly: θ_t = φ_t − α v_t. Since
    v₀ = 0, φ₀ = θ₀ and training starts from the same point. The parameters a
    training loop evaluates are φ, which differ from θ by α v (vanishing as the
    steps shrink). For a time-varying α this uses α of the current step in both
    places, i.e. it assumes α is constant over each step.

    Args:
      learning_rate: ε, a number or a schedule of the step count.
      momentum: α in [0, 1), how much of the previous velocity is kept.

    Returns:
      The transformation; its updates are α v_{t+1} − ε g (a step of φ).
    """

    def init_fn(params):
        return NesterovState(count=_count(), velocity=_zeros(params))

    def update_fn(grads, state, params=None):
        del params
        lr, alpha = _at(learning_rate, state.count), _at(momentum, state.count)
        velocity = jax.tree.map(lambda v, g: alpha * v - lr * g, state.velocity, grads)
        updates = jax.tree.map(lambda v, g: alpha * v - lr * g, velocity, grads)
        velocity = optax.tree.cast_like(velocity, state.velocity)
        updates = optax.tree.cast_like(updates, grads)
        return updates, NesterovState(count=optax.safe_increment(state.count), velocity=velocity)

    return optax.GradientTransformation(init_fn, update_fn)


class SgdNesterovState(NamedTuple):
    """State of `sgd_nesterov`."""

    count: jax.Array  # int32 (), updates applied so far
    buffer: optax.Updates  # b, PyTorch's momentum buffer


def sgd_nesterov(
    learning_rate: ScalarOrSchedule, momentum: ScalarOrSchedule = 0.9
) -> optax.GradientTransformation:
    """Nesterov momentum in PyTorch's form: not one of the lecture's rules.

    Update rule: b ← α b + g;  θ ← θ − ε_t (g + α b), with b starting at 0.

    The numbers of `torch.optim.SGD(lr=ε, momentum=α, nesterov=True)` (dampening 0)
    and of `optax.sgd(ε, momentum=α, nesterov=True)`, the form that recipes written
    for PyTorch (airbench94) are tuned in. For a constant ε it equals `nesterov`
    (b = −v/ε); under a schedule the current ε_t scales the whole buffer, while the
    lecture's velocity keeps each gradient scaled by the ε of its own step.

    Args:
      learning_rate: ε, a number or a schedule of the step count.
      momentum: α in [0, 1).

    Returns:
      The transformation; its updates are −ε_t (g + α b).
    """

    def init_fn(params):
        return SgdNesterovState(count=_count(), buffer=_zeros(params))

    def update_fn(grads, state, params=None):
        del params
        lr, alpha = _at(learning_rate, state.count), _at(momentum, state.count)
        buffer = jax.tree.map(lambda b, g: alpha * b + g, state.buffer, grads)
        updates = jax.tree.map(lambda b, g: -lr * (g + alpha * b), buffer, grads)
        buffer = optax.tree.cast_like(buffer, state.buffer)
        updates = optax.tree.cast_like(updates, grads)
        return updates, SgdNesterovState(count=optax.safe_increment(state.count), buffer=buffer)

    return optax.GradientTransformation(init_fn, update_fn)


class AdagradState(NamedTuple):
    """State of `adagrad`."""

    count: jax.Array  # int32 (), updates applied so far
    sum_of_squares: optax.Updates  # r: Σ g ⊙ g over all steps, starting at 0


def adagrad(
    learning_rate: ScalarOrSchedule, eps: ScalarOrSchedule = 1e-7
) -> optax.GradientTransformation:
    """AdaGrad (Goodfellow et al., Algorithm 8.4).

    Update rule: r ← r + g ⊙ g;  θ ← θ − ε / (δ + √r) ⊙ g, with r starting at 0.

    Unlike `optax.adagrad`, r starts at 0 (not 0.1) and δ is added to √r (not
    inside the root). The slide's missing minus sign is a typo (module docstring).

    Args:
      learning_rate: ε, a number or a schedule of the step count.
      eps: δ ≥ 0, added to √r for numerical stability.

    Returns:
      The transformation; its updates are −ε g / (δ + √r).
    """

    def init_fn(params):
        return AdagradState(count=_count(), sum_of_squares=_zeros(params))

    def update_fn(grads, state, params=None):
        del params
        lr, delta = _at(learning_rate, state.count), _at(eps, state.count)
        r = jax.tree.map(lambda r, g: r + g * g, state.sum_of_squares, grads)
        updates = jax.tree.map(lambda r, g: -lr * _divide(g, delta + jnp.sqrt(r)), r, grads)
        r = optax.tree.cast_like(r, state.sum_of_squares)
        updates = optax.tree.cast_like(updates, grads)
        return updates, AdagradState(count=optax.safe_increment(state.count), sum_of_squares=r)

    return optax.GradientTransformation(init_fn, update_fn)


class RmsPropState(NamedTuple):
    """State of `rmsprop`."""

    count: jax.Array  # int32 (), updates applied so far
    mean_square: optax.Updates  # r: moving average of g ⊙ g, starting at 0


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: ScalarOrSchedule = 0.9,
    eps: ScalarOrSchedule = 1e-6,
) -> optax.GradientTransformation:
    """RMSProp (Goodfellow et al., Algorithm 8.5).

    Update rule: r ← ρ r + (1 − ρ) g ⊙ g;  θ ← θ − ε / (δ + √r) ⊙ g, with r
    starting at 0 and no bias correction.

    Unlike `optax.rmsprop`'s default, δ is added to √r (not inside the root).

    Args:
      learning_rate: ε, a number or a schedule of the step count.
      decay: ρ in [0, 1), how much of the previous average is kept.
      eps: δ ≥ 0, added to √r for numerical stability.

    Returns:
      The transformation; its updates are −ε g / (δ + √r).
    """

    def init_fn(params):
        return RmsPropState(count=_count(), mean_square=_zeros(params))

    def update_fn(grads, state, params=None):
        del params
        lr, rho, delta = (_at(h, state.count) for h in (learning_rate, decay, eps))
        r = jax.tree.map(lambda r, g: rho * r + (1 - rho) * g * g, state.mean_square, grads)
        updates = jax.tree.map(lambda r, g: -lr * _divide(g, delta + jnp.sqrt(r)), r, grads)
        r = optax.tree.cast_like(r, state.mean_square)
        updates = optax.tree.cast_like(updates, grads)
        return updates, RmsPropState(count=optax.safe_increment(state.count), mean_square=r)

    return optax.GradientTransformation(init_fn, update_fn)


class AdamState(NamedTuple):
    """State of `adam`."""

    count: jax.Array  # int32 (), updates applied so far (t − 1 during an update)
    first_moment: optax.Updates  # s: moving average of g, starting at 0
    second_moment: optax.Updates  # r: moving average of g ⊙ g, starting at 0


def adam(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
) -> optax.GradientTransformation:
    """Adam (Goodfellow et al., Algorithm 8.7).

    Update rule, with t the number of this update (1 on the first):

        s ← ρ₁ s + (1 − ρ₁) g;   r ← ρ₂ r + (1 − ρ₂) g ⊙ g
        ŝ = s / (1 − ρ₁ᵗ);   r̂ = r / (1 − ρ₂ᵗ)
        θ ← θ − ε ŝ / (√r̂ + δ)

    Same numbers as `optax.adam(ε, b1, b2, eps)`; written out so that all six
    rules read alike.

    Args:
      learning_rate: ε, a number or a schedule of the step count.
      b1: ρ₁ in [0, 1), decay of the first moment s.
      b2: ρ₂ in [0, 1), decay of the second moment r.
      eps: δ ≥ 0, added to √r̂ for numerical stability.

    Returns:
      The transformation; its updates are −ε ŝ / (√r̂ + δ).
    """

    def init_fn(params):
        return AdamState(count=_count(), first_moment=_zeros(params), second_moment=_zeros(params))

    def update_fn(grads, state, params=None):
        del params
        lr, rho1, rho2, delta = (_at(h, state.count) for h in (learning_rate, b1, b2, eps))
        t = optax.safe_increment(state.count)
        s = jax.tree.map(lambda s, g: rho1 * s + (1 - rho1) * g, state.first_moment, grads)
        r = jax.tree.map(lambda r, g: rho2 * r + (1 - rho2) * g * g, state.second_moment, grads)
        # t is an int32 array, so ρᵗ is computed on device in the moments' precision.
        correction1, correction2 = 1 - rho1**t, 1 - rho2**t

        def step(s, r):
            s_hat, r_hat = s / correction1, r / correction2
            return -lr * _divide(s_hat, jnp.sqrt(r_hat) + delta)

        updates = jax.tree.map(step, s, r)
        s = optax.tree.cast_like(s, state.first_moment)
        r = optax.tree.cast_like(r, state.second_moment)
        updates = optax.tree.cast_like(updates, grads)
        return updates, AdamState(count=t, first_moment=s, second_moment=r)

    return optax.GradientTransformation(init_fn, update_fn)
