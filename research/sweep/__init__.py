"""Sweeps: a base experiment plus axes, run as independent, resumable trials.

space.py     the sweep config (`get_sweep_config`), grid/random expansion, trial ids
storage.py   the sweep's state as an Optuna study (journal file or database): the
             queue of trials that any number of workers share, heartbeats, records
search.py    Optuna params, the TPE search space and sampler, the pruners
vmapped.py   which path a sweep's groups take ("vmap" or "sequential"), and the timing probe
runner.py    `run_sweep(config, workdir)`: a worker: claim, group, train
             (research.train.engine), tell, report
aggregate.py trials.csv, summary.md/.csv (best ε on validation), plots: the generic report
plateau.py   the rule every table uses to mark a row still improving at its last epoch (†)
caveats.py   the other rules a table flags by: best ε on its grid's edge, diverged trials,
             overlapping seed intervals of the top rows

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
