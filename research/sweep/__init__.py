"""Sweeps: a base experiment plus axes, run as independent, resumable trials.

space.py     the sweep config (`get_sweep_config`), grid/random expansion,
             trial ids
claims.py    O_EXCL lock files, so processes sharing a sweep never run a trial twice
vmapped.py   trials at once: vmap over a trial axis of states; the timing probe
runner.py    `run_sweep(config, workdir)`: claim, group, train, tabulate
aggregate.py trials.csv, summary.md/.csv (best ε on validation), plots
"""

from research.sweep.aggregate import summarize, write_tables
from research.sweep.runner import run_sweep
from research.sweep.space import Trial, expand, get_sweep_config, points, trial_id
from research.sweep.vmapped import build_group, group_key, probe, train_group

__all__ = [
    "Trial",
    "build_group",
    "expand",
    "get_sweep_config",
    "group_key",
    "points",
    "probe",
    "run_sweep",
    "summarize",
    "train_group",
    "trial_id",
    "write_tables",
]
