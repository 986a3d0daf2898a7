"""Run a sweep: many trials of one experiment, then a table and plots.

    python -m research.sweep --config experiments/compare_optimizers.py:digits --workdir DIR

Override any config field on the command line, e.g. `--config.sweep.parallel=vmap`.
Running the same command again resumes: finished trials are not run again.
Any number of processes, on any number of hosts, may run the same command
against one storage (`--config.sweep.storage`: a shared journal file or a
database URL; default DIR/optuna.journal): each trial runs once, a lost
worker's trial is taken over, and each command returns when every trial of the
sweep has finished.

A trial whose attempts fail `--config.sweep.max_retries` times (it raises, or
its worker is lost) is failed for good: the others finish, the tables list it
with its error, and the command exits 4 with one line naming it. Every trial's
model and input are checked before the first trial starts. A database password
is best given by `--config.sweep.storage_password=env:VARIABLE` (or
`file:PATH`) rather than in the URL; it is never written anywhere.

Exit codes: 0 done; 2 bad input (a message names the field or path); 4 some
trials failed for good (the others finished; the line names them); 74 the
operating system refused a write (disk full, read-only folder: the message
names the path; finished trials are kept and the same command resumes);
128 + N stopped by signal N (SIGTERM, SIGINT: checkpoints written, the trials
handed back to the study for any worker to resume).
"""

from research.commands import sweep

if __name__ == "__main__":
    sweep()
