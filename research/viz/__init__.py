"""Plots. Matplotlib with the non-interactive Agg backend: figures go to PNG files."""

from research.viz.plots import plot_run

__all__ = ["plot_run"]
