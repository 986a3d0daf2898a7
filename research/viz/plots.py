"""Figures of single runs.

Drawn on `matplotlib.figure.Figure` objects, never through pyplot's global state: the
caller's backend (a notebook's inline one, say) is left as it was, and a figure
returned to a notebook shows inline.
"""

from __future__ import annotations

from matplotlib.figure import Figure


def run_figure(records: list[dict], *, title: str = "") -> Figure:
    """Loss (left) and accuracy (right) against step: training lines and validation points.

    Args:
      records: the lines of a run's metrics.jsonl (`RunResult.history`).
      title: figure title (e.g. model and dataset).
    """
    train = [r for r in records if "train_loss" in r]
    val = [r for r in records if "val_loss" in r]
    has_acc = any("train_accuracy" in r for r in train)
    fig = Figure(figsize=(10 if has_acc else 5, 3.6))
    axes = fig.subplots(1, 2 if has_acc else 1)
    axes = list(axes) if has_acc else [axes]
    for ax, key, label in zip(axes, ("loss", "accuracy"), ("loss", "accuracy"), strict=False):
        ax.plot([r["step"] for r in train], [r[f"train_{key}"] for r in train], label="train")
        if val:
            ax.plot(
                [r["step"] for r in val], [r[f"val_{key}"] for r in val], "o-", label="validation"
            )
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_run(records: list[dict], path: str, *, title: str = "") -> str:
    """`run_figure` written to the PNG `path`; returns `path`."""
    run_figure(records, title=title).savefig(path, dpi=110)
    return path
