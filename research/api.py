"""Training and sweeps from Python: `load_config`, `fit`, `run_sweep`, `restore`.

The same work as `scripts/train.py` and `scripts/sweep.py`, without the command
line: a config built in Python, a result object back, exceptions instead of exit
codes.

    import research

    config = research.load_config("experiments/digits.py")  # as --config FILE[:variant]
    config.optim.learning_rate = 3e-3
    result = research.fit(config, "runs/digits-lr3e-3")
    print(result.test_accuracy, result.params_sha256)
    history = pandas.DataFrame(result.history)   # one row per metrics.jsonl line

    model = research.restore("runs/digits-lr3e-3")
    logits = model.predict(images_uint8)  # (N, H, W, C) uint8, as the dataset stores them

What `fit` changes in the caller's process is listed in `research.environment`
(XLA_FLAGS for GPU determinism, a compilation cache where the caller has none);
nothing else: no logging handlers, hooks, matplotlib backend, absl flags or warnings
filters.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np

from research.environment import setup_environment
from research.logs import caller_state_kept


def _keeps_caller_state(fn):
    """Whatever the packages imported on the way add (warnings filters, a root handler)
    is dropped when the call returns (`research.logs.caller_state_kept`)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with caller_state_kept():
            return fn(*args, **kwargs)

    return wrapped


def load_config(spec: str) -> ml_collections.ConfigDict:
    """The config of an experiment file, as `--config FILE[:variant]` gives it.

    Args:
      spec: `path/to/experiment.py` or `path/to/experiment.py:variant`; the file's
        `get_config()` (or `get_config(variant)`) builds it from the base config.

    Raises:
      FileNotFoundError: no such file. ValueError: it has no `get_config`.
    """
    path, _, variant = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config {spec!r}: no file {path}")
    name = "_research_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config {spec!r}: {path} defines no get_config()")
    return module.get_config(variant) if variant else module.get_config()


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One finished run: its results.json fields and its metrics history.

    Attributes:
      workdir: the run's folder.
      status: "done" or "diverged" (a run stopped early by a callback is "done", and
        `record["stopped_early"]` says at which epoch and why).
      test_accuracy, test_loss, val_accuracy, val_loss: the final evaluation (None
        where the split is empty).
      steps: optimizer steps taken.
      params_sha256: the hash of the final parameters (two runs of one config agree).
      record: every field of results.json (the schema is in docs/training.md).
      history: the lines of metrics.jsonl as dicts, in order (`pandas.DataFrame(history)`).
    """

    workdir: str
    status: str
    test_accuracy: float | None
    test_loss: float | None
    val_accuracy: float | None
    val_loss: float | None
    steps: int
    params_sha256: str
    record: dict[str, Any]
    history: list[dict[str, Any]]

    def __getitem__(self, field: str) -> Any:
        return self.record[field]

    @classmethod
    def read(cls, workdir: str) -> RunResult:
        """The result of the finished run in `workdir` (its results.json and metrics.jsonl)."""
        # heavy: JAX and the training stack load on first use, not with research.api
        from research.train import outputs

        path = os.path.join(workdir, "results.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"workdir {workdir!r} holds no finished run (no results.json)")
        with open(path) as f:
            record = json.load(f)
        metrics = os.path.join(workdir, "metrics.jsonl")
        history = outputs.read_jsonl(metrics) if os.path.exists(metrics) else []
        return cls(
            workdir=workdir,
            status=record["status"],
            test_accuracy=record.get("test_accuracy"),
            test_loss=record.get("test_loss"),
            val_accuracy=record.get("val_accuracy"),
            val_loss=record.get("val_loss"),
            steps=int(record.get("steps") or 0),
            params_sha256=record.get("params_sha256", ""),
            record=record,
            history=history,
        )


@_keeps_caller_state
def fit(
    config: ml_collections.ConfigDict, workdir: str, *, callbacks: Sequence[Any] = ()
) -> RunResult:
    """Trains one run per `config` in `workdir` (resumed if it holds the same run).

    `callbacks` are called after each epoch's validation with that epoch's metrics
    (`{"epoch", "step", "val_accuracy", "val_loss", "train_loss", ...}`): each an
    object with `on_epoch(metrics)` or a function of metrics; a true answer (or a
    string, the reason) stops the run there, which is still tested, checkpointed
    and recorded (`research.train.callbacks`). `config.early_stopping` is the
    built-in one.

    Applies `research.environment.setup_environment(config)` first (idempotent).
    A workdir holding this run finished is read back, not trained again.

    Raises:
      ValueError / FileNotFoundError: a bad config field or path, named in the message.
      research.train.TrainingDiverged: the loss became NaN/Inf (results.json says so).
      research.train.Interrupted: SIGTERM/SIGINT, after a checkpoint.
      OSError: a write was refused (disk full, read-only); the last good checkpoint is kept.
    """
    setup_environment(config)
    # late: JAX loads after setup_environment, inside the call (caller_state_kept)
    from research.train import build_run, outputs, train_and_evaluate

    run = build_run(config)
    outputs.lock_workdir(workdir)
    try:
        outputs.prepare_workdir(config, workdir)
        train_and_evaluate(config, workdir, run=run, callbacks=callbacks)
    finally:
        outputs.unlock_workdir(workdir)
    return RunResult.read(workdir)


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """A finished sweep: its trials and its summary table, as rows of dicts.

    Attributes:
      workdir: the sweep's folder (summary.md, trials.csv, plots).
      trials: trials.csv as dicts, one per trial (`pandas.DataFrame(trials)`).
      summary: summary.csv as dicts, one per row of the table.
      done: what this call did (`research.sweep.run_sweep`'s answer).
    """

    workdir: str
    trials: list[dict[str, str]]
    summary: list[dict[str, str]]
    done: dict[str, Any]


def _read_csv(path: str) -> list[dict[str, str]]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@_keeps_caller_state
def run_sweep(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    echo: Callable[[str], None] | None = None,
) -> SweepResult:
    """Runs every trial of the sweep `config` (resuming `workdir`), then its tables.

    Args:
      config: a sweep config (`research.sweep.get_sweep_config()` plus axes, e.g. an
        experiment's `get_config()`).
      workdir: the sweep's folder.
      echo: called with one line per trial started or finished (None: silent).
    """
    if "sweep" not in config:
        raise ValueError(
            "config has no `sweep` section; start from research.sweep.get_sweep_config()"
        )
    setup_environment(config)
    # late: JAX loads after setup_environment, inside the call (caller_state_kept)
    from research import sweep

    sweep.expand(config)  # input errors before anything is written
    done = sweep.run_sweep(config, workdir, echo=echo or (lambda line: None))
    return SweepResult(
        workdir=workdir,
        trials=_read_csv(os.path.join(workdir, "trials.csv")),
        summary=_read_csv(os.path.join(workdir, "summary.csv")),
        done=done,
    )


@dataclasses.dataclass(frozen=True)
class Restored:
    """A trained model ready for `model.apply(variables, x, train=False)`.

    Attributes:
      model: the Flax module, built from the run's config.
      variables: `{"params": ..., "batch_stats": ...}` of the checkpoint.
      config: the run's config.
      step: the checkpoint's step.
      mean, std: the per-channel input statistics the run normalized with.
    """

    model: Any
    variables: dict[str, Any]
    config: ml_collections.ConfigDict
    step: int
    mean: np.ndarray
    std: np.ndarray

    @_keeps_caller_state
    def predict(self, images: np.ndarray, *, batch_size: int = 1000) -> np.ndarray:
        """Logits `(N, classes)` of uint8 images `(N, H, W, C)` as the dataset stores them."""
        # heavy: JAX loads on first use, inside the call (caller_state_kept)
        import jax

        from research.data import pipeline

        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"images: expected uint8 (N, H, W, C), got {images.dtype} {images.shape}"
            )
        table = pipeline.normalize_table(self.mean, self.std)
        apply = jax.jit(lambda x: self.model.apply(self.variables, x, train=False))
        out = [
            np.asarray(apply(pipeline.normalize(images[i : i + batch_size], table)))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out)


@_keeps_caller_state
def restore(workdir: str, which: str = "latest") -> Restored:
    """The model and variables of the run in `workdir`.

    Args:
      workdir: a run's folder (its config.json and checkpoints/).
      which: "latest" (the newest good checkpoint) or "best" (the best validation
        checkpoint, kept when the run's `checkpoint_best` is on).

    Raises:
      ValueError: `which` is not "latest" or "best".
      FileNotFoundError: no run, or no usable checkpoint, in `workdir`.
    """
    # heavy: JAX loads on first use, inside the call (caller_state_kept)
    from research import models
    from research.data import pipeline
    from research.train import checkpoint

    if which not in ("latest", "best"):
        raise ValueError(f"which={which!r}: must be 'latest' or 'best'")
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"workdir {workdir!r} holds no run (no config.json)")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if which == "best":
        restored = checkpoint.read(workdir, what="workdir", best=True)
    else:
        restored = checkpoint.read(workdir, what="workdir")
    state = restored.state
    splits = pipeline.from_config(config.data)  # the training split's statistics
    model = models.create(
        config.model.name, num_classes=splits.num_classes, **dict(config.model.overrides)
    )
    variables = {"params": state["params"]}
    if state.get("batch_stats"):
        variables["batch_stats"] = state["batch_stats"]
    return Restored(
        model=model,
        variables=variables,
        config=config,
        step=int(np.asarray(state["step"])),
        mean=np.asarray(splits.mean, np.float32),
        std=np.asarray(splits.std, np.float32),
    )
