"""Sweeps: a base experiment plus axes, run as independent, resumable trials.

space.py     the sweep config (`get_sweep_config`), grid/random expansion, trial ids
claims.py    O_EXCL lock files, so processes sharing a sweep never run a trial twice
vmapped.py   which path a sweep's groups take ("vmap" or "sequential"), and the timing probe
runner.py    `run_sweep(config, workdir)`: claim, group, train (research.train.engine), report
aggregate.py trials.csv, summary.md/.csv (best ε on validation), plots: the generic report

Study-specific reports live in `research.studies`, named by each experiment.
"""

from research.sweep.aggregate import summarize, write_tables
from research.sweep.runner import run_sweep
from research.sweep.space import Trial, expand, get_sweep_config, points, trial_id
from research.sweep.vmapped import probe, resolve_parallel

__all__ = [
    "Trial",
    "expand",
    "get_sweep_config",
    "points",
    "probe",
    "resolve_parallel",
    "run_sweep",
    "summarize",
    "trial_id",
    "write_tables",
]
