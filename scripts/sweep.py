"""Run a sweep: many trials of one experiment, then a table and plots.

    python scripts/sweep.py --config experiments/compare_optimizers.py:digits --workdir DIR

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

from __future__ import annotations

import os
import sys

import _checkout  # noqa: F401  (first: `research` from this checkout)
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Sweep config file (experiments/...py[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the trials, tables and plots.")
flags.mark_flags_as_required(["config", "workdir"])

EXIT_TRIALS_FAILED = 4  # some trials failed sweep.max_retries times; the rest finished


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from research.cli import EXIT_OS_ERROR, describe_os_error, fail, load_config, setup_environment

    config, workdir = load_config(_CONFIG), _WORKDIR.value
    absl_logging.set_verbosity(absl_logging.WARNING)
    setup_environment(config)
    import optuna

    from research.sweep import expand, run_sweep
    from research.train import Interrupted

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our lines say what each trial did

    if "sweep" not in config:
        fail("the config has no `sweep` section; start from research.sweep.get_sweep_config()")
    try:  # Every input error surfaces here, before the workdir is touched.
        expand(config)
        done = run_sweep(config, workdir, echo=lambda line: print(line, flush=True))
    except (ValueError, FileNotFoundError) as err:
        fail(err)
    except Interrupted as err:
        print(f"stopped: {err}", file=sys.stderr)
        return 128 + err.signum
    except OSError as err:
        fail(describe_os_error(err) + "; finished trials are kept", EXIT_OS_ERROR)
    pruned = f" ({len(done['pruned'])} pruned)" if done["pruned"] else ""
    recorded = f", recorded {len(done['recorded'])} from results.json" if done["recorded"] else ""
    print(
        f"ran {len(done['ran'])}{pruned}{recorded}, skipped {len(done['skipped'])} finished, of "
        f"{done['trials']} trials ({done['parallel']}) in {done['seconds']:.0f} s"
    )
    with open(os.path.join(workdir, "summary.md")) as f:
        print(f.read())
    print(f"tables and plots: {workdir}; study {done['study']} in {done['storage']}")
    if done["failed"]:
        print(
            f"error: {len(done['failed'])} of {done['trials']} trials failed for good "
            f"(sweep.max_retries={config.sweep.max_retries}; errors in summary.md): "
            f"{' '.join(done['failed'])}",
            file=sys.stderr,
        )
        return EXIT_TRIALS_FAILED
    return 0


if __name__ == "__main__":
    from research.cli import parse_flags

    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
