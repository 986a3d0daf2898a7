"""The optimizer study at speedrun scale (experiments/optimizers_cifar10.py): its report.

`report` writes the generic tables first (`research.sweep.aggregate`:
trials.csv, summary.csv/.md with the best learning rate per optimizer on
validation and test accuracy mean ± std over the seeds), then what only this
study asks, per optimizer at that best rate, in optimizers.md/.csv:

  * test accuracy, mean ± sample std over the seeds (as in summary.md);
  * epochs to target: per seed, the first epoch end whose validation accuracy
    reached `sweep.target_accuracy` (94% on the GPU run), in epochs of
    training (a last partial epoch counts as its fraction, e.g. 9.9), averaged
    over the seeds that reached it, with how many did (k/n);
  * seconds to target: that seed's wall seconds (results.json's
    `wall_seconds`: for vmapped trials, the group's wall time divided by its
    size, so an amortized share of the device) times the fraction of its steps
    trained by that epoch end; averaged the same way.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from research.sweep import aggregate, storage


def to_target(record: storage.Record, target: float) -> tuple[float, float] | None:
    """(epochs, seconds) of training until validation first reached `target`, or None."""
    results = record.results
    spe, steps = results.get("steps_per_epoch"), results.get("steps")
    if not spe or not steps:
        return None
    for epoch, value in sorted(record.values.items()):
        if value is not None and value >= target:
            step = min(epoch * spe, steps)  # the last epoch may be partial
            return step / spe, float(results.get("wall_seconds", np.nan)) * step / steps
    return None


def rows(summary: list[dict], records: list[storage.Record], target: float) -> list[dict]:
    """One row per optimizer (a row of the generic summary), with its time to `target`."""
    by_id = {r.id: r for r in records}
    out = []
    for s in summary:
        reached = [t for tid in s["best_trial_ids"].split() if (t := to_target(by_id[tid], target))]
        out.append(
            {
                "optimizer": s["optim.name"],
                "best_learning_rate": s["best_learning_rate"],
                "seeds": s["seeds"],
                "test_accuracy_mean": s["test_accuracy_mean"],
                "test_accuracy_std": s["test_accuracy_std"],
                "epochs_to_target_mean": float(np.mean([e for e, _ in reached]))
                if reached
                else None,
                "seconds_to_target_mean": float(np.mean([t for _, t in reached]))
                if reached
                else None,
                "reached_target": f"{len(reached)}/{s['seeds']}",
            }
        )
    return out


def markdown(table: list[dict], target: float) -> str:
    lines = [
        f"| optimizer | best ε (validation) | test accuracy (mean ± std) "
        f"| epochs to val ≥ {target:g} | seconds to val ≥ {target:g} |",
        "|---|---|---|---|---|",
    ]
    for r in table:
        epochs, secs, k = (
            r["epochs_to_target_mean"],
            r["seconds_to_target_mean"],
            r["reached_target"],
        )
        lines.append(
            f"| {r['optimizer']} | {r['best_learning_rate']:g} "
            f"| {r['test_accuracy_mean']:.4f} ± {r['test_accuracy_std']:.4f} ({r['seeds']} seeds) "
            f"| {'—' if epochs is None else f'{epochs:.1f}'} ({k}) "
            f"| {'—' if secs is None else f'{secs:.2f}'} |"
        )
    lines.append(
        "\nAt each optimizer's best ε. Epochs and seconds: mean over the seeds that reached "
        "the target (k/n); seconds are each trial's share of its group's wall time "
        "(research/studies/speedrun_optimizers.py). Grid-edge flags: summary.md."
    )
    return "\n".join(lines) + "\n"


def report(workdir: str, records: list[storage.Record], config) -> dict[str, Any]:
    """Writes the generic tables, then optimizers.md and optimizers.csv."""
    target = config.sweep.target_accuracy
    out = aggregate.write_tables(workdir, records, target_accuracy=target)
    table = rows(out["summary"], records, target)
    aggregate.write_csv(table, os.path.join(workdir, "optimizers.csv"))
    aggregate.write_text(os.path.join(workdir, "optimizers.md"), markdown(table, target))
    return {**out, "optimizers": table}
