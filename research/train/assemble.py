"""Assembling a run: config in, everything training needs out, before anything is written.

`build_run(config)` does everything that can fail on bad input before any
workdir is touched: it validates the config, prepares the data (`prepare_data`),
checks that the model takes the data's input shape, and builds the model, the
optimizer (with the freezing rules of `config.transfer`) and the per-trial step
functions. The loop (`research.train.loop`) trains what it returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from research import config as config_lib
from research import models, optim
from research.data import augmentation, batching, loader_choice, pipeline, stream_splits
from research.optim import freeze as freeze_lib
from research.train import transfer as transfer_lib
from research.train.steps import Steps, make_mesh, make_steps

__all__ = ["Run", "build_run", "prepare_data"]


@dataclasses.dataclass
class Run:
    """Everything a run needs, built and validated before anything is written."""

    config: ml_collections.ConfigDict
    splits: Any  # pipeline.Splits ("device") or stream_splits.StreamSplits ("stream")
    model: Any
    task: str
    steps: Steps  # the per-trial functions on the ("data",) mesh of every device
    steps_per_epoch: int
    total_steps: int
    freeze_decisions: list = dataclasses.field(default_factory=list)
    make_steps: Callable[[Any], Steps] | None = None  # the same functions on another mesh
    loader: str = "device"  # how batches reach the step: "device" or "stream"
    loader_reason: str = ""  # why (data.loader, or "auto"'s measurement)


def prepare_data(config: ml_collections.ConfigDict, cache: dict | None = None) -> tuple[Any, str]:
    """The run's splits on the path `data.loader` resolves to, and the reason for it.

    "device": `pipeline.Splits` (normalized arrays, cached in `cache` by their
    fields); "stream": `stream_splits.StreamSplits` (the records, no image loaded). A
    transfer from imported weights normalizes with the source network's mean and
    std (`transfer.pretrained_normalization`), and data it cannot take is refused.

    Raises:
      ValueError: naming the field, or why the pretrained network cannot take the data.
    """
    data_cfg, pretrained = config.data, config.transfer.pretrained
    normalization = transfer_lib.pretrained_normalization(pretrained) if pretrained else None
    loader, reason = loader_choice.choose_loader(data_cfg)
    if loader == "stream":
        splits = stream_splits.open_splits(data_cfg, normalization=normalization)
    else:
        splits = pipeline.from_config(data_cfg, cache, normalization)
    if pretrained:
        notes = transfer_lib.check_pretrained_input(pretrained, splits.input_shape)
        if notes:
            splits = dataclasses.replace(splits, notes=(*splits.notes, *notes))
    return splits, reason


def build_run(
    config: ml_collections.ConfigDict,
    *,
    splits: Any = None,
    loader_reason: str = "prepared splits given by the caller",
) -> Run:
    """Validates the config, loads and splits the data, builds model, optimizer and steps.

    Args:
      config: the run's config.
      splits: prepared data (`prepare_data`), instead of loading `config.data`.
      loader_reason: why `splits` are on their path, for results.json.

    Raises:
      ValueError / FileNotFoundError: with a message naming the bad field or path.
    """
    config_lib.validate(config)
    if splits is None:
        splits, loader_reason = prepare_data(config)
    loader = "stream" if isinstance(splits, stream_splits.StreamSplits) else "device"
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
    # A model that cannot take the data (too small for its downsampling) fails here, in
    # one line naming the smallest input it takes, not in a traceback from the first step.
    models.check_input(config.model.name, model, splits.input_shape)
    if hasattr(model, "data_init") and loader == "stream":
        raise ValueError(
            f"config.model.name={config.model.name!r} initialises from the training images "
            f"(data_init), which needs data.loader='device' (resolved to 'stream': {loader_reason})"
        )
    spe = batching.steps_per_epoch(n_train, config.batch_size, config.data.remainder)
    total = batching.total_steps(spe, config.num_epochs, config.last_epoch_fraction)
    policy = config.data.augment_policy if config.data.augment else None
    if policy and augmentation.AUGMENTATIONS.get(policy).needs_rows and loader == "stream":
        raise ValueError(
            f"config.data.augment_policy={policy!r} needs each example's index, which only "
            f"data.loader='device' has (data.loader resolved to 'stream': {loader_reason})"
        )
    # Hyperparameters injected as arrays: every trial of a group (and a lone run) shares
    # one compiled program and carries its own values in its optimizer state.
    tx = optim.from_config(
        config.optim,
        steps_per_epoch=spe,
        num_epochs=config.num_epochs,
        inject=True,
        total_steps=total,
    )
    tx, decisions, interceptor = _apply_transfer_rules(config.transfer, model, splits, tx, spe)
    lookahead = optim.lookahead_from_config(config.optim, total_steps=total)

    def steps_on(mesh) -> Steps:
        return make_steps(
            model,
            tx,
            input_shape=splits.input_shape,
            task=spec.task,
            # Host augmentation (data.augment_on="host") happens in the stream's workers.
            augment=config.data.augment and config.data.augment_on == "device",
            mesh=mesh,
            interceptor=interceptor,
            augment_policy=config.data.augment_policy,
            steps_per_epoch=spe,
            label_smoothing=config.loss.label_smoothing,
            eval_tta=config.eval_tta,
            lookahead=lookahead,
        )

    return Run(
        config,
        splits,
        model,
        spec.task,
        steps_on(mesh),
        spe,
        total,
        decisions,
        steps_on,
        loader,
        loader_reason,
    )


def _apply_transfer_rules(cfg, model, splits, tx, steps_per_epoch: int):
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
    tx, decisions = freeze_lib.freeze(tx, shapes, rules, steps_per_epoch=steps_per_epoch)
    frozen = freeze_lib.frozen_modules(decisions)
    return tx, decisions, freeze_lib.batch_norm_interceptor(frozen, cfg.batch_norm)
