"""Run a sweep: many trials of one experiment, then a table and plots.

    python scripts/sweep.py --config experiments/compare_optimizers.py:digits --workdir DIR

Override any config field on the command line, e.g. `--config.sweep.parallel=vmap`.
Running the same command again resumes: finished trials are not run again.
Several processes may run the same command on the same DIR at once.

Exit codes: 0 done; 2 bad input (a message names the field).
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


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config, workdir = _CONFIG.value, _WORKDIR.value
    absl_logging.set_verbosity(absl_logging.WARNING)
    from research.cli import setup_environment

    setup_environment(config)
    from research.sweep import expand, run_sweep

    if "sweep" not in config:
        print(
            "error: the config has no `sweep` section; start from "
            "research.sweep.get_sweep_config()",
            file=sys.stderr,
        )
        return 2
    try:  # Every input error surfaces here, before the workdir is touched.
        expand(config)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        done = run_sweep(config, workdir, echo=lambda line: print(line, flush=True))
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"ran {len(done['ran'])}, skipped {len(done['skipped'])} finished, of {done['trials']} "
        f"trials ({done['parallel']}) in {done['seconds']:.0f} s"
    )
    with open(os.path.join(workdir, "summary.md")) as f:
        print(f.read())
    print(f"tables and plots: {workdir}")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
