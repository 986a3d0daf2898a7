"""Sweeps: a base experiment plus axes, run as independent, resumable trials.

space.py     the sweep config (`get_sweep_config`), grid/random expansion, trial ids
checks.py    the `sweep` section's own fields and each swept field, checked
storage.py   where the sweep's state lives (journal file or database URL, its password
             kept out of every file), its studies, and the records the reports read
queue.py     the study's trials as a queue any number of workers share: atomic claims,
             heartbeats, take-overs, retries up to sweep.max_retries
study.py     every call to Optuna, through its public API only
search.py    Optuna params, the TPE search space and sampler, the pruners
vmapped.py   which path a sweep's groups take ("vmap" or "sequential"), and the timing probe
runner.py    `run_sweep(config, workdir)`: check every trial, open the studies, run a
             worker, then the report
worker.py    the worker's one loop (`Worker.drain`): claim, train, tell, for stages and trials
work.py      the two kinds of work it drains: pretraining stages and (grouped) trials
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
