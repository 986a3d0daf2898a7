"""Report of the freezing study: target accuracy per transfer strategy and target size.

Rows are grouped by (source -> target) pair, strategy and target size. The pair
is named after the target data (`data.name` and `data.classes`) and the
`sweep.pretrain` stage its transfer trials start from; the strategy after
`transfer.strategy` (with N for freeze_first_n), where a linear probe without
pretrained weights is the "linear_probe_random_init" baseline. Writes
`summary.md` (one table per pair: strategies x target sizes, test accuracy mean
± sample std over seeds), `summary.csv` (long form), `trials.csv` and
`accuracy_vs_target_size.png` (accuracy against target examples, log x, one
line per strategy, one panel per pair).

Each cell is also judged on its mean validation curve over seeds (the
storage's per-epoch validation accuracy) by `research.sweep.plateau`: a cell
whose mean validation accuracy still rose by 0.5 pp or more over the last fifth
of its epochs is marked † in summary.md, with its gain listed under the pair's
table; summary.csv's `plateau` column gives every cell's verdict and gain.
The strategies at one target size are ranked by `research.sweep.caveats`'
seed-interval rule: when the top strategy's 95 % t-interval of test accuracy
overlaps another's, a note under the pair's table says those seeds do not rank
them (summary.csv: `test_accuracy_ci95_low/high`, `overlaps_top`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from research.sweep import aggregate, caveats, plateau, space, storage


def strategy_label(config) -> str:
    t = config.transfer
    if t.strategy == "freeze_first_n":
        return f"freeze_first_{t.n}"
    if t.strategy == "linear_probe" and not t.pretrained:
        return "linear_probe_random_init"
    return t.strategy


def target_label(config) -> str:
    classes = tuple(config.data.classes)
    if not classes:
        return config.data.name
    return f"{config.data.name}[{','.join(str(c) for c in classes)}]"


def pair_labels(trials: list[space.Trial] | list[storage.Record]) -> dict[str, str]:
    """Target label -> "source -> target", the source being the stage its trials use."""
    sources: dict[str, list[str]] = {}
    for t in trials:
        target = target_label(t.config)
        names = sources.setdefault(target, [])
        if t.pretrain and t.pretrain not in names:
            names.append(t.pretrain)
    return {k: f"{'+'.join(v) or '(none)'} → {k}" for k, v in sources.items()}


def trial_row(trial: storage.Record, pairs: dict[str, str]) -> dict[str, Any] | None:
    """The trial's row, or None if it has not finished."""
    if not trial.finished:
        return None
    r, c = trial.results, trial.config
    return {
        "trial_id": trial.id,
        "pair": pairs[target_label(c)],
        "strategy": strategy_label(c),
        "target_size": c.data.train_size,  # 0: all
        "train_examples": r.get("train_examples"),
        "seed": c.seed,
        "status": r.get("status", "done"),
        "test_accuracy": r.get("test_accuracy"),
        "val_accuracy": r.get("val_accuracy"),
        "wall_seconds": r.get("wall_seconds"),
    }


def summarize(
    rows: list[dict[str, Any]], curves: dict[str, dict[int, float]] | None = None
) -> list[dict[str, Any]]:
    """One row per (pair, strategy, target size), in order of first appearance.

    Args:
      rows: trial rows (`trial_row`).
      curves: trial id -> its validation accuracy per epoch (`storage.Record.values`),
        for the plateau verdict (`plateau.of`); a row without curves is not judged.
    """
    curves = curves or {}
    out = []
    groups = aggregate.group_by(rows, "pair", "strategy", "target_size")
    accuracies = []
    for (pair, strategy, size), mine in groups.items():
        acc = [r["test_accuracy"] if r["status"] == "done" else 0.0 for r in mine]
        accuracies.append(acc)
        mean, std = aggregate.mean_std(acc)
        examples = [r["train_examples"] for r in mine if r["train_examples"] is not None]
        out.append(
            {
                "pair": pair,
                "strategy": strategy,
                "target_size": size,
                "train_examples": int(np.mean(examples)) if examples else None,
                "seeds": len(mine),
                "test_accuracy_mean": mean,
                "test_accuracy_std": std,
                "plateau": plateau.of(curves.get(r["trial_id"], {}) for r in mine),
            }
        )
    caveats.rank(out, accuracies, label=lambda r: r["strategy"], group=_group)
    return out


def _group(row) -> str:
    """The strategies ranked against each other: one pair at one target size."""
    return f"{row['pair']}, {_size(row)} examples"


def _size(row) -> str:
    if row["target_size"]:
        return f"{row['target_size']:,}"
    n = row["train_examples"]
    return f"all ({n:,})" if n else "all"


def markdown(summary: list[dict], *, finished: int, total: int) -> str:
    """One table per pair: strategies as rows, target sizes as columns."""
    if not summary:
        return f"No finished trials yet (0/{total}).\n"
    lines = [
        f"Trials finished: {finished}/{total}. Target test accuracy, mean ± std over seeds "
        f"(seeds in brackets when fewer than the rest). {plateau.rule()}. Ranking: the "
        f"{100 * caveats.CONFIDENCE:g} % t-interval of the mean test accuracy over seeds, "
        "per target size.",
    ]
    for pair in dict.fromkeys(r["pair"] for r in summary):
        mine = [r for r in summary if r["pair"] == pair]
        sizes = sorted({r["target_size"] for r in mine}, key=lambda s: s or float("inf"))
        size_names = {s: _size(next(r for r in mine if r["target_size"] == s)) for s in sizes}
        most = max(r["seeds"] for r in mine)
        lines += ["", f"**{pair}**", ""]
        lines.append(
            "| strategy | " + " | ".join(f"{size_names[s]} examples" for s in sizes) + " |"
        )
        lines.append("|---|" + "---|" * len(sizes))
        for strategy in dict.fromkeys(r["strategy"] for r in mine):
            cells = []
            for s in sizes:
                r = next(
                    (r for r in mine if r["strategy"] == strategy and r["target_size"] == s), None
                )
                if r is None:
                    cells.append("—")
                    continue
                cell = f"{r['test_accuracy_mean']:.3f} ± {r['test_accuracy_std']:.3f}"
                cell += f" ({r['seeds']})" if r["seeds"] < most else ""
                cells.append(plateau.cell(cell, r["plateau"]))
            lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
        notes = plateau.legend(
            (f"{r['strategy']}, {size_names[r['target_size']]} examples", r["plateau"])
            for r in mine
        )
        notes += caveats.notes(mine, label=lambda r: r["strategy"], group=_group)
        if notes:
            lines += ["", *notes]
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], path: str) -> None:
    """Accuracy against target examples (log x): one line per strategy, one panel per pair."""
    from research.viz import sweep_plots  # heavy: matplotlib loads only to draw

    pairs = list(dict.fromkeys(r["pair"] for r in summary))
    with sweep_plots.panels(
        path,
        pairs,
        size=(5.5, 4),
        xlabel="target training examples",
        ylabel="target test accuracy",
    ) as axes:
        for ax, pair in zip(axes, pairs, strict=True):
            mine = [r for r in summary if r["pair"] == pair and r["train_examples"]]
            for strategy in dict.fromkeys(r["strategy"] for r in mine):
                pts = sorted(
                    (r for r in mine if r["strategy"] == strategy),
                    key=lambda r: r["train_examples"],
                )
                ax.errorbar(
                    [r["train_examples"] for r in pts],
                    [r["test_accuracy_mean"] for r in pts],
                    yerr=[r["test_accuracy_std"] for r in pts],
                    marker="o",
                    capsize=2,
                    label=strategy,
                    linestyle="--" if strategy in ("scratch", "linear_probe_random_init") else "-",
                )
        axes[-1].legend(fontsize=7, loc="lower right")


def report(workdir: str, trials: list[storage.Record], config=None) -> dict:
    """Writes trials.csv, summary.csv, summary.md and accuracy_vs_target_size.png."""
    pairs = pair_labels(trials)
    rows = [r for t in trials if (r := trial_row(t, pairs)) is not None]
    summary = summarize(rows, plateau.curves(trials))
    aggregate.save_tables(
        workdir, rows, summary, markdown(summary, finished=len(rows), total=len(trials))
    )
    if summary:
        plot(summary, os.path.join(workdir, "accuracy_vs_target_size.png"))
    return {"rows": rows, "summary": summary}
