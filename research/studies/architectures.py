"""Report of the architecture study: accuracy against parameters, FLOPs and speed.

One row per (dataset, model) in `summary.md`/`summary.csv`: test accuracy mean ±
sample std over seeds, parameter count, FLOPs per example, training examples
per second and wall time per trial (means over seeds; the first seed's wall
time includes compilation). FLOPs are XLA's count for one example
(`jax.jit(model.apply).lower(x).compile().cost_analysis()["flops"]`, batch of
1, evaluation mode) with XLA's own convolution and pooling
(`algorithm_choice.override(conv="xla", pool="reduce_window")`): the model's
arithmetic, not that of the backend's algorithm ("tiled" on a CPU also
multiplies the zeros of its banded kernels). They are computed here from each
trial's config, so a finished sweep can be re-reported on any machine, with
the same numbers. `accuracy_vs_flops.png` plots test
accuracy against FLOPs, one panel per dataset.

Each row is also judged on its mean validation curve over seeds (the storage's
per-epoch validation accuracy) by `research.sweep.plateau`: a row whose mean
validation accuracy still rose by 0.5 pp or more over the last fifth of its
epochs is marked † in summary.md, with its gain listed under the table;
summary.csv's `plateau` column gives every row's verdict and gain. The
models of a dataset are ranked by `research.sweep.caveats`' seed-interval rule:
when the top model's 95 % t-interval of test accuracy overlaps another's, a
note under the table says that those seeds do not rank them (summary.csv:
`test_accuracy_ci95_low/high`, `overlaps_top`).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from research import data as data_lib
from research import models
from research.layers import algorithm_choice
from research.sweep import aggregate, caveats, plateau, storage

# Input shape of one example per dataset (HWC); other datasets are loaded to find it.
INPUT_SHAPES = {
    "digits": (8, 8, 1),
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
}


def _input_shape(config) -> tuple[int, ...]:
    if config.data.name in INPUT_SHAPES:
        return INPUT_SHAPES[config.data.name]
    raw = data_lib.load(config.data.name, data_dir=config.data.data_dir or None)
    return tuple(raw.train.images.shape[1:])


@functools.cache
def flops_per_example(name: str, overrides_json: str, shape: tuple, num_classes: int) -> float:
    """XLA's FLOP count of one forward pass on one example (evaluation mode).

    Traced with XLA's convolution and pooling, whatever the backend's defaults, so
    the count is the model's and the same on every machine.
    """
    model = models.create(name, num_classes=num_classes, **json.loads(overrides_json))
    x = jnp.zeros((1, *shape), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    with algorithm_choice.override(conv="xla", pool="reduce_window"):  # traced in the block
        lowered = jax.jit(lambda x: model.apply(variables, x)).lower(x)
    cost = lowered.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost.get("flops", float("nan")))


def _flops(config) -> float:
    classes = len(config.data.classes) or 10
    overrides = json.dumps(dict(config.model.overrides), sort_keys=True)
    return flops_per_example(config.model.name, overrides, _input_shape(config), classes)


def trial_row(trial: storage.Record, flops: bool = True) -> dict[str, Any] | None:
    """The trial's row, or None if it has not finished."""
    if not trial.finished:
        return None
    r, c = trial.results, trial.config
    return {
        "trial_id": trial.id,
        "dataset": c.data.name,
        "model": c.model.name,
        "overrides": json.dumps(dict(c.model.overrides), sort_keys=True),
        "seed": c.seed,
        "status": r.get("status", "done"),
        "test_accuracy": r.get("test_accuracy"),
        "val_accuracy": r.get("val_accuracy"),
        "params": r.get("params"),
        "flops": _flops(c) if flops else None,
        "examples_per_second": r.get("examples_per_second"),
        "wall_seconds": r.get("wall_seconds"),
        "train_examples": r.get("train_examples"),
    }


def summarize(
    rows: list[dict[str, Any]], curves: dict[str, dict[int, float]] | None = None
) -> list[dict[str, Any]]:
    """One row per (dataset, model), in order of first appearance; mean ± std over seeds.

    Args:
      rows: trial rows (`trial_row`).
      curves: trial id -> its validation accuracy per epoch (`storage.Record.values`),
        for the plateau verdict (`plateau.of`); a row without curves is not judged.
    """
    curves = curves or {}
    out = []
    for (dataset, model), mine in aggregate.group_by(rows, "dataset", "model").items():
        acc, acc_std = aggregate.mean_std([r["test_accuracy"] for r in mine])
        speed, _ = aggregate.mean_std([r["examples_per_second"] for r in mine])
        wall, _ = aggregate.mean_std([r["wall_seconds"] for r in mine])
        out.append(
            {
                "dataset": dataset,
                "model": model,
                "seeds": len(mine),
                "test_accuracy_mean": acc,
                "test_accuracy_std": acc_std,
                "params": mine[0]["params"],
                "flops": mine[0]["flops"],
                "examples_per_second": speed,
                "wall_seconds": wall,
                "overrides": mine[0]["overrides"],
                "plateau": plateau.of(curves.get(r.get("trial_id"), {}) for r in mine),
            }
        )
    accuracies = [
        [
            r["test_accuracy"]
            for r in rows
            if (r["dataset"], r["model"]) == (s["dataset"], s["model"])
        ]
        for s in out
    ]
    caveats.rank(out, accuracies, label=lambda r: r["model"], group=lambda r: r["dataset"])
    return out


def _si(x) -> str:
    if x is None or not np.isfinite(x):
        return "—"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def markdown(summary: list[dict], *, finished: int, total: int) -> str:
    if not summary:
        return f"No finished trials yet (0/{total}).\n"
    head = [
        "dataset",
        "model",
        "seeds",
        "test acc",
        "params",
        "FLOPs/example",
        "train ex/s",
        "wall s",
    ]
    lines = [
        f"Trials finished: {finished}/{total}. Test accuracy: mean ± std over seeds; "
        "train ex/s and wall time (per trial, incl. compilation for the first seed): means. "
        f"{plateau.rule()}. Ranking: the {100 * caveats.CONFIDENCE:g} % t-interval of the "
        "mean test accuracy over seeds, per dataset.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in summary:
        cells = [
            r["dataset"],
            r["model"],
            str(r["seeds"]),
            plateau.cell(
                f"{r['test_accuracy_mean']:.4f} ± {r['test_accuracy_std']:.4f}", r["plateau"]
            ),
            _si(r["params"]),
            _si(r["flops"]),
            f"{r['examples_per_second']:.0f}" if np.isfinite(r["examples_per_second"]) else "—",
            f"{r['wall_seconds']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = plateau.legend((f"{r['dataset']} {r['model']}", r["plateau"]) for r in summary)
    notes += caveats.notes(summary, label=lambda r: r["model"], group=lambda r: r["dataset"])
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], path: str) -> None:
    """Test accuracy against FLOPs per example (log x), one panel per dataset."""
    from research.viz import sweep_plots  # heavy: matplotlib loads only to draw

    datasets = list(dict.fromkeys(r["dataset"] for r in summary))
    with sweep_plots.panels(
        path, datasets, size=(4.2, 3.6), xlabel="FLOPs per example", ylabel="test accuracy"
    ) as axes:
        for ax, dataset in zip(axes, datasets, strict=True):
            for r in (r for r in summary if r["dataset"] == dataset):
                x, y = r["flops"], r["test_accuracy_mean"]
                ax.errorbar(x, y, yerr=r["test_accuracy_std"], fmt="o", capsize=3)
                ax.annotate(
                    r["model"], (x, y), fontsize=8, xytext=(4, 3), textcoords="offset points"
                )


def report(workdir: str, trials: list[storage.Record], config=None) -> dict:
    """Writes trials.csv, summary.csv, summary.md and accuracy_vs_flops.png."""
    rows = [r for t in trials if (r := trial_row(t)) is not None]
    summary = summarize(rows, plateau.curves(trials))
    aggregate.save_tables(
        workdir, rows, summary, markdown(summary, finished=len(rows), total=len(trials))
    )
    if summary:
        plot(summary, os.path.join(workdir, "accuracy_vs_flops.png"))
    return {"rows": rows, "summary": summary}
