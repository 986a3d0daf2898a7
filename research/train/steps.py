"""The training state and the pure, jit-compiled steps.

`train_step(state, batch) -> (state, metrics)` is one optimizer step; the
per-step randomness (dropout, augmentation) is `fold_in(state.key, state.step)`,
so a step's result depends on nothing but its inputs. (Draws that must stay
fixed for the whole run, such as the alternating flip's coin per example, use
`fold_in(state.key, RUN_KEY_DATA)`, a number no step count reaches.) For speed
the engine runs chunks of steps with `lax.scan` inside one compiled call
(`train_chunk`), the dataset already on the device and each step gathering its
batch by index.
The functions here are for one trial; `research.train.engine` compiles them as
they are or vmapped over a trial axis.

Data parallelism: every array lives on a `Mesh` with one axis, "data". The
state and the dataset are replicated; each step's batch is constrained to be
split along "data", so each device computes the forward and backward pass of
its share and XLA inserts the all-reduce of the gradients (and of BatchNorm's
batch statistics). The same code runs on one device, several, or several hosts.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from research import optim
from research.data import augmentation
from research.optim.lookahead import Lookahead, LookaheadState

RUN_KEY_DATA = np.uint32(0xFFFFFFFF)  # fold_in(train key, this): the run's fixed draws


class TrainState(flax.struct.PyTreeNode):
    """Everything that changes during training; a plain pytree (checkpointable, vmappable).

    Attributes:
      step: optimizer steps taken (int32 scalar).
      params: the model's trainable parameters.
      batch_stats: BatchNorm running statistics (`{}` for models without BatchNorm).
      opt_state: the optimizer's state.
      key: raw uint32 PRNG key of the training randomness; step `t` uses
        `fold_in(key, t)`, so no key is ever reused.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    key: jax.Array


@dataclasses.dataclass(frozen=True)
class Steps:
    """The functions of one run, each for one trial (no trial axis).

    `init`, `reinit`, `train_chunk` and `evaluate` are pure and traceable; the
    training engine (`research.train.engine`) compiles them, either as they are
    (one trial per program) or under `jax.vmap` over a trial axis.

    Attributes:
      init: `(init_key, train_key, hyperparams) -> TrainState`.
      reinit: `(state, params, batch_stats, hyperparams) -> TrainState`, new
        starting parameters (e.g. pretrained) with a fresh optimizer state.
      train_chunk: `(state, alive, images, labels, idx) -> (state, alive, metrics)`,
        batches gathered by index from device-resident data.
      train_batches: `(state, alive, images[S, B, ...], labels[S, B]) -> (state, alive,
        metrics)`, batches given whole (streamed).
      evaluate: `(params, batch_stats, images, labels, idx, mask) -> sums`.
      evaluate_batches: `(params, batch_stats, images[K, B, ...], labels, mask) -> sums`.
      mesh: the ("data",) mesh the batch is sharded over.
    """

    init: Callable[..., TrainState]
    reinit: Callable[..., TrainState]
    train_chunk: Callable[..., tuple[TrainState, jax.Array, dict[str, jax.Array]]]
    train_batches: Callable[..., tuple[TrainState, jax.Array, dict[str, jax.Array]]]
    evaluate: Callable[..., dict[str, jax.Array]]
    evaluate_batches: Callable[..., dict[str, jax.Array]]
    mesh: Mesh


def make_mesh(devices=None) -> Mesh:
    """A one-axis ("data") mesh over `devices` (default: every device of every host)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices, dtype=object).reshape(-1), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def loss_and_metrics(logits_or_recon, images, labels, task: str, label_smoothing: float = 0.0):
    """Per-example loss and metrics of one batch. `mask` weights are applied by the caller.

    `label_smoothing` = α > 0: cross-entropy against (1 − α) one_hot + α / classes.
    """
    out = logits_or_recon.astype(jnp.float32)
    if task == "reconstruct":
        per_example = jnp.mean((out - images.astype(jnp.float32)) ** 2, axis=(1, 2, 3))
        return per_example, {"loss": per_example}
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, out.shape[-1]), label_smoothing)
        per_example = optax.softmax_cross_entropy(out, targets)
    else:
        per_example = optax.softmax_cross_entropy_with_integer_labels(out, labels)
    correct = (jnp.argmax(out, axis=-1) == labels).astype(jnp.float32)
    return per_example, {"loss": per_example, "accuracy": correct}


def make_steps(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    input_shape: tuple[int, ...],
    task: str = "classify",
    augment: bool = False,
    mesh: Mesh | None = None,
    interceptor: Callable | None = None,
    augment_policy: str = "crop_flip",
    steps_per_epoch: int = 0,
    label_smoothing: float = 0.0,
    eval_tta: str = "none",
    lookahead: Lookahead | None = None,
) -> Steps:
    """Builds the init, training-chunk and evaluation functions of a run.

    Args:
      model: a zoo model (`apply(variables, x, train=...)`).
      tx: the optimizer (any optax transformation, e.g. from `research.optim`).
      input_shape: `(H, W, C)` of one example.
      task: "classify" (cross-entropy + accuracy) or "reconstruct" (MSE).
      augment: augment each training batch with `augment_policy`.
      mesh: the device mesh (default: all devices on one "data" axis).
      interceptor: a Flax method interceptor active during the training forward
        pass (e.g. `research.optim.freeze.batch_norm_interceptor`).
      augment_policy: a name from `research.data.augmentation.AUGMENTATIONS`.
      steps_per_epoch: the run's steps per epoch (a policy's `epoch` is
        `step // steps_per_epoch`; needed by policies that use it).
      label_smoothing: α of the classification loss (`loss_and_metrics`).
      eval_tta: a name from `research.data.augmentation.TTA`: the views every
        evaluation averages the logits over.
      lookahead: `research.optim.Lookahead` applied to (params, batch_stats) after
        every update (its slow copy lives in the optimizer state), or None.
    """
    mesh = make_mesh() if mesh is None else mesh
    shard = batch_sharded(mesh)
    policy = augmentation.AUGMENTATIONS.get(augment_policy) if augment else None
    if policy is not None and policy.needs_rows and steps_per_epoch < 1:
        raise ValueError(f"augment_policy={augment_policy!r} needs steps_per_epoch >= 1")
    views = augmentation.TTA.get(eval_tta)
    if eval_tta != "none" and task != "classify":
        raise ValueError(f"eval_tta={eval_tta!r} averages logits: task must be 'classify'")

    def opt_init(params, hyperparams, batch_stats=None):
        opt_state = tx.init(params)
        opt_state = optim.set_hyperparams(opt_state, **hyperparams) if hyperparams else opt_state
        if lookahead is None:
            return opt_state
        return LookaheadState(opt_state, {"params": params, "batch_stats": batch_stats or {}})

    def init(init_key, train_key, hyperparams=None) -> TrainState:
        """A fresh state; `hyperparams` (name -> value) go into the injected optimizer state."""
        x = jnp.zeros((1, *input_shape), jnp.float32)
        # Dropout at init time gets its own key: no key is used twice.
        dropout_key = jax.random.fold_in(init_key, 1)
        variables = model.init({"params": init_key, "dropout": dropout_key}, x, train=False)
        params, batch_stats = variables["params"], variables.get("batch_stats", {})
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_init(params, hyperparams, batch_stats),
            key=train_key,
        )

    def reinit(state: TrainState, params, batch_stats, hyperparams=None) -> TrainState:
        """New starting parameters (e.g. pretrained) with a fresh optimizer state."""
        return state.replace(
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_init(params, hyperparams, batch_stats),
        )

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        key = jax.random.fold_in(state.key, state.step)
        aug_key, dropout_key = jax.random.split(key)
        images = batch["image"]
        if policy is not None:
            images = policy.fn(
                aug_key,
                images,
                epoch=state.step // max(steps_per_epoch, 1),
                rows=batch.get("rows"),
                run_key=jax.random.fold_in(state.key, RUN_KEY_DATA),
            )
        images = jax.lax.with_sharding_constraint(images, shard)

        def loss_fn(params):
            variables = {"params": params}
            if state.batch_stats:
                variables["batch_stats"] = state.batch_stats
            with nn.intercept_methods(interceptor) if interceptor else contextlib.nullcontext():
                out, new_vars = model.apply(
                    variables,
                    images,
                    train=True,
                    rngs={"dropout": dropout_key},
                    mutable=["batch_stats"],
                )
            per_example, metrics = loss_and_metrics(
                out, images, batch["label"], task, label_smoothing
            )
            return per_example.mean(), (metrics, new_vars.get("batch_stats", {}))

        (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        if lookahead is None:
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
        else:
            updates, inner = tx.update(grads, state.opt_state.inner, state.params)
            fast = {
                "params": optax.apply_updates(state.params, updates),
                "batch_stats": batch_stats,
            }
            fast, slow = lookahead.sync(state.step + 1, fast, state.opt_state.slow)
            params, batch_stats = fast["params"], fast["batch_stats"]
            opt_state = LookaheadState(inner, slow)
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        return new_state, {k: v.mean() for k, v in metrics.items()}

    def guarded_scan(state, alive, xs, batch_of):
        """`lax.scan` of `train_step` over `xs` (one element per step) with the divergence
        guard: a step whose loss is not finite leaves the state as it was and clears
        `alive` (a bool scalar), and a state that is not alive no longer changes. So a
        diverging trial is frozen at its last good step; in a group the others go on."""

        def body(carry, x):
            state, alive = carry
            new, metrics = train_step(state, batch_of(x))
            ok = alive & jnp.isfinite(metrics["loss"])
            new = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, state)
            return (new, ok), metrics

        (state, alive), metrics = jax.lax.scan(body, (state, alive), xs)
        return state, alive, metrics

    def train_chunk(state: TrainState, alive, images, labels, idx):
        """Runs `idx.shape[0]` steps; `idx[i]` holds the indices of step i's examples in
        the device-resident `images`/`labels` (`data.loader="device"`)."""

        def batch_of(rows):
            batch = {"image": images[rows], "label": labels[rows]}
            return {**batch, "rows": rows} if policy is not None and policy.needs_rows else batch

        return guarded_scan(state, alive, idx, batch_of)

    def train_batches(state: TrainState, alive, images, labels):
        """Runs `images.shape[0]` steps on batches given whole: `images[i]` `(B, H, W, C)`
        is step i's batch (`data.loader="stream"`)."""
        return guarded_scan(
            state, alive, (images, labels), lambda b: {"image": b[0], "label": b[1]}
        )

    def evaluation_sums(params, batch_stats, xs, batch_of):
        variables = {"params": params}
        if batch_stats:
            variables["batch_stats"] = batch_stats

        def body(totals, x):
            images, labels, mask = batch_of(x)
            images = jax.lax.with_sharding_constraint(images, shard)
            if eval_tta == "none":
                out = model.apply(variables, images, train=False)
            else:  # the weighted mean of the logits over the views (augmentation.TTA)
                out = sum(
                    w * model.apply(variables, v, train=False).astype(jnp.float32)
                    for w, v in views(images)
                )
            _, metrics = loss_and_metrics(out, images, labels, task, label_smoothing)
            sums = {k: jnp.sum(v * mask) for k, v in metrics.items()}
            return jax.tree_util.tree_map(jnp.add, totals, sums), None

        zeros = {k: jnp.zeros((), jnp.float32) for k in _metric_names(task)}
        totals, _ = jax.lax.scan(body, zeros, xs)
        return totals

    def evaluate(params, batch_stats, images, labels, idx, mask):
        """Sums of per-example loss/metrics over all batches `idx`, weighted by `mask`."""
        totals = evaluation_sums(
            params, batch_stats, (idx, mask), lambda x: (images[x[0]], labels[x[0]], x[1])
        )
        return {**totals, "count": jnp.sum(mask)}

    def evaluate_batches(params, batch_stats, images, labels, mask):
        """The same sums over batches given whole: `images[k]` is batch k."""
        totals = evaluation_sums(params, batch_stats, (images, labels, mask), lambda x: x)
        return {**totals, "count": jnp.sum(mask)}

    return Steps(
        init=init,
        reinit=reinit,
        train_chunk=train_chunk,
        train_batches=train_batches,
        evaluate=evaluate,
        evaluate_batches=evaluate_batches,
        mesh=mesh,
    )


def _metric_names(task: str) -> tuple[str, ...]:
    return ("loss",) if task == "reconstruct" else ("loss", "accuracy")
