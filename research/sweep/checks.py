"""The `sweep` section checked: its own fields, and each field it sweeps.

`check_sweep_fields` checks the section's settings (mode, pruner, numbers,
storage) against what would be valid; `check_field` checks that a field named
in `sweep.axes`, `sweep.grids` or `sweep.pretrain` is a field of the config.
Both raise a `ValueError` naming the field, the value and what would be valid,
before any trial is expanded (`research.sweep.space`).
"""

from __future__ import annotations

import ml_collections

MODES = ("grid", "random", "tpe")
PARALLEL = ("auto", "vmap", "sequential")
PRUNERS = ("none", "median", "successive_halving")


def check_field(base: ml_collections.ConfigDict, field: str, where: str) -> None:
    """Checks that a swept field (dotted) names a field of `base`, not a section or `sweep`.

    Raises:
      ValueError: naming `where`, the field and the fields its parent has.
    """
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


def _check_number(s, field: str, minimum, kind=int, above: bool = False) -> None:
    value = s[field]
    ok = isinstance(value, kind) and not isinstance(value, bool)
    ok = ok and (value > minimum if above else value >= minimum)
    if not ok:
        what = "an integer" if kind is int else "a number"
        raise ValueError(
            f"sweep.{field}={value!r} is invalid: must be {what} {'>' if above else '>='} {minimum}"
        )


def check_sweep_fields(config: ml_collections.ConfigDict) -> None:
    """Checks the `sweep` section's own fields (not the axes).

    Raises:
      ValueError: naming the field, the value and what would be valid.
    """
    s = config.sweep
    if s.mode not in MODES:
        raise ValueError(f"sweep.mode={s.mode!r} is invalid: must be one of {', '.join(MODES)}")
    if s.parallel not in PARALLEL:
        raise ValueError(
            f"sweep.parallel={s.parallel!r} is invalid: must be one of {', '.join(PARALLEL)}"
        )
    if s.pruner not in PRUNERS:
        raise ValueError(
            f"sweep.pruner={s.pruner!r} is invalid: must be one of {', '.join(PRUNERS)}"
        )
    for field, minimum in (
        ("num_samples", 0),
        ("sample_seed", 0),
        ("group_size", 1),
        ("startup_trials", 0),
        ("pruner_min_epochs", 0),
        ("pruner_startup_trials", 0),
        ("reduction_factor", 2),
        ("max_retries", 1),
    ):
        _check_number(s, field, minimum)
    _check_number(s, "heartbeat_seconds", 0, (int, float), above=True)
    _check_number(s, "grace_seconds", 0, (int, float), above=True)
    if s.grace_seconds <= 2 * s.heartbeat_seconds:
        raise ValueError(
            f"sweep.grace_seconds={s.grace_seconds!r} is invalid: must be more than twice "
            f"sweep.heartbeat_seconds={s.heartbeat_seconds!r}, or a worker that is merely slow "
            f"to write its heartbeat loses its trial"
        )
    if not isinstance(s.prune_comparisons, bool):
        raise ValueError(f"sweep.prune_comparisons={s.prune_comparisons!r} must be True or False")
    if not isinstance(s.storage, str):
        raise ValueError(f"sweep.storage={s.storage!r} must be a path or a database URL")
    if not isinstance(s.storage_password, str):
        raise ValueError("sweep.storage_password must be 'env:VARIABLE', 'file:PATH' or ''")
    if not 0 <= s.target_accuracy <= 1:
        raise ValueError(f"sweep.target_accuracy={s.target_accuracy!r} must be in [0, 1]")
    if s.mode == "tpe" and s.num_samples < 1:
        raise ValueError(
            "sweep.num_samples=0 is invalid for sweep.mode='tpe': give the number of trials to run"
        )
    if (s.mode == "tpe" or s.pruner != "none") and not config.data.val_size:
        what = "sweep.mode='tpe'" if s.mode == "tpe" else f"sweep.pruner={s.pruner!r}"
        raise ValueError(
            f"{what} judges trials on the validation split, and data.val_size=0 has none; "
            f"set data.val_size (e.g. 0.1)"
        )
