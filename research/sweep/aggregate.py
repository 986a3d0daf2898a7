"""From finished trials to tables and plots, read from the sweep's storage.

Rows come from the storage's records of the trials (`storage.Record`: their
results as user attrs, their validation accuracy per epoch as intermediate
values); only the loss-curve plot reads the trials' folders (metrics.jsonl).
`trials.csv` has one row per finished trial: an export of the storage.

`summary.csv`/`summary.md` have one row per *setting*: the swept fields other
than the learning rate and the seed (typically the optimizer). For each
setting the learning rate is chosen on VALIDATION accuracy, averaged over
seeds (a diverged trial counts as accuracy 0, so a learning rate that diverges
for some seed is not chosen over one that never does at the same mean); test
accuracy and final training loss are then reported at that learning rate as
mean ± sample standard deviation over seeds. The test split plays no part in
the choice. A pruned trial (stopped early by `sweep.pruner`) counts as
accuracy 0 there too, like a diverged one: it never competes as if it had
finished.

Each row also says what it cannot claim, by the rules every sweep's table
shares: `plateau` (†: its chosen trials' mean validation curve was still
improving at the last epoch; ‡: one epoch, not judged) and `caveats` (ε↑/ε↓:
its best ε sits on the edge of its grid; ✗: some chosen trials diverged, by
the documented rule that also catches a finite, exploding loss; the top rows'
95 % t-intervals of test accuracy over seeds overlapping). The marks go into
the `flags` column, the details into summary.csv's `grid_edge`, `plateau`,
`diverged`, `test_accuracy_ci95_low/high` and `overlaps_top` columns and into
the lines under summary.md's table; trials.csv's `diverged` column gives each
diverged trial's reason.
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Any

import numpy as np

from research.sweep import caveats, plateau, storage
from research.train import outputs

LR_FIELD = "optim.learning_rate"
SEED_FIELD = "seed"
METRICS = (
    "status",
    "val_accuracy",
    "test_accuracy",
    "test_loss",
    "final_train_loss",
    "steps_to_target",
    "wall_seconds",
    "params_sha256",
    "diverged",
)


def _get(config, field: str):
    node = config
    for part in field.split("."):
        node = node[part]
    return node


def trial_row(record: storage.Record, target_accuracy: float) -> dict[str, Any] | None:
    """The trial's row, or None if it has not finished.

    `steps_to_target` is the step of the first epoch end whose validation
    accuracy (the trial's intermediate value) reached `target_accuracy`.
    """
    if not record.finished:
        return None
    results = record.results
    spe = results.get("steps_per_epoch")
    reached = [
        epoch * spe
        for epoch, value in sorted(record.values.items())
        if spe and value is not None and value >= target_accuracy
    ]
    row = {"trial_id": record.id}
    for field in (*record.overrides, "optim.name", LR_FIELD, SEED_FIELD):
        row[field] = _get(record.config, field)
    row.update(
        status=results.get("status", "done"),
        val_accuracy=results.get("val_accuracy"),
        test_accuracy=results.get("test_accuracy"),
        test_loss=results.get("test_loss"),
        final_train_loss=results.get("final_train_loss"),
        steps_to_target=reached[0] if reached else None,
        wall_seconds=results.get("wall_seconds"),
        params_sha256=results.get("params_sha256"),
        diverged=caveats.divergence(results),
    )
    return row


def curves(workdir: str, trial_id: str) -> tuple[list[int], list[float]]:
    """Steps and training losses from a trial's metrics.jsonl (none if not on this host)."""
    path = os.path.join(workdir, "trials", trial_id, "metrics.jsonl")
    if not os.path.exists(path):
        return [], []
    records = outputs.read_jsonl(path)
    train = [r for r in records if "train_loss" in r]
    return [r["step"] for r in train], [_num(r["train_loss"]) for r in train]


def _num(value) -> float:
    return float("nan") if value is None or isinstance(value, str) else float(value)


def mean_std(values: list) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value, NaN for none; None counts as NaN)."""
    x = np.array([_num(v) for v in values], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    return float(np.mean(x)), float(np.std(x, ddof=1)) if x.size > 1 else 0.0


def group_by(rows: list[dict[str, Any]], *fields: str) -> dict[tuple, list[dict[str, Any]]]:
    """Rows grouped by their values of `fields`, in order of first appearance.

    The seeds of one setting end up in one group: every study's table is a mean over them.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[f] for f in fields), []).append(row)
    return groups


def summarize(
    rows: list[dict[str, Any]],
    target_accuracy: float,
    curves: dict[str, dict[int, float]] | None = None,
    *,
    higher_is_better: bool = True,
) -> list[dict[str, Any]]:
    """One row per setting, at its learning rate with the best mean validation accuracy.

    Args:
      rows: trial rows (`trial_row`), with the fields `optim.learning_rate`,
        `seed`, `val_accuracy`, `test_accuracy`, `final_train_loss`,
        `steps_to_target`, `status` and `diverged` (a row without it counts
        as diverged only by its status); other keys not in `METRICS` are settings.
      target_accuracy: reported in the table header only.
      curves: trial id -> its validation curve (`plateau.curves`), for the
        plateau verdict; a row without curves is not judged.
      higher_is_better: the curves' direction (accuracy: True).

    Returns:
      Rows with the setting's fields, `best_learning_rate`, `seeds`,
      `val_accuracy_mean`, `test_accuracy_mean/std`, `final_train_loss_mean/std`,
      `steps_to_target_mean`, `reached_target` ("k/n"), `learning_rates_tried`,
      `best_trial_ids`, then what the row cannot claim (`caveats`, `plateau`):
      `flags` (the marks), `grid_edge` (a `caveats.Edge` or None), `plateau`
      (a `plateau.Plateau`), `diverged` ("ε=1: 1/3 seeds (loss non-finite at step 11); ..."),
      `test_accuracy_ci95_low/high` and `overlaps_top` ("top", "yes", "no", ...).
    """
    curves = curves or {}
    setting_fields = (
        [k for k in rows[0] if k not in (*METRICS, "trial_id", LR_FIELD, SEED_FIELD)]
        if rows
        else []
    )
    settings: dict[tuple, dict[float, list[dict]]] = {}
    for row in rows:
        key = tuple(row[f] for f in setting_fields)
        settings.setdefault(key, {}).setdefault(row[LR_FIELD], []).append(row)
    out = []
    for key, by_lr in settings.items():

        def val_score(lr, by_lr=by_lr):
            accs = [_num(r["val_accuracy"]) if _competes(r) else 0.0 for r in by_lr[lr]]
            accs = [0.0 if math.isnan(a) else a for a in accs]
            return float(np.mean(accs))

        best = max(sorted(by_lr), key=val_score)  # ties: the smallest learning rate
        chosen = by_lr[best]
        test_mean, test_std = mean_std([r["test_accuracy"] for r in chosen])
        loss_mean, loss_std = mean_std([r["final_train_loss"] for r in chosen])
        reached = [r["steps_to_target"] for r in chosen if r["steps_to_target"] is not None]
        verdict = plateau.of((curves.get(r["trial_id"], {}) for r in chosen), higher_is_better)
        where = caveats.edge(list(by_lr), best)
        diverged = {lr: [r for r in mine if _diverged(r)] for lr, mine in sorted(by_lr.items())}
        marks = [where.mark if where else "", verdict.mark, caveats.DIVERGED * bool(diverged[best])]
        out.append(
            {
                **dict(zip(setting_fields, key, strict=True)),
                "best_learning_rate": best,
                "seeds": len(chosen),
                "val_accuracy_mean": val_score(best),
                "test_accuracy_mean": test_mean,
                "test_accuracy_std": test_std,
                "final_train_loss_mean": loss_mean,
                "final_train_loss_std": loss_std,
                "steps_to_target_mean": float(np.mean(reached)) if reached else None,
                "reached_target": f"{len(reached)}/{len(chosen)}",
                "learning_rates_tried": " ".join(f"{lr:g}" for lr in sorted(by_lr)),
                "best_trial_ids": " ".join(r["trial_id"] for r in chosen),
                "flags": " ".join(m for m in marks if m),
                "grid_edge": where,
                "plateau": verdict,
                "diverged": "; ".join(
                    f"ε={lr:g}: {len(gone)}/{len(by_lr[lr])} seeds{_why(gone)}"
                    for lr, gone in diverged.items()
                    if gone
                ),
            }
        )
    caveats.rank(out, [_test_accuracies(s, rows) for s in out], label=_label)
    return out


def _diverged(row: dict) -> bool:
    """Diverged by `caveats`' rule (a row made without the rule: by its status)."""
    return row["status"] == "diverged" or bool(row.get("diverged"))


def _why(diverged_rows: list[dict]) -> str:
    """Their distinct reasons (`caveats.divergence`), in parentheses; "" when none is known."""
    reasons = dict.fromkeys(r["diverged"] for r in diverged_rows if r.get("diverged"))
    return f" ({', '.join(reasons)})" if reasons else ""


def _competes(row: dict) -> bool:
    """Done and not diverged: a diverged or pruned trial counts as accuracy 0."""
    return row["status"] == "done" and not _diverged(row)


def _test_accuracies(summary_row: dict, rows: list[dict]) -> list[float]:
    ids = set(summary_row["best_trial_ids"].split())
    return [_num(r["test_accuracy"]) for r in rows if r["trial_id"] in ids]


def write_csv(rows: list[dict], path: str) -> None:
    """Rows as CSV (columns in order of first appearance, None as empty), atomically."""
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    write_text(path, buffer.getvalue())


def write_text(path: str, text: str) -> None:
    """Writes `text` to a temporary file and renames it: readers never see half a table."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_tables(workdir: str, rows: list[dict], summary: list[dict], summary_md: str) -> None:
    """A study's tables: trials.csv (one row per trial), summary.csv and summary.md."""
    write_csv(rows, os.path.join(workdir, "trials.csv"))
    write_csv(summary, os.path.join(workdir, "summary.csv"))
    write_text(os.path.join(workdir, "summary.md"), summary_md)


def markdown(
    summary: list[dict], target_accuracy: float, *, finished: int, total: int, pruned: int = 0
) -> str:
    """The summary as a markdown table."""
    if not summary:
        return "No finished trials yet.\n"
    stopped = f" ({pruned} pruned: counted as accuracy 0, never chosen)" if pruned else ""
    setting_fields = [k for k in summary[0] if k not in _SUMMARY_KEYS]
    head = [
        *setting_fields,
        "best ε (val)",
        "seeds",
        "val acc",
        "test acc",
        "final train loss",
        f"steps to val acc ≥ {target_accuracy:g}",
        "flags",
    ]
    lines = [
        f"Trials finished: {finished}/{total}{stopped}. Learning rate chosen on mean validation "
        f"accuracy over seeds; test accuracy and final training loss are mean ± std over "
        f"seeds at that learning rate.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in summary:
        steps = r["steps_to_target_mean"]
        cells = [
            *(str(r[f]) for f in setting_fields),
            f"{r['best_learning_rate']:g}",
            str(r["seeds"]),
            f"{r['val_accuracy_mean']:.4f}",
            f"{r['test_accuracy_mean']:.4f} ± {r['test_accuracy_std']:.4f}",
            f"{r['final_train_loss_mean']:.4f} ± {r['final_train_loss_std']:.4f}",
            ("—" if steps is None else f"{steps:.0f}") + f" ({r['reached_target']})",
            r["flags"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", *caveat_lines(summary)]) + "\n"


def caveat_lines(summary: list[dict]) -> list[str]:
    """Under the table: the rules, then one line per flagged row and the ranking note."""
    notes = [
        f"- {s['grid_edge'].mark} {_label(s)}: {s['grid_edge']}" for s in summary if s["grid_edge"]
    ]
    notes += [f"- {line}" for line in plateau.legend((_label(s), s["plateau"]) for s in summary)]
    notes += [
        f"- {caveats.DIVERGED} {_label(s)}: diverged at {s['diverged']}"
        for s in summary
        if s["diverged"]
    ]
    notes += [f"- {line}" for line in caveats.notes(summary, label=_label)]
    return [f"{caveats.rule()} {plateau.rule()}.", *(["", *notes] if notes else [])]


_SUMMARY_KEYS = (
    "best_learning_rate",
    "seeds",
    "val_accuracy_mean",
    "test_accuracy_mean",
    "test_accuracy_std",
    "final_train_loss_mean",
    "final_train_loss_std",
    "steps_to_target_mean",
    "reached_target",
    "learning_rates_tried",
    "best_trial_ids",
    "flags",
    "grid_edge",
    "plateau",
    "diverged",
    "test_accuracy_ci95_low",
    "test_accuracy_ci95_high",
    "overlaps_top",
)


def write_tables(workdir: str, records: list[storage.Record], *, target_accuracy: float) -> dict:
    """Writes trials.csv, summary.csv, summary.md and the two plots from finished trials."""
    rows = [r for t in records if (r := trial_row(t, target_accuracy)) is not None]
    summary = summarize(rows, target_accuracy, plateau.curves(records), higher_is_better=True)
    pruned = sum(r["status"] == "pruned" for r in rows)
    text = markdown(summary, target_accuracy, finished=len(rows), total=len(records), pruned=pruned)
    save_tables(workdir, rows, summary, text)
    if rows:
        _plots(workdir, rows, summary)
    return {"rows": rows, "summary": summary}


def report(workdir: str, records: list[storage.Record], config) -> dict:
    """The generic "optimizers" report: `write_tables` at `sweep.target_accuracy`."""
    return write_tables(workdir, records, target_accuracy=config.sweep.target_accuracy)


def _label(summary_row: dict) -> str:
    parts = [str(v) for k, v in summary_row.items() if k not in _SUMMARY_KEYS]
    return " ".join(parts) or "all"


def _plots(workdir: str, rows: list[dict], summary: list[dict]) -> None:
    from research.viz import sweep_plots  # heavy: matplotlib loads only to draw

    loss = {}
    for s in summary:
        ids = s["best_trial_ids"].split()
        loss[f"{_label(s)} (ε={s['best_learning_rate']:g})"] = [curves(workdir, i) for i in ids]
    sweep_plots.plot_loss_curves(loss, os.path.join(workdir, "loss_curves.png"))
    setting_fields = [k for k in summary[0] if k not in _SUMMARY_KEYS]
    lines = {}
    for s in summary:
        label = _label(s)
        mine = [r for r in rows if all(r[f] == s[f] for f in setting_fields)]
        lrs = sorted({r[LR_FIELD] for r in mine})
        stats = [mean_std([r["val_accuracy"] for r in mine if r[LR_FIELD] == lr]) for lr in lrs]
        lines[label] = (lrs, [m for m, _ in stats], [sd for _, sd in stats])
    sweep_plots.plot_accuracy_vs_lr(lines, os.path.join(workdir, "val_accuracy_vs_lr.png"))
