"""Figures of sweeps: loss curves over seeds, and accuracy against learning rate.

Drawn on `matplotlib.figure.Figure`, never through pyplot: importing this module
or drawing leaves the caller's backend (a notebook's inline one) as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure


@contextlib.contextmanager
def panels(
    path: str, titles: list[str], *, size: tuple[float, float], xlabel: str, ylabel: str
) -> Iterator[list]:
    """A row of log-x panels, one per title, saved to `path` when the block ends.

    with panels(path, datasets, size=(4.2, 3.6), xlabel="FLOPs", ylabel="accuracy") as axes:
        for ax, dataset in zip(axes, datasets):
            ax.plot(...)
    """
    fig = Figure(figsize=(size[0] * len(titles), size[1]))
    axes = fig.subplots(1, len(titles), squeeze=False)
    for ax, title in zip(axes[0], titles, strict=True):
        ax.set_xscale("log")
        # A panel spanning less than a decade would label its minor ticks, overlapping.
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    yield list(axes[0])
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def plot_loss_curves(
    curves: dict[str, list[tuple[list[int], list[float]]]], path: str, *, title: str = ""
) -> str:
    """Training loss against step: per label, the mean over seeds and a min–max band.

    Args:
      curves: label (e.g. "adam (ε=0.001)") -> one `(steps, losses)` per seed.
        Seeds of one label share their steps (same config); if not, the curves
        are cut to the shortest.
      path: the PNG to write.
      title: figure title.
    """
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    for label, runs in curves.items():
        runs = [r for r in runs if r[0]]
        if not runs:
            continue
        n = min(len(s) for s, _ in runs)
        steps = np.asarray(runs[0][0][:n])
        losses = np.array([loss[:n] for _, loss in runs], dtype=np.float64)  # (seeds, points)
        mean = np.nanmean(losses, axis=0)
        (line,) = ax.plot(steps, mean, label=f"{label}, {len(runs)} seeds")
        ax.fill_between(
            steps,
            np.nanmin(losses, axis=0),
            np.nanmax(losses, axis=0),
            alpha=0.2,
            color=line.get_color(),
            linewidth=0,
        )
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean, band: min–max over seeds)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    if ax.lines:  # no curves (no metrics.jsonl on this host): no legend to draw
        ax.legend(fontsize=8)
    ax.set_title(title or "training loss at each optimizer's best learning rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_accuracy_vs_lr(
    lines: dict[str, tuple[list[float], list[float], list[float]]],
    path: str,
    *,
    ylabel: str = "final validation accuracy",
    title: str = "",
) -> str:
    """Accuracy against learning rate on a log axis, one line per label, ±std error bars.

    Args:
      lines: label -> (learning rates, mean accuracy, std over seeds).
      path: the PNG to write.
      ylabel: what the values are.
      title: figure title.
    """
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    for label, (lrs, mean, std) in lines.items():
        ax.errorbar(lrs, mean, yerr=std, marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate ε (log scale)")
    ax.set_ylabel(f"{ylabel} (mean ± std over seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title or "validation accuracy against learning rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
