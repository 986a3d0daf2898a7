"""Learning-rate schedules: functions of the step count (0 on the first update).

Each factory takes the peak value first and returns an `optax.Schedule`. The
peak may be a traced array (so a sweep can vmap over it under
`optax.inject_hyperparams`); only the integer step arguments are checked here,
in Python. Steps count optimizer updates, not epochs: `research.optim.from_config`
converts the config's epochs with `steps_per_epoch`.

  constant       ε_t = ε
  step           ε_t = ε · factor^⌊t / every_steps⌋
  cosine         ε_t = ε · ½(1 + cos(π min(t, T) / T)), reaching 0 at t = T
  warmup_cosine  ε_t = ε · (t + 1) / W for t < W, then cosine from ε at t = W to 0 at t = T
  warmup_linear  ε_t = ε · (a + (1 − a) t / W) for t < W, then linear from ε at t = W to
                 ε · b at t = T (airbench94's: a = 0.2, b = 0.07, W = 23% of T)

The warmup starts at ε/W rather than at 0 (optax's `warmup_cosine_decay_schedule`
starts at its `init_value`, usually 0), so the first update is never wasted; it
reaches ε at t = W − 1.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


def _check_steps(name: str, value: int, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def constant(value) -> optax.Schedule:
    """ε_t = ε at every step.

    Args:
      value: ε.

    Returns:
      The schedule.
    """
    return lambda count: jnp.full(jnp.shape(count), value, dtype=float)


def step(value, *, every_steps: int, factor: float) -> optax.Schedule:
    """Multiplies ε by `factor` every `every_steps` steps.

    ε_t = ε · factor^⌊t / every_steps⌋, so steps 0 … every_steps − 1 use ε.

    Args:
      value: ε, the value at step 0.
      every_steps: how many updates between drops (≥ 1).
      factor: the multiplier at each drop, in (0, 1].

    Returns:
      The schedule.
    """
    _check_steps("every_steps", every_steps, minimum=1)
    if not 0 < factor <= 1:
        raise ValueError(f"factor must be in (0, 1], got {factor!r}")
    return lambda count: value * factor ** (jnp.asarray(count) // every_steps)


def _cosine_factor(count, start: int, total_steps: int):
    """½(1 + cos(π progress)) with progress = (t − start)/(total − start) clipped to [0, 1]."""
    progress = jnp.clip((jnp.asarray(count) - start) / (total_steps - start), 0.0, 1.0)
    return 0.5 * (1 + jnp.cos(jnp.pi * progress))


def cosine(value, *, total_steps: int) -> optax.Schedule:
    """Cosine decay from ε at step 0 to 0 at `total_steps`, then 0.

    ε_t = ε · ½(1 + cos(π min(t, T) / T)).

    Args:
      value: ε, the value at step 0.
      total_steps: T, the step at which the schedule reaches 0 (≥ 1).

    Returns:
      The schedule.
    """
    _check_steps("total_steps", total_steps, minimum=1)
    return lambda count: value * _cosine_factor(count, 0, total_steps)


def warmup_cosine(value, *, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """Linear warmup to ε over `warmup_steps`, then cosine decay to 0 at `total_steps`.

    ε_t = ε (t + 1) / W for t < W; ε · ½(1 + cos(π (t − W) / (T − W))) for W ≤ t ≤ T;
    0 after T. With W = 0 this is `cosine`.

    Args:
      value: ε, the peak.
      warmup_steps: W ≥ 0.
      total_steps: T > W.

    Returns:
      The schedule.
    """
    _check_steps("warmup_steps", warmup_steps, minimum=0)
    _check_steps("total_steps", total_steps, minimum=warmup_steps + 1)

    def schedule(count):
        count = jnp.asarray(count)
        # max(W, 1) only keeps the unused branch finite when W = 0.
        warmup = (count + 1) / max(warmup_steps, 1)
        return value * jnp.where(
            count < warmup_steps, warmup, _cosine_factor(count, warmup_steps, total_steps)
        )

    return schedule


def warmup_linear(
    value, *, warmup_steps: int, total_steps: int, start_factor: float, end_factor: float
) -> optax.Schedule:
    """Linear from ε·a to ε over `warmup_steps`, then linear from ε to ε·b at `total_steps`.

    ε_t = ε (a + (1 − a) t / W) for t < W; ε (1 + (b − 1)(t − W) / (T − W)) for W ≤ t ≤ T;
    ε·b after T. airbench94's `get_lr` with a = 0.2, b = 0.07 and W = int(0.23 T).

    Args:
      value: ε, the peak (reached at t = W).
      warmup_steps: W ≥ 0.
      total_steps: T > W.
      start_factor: a ≥ 0, the value at step 0 in units of ε.
      end_factor: b ≥ 0, the value at step T in units of ε.

    Returns:
      The schedule.
    """
    _check_steps("warmup_steps", warmup_steps, minimum=0)
    _check_steps("total_steps", total_steps, minimum=warmup_steps + 1)
    for name, factor in (("start_factor", start_factor), ("end_factor", end_factor)):
        if not factor >= 0:
            raise ValueError(f"{name} must be >= 0, got {factor!r}")

    def schedule(count):
        count = jnp.asarray(count)
        warmup = start_factor + (1 - start_factor) * count / max(warmup_steps, 1)
        progress = jnp.clip((count - warmup_steps) / (total_steps - warmup_steps), 0.0, 1.0)
        decay = 1 + (end_factor - 1) * progress
        return value * jnp.where(count < warmup_steps, warmup, decay)

    return schedule
