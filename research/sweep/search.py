"""How a sweep picks its trials and stops hopeless ones, in Optuna's terms.

Params: each swept field is an Optuna param named by its dotted field
(`optim.learning_rate`, `seed`). A value that is not None, a bool, a number or
a string (a tuple of classes, say) is the param's JSON text.

  * grid and random (`space.expand`'s trials, enqueued as they are): every
    param is categorical over the values its field takes in the sweep, so the
    dashboard shows the grid, and Optuna's sampler never chooses anything.
  * tpe: `Space.propose` draws a trial's fields: every categorical field first,
    among all its grid values, then `optim.learning_rate` log-uniformly between
    the smallest and largest grid value of the grid points that agree with the
    fields drawn (so a learning-rate grid per optimizer is a range per
    optimizer). The sampler is `TPESampler(n_startup_trials=sweep.startup_trials)`
    seeded for each trial from `sweep.sample_seed` and the trial's number: a TPE
    sweep run by one worker is reproducible, and two workers never draw the
    same random trial. (With several workers, which results TPE has seen when
    it proposes a trial depends on timing; grid and random sweeps do not.)

Pruners (`sweep.pruner`) judge the validation metric at epoch ends (step =
epochs done); a worker asks them after every epoch but the last:

  * median: `MedianPruner(n_startup_trials=sweep.pruner_startup_trials,
    n_warmup_steps=sweep.pruner_min_epochs)`: below the median of the finished
    trials at that epoch;
  * successive_halving: `SuccessiveHalvingPruner(min_resource=
    max(1, sweep.pruner_min_epochs), reduction_factor=sweep.reduction_factor)`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from typing import Any

import ml_collections
import optuna
from optuna.distributions import CategoricalDistribution

from research.sweep import space, storage

LOG_UNIFORM = ("optim.learning_rate",)  # searched as a continuous log range under tpe


def param_value(value):
    """A field's value as an Optuna param value (JSON text unless a plain scalar)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(space._plain(value), sort_keys=True)


def _choices(points: list[dict[str, Any]]) -> dict[str, dict[Any, Any]]:
    """Field -> {param value: field value}, in order of first appearance."""
    out: dict[str, dict[Any, Any]] = {}
    for point in points:
        for field, value in point.items():
            out.setdefault(field, {}).setdefault(param_value(value), value)
    return out


def distributions(trials: list[space.Trial]) -> dict[str, CategoricalDistribution]:
    """Each swept field's categorical distribution over its values in `trials`."""
    return {
        field: CategoricalDistribution(list(choices))
        for field, choices in _choices([t.overrides for t in trials]).items()
    }


def job(trial: space.Trial, dists: dict[str, CategoricalDistribution]) -> storage.Job:
    """The Optuna trial to enqueue for a grid or random trial."""
    params = {field: param_value(value) for field, value in trial.overrides.items()}
    return storage.Job(
        trial.id,
        params,
        {field: dists[field] for field in params},
        {"overrides": space._plain(trial.overrides)},
    )


@dataclasses.dataclass(frozen=True)
class Space:
    """The search space of a TPE sweep, from its grid (`space.expand` under tpe).

    Attributes:
      points: the grid's points (dotted field -> value).
      categorical: fields drawn among their grid values, in order.
      continuous: fields drawn from a log range (`LOG_UNIFORM`).
      choices: field -> {param value: field value}.
    """

    points: list[dict[str, Any]]
    categorical: list[str]
    continuous: list[str]
    choices: dict[str, dict[Any, Any]]

    @classmethod
    def of(cls, grid: list[space.Trial]) -> Space:
        """Raises ValueError if the grid's categorical fields are not a full product."""
        points = [t.overrides for t in grid]
        choices = _choices(points)
        categorical = [f for f in choices if f not in LOG_UNIFORM]
        continuous = [f for f in choices if f in LOG_UNIFORM]
        combos = {tuple(param_value(p.get(f)) for f in categorical) for p in points}
        full = itertools.product(*(list(choices[f]) for f in categorical))
        missing = [c for c in full if c not in combos]
        if missing:
            example = dict(zip(categorical, missing[0], strict=True))
            raise ValueError(
                f"sweep.mode='tpe' draws {', '.join(categorical)} independently, but the grid "
                f"has no point with {example}; give every combination of them (sweep.axes), "
                f"or run the grid"
            )
        return cls(points, categorical, continuous, choices)

    def propose(self, trial: optuna.Trial) -> dict[str, Any]:
        """Draws a point (dotted field -> value) through `trial`'s sampler."""
        point: dict[str, Any] = {}
        agree = self.points
        for field in self.categorical:
            value = trial.suggest_categorical(field, list(self.choices[field]))
            point[field] = self.choices[field][value]
            agree = [p for p in agree if param_value(p.get(field)) == value]
        for field in self.continuous:
            values = [p[field] for p in agree if field in p]
            if values:
                point[field] = trial.suggest_float(field, min(values), max(values), log=True)
        return point

    def point(self, params: dict[str, Any]) -> dict[str, Any]:
        """The point a TPE trial's params stand for (the inverse of `propose`)."""
        return {
            field: (self.choices[field][value] if field in self.categorical else value)
            for field, value in params.items()
            if field in self.choices
        }


def sampler(config: ml_collections.ConfigDict, number: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler that proposes trial `number` (tpe), or a never-used random one."""
    s = config.sweep
    digest = hashlib.sha256(f"{s.sample_seed}:{number}".encode()).digest()
    seed = int.from_bytes(digest[:4], "little")
    if s.mode != "tpe":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(n_startup_trials=s.startup_trials, seed=seed)


def pruner(config: ml_collections.ConfigDict) -> optuna.pruners.BasePruner:
    """`sweep.pruner` as an Optuna pruner (see the module doc)."""
    s = config.sweep
    if s.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=s.pruner_startup_trials, n_warmup_steps=s.pruner_min_epochs
        )
    if s.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=max(1, s.pruner_min_epochs), reduction_factor=s.reduction_factor
        )
    return optuna.pruners.NopPruner()
