"""Plots. Matplotlib with the non-interactive Agg backend: figures go to PNG files."""

from research.viz import sweep_plots
from research.viz.plots import plot_run
from research.viz.sweep_plots import plot_accuracy_vs_lr, plot_loss_curves

__all__ = ["plot_accuracy_vs_lr", "plot_loss_curves", "plot_run", "sweep_plots"]
