"""The training loop: config in, trained model and results.json out.

`train_and_evaluate(config, workdir)` is the whole job, built from small
functions that tests call on their own: `build_run` (everything that can fail
on bad input, done before the workdir is touched), `fit` (the epochs, with
checkpoints, resume, a NaN guard and clean stops on SIGTERM/SIGINT), and
`evaluate_split`.

Resume: the run's position is its step. Epoch `e`'s batch order comes from
`fold_in(data_key, e)` and step `t`'s randomness from `fold_in(train_key, t)`,
so a run restored at step `t` replays exactly the batches and random draws an
uninterrupted run would have used from there: the final `params_sha256` is the
same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from research import config as config_lib
from research import models, optim
from research.data import pipeline
from research.optim import freeze as freeze_lib
from research.train import outputs
from research.train import transfer as transfer_lib
from research.train.checkpoint import Checkpointer, tree_sha256
from research.train.steps import Steps, TrainState, make_mesh, make_steps

log = logging.getLogger(__name__)

# Fields that change how a run is displayed or stored, not what it computes:
# a resumed run may change them.
_COSMETIC_FIELDS = ("progress", "log_every_steps", "checkpoint_every_epochs", "keep_checkpoints")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the message names the step."""


class Interrupted(RuntimeError):
    """SIGTERM or SIGINT arrived; a checkpoint was written first."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@dataclasses.dataclass
class Run:
    """Everything a run needs, built and validated before anything is written."""

    config: ml_collections.ConfigDict
    splits: pipeline.Splits
    model: Any
    task: str
    steps: Steps
    steps_per_epoch: int
    total_steps: int
    freeze_decisions: list = dataclasses.field(default_factory=list)


def build_run(config: ml_collections.ConfigDict, *, splits: pipeline.Splits | None = None) -> Run:
    """Validates the config, loads and splits the data, builds model, optimizer and steps.

    Raises:
      ValueError / FileNotFoundError: with a message naming the bad field or path.
    """
    config_lib.validate(config)
    if splits is None:
        splits = pipeline.from_config(config.data)
    n_train = len(splits.train)
    if config.batch_size > n_train:
        raise ValueError(
            f"config.batch_size={config.batch_size} is larger than the training split "
            f"({n_train} examples of {config.data.name}); use at most {n_train}"
        )
    mesh = make_mesh()
    n_dev = mesh.devices.size
    if config.batch_size % n_dev:
        raise ValueError(
            f"config.batch_size={config.batch_size} must be divisible by the number of devices "
            f"({n_dev}) for data parallelism"
        )
    spec = models.spec(config.model.name)
    overrides = dict(config.model.overrides)
    if config.compute_dtype == "bfloat16":
        overrides["dtype"] = jnp.bfloat16
    model = models.create(config.model.name, num_classes=splits.num_classes, **overrides)
    spe = pipeline.steps_per_epoch(n_train, config.batch_size, config.data.remainder)
    tx = optim.from_config(config.optim, steps_per_epoch=spe, num_epochs=config.num_epochs)
    tx, decisions, interceptor = _apply_transfer_rules(config.transfer, model, splits, tx)
    steps = make_steps(
        model,
        tx,
        input_shape=splits.input_shape,
        task=spec.task,
        augment=config.data.augment,
        mesh=mesh,
        interceptor=interceptor,
    )
    return Run(config, splits, model, spec.task, steps, spe, spe * config.num_epochs, decisions)


def _apply_transfer_rules(cfg, model, splits, tx):
    """Wraps `tx` with the run's freezing rules; returns (tx, decisions, BN interceptor)."""
    rules = [tuple(r) for r in cfg.rules]
    if not rules and cfg.strategy == "scratch":
        freeze_lib.batch_norm_interceptor(set(), cfg.batch_norm)  # validates the policy
        return tx, [], None
    x = jax.ShapeDtypeStruct((1, *splits.input_shape), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)["params"]
    if not rules:
        rules = freeze_lib.strategy_rules(
            cfg.strategy, shapes, head=cfg.head, n=cfg.n, backbone_scale=cfg.backbone_lr_scale
        )
    tx, decisions = freeze_lib.freeze(tx, shapes, rules)
    frozen = freeze_lib.frozen_modules(decisions)
    return tx, decisions, freeze_lib.batch_norm_interceptor(frozen, cfg.batch_norm)


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Creates the workdir, or checks that an existing one holds this same run.

    A workdir with a different config is refused (nothing in it is touched).
    """
    path = os.path.join(workdir, "config.json")
    current = json.loads(config.to_json_best_effort(sort_keys=True))
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        diff = sorted(
            key
            for key in _flat(previous).keys() | _flat(current).keys()
            if key.split(".")[0] not in _COSMETIC_FIELDS
            and _flat(previous).get(key) != _flat(current).get(key)
        )
        if diff:
            raise ValueError(
                f"workdir {workdir} holds a run with a different config (fields differ: "
                f"{', '.join(diff)}); resume with the same config or choose a new --workdir"
            )
    if outputs.is_writer():
        outputs.atomic_write_json(path, current)


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _on_mesh(array: np.ndarray, mesh) -> jax.Array:
    """A replicated global array on `mesh` from a host array every process holds."""
    sharding = NamedSharding(mesh, P())
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _eval_batches(n: int, batch_size: int, n_dev: int):
    batch_size = -(-min(batch_size, n) // n_dev) * n_dev  # a multiple of the device count
    batches = -(-n // batch_size)
    idx = np.arange(batches * batch_size, dtype=np.int32)
    mask = (idx < n).astype(np.float32)
    idx = np.minimum(idx, n - 1)
    return idx.reshape(batches, batch_size), mask.reshape(batches, batch_size)


def evaluate_split(run: Run, state: TrainState, split_arrays) -> dict[str, float]:
    """Mean loss (and accuracy) over a whole split, every example counted once."""
    images, labels, n = split_arrays
    idx, mask = _eval_batches(n, run.config.eval_batch_size, run.steps.mesh.devices.size)
    totals = run.steps.evaluate(
        state.params,
        state.batch_stats,
        images,
        labels,
        _on_mesh(idx, run.steps.mesh),
        _on_mesh(mask, run.steps.mesh),
    )
    totals = jax.device_get(totals)
    return {k: float(v) / float(totals["count"]) for k, v in totals.items() if k != "count"}


@contextlib.contextmanager
def _stop_requests():
    """Turns SIGTERM/SIGINT into a flag the loop checks between chunks of steps."""
    requested: list[int] = []

    def handler(signum, frame):
        requested.append(signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Outside the main thread no handler can be installed: no clean stop there.
        with contextlib.suppress(ValueError):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def fit(run: Run, workdir: str) -> tuple[TrainState, dict[str, Any]]:
    """Trains to `num_epochs`, resuming from the newest good checkpoint in `workdir`.

    Returns the final state and a dict of timing figures.
    """
    cfg, mesh = run.config, run.steps.mesh
    root = jax.random.PRNGKey(cfg.seed)
    init_key, data_key, train_key = jax.random.split(root, 3)
    state = run.steps.init(init_key, train_key)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.keep_checkpoints)
    restored = ckpt.restore(state)
    if restored is not None:
        state, start = restored
        log.info("resumed from checkpoint at step %d", start)
    elif cfg.transfer.pretrained:
        state = _start_from_pretrained(run, state, workdir)
    start = int(jax.device_get(state.step))

    train = run.splits.train
    images, labels = _on_mesh(train.images, mesh), _on_mesh(train.labels, mesh)
    val = (_on_mesh(run.splits.val.images, mesh), _on_mesh(run.splits.val.labels, mesh))
    val = (*val, len(run.splits.val))
    metrics_log = outputs.MetricsLog(workdir, resume_step=start)
    chunk = cfg.log_every_steps or run.steps_per_epoch
    timing = {"train_seconds": 0.0, "compile_seconds": 0.0, "trained_examples": 0}
    bar = _progress(cfg, run.total_steps, start)
    step = start
    try:
        with _stop_requests() as stop:
            for epoch in range(start // run.steps_per_epoch, cfg.num_epochs):
                batches = pipeline.epoch_batches(
                    jax.random.fold_in(data_key, epoch),
                    len(train),
                    cfg.batch_size,
                    cfg.data.remainder,
                )
                epoch_idx = [row for block in batches for row in block]  # per-step index rows
                offset = step - epoch * run.steps_per_epoch
                position = offset
                while position < len(epoch_idx):
                    # Chunks end at multiples of `chunk` (and at a shape change), so a
                    # resumed run cuts the epoch exactly where the first run did.
                    end = min((position // chunk + 1) * chunk, len(epoch_idx))
                    rows = epoch_idx[position:end]
                    if len({len(r) for r in rows}) > 1:  # the kept remainder batch runs alone
                        end = position + next(
                            i for i, r in enumerate(rows) if len(r) != len(rows[0])
                        )
                        rows = rows[: end - position]
                    idx = _on_mesh(np.stack(rows), mesh)
                    t0 = time.perf_counter()
                    state, metrics = run.steps.train_chunk(state, images, labels, idx)
                    metrics = jax.device_get(metrics)  # host sync: once per chunk
                    elapsed = time.perf_counter() - t0
                    if step == start:
                        timing["compile_seconds"] = elapsed
                    else:
                        timing["train_seconds"] += elapsed
                        timing["trained_examples"] += sum(len(r) for r in rows)
                    _check_finite(metrics["loss"], step, epoch, ckpt)
                    step += len(rows)
                    position = end
                    summary = {f"train_{k}": float(np.mean(v)) for k, v in metrics.items()}
                    metrics_log.write(step, epoch=epoch + position / len(epoch_idx), **summary)
                    if bar is not None:
                        bar.update(len(rows))
                        bar.set_postfix({k[6:]: f"{v:.4f}" for k, v in summary.items()})
                    if stop:
                        ckpt.save(state, step=step)
                        raise Interrupted(
                            f"stopped by signal {stop[0]} at step {step}; checkpoint written to "
                            f"{ckpt.directory}. Run the same command again to resume.",
                            stop[0],
                        )
                val_metrics = evaluate_split(run, state, val) if len(run.splits.val) else {}
                metrics_log.write(
                    step, epoch=epoch + 1, **{f"val_{k}": v for k, v in val_metrics.items()}
                )
                last = epoch + 1 == cfg.num_epochs
                every = cfg.checkpoint_every_epochs
                if last or (every and (epoch + 1) % every == 0):
                    ckpt.save(state, step=step)
    finally:
        metrics_log.close()
        if bar is not None:
            bar.close()
        ckpt.close()
    return state, timing


def _start_from_pretrained(run: Run, state: TrainState, workdir: str) -> TrainState:
    """Loads the pretrained parameters and writes transfer.json (what was loaded/frozen)."""
    cfg = run.config.transfer
    params, batch_stats, report = transfer_lib.load_pretrained(
        cfg.pretrained, state.params, state.batch_stats, head=cfg.head, reset_head=cfg.reset_head
    )
    for d in run.freeze_decisions:
        {"freeze": report.frozen, "train": report.trained}.get(d.rule, report.scaled).append(d.path)
    if outputs.is_writer():
        outputs.atomic_write_json(os.path.join(workdir, "transfer.json"), report.as_dict())
    log.info(
        "transfer: %d arrays loaded, %d replaced, %d frozen",
        len(report.loaded),
        len(report.replaced),
        len(report.frozen),
    )
    return run.steps.reinit(state, params, batch_stats)


def _progress(cfg, total: int, start: int):
    if not cfg.progress or not outputs.is_writer():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, leave=False)


def _check_finite(losses: np.ndarray, step: int, epoch: int, ckpt: Checkpointer) -> None:
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        i = int(bad[0])
        kept = ckpt.steps()
        where = f"step {kept[-1]} in {ckpt.directory}" if kept else "none was written yet"
        raise TrainingDiverged(
            f"loss became {float(losses[i])} at step {step + i + 1} (epoch {epoch + 1}); "
            f"training stopped. Last good checkpoint: {where}. Try a smaller "
            f"optim.learning_rate or gradient clipping (optim.clip_norm)."
        )


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    splits: pipeline.Splits | None = None,
    run: Run | None = None,
) -> dict[str, Any]:
    """Trains per `config`, evaluates on validation and test, writes results.json.

    Args:
      config: the run's config.
      workdir: its folder (created, or resumed if it holds the same run).
      splits: prepared data to use instead of loading `config.data` (tests, sweeps).
      run: a `build_run` result whose workdir was already prepared (the CLI builds
        it first so that input errors are reported before anything else happens).

    Returns the results dict (also written to `workdir/results.json` by process 0).
    """
    t_start = time.perf_counter()
    if run is None:
        run = build_run(config, splits=splits)
        prepare_workdir(config, workdir)
    state, timing = fit(run, workdir)
    mesh = run.steps.mesh

    def arrays(split):
        return _on_mesh(split.images, mesh), _on_mesh(split.labels, mesh), len(split)

    val = evaluate_split(run, state, arrays(run.splits.val)) if len(run.splits.val) else {}
    test = evaluate_split(run, state, arrays(run.splits.test))
    steps_done = int(jax.device_get(state.step))
    train_seconds = timing["train_seconds"]
    results = {
        "model": config.model.name,
        "dataset": config.data.name,
        "optimizer": config.optim.name,
        "learning_rate": config.optim.learning_rate,
        "seed": config.seed,
        "params": models.param_count(state.params),
        "steps": steps_done,
        "epochs": steps_done / run.steps_per_epoch,
        "train_examples": len(run.splits.train),
        "val_examples": len(run.splits.val),
        "test_examples": len(run.splits.test),
        "data_notes": list(run.splits.notes),
        **{f"val_{k}": v for k, v in val.items()},
        **{f"test_{k}": v for k, v in test.items()},
        "wall_seconds": time.perf_counter() - t_start,
        "compile_seconds": timing["compile_seconds"],
        "examples_per_second": (
            timing["trained_examples"] / train_seconds if train_seconds > 0 else math.nan
        ),
        "git_commit": outputs.git_commit(),
        "params_sha256": tree_sha256(state.params),
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "deterministic": bool(config.deterministic),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "compute_dtype": config.compute_dtype,
    }
    if outputs.is_writer():
        outputs.atomic_write_json(os.path.join(workdir, "results.json"), results)
        records = outputs.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
        from research.viz import plot_run

        plot_run(
            records,
            os.path.join(workdir, "curves.png"),
            title=f"{config.model.name} on {config.data.name} ({config.optim.name})",
        )
    return results
