"""Lookahead with airbench94's EMA schedule: a slow copy of the model's variables.

Lookahead (Zhang, Lucas, Hinton and Ba 2019, "Lookahead Optimizer: k steps
forward, 1 step back") keeps a slow copy of the weights; every k steps of the
inner optimizer the slow copy moves part of the way to the trained ("fast")
weights and training goes on from it. airbench94 (Jordan 2024, from
hlb-CIFAR10) uses it with a decay that grows during the run:

    every k steps (t = steps taken, T = the run's steps):
        d_t = decay · (t / T)^power          airbench94: decay = 0.95^5, power = 3, k = 5
        slow ← slow + (1 − d_t)(fast − slow)  (torch's lerp_)
        fast ← slow
    after the last step: fast ← slow         (the evaluated and saved weights)

and applies it to every floating-point entry of the model's state: the
parameters *and* the BatchNorm running statistics. An optax transformation only
sees the parameters, so the training step (`research.train.steps`) applies
`Lookahead.sync` to `(params, batch_stats)` after each update, with the slow copy
kept in the optimizer state (`LookaheadState`, checkpointed with it). The inner
optimizer's state (momentum buffers) is not touched, as in airbench94.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class LookaheadState(NamedTuple):
    """The optimizer state of a run with lookahead: the inner state and the slow copy."""

    inner: Any  # the optimizer's own state
    slow: Any  # {"params": ..., "batch_stats": ...}, the slow variables


@dataclasses.dataclass(frozen=True)
class Lookahead:
    """Lookahead over a run of `total_steps` steps (see the module docstring).

    Attributes:
      every: k, steps between synchronisations (>= 1).
      decay: d at the end of the run, in [0, 1].
      power: d_t = decay * (t / T)^power.
      total_steps: T, the run's steps; after step T the variables are the slow copy.
    """

    every: int
    decay: float
    power: float
    total_steps: int

    def __post_init__(self):
        if not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"optim.lookahead_every={self.every!r} must be an integer >= 1")
        if not 0 <= self.decay <= 1:
            raise ValueError(f"optim.lookahead_decay={self.decay!r} must be in [0, 1]")
        if not self.power >= 0:
            raise ValueError(f"optim.lookahead_power={self.power!r} must be >= 0")

    def decay_at(self, count) -> jax.Array:
        """d_t after `count` steps (float32)."""
        t = jnp.asarray(count, jnp.float32)
        return self.decay * (t / self.total_steps) ** self.power

    def sync(self, count, fast, slow):
        """The variables after step `count` (1 on the first): `(fast, slow)`.

        At multiples of `every` the slow copy takes `1 - d_t` of the way to `fast` and
        `fast` becomes it; at `count == total_steps` `fast` becomes the slow copy. Other
        steps leave both as they are. Traceable (`count` may be an array).
        """
        due = count % self.every == 0
        weight = jnp.where(due, 1 - self.decay_at(count), 0.0)

        def lerp(s, f):
            return (s + weight.astype(s.dtype) * (f - s)).astype(s.dtype)

        slow = jax.tree_util.tree_map(lerp, slow, fast)
        take = due | (count >= self.total_steps)
        fast = jax.tree_util.tree_map(lambda f, s: jnp.where(take, s, f), fast, slow)
        return fast, slow
