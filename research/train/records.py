"""The results record of a run or sweep trial, and the files a finished run leaves.

`results_record` is the one schema of `results.json`, for every run and every
sweep trial; `write_results` writes curves.png, then results.json (last: its
presence marks the run finished, and a finished run's record is never rewritten),
and the run's config and final metrics to TensorBoard's hparams plugin.

A run stopped early by a callback (`research.train.callbacks`, e.g.
`config.early_stopping`) keeps `status: "done"` and its val/test metrics, and has

  "stopped_early": {"epoch": 7, "step": 182, "reason": "early_stopping: val_loss ..."}

(`epoch` and `step` where it stopped; absent for a run that trained to the end).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import math
import os
from typing import Any

import jax

from research import environment, models
from research.train import outputs
from research.train.assemble import Run
from research.train.checkpoint import Checkpointer, tree_sha256
from research.train.programs import Programs
from research.train.steps import TrainState


@dataclasses.dataclass
class Timing:
    """A group's times: the first chunk (compile and run), and the chunks after it."""

    compile_seconds: float = 0.0
    train_seconds: float = 0.0
    trained_examples: int = 0  # examples of the chunks after the first, over the group

    def add(self, seconds: float, *, first: bool, examples: int) -> None:
        """One chunk's wall seconds; the first chunk of a run counts as compilation."""
        if first:
            self.compile_seconds = seconds
        else:
            self.train_seconds += seconds
            self.trained_examples += examples


def results_record(
    config,
    run: Run,
    state: TrainState,
    *,
    val: dict,
    test: dict,
    timing: Timing,
    wall_seconds: float,
    programs: Programs,
    group_size: int,
    diverged_step: int | None,
    checkpoints: Checkpointer | None,
    resumed_from_step: int = 0,
    pruned_step: int | None = None,
    stopped_early: dict | None = None,
) -> dict[str, Any]:
    """The one schema of `results.json`, for every run and every sweep trial.

    Times of a group are shared equally among its trials (what one trial cost).
    A diverged trial has `status: "diverged"`, the step, and no val/test metrics.
    A pruned trial (stopped by `train`'s `on_epoch`) has `status: "pruned"`,
    `pruned_step`, the validation metrics it was stopped on and no test metrics.
    A trial stopped by a callback stays "done", with `stopped_early` (module docstring).
    """
    steps_done = int(jax.device_get(state.step))
    train_seconds = timing.train_seconds
    record = {
        "status": "done" if diverged_step is None else "diverged",
        "model": config.model.name,
        "dataset": config.data.name,
        "optimizer": config.optim.name,
        "learning_rate": config.optim.learning_rate,
        "seed": config.seed,
        "params": models.param_count(state.params),
        "steps": steps_done,
        "epochs": steps_done / run.steps_per_epoch,
        "resumed_from_step": resumed_from_step,
        "train_examples": len(run.splits.train),
        "val_examples": len(run.splits.val),
        "test_examples": len(run.splits.test),
        "data_notes": list(run.splits.notes),
        "data_loader": run.loader,
        "augmentation": (
            f"{config.data.augment_policy} on the {config.data.augment_on}"
            if config.data.augment
            else "none"
        ),
        "data_loader_reason": run.loader_reason,
        "class_names": list(run.splits.class_names),
        **{f"val_{k}": v for k, v in val.items()},
        **{f"test_{k}": v for k, v in test.items()},
        "wall_seconds": wall_seconds / group_size,
        "compile_seconds": timing.compile_seconds / group_size,
        "examples_per_second": (
            group_size * timing.trained_examples / train_seconds if train_seconds > 0 else math.nan
        ),
        "params_sha256": tree_sha256(state.params),
        "parallel": programs.parallel,
        "group_size": group_size,
        "conv_algorithm": programs.algorithms["conv"],
        "pool_algorithm": programs.algorithms["pool"],
        "compute_dtype": config.compute_dtype,
        "deterministic": bool(config.deterministic),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        # What pinned the GPU's algorithms: the mode, its flags, the autotune file and its hash.
        **environment.determinism_record(),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "versions": _versions(),
        "git_commit": outputs.git_commit(),
    }
    if stopped_early is not None and diverged_step is None and pruned_step is None:
        record["stopped_early"] = dict(stopped_early)
    if pruned_step is not None and diverged_step is None:
        record["status"] = "pruned"
        record["pruned_step"] = pruned_step
    if diverged_step is not None:
        record["diverged_step"] = diverged_step
        kept = checkpoints.steps() if checkpoints is not None else []
        where = f"step {kept[-1]} in {checkpoints.directory}" if kept else "none was written"
        record["error"] = (
            f"loss became non-finite at step {diverged_step} "
            f"(epoch {(diverged_step - 1) // run.steps_per_epoch + 1}); training stopped. "
            f"Last good checkpoint: {where}. Try a smaller optim.learning_rate or gradient "
            f"clipping (optim.clip_norm)."
        )
    return record


@functools.cache
def _versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in ("jax", "jaxlib", "flax", "optax")}


def write_results(config, workdir: str, record: dict) -> None:
    """curves.png, then results.json (last: its presence marks the run finished)."""
    records = outputs.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    # Late: matplotlib (heavy, and it sets its backend) loads only when a run writes curves.
    from research.viz import plot_run

    plot_run(
        records,
        os.path.join(workdir, "curves.png"),
        title=f"{config.model.name} on {config.data.name} ({config.optim.name})",
    )
    outputs.write_hparams(workdir, config, record)
    outputs.atomic_write_json(os.path.join(workdir, "results.json"), record)
