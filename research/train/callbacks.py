"""Callbacks: code called after each epoch's validation, which may stop a run.

A callback is an object with `on_epoch(metrics) -> bool | str | None`, or a plain
function `callback(metrics)` with the same answer. `metrics` is that epoch's dict:

  epoch          epochs done (1 after the first)
  step           optimizer steps done
  trial          the trial's position in its group (0 for a single run)
  val_accuracy, val_loss, ...   the validation metrics
  train_loss, train_accuracy    the means over that epoch's logged chunks

A true answer stops the trial there: a string is recorded as the reason, `True`
as "<callback> asked to stop". A stopped trial is frozen (in a vmapped group the
others go on), then tested, checkpointed and recorded as usual: results.json
keeps `status: "done"` and gains `stopped_early: {"epoch", "step", "reason"}`.
Callbacks run only where there is a validation split.

`EarlyStopping` is such a callback; `config.early_stopping` makes one per trial,
whose state is saved in each checkpoint so that a resumed run stops where an
uninterrupted one would. A user's own callbacks see only the epochs run by this
process (a resumed run starts them afresh).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

MODES = {"val_accuracy": "max", "val_loss": "min"}  # the validation metrics one can track


class Callback(Protocol):
    def on_epoch(self, metrics: dict[str, Any]) -> bool | str | None: ...


CallbackLike = Callback | Callable[[dict[str, Any]], bool | str | None]


class EarlyStopping:
    """Stops when `metric` has not improved by more than `min_delta` for `patience` epochs.

    Args:
      metric: "val_accuracy" (higher is better) or "val_loss" (lower is better).
      patience: epochs in a row without improvement before stopping (>= 1).
      min_delta: the smallest change that counts as an improvement (>= 0).
    """

    def __init__(self, metric: str, *, patience: int = 3, min_delta: float = 0.0):
        if metric not in MODES:
            raise ValueError(f"metric={metric!r} must be one of {', '.join(MODES)}")
        if patience < 1:
            raise ValueError(f"patience={patience!r} must be an integer >= 1")
        self.metric, self.patience, self.min_delta = metric, patience, float(min_delta)
        self.best: float | None = None
        self.best_epoch = 0
        self.wait = 0  # epochs since the best one

    def on_epoch(self, metrics: dict[str, Any]) -> str | None:
        value = float(metrics[self.metric])
        sign = 1.0 if MODES[self.metric] == "max" else -1.0
        improved = math.isfinite(value) and (
            self.best is None or sign * (value - self.best) > self.min_delta
        )
        if improved:
            self.best, self.best_epoch, self.wait = value, int(metrics["epoch"]), 0
            return None
        self.wait += 1
        if self.wait < self.patience:
            return None
        best = "none finite" if self.best is None else f"{self.best:.6g}"
        return (
            f"early_stopping: {self.metric} did not improve by more than {self.min_delta:g} "
            f"for {self.patience} epochs (best {best} at epoch {self.best_epoch})"
        )

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps, for `load_state` on resume."""
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def load_state(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.best_epoch = int(state.get("best_epoch", 0))
        self.wait = int(state.get("wait", 0))


def from_config(config) -> EarlyStopping | None:
    """The trial's `config.early_stopping` as a callback (None: off)."""
    es = config.early_stopping
    if not es.metric:
        return None
    return EarlyStopping(es.metric, patience=es.patience, min_delta=es.min_delta)


def ask(callbacks: Sequence[CallbackLike], metrics: dict[str, Any]) -> str | None:
    """Calls every callback with `metrics`; the first reason to stop (None: go on).

    Every callback is called, even after one asked to stop, so that each sees every epoch.
    """
    reason = None
    for callback in callbacks:
        method = getattr(callback, "on_epoch", callback)
        answer = method(dict(metrics))
        if answer and reason is None:
            reason = answer if isinstance(answer, str) else f"{_name(callback)} asked to stop"
    return reason


class EpochMeans:
    """Each trial's mean training metrics over the chunks of the current epoch."""

    def __init__(self):
        self.sums: dict[str, Any] = {}
        self.chunks = 0

    def add(self, metrics: dict[str, Any]) -> None:
        """One chunk's metrics, (trials, steps) arrays by name."""
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + np.mean(v, axis=1)
        self.chunks += 1

    def take(self) -> dict[str, Any]:
        """The epoch's means, (trials,) by name; the next epoch starts afresh."""
        means = {k: v / max(self.chunks, 1) for k, v in self.sums.items()}
        self.sums, self.chunks = {}, 0
        return means


def ask_trials(
    alive: Sequence[bool],
    stoppers: Sequence[EarlyStopping | None],
    user: Sequence[CallbackLike],
    offset: int,
    *,
    epoch: int,
    step: int,
    val: Sequence[dict[str, float]],
    train: dict[str, Any],
) -> dict[int, str]:
    """Asks each trial's callbacks (its `stoppers[i]`, then `user`'s) after an epoch.

    Args:
      alive: per trial of the group, whether it still trains (the others are skipped).
      stoppers: per trial, its `config.early_stopping` (None: off).
      user: the caller's callbacks, shared by every trial.
      offset: the group's first trial's position among all the trials (`trial`).
      epoch, step: where the group is.
      val: per trial, its validation metrics (`{"loss": ..., "accuracy": ...}`).
      train: per metric name, the epoch's mean training value of each trial.

    Returns:
      {position in the group: reason} for each trial to stop.
    """
    stops = {}
    for i, live in enumerate(alive):
        own = [stoppers[i]] if i < len(stoppers) and stoppers[i] is not None else []
        if not live or not (own or user):
            continue
        metrics = {
            "epoch": epoch,
            "step": step,
            "trial": i + offset,
            **{f"val_{k}": float(v) for k, v in val[i].items()},
            **{f"train_{k}": float(v[i]) for k, v in train.items()},
        }
        reason = ask([*own, *user], metrics)
        if reason:
            stops[i] = reason
    return stops


def _name(callback) -> str:
    return getattr(callback, "__name__", type(callback).__name__)


def check(callbacks) -> list[CallbackLike]:
    """`callbacks` as a list, each with `on_epoch` or callable; a TypeError names a bad one."""
    callbacks = list(callbacks or ())
    for k, callback in enumerate(callbacks):
        if not callable(getattr(callback, "on_epoch", callback)):
            raise TypeError(
                f"callbacks[{k}]={callback!r}: expected an object with on_epoch(metrics) "
                f"or a function of metrics"
            )
    return callbacks
