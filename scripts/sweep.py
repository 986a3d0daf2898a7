"""Run a sweep: many trials of one experiment, then a table and plots.

    python scripts/sweep.py --config experiments/compare_optimizers.py:digits --workdir DIR

Override any config field on the command line, e.g. `--config.sweep.parallel=vmap`.
Running the same command again resumes: finished trials are not run again.
Any number of processes, on any number of hosts, may run the same command
against one storage (`--config.sweep.storage`: a shared journal file or a
database URL; default DIR/optuna.journal): each trial runs once, a lost
worker's trial is taken over, and each command returns when every trial of the
sweep has finished.

Exit codes: 0 done; 2 bad input (a message names the field or path); 74 the
operating system refused a write (disk full, read-only folder: the message
names the path; finished trials are kept and the same command resumes);
128 + N stopped by signal N (SIGTERM, SIGINT: checkpoints written, the trials
handed back to the study for any worker to resume).

The same command as `python -m research.sweep` (research/commands.py).
"""

from research.commands import sweep

if __name__ == "__main__":
    sweep()
