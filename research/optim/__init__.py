"""The lecture optimizers, their schedules and L2 penalty, built by name or from a config.

Entry points:

  create(name, *, learning_rate, inject=False, **hparams)  one lecture optimizer
  from_config(optim_cfg, *, steps_per_epoch, num_epochs, inject=False, total_steps=None)
      clip → L2 → optimizer (with the schedule as its learning rate)
  lookahead_from_config(optim_cfg, *, total_steps)  the step's lookahead (lookahead.py), or None
  learning_rate_schedule(optim_cfg, *, steps_per_epoch, num_epochs)  ε_t, for logging
  set_hyperparams(state, **values)  change injected hyperparameters (e.g. per trial)
  names(), defaults(name), weight_mask(params), add_l2(weight_decay)

Registry contract: `OPTIMIZERS` maps a name to a factory
`f(learning_rate, **hparams) -> optax.GradientTransformation` whose keyword
arguments (other than `learning_rate`) are the optimizer's hyperparameters, with
the defaults in the signature. Each hyperparameter name must have a valid range
in `RANGES` and, to be set from a config, a field of the same name in
`config.optim` (research/config.py). The update rules and every difference from
optax's builtins are in `lecture.py`. `SCHEDULES` maps a name to
`f(value, **steps) -> optax.Schedule`, whose keyword arguments are taken from
`{total_steps, warmup_steps, every_steps, factor, start_factor, end_factor}`.

Beyond the lecture: "sgd_nesterov" is PyTorch's `SGD(nesterov=True)` (the form
recipes such as airbench94 are written in; `lecture.sgd_nesterov`).

Sweeps: with `inject=True` the result is wrapped in `optax.inject_hyperparams`,
so the numeric hyperparameters live in `state.hyperparams` as arrays. Trials
that differ only in those values share one optimizer and differ in state::

    opt = create("momentum", learning_rate=0.1, inject=True)
    states = jax.vmap(lambda lr: set_hyperparams(opt.init(params), learning_rate=lr))(lrs)
    updates, states = jax.vmap(opt.update)(grads, states, params)
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.optim import lecture, schedules
from research.optim.lookahead import Lookahead
from research.optim.regularize import add_l2, is_weight, weight_mask
from research.registry import Registry, UnknownNameError

__all__ = [
    "CONFIG_FIELDS",
    "OPTIMIZERS",
    "RANGES",
    "SCHEDULES",
    "WEIGHT_DECAY_MASKS",
    "Lookahead",
    "Range",
    "add_l2",
    "create",
    "defaults",
    "from_config",
    "is_weight",
    "learning_rate_schedule",
    "lookahead_from_config",
    "names",
    "set_hyperparams",
    "weight_mask",
]

OPTIMIZERS: Registry[Callable[..., optax.GradientTransformation]] = Registry(
    "optimizer",
    {
        "sgd": lecture.sgd,
        "momentum": lecture.momentum,
        "nesterov": lecture.nesterov,
        "adagrad": lecture.adagrad,
        "rmsprop": lecture.rmsprop,
        "adam": lecture.adam,
        # Beyond the lecture: PyTorch's form of Nesterov momentum (ε_t multiplies the buffer).
        "sgd_nesterov": lecture.sgd_nesterov,
    },
)

SCHEDULES: Registry[Callable[..., optax.Schedule]] = Registry(
    "schedule",
    {
        "constant": schedules.constant,
        "step": schedules.step,
        "cosine": schedules.cosine,
        "warmup_cosine": schedules.warmup_cosine,
        "warmup_linear": schedules.warmup_linear,
    },
)


@dataclasses.dataclass(frozen=True)
class Range:
    """An interval of valid values, printed in interval notation, e.g. `[0, 1)`."""

    low: float
    high: float
    low_closed: bool
    high_closed: bool
    meaning: str  # the lecture's symbol or a short description, for messages

    def contains(self, x: np.ndarray) -> np.ndarray:
        above = x >= self.low if self.low_closed else x > self.low
        below = x <= self.high if self.high_closed else x < self.high
        return above & below

    def __str__(self) -> str:
        low, high = (f"{v:g}" for v in (self.low, self.high))
        return f"{'[' if self.low_closed else '('}{low}, {high}{']' if self.high_closed else ')'}"


_INF = math.inf
# Valid values of every hyperparameter and numeric config field, by name.
RANGES: dict[str, Range] = {
    "learning_rate": Range(0, _INF, False, False, "ε, the learning rate"),
    "momentum": Range(0, 1, True, False, "α, velocity decay"),
    "decay": Range(0, 1, True, False, "ρ, decay of the squared-gradient average"),
    "b1": Range(0, 1, True, False, "ρ₁, first-moment decay"),
    "b2": Range(0, 1, True, False, "ρ₂, second-moment decay"),
    "eps": Range(0, _INF, True, False, "δ, the small constant"),
    "weight_decay": Range(0, _INF, True, False, "λ of the L2 penalty λ/2 Σ W²"),
    "clip_norm": Range(0, _INF, True, False, "global gradient-norm threshold, 0 = off"),
    "warmup_epochs": Range(0, _INF, True, False, "warmup length in epochs"),
    "step_every_epochs": Range(0, _INF, True, False, "epochs between step drops"),
    "step_factor": Range(0, 1, False, True, "multiplier at each step drop"),
    "start_factor": Range(0, _INF, True, False, "warmup_linear's first value, times ε"),
    "end_factor": Range(0, _INF, True, False, "warmup_linear's last value, times ε"),
}

# optim.weight_decay_mask -> which parameters the L2 term covers (None: all of them).
WEIGHT_DECAY_MASKS = {"weights": weight_mask, "all": None}


def names() -> tuple[str, ...]:
    """The registered optimizer names, sorted."""
    return OPTIMIZERS.names()


def defaults(name: str) -> dict[str, float]:
    """The hyperparameters of optimizer `name` other than the learning rate, with defaults."""
    signature = inspect.signature(OPTIMIZERS.get(name))
    return {key: p.default for key, p in signature.parameters.items() if key != "learning_rate"}


def _check(field: str, value: Any, valid: Range) -> None:
    """Raises ValueError naming `field` if a concrete `value` is outside `valid`.

    Schedules and traced values (inside jit or vmap) have no concrete value to
    check here and pass.
    """
    if callable(value):
        return
    if isinstance(value, bool | str):
        raise ValueError(f"{field} ({valid.meaning}) must be a number in {valid}, got {value!r}")
    try:
        array = np.asarray(value, dtype=np.float64)
    except jax.errors.JAXTypeError:
        return
    except (TypeError, ValueError):
        raise ValueError(
            f"{field} ({valid.meaning}) must be a number in {valid}, got {value!r}"
        ) from None
    if not np.all(valid.contains(array)):
        raise ValueError(f"{field} ({valid.meaning}) must be in {valid}, got {value!r}")


def _check_names(name: str, given: Mapping[str, Any]) -> None:
    accepted = defaults(name)
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        listed = ", ".join(["learning_rate", *accepted])
        raise ValueError(
            f"optimizer {name!r} takes no hyperparameter {', '.join(map(repr, unknown))}; "
            f"it accepts: {listed}"
        )


def create(
    name: str, *, learning_rate: optax.ScalarOrSchedule, inject: bool = False, **hparams: Any
) -> optax.GradientTransformation:
    """One lecture optimizer by name.

    Args:
      name: one of `names()`: sgd, momentum, nesterov, adagrad, rmsprop, adam.
      learning_rate: ε > 0, a number, a jnp scalar or a schedule of the step.
      inject: wrap in `optax.inject_hyperparams`, so every numeric
        hyperparameter (ε included) is an array in `state.hyperparams` that a
        sweep can set per trial with `set_hyperparams` and vmap over.
      **hparams: the optimizer's other hyperparameters (see `defaults(name)`):
        `momentum` (α), `decay` (ρ), `b1` (ρ₁), `b2` (ρ₂), `eps` (δ). Each may be
        a number, a jnp scalar or a schedule; omitted ones take their default.

    Returns:
      The transformation; apply its updates with `optax.apply_updates`.

    Raises:
      UnknownNameError: `name` is not registered (the message lists the names).
      ValueError: a hyperparameter the optimizer does not take, or a value out
        of its range (the message names the hyperparameter and the range).
    """
    factory = OPTIMIZERS.get(name)
    _check_names(name, hparams)
    values = {"learning_rate": learning_rate, **defaults(name), **hparams}
    for field, value in values.items():
        _check(field, value, RANGES[field])
    if inject:
        return optax.inject_hyperparams(factory)(**values)
    return factory(**values)


def set_hyperparams(state: optax.OptState, **values: Any) -> optax.OptState:
    """Returns `state` with injected hyperparameters replaced.

    Works under `jax.vmap`, so each trial of a sweep can get its own values:
    `jax.vmap(lambda lr: set_hyperparams(state, learning_rate=lr))(lrs)`. The
    injected state may sit anywhere in `state` (freezing rules wrap the
    optimizer in `optax.multi_transform`, with one copy per rule): every copy is
    set.

    Args:
      state: the state of an optimizer made with `inject=True`, or a tree holding such states.
      **values: new values, by hyperparameter name (as in `state.hyperparams`).

    Returns:
      The new state; values are cast to the dtype of the ones they replace.

    Raises:
      ValueError: no injected state in `state`, a name is not an injected
        hyperparameter, a name is driven by a schedule (it would be overwritten
        on the next step), or a concrete value is out of range.
    """

    def is_injected(node) -> bool:
        return isinstance(node, optax.InjectStatefulHyperparamsState)

    found = [leaf for leaf in jax.tree_util.tree_leaves(state, is_leaf=is_injected)]
    if not any(is_injected(leaf) for leaf in found):
        raise ValueError(
            f"set_hyperparams needs the state of an optimizer made with inject=True, "
            f"got {type(state).__name__}"
        )
    for key, value in values.items():
        if key in RANGES:
            _check(key, value, RANGES[key])

    def set_one(node):
        if not is_injected(node):
            return node
        hyperparams = dict(node.hyperparams)
        for key, value in values.items():
            if key not in hyperparams:
                raise ValueError(
                    f"{key!r} is not an injected hyperparameter; injected: {', '.join(hyperparams)}"
                )
            if key in node.hyperparams_states:
                raise ValueError(
                    f"{key!r} follows a schedule and cannot be set; rebuild the optimizer"
                )
            hyperparams[key] = jnp.asarray(value, dtype=hyperparams[key].dtype)
        return node._replace(hyperparams=hyperparams)

    return jax.tree_util.tree_map(set_one, state, is_leaf=is_injected)


# The optim fields of research/config.py that from_config reads.
CONFIG_FIELDS = (
    "name",
    "learning_rate",
    "momentum",
    "decay",
    "b1",
    "b2",
    "eps",
    "weight_decay",
    "weight_decay_mask",
    "schedule",
    "warmup_epochs",
    "step_every_epochs",
    "step_factor",
    "start_factor",
    "end_factor",
    "clip_norm",
)


def _read_config(optim_cfg, steps_per_epoch: int, num_epochs: int) -> dict[str, Any]:
    """The optim fields as a dict, every value checked; errors name `optim.<field>`."""
    for arg, value in (("steps_per_epoch", steps_per_epoch), ("num_epochs", num_epochs)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{arg} must be an integer >= 1, got {value!r}")
    missing = [f for f in CONFIG_FIELDS if f not in optim_cfg]
    if missing:
        raise ValueError(
            f"config.optim lacks {', '.join(missing)}; start from research.config.get_base_config()"
        )
    c = {field: optim_cfg[field] for field in CONFIG_FIELDS}
    for field, key in (("name", OPTIMIZERS), ("schedule", SCHEDULES)):
        try:
            key.get(c[field])
        except UnknownNameError as e:
            raise UnknownNameError(f"optim.{field}: {e}") from None
    if c["weight_decay_mask"] not in WEIGHT_DECAY_MASKS:
        raise ValueError(
            f"optim.weight_decay_mask={c['weight_decay_mask']!r} must be one of "
            f"{', '.join(WEIGHT_DECAY_MASKS)}"
        )
    for field, value in c.items():
        if field == "eps" and value is None:
            continue  # the optimizer's own default
        if field in RANGES:
            _check(f"optim.{field}", value, RANGES[field])
    return c


def _schedule(
    c: Mapping[str, Any], steps_per_epoch: int, num_epochs: int, total_steps: int | None = None
):
    """The schedule factory and the step arguments it takes, from config fields.

    `total_steps` (default `num_epochs * steps_per_epoch`) is where the run ends
    (shorter when the last epoch is cut: `config.last_epoch_fraction`).
    """
    factory = SCHEDULES.get(c["schedule"])
    available = {
        "total_steps": total_steps or num_epochs * steps_per_epoch,
        "warmup_steps": round(c["warmup_epochs"] * steps_per_epoch),
        "every_steps": round(c["step_every_epochs"] * steps_per_epoch),
        "factor": c["step_factor"],
        "start_factor": c["start_factor"],
        "end_factor": c["end_factor"],
    }
    wanted = {k: v for k, v in available.items() if k in inspect.signature(factory).parameters}
    if wanted.get("every_steps", 1) < 1:
        raise ValueError(
            f"optim.step_every_epochs must be > 0 and at least one step "
            f"({steps_per_epoch} steps per epoch) for schedule {c['schedule']!r}, "
            f"got {c['step_every_epochs']!r}"
        )
    if wanted.get("warmup_steps", 0) >= available["total_steps"]:
        raise ValueError(
            f"optim.warmup_epochs must be shorter than the run ({num_epochs} epochs) for "
            f"schedule {c['schedule']!r}, got {c['warmup_epochs']!r}"
        )
    return factory, wanted


def learning_rate_schedule(
    optim_cfg, *, steps_per_epoch: int, num_epochs: int, total_steps: int | None = None
) -> optax.Schedule:
    """ε_t of the config: `optim.learning_rate` shaped by `optim.schedule`.

    Args:
      optim_cfg: `config.optim` (research/config.py).
      steps_per_epoch: optimizer updates per epoch, to turn epochs into steps.
      num_epochs: epochs in the run; cosine schedules reach 0 at its end.
      total_steps: the run's steps, when its last epoch is cut (default: whole epochs).

    Returns:
      The schedule, a function of the update count (0 on the first update).
    """
    c = _read_config(optim_cfg, steps_per_epoch, num_epochs)
    factory, steps = _schedule(c, steps_per_epoch, num_epochs, total_steps)
    return factory(c["learning_rate"], **steps)


def from_config(
    optim_cfg,
    *,
    steps_per_epoch: int,
    num_epochs: int,
    inject: bool = False,
    total_steps: int | None = None,
) -> optax.GradientTransformation:
    """The optimizer described by `config.optim`: clip → L2 → lecture optimizer.

    1. `optim.clip_norm` > 0: rescale the gradient to that global norm when it
       is larger (`optax.clip_by_global_norm`); 0 turns clipping off.
    2. `optim.weight_decay` = λ > 0: add λW to the gradient of every weight
       (`add_l2`, `weight_mask`), the gradient of the lecture's λ/2 Σ W²; with
       `optim.weight_decay_mask = "all"`, λθ for every parameter θ.
    3. The optimizer `optim.name`, given only the hyperparameters it takes
       (`defaults(name)`), with `optim.eps` None meaning its default, and
       `learning_rate_schedule(...)` as its learning rate.

    Args:
      optim_cfg: `config.optim` (research/config.py); every field is checked,
        also those the chosen optimizer ignores. Extra fields are ignored.
      steps_per_epoch: optimizer updates per epoch, to turn epochs into steps.
      num_epochs: epochs in the run.
      inject: wrap in `optax.inject_hyperparams`. `state.hyperparams` then holds
        `learning_rate` (the peak ε; the schedule's shape is fixed), the
        optimizer's hyperparameters, `weight_decay` (the L2 step is always
        present, so a sweep may include λ = 0) and `clip_norm` (only when > 0 in
        the config: clipping on or off is fixed at build time).
      total_steps: the run's steps when its last epoch is cut (default: whole epochs).

    Returns:
      The chained transformation.

    Raises:
      UnknownNameError: unknown `optim.name` or `optim.schedule`.
      ValueError: a field out of range; the message names it as `optim.<field>`.
    """
    c = _read_config(optim_cfg, steps_per_epoch, num_epochs)
    optimizer = OPTIMIZERS.get(c["name"])
    schedule, steps = _schedule(c, steps_per_epoch, num_epochs, total_steps)
    mask = WEIGHT_DECAY_MASKS[c["weight_decay_mask"]]
    hparams = {"learning_rate": c["learning_rate"]}
    for key, default in defaults(c["name"]).items():
        hparams[key] = default if key == "eps" and c[key] is None else c[key]
    if c["weight_decay"] > 0 or inject:
        hparams["weight_decay"] = c["weight_decay"]
    if c["clip_norm"] > 0:
        hparams["clip_norm"] = c["clip_norm"]

    def build(**h):
        parts = []
        if "clip_norm" in h:
            parts.append(optax.clip_by_global_norm(h.pop("clip_norm")))
        if "weight_decay" in h:
            parts.append(add_l2(h.pop("weight_decay"), mask=mask))
        learning_rate = schedule(h.pop("learning_rate"), **steps)
        parts.append(optimizer(learning_rate=learning_rate, **h))
        return optax.chain(*parts)

    if not inject:
        return build(**hparams)
    # inject_hyperparams reads the factory's signature to find the hyperparameters.
    build.__signature__ = inspect.Signature(
        [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY) for k in hparams]
    )
    return optax.inject_hyperparams(build)(**hparams)


def lookahead_from_config(optim_cfg, *, total_steps: int) -> Lookahead | None:
    """The lookahead of `config.optim` (`optim.lookahead_*`) for a run of `total_steps`, or
    None when `optim.lookahead_every` is 0."""
    every = optim_cfg.lookahead_every
    if not every:
        return None
    return Lookahead(
        every=every,
        decay=optim_cfg.lookahead_decay,
        power=optim_cfg.lookahead_power,
        total_steps=total_steps,
    )
