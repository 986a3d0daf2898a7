"""The command lines: `train` and `sweep`, for every way of starting them.

    python -m research.train --config experiments/digits.py --workdir DIR
    python -m research.sweep --config experiments/compare_optimizers.py:digits --workdir DIR

The same commands are `scripts/train.py` and `scripts/sweep.py` in a checkout and the console
scripts `research-train` and `research-sweep` of an installed package; each is a thin call to
`train()` or `sweep()` here. The usage text and the exit codes are in `research/train/__main__.py`
and `research/sweep/__main__.py` (and the scripts' docstrings).

Flags are defined when a command starts, not at import, so importing this module defines none
and both commands can live in one module. Heavy imports (JAX, the training code) come after
`setup_environment(config)`, which must precede them.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from research.cli import (
    EXIT_DIVERGED,
    EXIT_OS_ERROR,
    EXIT_TRIALS_FAILED,
    describe_os_error,
    fail,
    load_config,
    parse_flags,
    setup_environment,
)


def _define_flags(config_help: str, workdir_help: str):
    config = config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
    workdir = flags.DEFINE_string("workdir", None, workdir_help)
    flags.mark_flags_as_required(["config", "workdir"])
    return config, workdir


def _run(main, argv) -> None:
    app.run(lambda args: sys.exit(main(args)), argv=argv, flags_parser=parse_flags)


def train(argv: list[str] | None = None) -> None:
    """Train one model on one dataset (exits with the command's code)."""
    config_flag, workdir_flag = _define_flags(
        "Experiment config file.", "Folder for checkpoints, metrics and results."
    )
    _run(lambda args: train_main(args, config_flag, workdir_flag), argv)


def sweep(argv: list[str] | None = None) -> None:
    """Run a sweep: many trials of one experiment, then a table and plots (exits with its code)."""
    config_flag, workdir_flag = _define_flags(
        "Sweep config file (experiments/...py[:arg]).", "Folder for the trials, tables and plots."
    )
    _run(lambda args: sweep_main(args, config_flag, workdir_flag), argv)


def train_main(argv, config_flag, workdir_flag) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config, workdir = load_config(config_flag), workdir_flag.value
    absl_logging.set_verbosity(absl_logging.WARNING)  # no INFO lines from jax/absl
    setup_environment(config)
    # heavy, and after setup_environment, which must precede JAX (see the module docstring)
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
    import jax  # loaded by now; never at the top: setup_environment must precede it

    if jax.process_index() == 0:
        shown = ("test_accuracy", "test_loss", "val_accuracy", "steps", "wall_seconds")
        print(" ".join(f"{k}={results[k]:.4g}" for k in shown if results.get(k) is not None))
        print(f"results: {os.path.join(workdir, 'results.json')}")
    return 0


def sweep_main(argv, config_flag, workdir_flag) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config, workdir = load_config(config_flag), workdir_flag.value
    absl_logging.set_verbosity(absl_logging.WARNING)
    setup_environment(config)
    # heavy, and after setup_environment, which must precede JAX (see the module docstring)
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
