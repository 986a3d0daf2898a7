"""Plots, drawn on `matplotlib.figure.Figure` objects (no pyplot, no backend change):
figures go to PNG files, or back to the caller (a notebook shows them inline)."""

from research.viz import sweep_plots
from research.viz.plots import plot_run, run_figure
from research.viz.sweep_plots import plot_accuracy_vs_lr, plot_loss_curves

__all__ = ["plot_accuracy_vs_lr", "plot_loss_curves", "plot_run", "run_figure", "sweep_plots"]
