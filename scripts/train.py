"""Train one model on one dataset.

    python scripts/train.py --config experiments/digits.py --workdir DIR


Override any config field on the command line, e.g. `--config.optim.learning_rate=0.05`.
Running the same command again resumes from the newest checkpoint in DIR.

Exit codes: 0 done; 2 bad input (a message names the field or path), or the
workdir is in use by another run (the message names its process); 3 the loss
became NaN/Inf (results.json says at which step); 74 the operating system
refused a write (disk full, read-only folder: the message names the path; the
last good checkpoint is kept, so the same command resumes once there is room);
130/143 stopped by SIGINT/SIGTERM after writing a checkpoint.
"""

from __future__ import annotations

import os
import sys

import _checkout  # noqa: F401  (first: `research` from this checkout)
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from research.cli import (
        EXIT_DIVERGED,
        EXIT_OS_ERROR,
        describe_os_error,
        fail,
        load_config,
        setup_environment,
    )

    config, workdir = load_config(_CONFIG), _WORKDIR.value
    absl_logging.set_verbosity(absl_logging.WARNING)  # no INFO lines from jax/absl
    setup_environment(config)
    from research.train import Interrupted, TrainingDiverged, build_run, outputs, train_and_evaluate

    try:  # Every input error surfaces here, before the workdir is touched.
        run = build_run(config)
        outputs.lock_workdir(workdir)  # a second process on this workdir is refused
        outputs.prepare_workdir(config, workdir)
    except (ValueError, FileNotFoundError) as err:
        fail(err)
    except OSError as err:
        fail(describe_os_error(err), EXIT_OS_ERROR)
    try:
        results = train_and_evaluate(config, workdir, run=run)
    except TrainingDiverged as err:
        fail(err, EXIT_DIVERGED)
    except Interrupted as err:
        print(f"stopped: {err}", file=sys.stderr)
        return 128 + err.signum
    except OSError as err:
        fail(describe_os_error(err) + "; the last good checkpoint is kept", EXIT_OS_ERROR)
    import jax

    if jax.process_index() == 0:
        shown = ("test_accuracy", "test_loss", "val_accuracy", "steps", "wall_seconds")
        print(" ".join(f"{k}={results[k]:.4g}" for k in shown if results.get(k) is not None))
        print(f"results: {os.path.join(workdir, 'results.json')}")
    return 0


if __name__ == "__main__":
    from research.cli import parse_flags

    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
