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
    (the same seed gives the same trials, in every process).

A trial is the base config with its overrides applied. Its id is a hash of the
overrides (`trial_id`), so it does not depend on the order of the axes, on
the other trials or on the process that computes it.
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

MODES = ("grid", "random")
PARALLEL = ("auto", "vmap", "sequential")


def get_sweep_config() -> ml_collections.ConfigDict:
    """The base config plus the `sweep` section, every field at its default."""
    config = config_lib.get_base_config()
    s = config.sweep = ml_collections.ConfigDict()
    # Tables/plots written after the trials: "optimizers" (the generic tables of
    # research.sweep.aggregate) or a study's "module:function" (research.studies).
    s.report = "optimizers"
    s.mode = "grid"  # "grid": every point; "random": num_samples points of the grid
    s.axes = ml_collections.ConfigDict()  # nested like the config; leaves: lists of values
    s.grids = ()  # tuple of sub-grids (dicts field -> values); their union x axes
    s.num_samples = 0  # random mode: trials drawn without replacement (0: all)
    s.sample_seed = 0  # random mode: seed of the draw
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
      id: `trial_id(overrides)`, also the name of its folder.
      index: position in the expanded sweep (decides the host in multi-host runs).
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
      id: `trial_id(overrides)`, also the name of its folder `DIR/pretrain/<id>`.
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
            _check_field(base, field, f"sweep.pretrain.{name}")
        cfg = apply(base, overrides)
        if str(cfg.transfer.pretrained).startswith(PRETRAIN_PREFIX):
            raise ValueError(f"sweep.pretrain.{name}: a stage cannot start from another stage")
        try:
            config_lib.validate(cfg)
        except ValueError as e:
            raise ValueError(f"sweep.pretrain.{name}: {e}") from None
        out[name] = Stage(name, trial_id(overrides), overrides, cfg)
    return out


def trial_id(overrides: Mapping[str, Any]) -> str:
    """A stable 12-hex-digit id: SHA-256 of the overrides as sorted JSON."""
    text = json.dumps(_plain(dict(overrides)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


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


def _check_field(base: ml_collections.ConfigDict, field: str, where: str) -> None:
    node, parts = base, field.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            parent = ".".join(parts[:i]) or "the config"
            known = (
                ", ".join(sorted(node.keys()))
                if isinstance(node, ml_collections.ConfigDict)
                else ""
            )
            raise ValueError(
                f"{where}: {field!r} is not a config field ({parent} has no {part!r}; "
                f"its fields: {known})"
            )
        node = node[part]
    if isinstance(node, ml_collections.ConfigDict) and field != "model.overrides":
        raise ValueError(f"{where}: {field!r} is a section, not a field; sweep one of its fields")
    if parts[0] == "sweep":
        raise ValueError(f"{where}: {field!r} is part of the sweep itself and cannot be swept")


def points(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """The sweep's points (dotted field -> value), in grid order, before sampling."""
    axes = _flatten(config.sweep.axes)
    grids = [_flatten(g, where=f"sweep.grids[{i}]") for i, g in enumerate(config.sweep.grids)]
    base = base_config(config)
    for field in axes:
        _check_field(base, field, "sweep.axes")
    for i, grid in enumerate(grids):
        for field in grid:
            _check_field(base, field, f"sweep.grids[{i}]")
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

    Raises:
      ValueError: naming the bad sweep field, axis or trial value.
    """
    s = config.sweep
    if s.mode not in MODES:
        raise ValueError(f"sweep.mode={s.mode!r} is invalid: must be one of {', '.join(MODES)}")
    if s.parallel not in PARALLEL:
        raise ValueError(
            f"sweep.parallel={s.parallel!r} is invalid: must be one of {', '.join(PARALLEL)}"
        )
    for field, minimum in (("num_samples", 0), ("sample_seed", 0), ("group_size", 1)):
        value = s[field]
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"sweep.{field}={value!r} is invalid: must be an integer >= {minimum}")
    if not 0 <= s.target_accuracy <= 1:
        raise ValueError(f"sweep.target_accuracy={s.target_accuracy!r} must be in [0, 1]")
    grid = points(config)
    if s.mode == "random" and s.num_samples and s.num_samples < len(grid):
        chosen = np.random.default_rng(s.sample_seed).choice(len(grid), s.num_samples, False)
        grid = [grid[i] for i in sorted(chosen)]
    base = base_config(config)
    named = stages(config)
    trials, seen = [], {}
    for point in grid:
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
        # A trial's id covers its stage's id: a changed stage means new trials.
        tid = trial_id({**overrides, "sweep.pretrain": named[stage].id} if stage else overrides)
        if tid in seen:
            continue
        try:
            config_lib.validate(checked)
        except ValueError as e:
            raise ValueError(f"trial {overrides}: {e}") from None
        seen[tid] = True
        trials.append(Trial(tid, len(trials), overrides, cfg, stage))
    if not trials:
        raise ValueError("the sweep has no trials: set sweep.axes or sweep.grids")
    return trials


def swept_fields(trials: list[Trial]) -> list[str]:
    """Every field that some trial overrides, in first-seen order."""
    fields: list[str] = []
    for t in trials:
        fields.extend(f for f in t.overrides if f not in fields)
    return fields
