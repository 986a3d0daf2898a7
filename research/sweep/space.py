"""A sweep as a config: the base experiment plus axes, expanded into trials.

The `sweep` section of a config (defaults in `get_sweep_config`):

  * `sweep.axes`: fields of the config, nested as in the config, each leaf a
    list of values; their cartesian product is swept::

        config.sweep.axes = {
            "optim": {"name": ["sgd", "adam"], "learning_rate": [0.01, 0.1]},
            "seed": [0, 1, 2],
        }                                             # 2 x 2 x 3 = 12 trials

    (ConfigDict keys cannot contain dots, hence the nesting; on the command
    line: `--config.sweep.axes.seed="(0, 1)"`.)

  * `sweep.grids`: a list of sub-grids whose *union* is crossed with `axes`,
    for values that only make sense together, e.g. a learning-rate grid per
    optimizer. Each sub-grid is a dict of field -> list of values, keys dotted
    ("optim.learning_rate") or nested::

        config.sweep.grids = [
            {"optim.name": ["sgd"], "optim.learning_rate": [0.03, 0.1, 0.3]},
            {"optim.name": ["adam"], "optim.learning_rate": [3e-4, 1e-3, 3e-3]},
        ]
        config.sweep.axes.seed = [0, 1, 2]            # (3 + 3) x 3 = 18 trials

    A field may be in the sub-grids or in `axes`, not both.
  * `sweep.pretrain`: named pretraining stages run *before* the trials, for
    transfer-learning studies. Each is the base config (without axes) plus its
    own overrides, nested as in the config, each leaf one value::

        config.sweep.pretrain = {
            "digits_0to4": {"data": {"classes": (0, 1, 2, 3, 4)}, "num_epochs": 2},
        }
        config.sweep.grids = [
            {"transfer.strategy": ["linear_probe"],
             "transfer.pretrained": ["pretrain:digits_0to4"],
             "data.classes": [(5, 6, 7, 8, 9)]},
        ]

    A trial whose `transfer.pretrained` is `"pretrain:NAME"` starts from stage
    NAME's final checkpoint: the runner trains the stage once, in
    `DIR/pretrain/<stage id>/` (id = `trial_id` of its overrides, so changing
    the stage makes a new folder and new trial ids), then points the trial at
    it. A finished stage (results.json present) is never trained again.
  * `sweep.mode`: "grid" runs every point; "random" runs `sweep.num_samples`
    points drawn without replacement from that grid with `sweep.sample_seed`
    (the same seed gives the same trials, in every process); "tpe" runs
    `sweep.num_samples` trials proposed one by one by Optuna's TPE sampler
    from the results so far, searching the grid's fields: the learning rate
    as a log-uniform range between the grid's smallest and largest value,
    every other field among its grid values (`research.sweep.search`).
  * `sweep.pruner`: "none", "median" or "successive_halving": a trial whose
    validation metric at an epoch end is poor against the other trials' at
    the same epoch is stopped there (`status: "pruned"`).
  * `sweep.storage`, `sweep.heartbeat_seconds`, `sweep.grace_seconds`: where
    the sweep's state lives and how lost workers are detected
    (`research.sweep.storage`).

A trial is the base config with its overrides applied. Its id (`config_id`)
is a hash of that whole config (cosmetic fields such as `progress` aside), so
it does not depend on the order of the axes, on the other trials or on the
process that computes it, and a changed non-swept field gives new ids.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from research import config as config_lib
from research.sweep import checks
from research.train import outputs


def get_sweep_config() -> ml_collections.ConfigDict:
    """The base config plus the `sweep` section, every field at its default."""
    config = config_lib.get_base_config()
    s = config.sweep = ml_collections.ConfigDict()
    # Tables/plots written after the trials: "optimizers" (the generic tables of
    # research.sweep.aggregate) or a study's "module:function" (research.studies).
    s.report = "optimizers"
    # "grid": every point; "random": num_samples points of the grid; "tpe": num_samples
    # trials proposed by Optuna's TPE sampler within the grid's fields and ranges.
    s.mode = "grid"
    s.axes = ml_collections.ConfigDict()  # nested like the config; leaves: lists of values
    s.grids = ()  # tuple of sub-grids (dicts field -> values); their union x axes
    s.num_samples = 0  # random: trials drawn without replacement (0: all); tpe: trials run
    s.sample_seed = 0  # random: seed of the draw; tpe: seed of the sampler
    s.startup_trials = 5  # tpe: random trials before TPE models the results
    # Early stopping, judged on the validation metric at each epoch end: "none", "median"
    # (below the median of finished trials at that epoch) or "successive_halving".
    s.pruner = "none"
    s.pruner_min_epochs = 1  # epochs every trial trains before a pruner may stop it
    s.pruner_startup_trials = 3  # median: trials that finish before it judges any
    s.reduction_factor = 3  # successive_halving: keep the best 1/this at each rung
    # A pruner judges a trial against all others, so in a grid that compares optimizers a
    # slow starter would be stopped by a fast one: refused unless this is True.
    s.prune_comparisons = False
    # Where the sweep's state lives (an Optuna study): "" = DIR/optuna.journal; a path (a
    # journal file); or a database URL: sqlite:///sweep.db, postgresql://user@host/db.
    s.storage = ""
    # Where a database's password comes from, so no command line carries it: "env:VARIABLE",
    # "file:PATH" (its first line), or "" (in the URL, or none). Never written anywhere.
    s.storage_password = ""
    s.heartbeat_seconds = 10.0  # a worker marks each trial it runs as alive this often
    s.grace_seconds = 60.0  # a trial whose heartbeat stood still this long is taken over
    # Attempts of one trial that may fail (raise, or lose their worker) before it is failed
    # for good: the sweep then finishes the rest and exits non-zero naming it.
    s.max_retries = 2
    # How trials that differ only in numeric optimizer hyperparameters and seed run:
    # "vmap" as one compiled program over a trial axis, "sequential" one after another,
    # "auto" by the engine's rule: vmap on GPU/TPU, sequential on CPU (research.sweep.vmapped).
    # The path is fixed in DIR/sweep.json on the first run and reused by every later run.
    s.parallel = "auto"
    s.group_size = 8  # most trials in one vmapped program (memory grows with it)
    s.target_accuracy = 0.9  # "steps to target": first validation with accuracy >= this
    # Named pretraining stages (name -> overrides, one value per leaf), trained before the
    # trials; a trial uses one with transfer.pretrained = "pretrain:NAME".
    s.pretrain = ml_collections.ConfigDict()
    return config


PRETRAIN_PREFIX = "pretrain:"


@dataclasses.dataclass(frozen=True)
class Trial:
    """One point of a sweep.

    Attributes:
      id: `config_id` of its config (and its stage), also the name of its folder.
      index: position in the expanded sweep (orders the tables).
      overrides: dotted field -> value, sorted by field.
      config: the base config with the overrides applied, without `sweep`.
    """

    id: str
    index: int
    overrides: dict[str, Any]
    config: ml_collections.ConfigDict
    pretrain: str = ""  # the `sweep.pretrain` stage it starts from ("": none)


@dataclasses.dataclass(frozen=True)
class Stage:
    """A pretraining run of `sweep.pretrain`, trained before the trials that use it.

    Attributes:
      name: its key in `sweep.pretrain` (trials refer to it as "pretrain:NAME").
      id: `config_id(config)`, also the name of its folder `DIR/pretrain/<id>`.
      overrides: dotted field -> value, sorted by field.
      config: the base config with the overrides applied, without `sweep`.
    """

    name: str
    id: str
    overrides: dict[str, Any]
    config: ml_collections.ConfigDict


def _flatten_values(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested mapping of field -> single value as {dotted field: value}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping | ml_collections.ConfigDict) and path != "model.overrides":
            out.update(_flatten_values(value, f"{path}."))
        else:
            out[path] = _plain(value)
    return out


def stages(config: ml_collections.ConfigDict) -> dict[str, Stage]:
    """The `sweep.pretrain` stages by name, each config validated.

    Raises:
      ValueError: naming the stage and the bad field or value.
    """
    base = base_config(config)
    out = {}
    for name, tree in config.sweep.pretrain.items():
        if not isinstance(tree, Mapping | ml_collections.ConfigDict):
            raise ValueError(f"sweep.pretrain.{name} must be a dict of overrides, got {tree!r}")
        overrides = dict(sorted(_flatten_values(tree).items()))
        for field in overrides:
            checks.check_field(base, field, f"sweep.pretrain.{name}")
        cfg = apply(base, overrides)
        if str(cfg.transfer.pretrained).startswith(PRETRAIN_PREFIX):
            raise ValueError(f"sweep.pretrain.{name}: a stage cannot start from another stage")
        try:
            config_lib.validate(cfg)
        except ValueError as e:
            raise ValueError(f"sweep.pretrain.{name}: {e}") from None
        out[name] = Stage(name, config_id(cfg), overrides, cfg)
    return out


def trial_id(fields: Mapping[str, Any]) -> str:
    """A stable 12-hex-digit id: SHA-256 of a mapping as sorted JSON."""
    text = json.dumps(_plain(dict(fields)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def config_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Every field of `config` as {dotted field: value}, cosmetic fields left out.

    Cosmetic fields (`outputs.COSMETIC_FIELDS`: progress bar, logging and
    checkpoint cadence) change how a run is shown or stored, not what it
    computes, and a resumed run may change them.
    """
    flat = outputs.flatten(json.loads(config.to_json_best_effort(sort_keys=True)))
    return {k: v for k, v in flat.items() if k.split(".")[0] not in outputs.COSMETIC_FIELDS}


# Sweep fields that change how a sweep is run or reported, not which trials it runs
# or what they compute: they are not part of `sweep_id`.
OPERATIONAL_FIELDS = (
    "report",
    "parallel",
    "group_size",
    "target_accuracy",
    "storage",
    "storage_password",
    "heartbeat_seconds",
    "max_retries",
    "grace_seconds",
)


def sweep_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`config_fields` of a sweep config without its `OPERATIONAL_FIELDS`."""
    return {
        k: v
        for k, v in config_fields(config).items()
        if not (k.startswith("sweep.") and k.split(".")[1] in OPERATIONAL_FIELDS)
    }


def sweep_id(config: ml_collections.ConfigDict) -> str:
    """`trial_id` of `sweep_fields`: the sweep's identity (its study's name)."""
    return trial_id(sweep_fields(config))


def trial_scope(config: ml_collections.ConfigDict) -> dict[str, str]:
    """What a trial's id covers beyond its own config: its sweep, when a pruner runs.

    A trial's results depend on its config alone, so trials of different sweeps
    with the same config share a folder (and its results). With a pruner they
    do not: whether a trial is stopped depends on the other trials, so its
    folder belongs to its sweep.
    """
    return {"sweep": sweep_id(config)} if config.sweep.pruner != "none" else {}


def config_id(config: ml_collections.ConfigDict, **extra) -> str:
    """`trial_id` of the whole config (`config_fields`) plus `extra` fields.

    The id of a trial or stage: two configs that compute the same thing share
    it; any other change, swept or not, gives a new one.
    """
    return trial_id({**config_fields(config), **extra})


def _plain(value):
    """Lists and tuples as lists, numpy scalars as Python numbers (for JSON and hashing)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _flatten(tree: Mapping, prefix: str = "", where: str = "sweep.axes") -> dict[str, list]:
    """Nested or dotted mapping of field -> values as {dotted field: list of values}."""
    out: dict[str, list] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping | ml_collections.ConfigDict):
            out.update(_flatten(value, f"{path}.", where))
        elif isinstance(value, list | tuple):
            if not value:
                raise ValueError(f"{where}: axis {path!r} has no values; give a non-empty list")
            out[path] = list(_plain(value))
        else:
            raise ValueError(
                f"{where}: axis {path!r} must be a list of values, got {value!r}; "
                f"write [{value!r}] for a single value"
            )
    return out


def points(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """The sweep's points (dotted field -> value), in grid order, before sampling."""
    axes = _flatten(config.sweep.axes)
    grids = [_flatten(g, where=f"sweep.grids[{i}]") for i, g in enumerate(config.sweep.grids)]
    base = base_config(config)
    for field in axes:
        checks.check_field(base, field, "sweep.axes")
    for i, grid in enumerate(grids):
        for field in grid:
            checks.check_field(base, field, f"sweep.grids[{i}]")
            if field in axes:
                raise ValueError(
                    f"sweep.grids[{i}]: {field!r} is also in sweep.axes; put it in one place"
                )

    def product(grid: dict[str, list]) -> list[dict[str, Any]]:
        keys = list(grid)
        return [
            dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())
        ]

    union: list[dict[str, Any]] = []
    for grid in grids or [{}]:
        for point in product(grid):
            if point not in union:
                union.append(point)
    return [{**u, **a} for u in union for a in product(axes)]


def base_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The experiment without its `sweep` section."""
    base = ml_collections.ConfigDict(config.to_dict())
    if "sweep" in base:
        del base["sweep"]
    return base


def apply(base: ml_collections.ConfigDict, overrides: Mapping[str, Any]):
    """A copy of `base` with dotted-field overrides set (type-checked by ConfigDict)."""
    config = ml_collections.ConfigDict(base.to_dict())
    for field, value in overrides.items():
        node = config
        *path, last = field.split(".")
        for part in path:
            node = node[part]
        try:
            node[last] = value
        except TypeError as e:
            raise ValueError(
                f"sweep value {field}={value!r} does not fit the field's type: {e}"
            ) from None
    return config


def expand(config: ml_collections.ConfigDict) -> list[Trial]:
    """The trials of a sweep config, each config validated.

    Under `sweep.mode = "tpe"` these are the grid's points: not the trials that
    will run (TPE proposes those as results come in) but the fields and ranges
    it searches, every one validated.

    Raises:
      ValueError: naming the bad sweep field, axis or trial value.
    """
    s = config.sweep
    checks.check_sweep_fields(config)
    grid = points(config)
    names = {p.get("optim.name", config.optim.name) for p in grid}
    if s.pruner != "none" and s.mode == "grid" and len(names) > 1 and not s.prune_comparisons:
        raise ValueError(
            f"sweep.pruner={s.pruner!r} on a grid that compares optimizers "
            f"({', '.join(sorted(names))}) would stop a slow starter by a fast one's progress "
            f"and count it as if it had finished; use sweep.pruner='none', or set "
            f"sweep.prune_comparisons=True to prune anyway"
        )
    if s.mode == "tpe":
        rates = {p["optim.learning_rate"] for p in grid if "optim.learning_rate" in p}
        if len(rates) < 2:
            raise ValueError(
                "sweep.mode='tpe' searches the learning rate between the grid's smallest and "
                "largest value: sweep optim.learning_rate over at least two values"
            )
    if s.mode == "random" and s.num_samples and s.num_samples < len(grid):
        chosen = np.random.default_rng(s.sample_seed).choice(len(grid), s.num_samples, False)
        grid = [grid[i] for i in sorted(chosen)]
    base = base_config(config)
    named = stages(config)
    trials, seen = [], {}
    scope = trial_scope(config)
    for point in grid:
        trial = make_trial(base, point, named, len(trials), scope)
        if trial.id in seen:
            continue
        seen[trial.id] = True
        trials.append(trial)
    if not trials:
        raise ValueError("the sweep has no trials: set sweep.axes or sweep.grids")
    return trials


def make_trial(
    base: ml_collections.ConfigDict,
    point: Mapping[str, Any],
    named: Mapping[str, Stage],
    index: int,
    scope: Mapping[str, str] | None = None,
) -> Trial:
    """The trial of one point (dotted field -> value) of the sweep, its config validated.

    `scope` (`trial_scope`) enters the id beside the config.

    Raises:
      ValueError: naming the trial's overrides and the bad field or value.
    """
    overrides = dict(sorted(point.items()))
    cfg = apply(base, overrides)
    stage, checked = "", cfg
    if str(cfg.transfer.pretrained).startswith(PRETRAIN_PREFIX):
        stage = cfg.transfer.pretrained[len(PRETRAIN_PREFIX) :]
        if stage not in named:
            raise ValueError(
                f"trial {overrides}: transfer.pretrained={cfg.transfer.pretrained!r} names "
                f"no stage of sweep.pretrain (stages: {', '.join(named) or 'none'})"
            )
        checked = apply(cfg, {"transfer.pretrained": ""})  # the stage's folder comes later
    try:
        config_lib.validate(checked)
    except ValueError as e:
        raise ValueError(f"trial {overrides}: {e}") from None
    # A trial's id covers its stage's id: a changed stage means new trials.
    extra = {"sweep.pretrain": named[stage].id} if stage else {}
    tid = config_id(cfg, **extra, **{f"scope.{k}": v for k, v in (scope or {}).items()})
    return Trial(tid, index, overrides, cfg, stage)


def swept_fields(trials: list[Trial]) -> list[str]:
    """Every field that some trial overrides, in first-seen order."""
    fields: list[str] = []
    for t in trials:
        fields.extend(f for f in t.overrides if f not in fields)
    return fields
