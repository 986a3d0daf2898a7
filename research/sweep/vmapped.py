"""Trials at once: one compiled program trains a group of trials over a trial axis.

Trials that share everything but numeric optimizer hyperparameters (ε, α, ρ,
δ, λ, ...) and the seed form a group (`group_key`). The group is trained by
`jax.vmap` of the run's scanned train chunk over a leading trial axis of the
`TrainState`: parameters (from each trial's own init key), optimizer state
(with the hyperparameters as arrays, `optim.from_config(..., inject=True)` and
`optim.set_hyperparams`), training keys and each trial's own batch order (from
its own data key). Everything else (model, data on the device, chunking, the
per-epoch batch order `fold_in(data_key, epoch)`) is what `research.train.fit`
does, so trial `i` of a group computes what `train_and_evaluate` computes for
it alone, up to float rounding of the batched convolutions.

Devices: the vmapped programs run on a ("trials", "data") mesh of shape
(devices, 1) (`trials_mesh`) and vmap with `spmd_axis_name="trials"`, so the
stacked state (parameters, optimizer state, keys) and the per-trial batch
indices are sharded `P("trials")` and each device runs its share of whole
trials (no all-reduce between trials; the dataset is replicated). The trial
axis is padded to a multiple of the device count by repeating the last trial
(`padded`; the repeats are computed and dropped), rather than falling back to
replication. The sequential path keeps the run's "data" mesh (data parallel).
On CPU with forced host devices, sharded programs dispatched back to back can
deadlock in a collective, so `train_group` blocks on every chunk.

On a CPU: with XLA's own convolution ("xla"), vmap over per-trial kernels
becomes a grouped convolution (`feature_group_count = T`, forward and
gradients), a slow path. With the CPU default "im2col"
(`research.layers.conv_algorithms`) the lowered program has no convolution
left: each conv is one batched `dot_general` (batch dimension = trials) of the
patches `(T, N, H', W', f_h f_w C)` with the kernels `(T, f_h f_w C, C_out)`.
That makes the vmapped LeNet-5 step 2.8x faster than with "xla" at N=16, but it
does not make the trial axis faster than running trials in turn: measured
(`scripts/bench.py --mode sweep`, trial-steps/s, shared 2-core CPU at load
~12.7, noisy):

    LeNet-5 28x28x1 b128   sequential   vmap N=1   N=4         N=16
    im2col (default)        8.1          3.5       3.5 (0.43x)  2.8 (0.35x)
    xla                     2.5          2.1       1.3 (0.51x)  1.0 (0.39x)
    simple_cnn 8x8x1 b64
    im2col (default)       57.9        178.8      76.7 (1.32x) 69.0 (1.19x)

The loss is there at N=1 already (one trial through the vmapped program is
~2.3x slower than the plain one), so it is a cost of the batched formulation,
not of the number of trials; N=16 costs only 0.8x per trial against N=1. Most
of it is the "reshape" max-pool (the CPU default, a custom VJP) under vmap:
with RESEARCH_POOL_ALGORITHM=reduce_window the vmapped LeNet-5 runs
6.3 / 6.2 / 5.1 trial-steps/s at N = 1 / 4 / 16 against 7.3-9.6 sequential
(0.85x / 0.84x / 0.53x, load ~10), i.e. ~1.8x the default's vmapped speed,
while the sequential step prefers "reshape". So the vmapped programs are traced
with "reduce_window" on CPU (`VMAPPED_POOL_ALGORITHM`, through
`conv_algorithms.override`); the sequential ones keep "reshape". Small models
(simple_cnn on digits, where per-step overhead dominates) gain from vmap.
Hence `probe` stays: it times both on the sweep's own model and the runner
picks the faster (`sweep.parallel="auto"`). On GPUs the batched matmuls are
what the hardware wants (not measured here: no GPU in this session).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from research import models, optim
from research.data import pipeline
from research.layers import conv_algorithms
from research.train import loop, outputs
from research.train.checkpoint import Checkpointer, tree_sha256
from research.train.steps import Steps, make_steps

# Fields that may differ inside a group: the seed and the injected hyperparameters.
# (clip_norm is not here: clipping on or off is fixed when the optimizer is built.)
TRIAL_AXIS_FIELDS = (
    "seed",
    "optim.learning_rate",
    "optim.momentum",
    "optim.decay",
    "optim.b1",
    "optim.b2",
    "optim.eps",
    "optim.weight_decay",
)
# Fields that change nothing computed.
_COSMETIC = ("progress", "log_every_steps", "checkpoint_every_epochs", "keep_checkpoints")


def group_key(config: ml_collections.ConfigDict) -> str:
    """Trials with the same key can run in one vmapped program."""
    flat = loop._flat(json.loads(config.to_json_best_effort(sort_keys=True)))
    kept = {
        k: v
        for k, v in flat.items()
        if k not in TRIAL_AXIS_FIELDS and k.split(".")[0] not in _COSMETIC
    }
    kept["log_every_steps"] = config.log_every_steps  # sets the chunking, hence the metric log
    return json.dumps(kept, sort_keys=True)


@dataclasses.dataclass
class Group:
    """The compiled functions of a group of trials, each with a leading trial axis.

    `chunk`/`evaluate` run all trials of the axis as one vmapped program;
    `single_chunk`/`single_evaluate` run a trial axis of length 1 with the plain
    (unbatched) program. Both are compiled once per group: hyperparameters and
    keys are arrays in the state, so trials with other values reuse them.
    """

    run: loop.Run
    steps: Steps  # the plain steps, on the run's "data" mesh (the sequential path)
    chunk: Any  # (states, images, labels, idx[T, S, B]) -> (states, metrics[T, S])
    evaluate: Any  # (params, batch_stats, images, labels, idx, mask) -> sums[T]
    single_chunk: Any
    single_evaluate: Any
    init: Any  # (init_keys[T], train_keys[T], hyperparams[T]) -> states, trial-sharded
    single_init: Any  # the same, replicated on the "data" mesh (the sequential path)
    trials_mesh: Mesh  # ("trials", "data") = (devices, 1): the vmapped path's mesh

    @property
    def trial_multiple(self) -> int:
        """The vmapped trial axis is padded to a multiple of this (the device count)."""
        return self.trials_mesh.shape["trials"]


def _squeeze(tree):
    return jax.tree_util.tree_map(lambda x: x[0], tree)


def _unsqueeze(tree):
    return jax.tree_util.tree_map(lambda x: x[None], tree)


def trials_mesh(devices=None) -> Mesh:
    """A ("trials", "data") mesh of shape (len(devices), 1) (default: every device).

    The vmapped programs shard their trial axis over "trials"; the "data" axis
    (size 1) is there so that `make_steps`'s batch constraint `P("data")` keeps
    its meaning: each device runs whole trials, no batch is split.
    """
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices, dtype=object).reshape(-1, 1), ("trials", "data"))


def build_group(
    config: ml_collections.ConfigDict, splits: pipeline.Splits, *, devices=None
) -> Group:
    """Builds the functions for the trials that share `group_key(config)`.

    Args:
      config: any trial of the group.
      splits: the prepared data.
      devices: the devices the vmapped trial axis is sharded over (default:
        all; `jax.devices()[:1]` runs the whole axis on one device).
    """
    run = loop.build_run(config, splits=splits)
    tx = optim.from_config(
        config.optim, steps_per_epoch=run.steps_per_epoch, num_epochs=config.num_epochs, inject=True
    )

    def steps_on(mesh):
        return make_steps(
            run.model,
            tx,
            input_shape=splits.input_shape,
            task=run.task,
            augment=config.data.augment,
            mesh=mesh,
        )

    steps, mesh = steps_on(run.steps.mesh), trials_mesh(devices)
    on_trials = steps_on(mesh)
    # spmd_axis_name: the inner steps' shardings (P() for the state, P("data")
    # for a batch) gain "trials" on the vmapped axis: P("trials"), P("trials", "data").
    vmap = functools.partial(jax.vmap, spmd_axis_name="trials")

    def init_with(fns, vmap):
        def init(init_keys, train_keys, hps):
            states = vmap(fns.init)(init_keys, train_keys)
            return vmap(lambda s, h: s.replace(opt_state=optim.set_hyperparams(s.opt_state, **h)))(
                states, hps
            )

        return jax.jit(init)

    def single_chunk(states, images, labels, idx):
        state, metrics = steps.train_chunk(_squeeze(states), images, labels, idx[0])
        return _unsqueeze(state), _unsqueeze(metrics)

    def single_evaluate(params, batch_stats, *data):
        return _unsqueeze(steps.evaluate(_squeeze(params), _squeeze(batch_stats), *data))

    return Group(
        run=run,
        steps=steps,
        chunk=jax.jit(
            _vmapped_pooling(vmap(on_trials.train_chunk, in_axes=(0, None, None, 0))),
            donate_argnums=0,
        ),
        evaluate=jax.jit(
            _vmapped_pooling(vmap(on_trials.evaluate, in_axes=(0, 0, None, None, None, None)))
        ),
        single_chunk=jax.jit(single_chunk, donate_argnums=0),
        single_evaluate=jax.jit(single_evaluate),
        init=init_with(on_trials, vmap),
        single_init=init_with(steps, jax.vmap),
        trials_mesh=mesh,
    )


# Max-pool algorithm inside the vmapped programs, by backend: on CPU the "reshape"
# default of the sequential step is ~1.8x slower than "reduce_window" under vmap
# (see the module docstring). None: the backend's default.
VMAPPED_POOL_ALGORITHM: dict[str, str] = {"cpu": "reduce_window"}


def _vmapped_pooling(fn):
    """`fn` traced with `VMAPPED_POOL_ALGORITHM` (same values: the algorithms are equal)."""

    @functools.wraps(fn)
    def traced(*args):
        pool = VMAPPED_POOL_ALGORITHM.get(jax.default_backend())
        if pool is None or os.environ.get(conv_algorithms.POOL_ENV_VAR):
            return fn(*args)  # an explicit RESEARCH_POOL_ALGORITHM wins
        with conv_algorithms.override(pool=pool):
            return fn(*args)

    return traced


def padded(configs: list, multiple: int) -> list:
    """`configs` with its last trial repeated up to a multiple of `multiple`.

    The vmapped trial axis is sharded evenly over the devices, so a group of
    T trials on D devices runs ceil(T / D) * D of them; the repeats are
    computed and thrown away. They cost nothing in wall time (they fill slots
    of devices that would otherwise wait for the busiest one).
    """
    return configs + configs[-1:] * (-len(configs) % multiple)


def hyperparams(configs, steps_per_epoch: int) -> dict[str, jax.Array]:
    """Each trial's injected hyperparameters, stacked: name -> (T,) values.

    The values are exactly what `optim.from_config` resolves (defaults for
    eps < 0, ranges checked): the injected state of an optimizer on an empty tree.
    """
    per_trial = [
        optim.from_config(
            c.optim, steps_per_epoch=steps_per_epoch, num_epochs=c.num_epochs, inject=True
        )
        .init({})
        .hyperparams
        for c in configs
    ]
    return {k: jnp.stack([h[k] for h in per_trial]) for k in per_trial[0]}


def _keys(configs):
    """Per-trial (init, data, train) keys, split from each seed as `fit` does."""
    split = [jax.random.split(jax.random.PRNGKey(c.seed), 3) for c in configs]
    return tuple(jnp.stack([s[i] for s in split]) for i in range(3))


def _evaluate(group: Group, states, split, vmap: bool) -> list[dict[str, float]]:
    run, mesh = group.run, (group.trials_mesh if vmap else group.steps.mesh)
    idx, mask = loop._eval_batches(len(split), run.config.eval_batch_size, mesh.devices.size)
    totals = (group.evaluate if vmap else group.single_evaluate)(
        states.params,
        states.batch_stats,
        loop._on_mesh(split.images, mesh),
        loop._on_mesh(split.labels, mesh),
        loop._on_mesh(idx, mesh),
        loop._on_mesh(mask, mesh),
    )
    totals = jax.device_get(totals)
    n = len(totals["count"])  # one count per trial
    return [
        {k: float(v[i]) / float(totals["count"][i]) for k, v in totals.items() if k != "count"}
        for i in range(n)
    ]


def _epoch_rows(data_keys, epoch: int, n: int, cfg) -> list[np.ndarray]:
    """Per trial, the index rows of every step of `epoch` (as in `fit`)."""
    out = []
    for key in data_keys:
        batches = pipeline.epoch_batches(
            jax.random.fold_in(key, epoch), n, cfg.batch_size, cfg.data.remainder
        )
        out.append([row for block in batches for row in block])
    return out


def train_group(
    configs: list[ml_collections.ConfigDict],
    splits: pipeline.Splits,
    workdirs: list[str] | None = None,
    *,
    group: Group | None = None,
    vmap: bool = True,
) -> tuple[Any, list[dict[str, Any]]]:
    """Trains the trials of one group together; writes each trial's workdir if given.

    Each workdir gets what `train_and_evaluate` writes (config.json, metrics.jsonl,
    results.json, curves.png) and one orbax checkpoint of the final state (for
    reports, probes and transfer); there are no intermediate checkpoints: a
    group that is stopped is run again from the start. A trial whose loss turns
    NaN/Inf is recorded with `"status": "diverged"` while the others go on.

    Args:
      configs: the trials' configs, all with the same `group_key`.
      splits: the prepared data.
      workdirs: one folder per trial, or None to write nothing.
      group: `build_group(configs[0], splits)`, to reuse its compiled functions.
      vmap: True: all trials in one vmapped program; False: one after another,
        with the plain program (compiled once for all of them).

    Returns:
      The final states (leading trial axis) and the results dicts, one per trial.
    """
    keys = {group_key(c) for c in configs}
    if len(keys) != 1:
        raise ValueError("train_group: the configs differ in more than seed and hyperparameters")
    group = build_group(configs[0], splits) if group is None else group
    if not vmap and len(configs) > 1:
        done = [
            train_group([c], splits, [w] if workdirs else None, group=group, vmap=False)
            for c, w in zip(configs, workdirs or [None] * len(configs), strict=True)
        ]
        states = jax.tree_util.tree_map(lambda *x: jnp.concatenate(x), *[d[0] for d in done])
        return states, [d[1][0] for d in done]
    t_start = time.perf_counter()
    run, cfg = group.run, configs[0]
    mesh = group.trials_mesh if vmap else group.steps.mesh
    count = len(configs)
    members = padded(configs, group.trial_multiple) if vmap else configs
    init_keys, data_keys, train_keys = _keys(members)
    init = group.init if vmap else group.single_init
    states = init(init_keys, train_keys, hyperparams(members, run.steps_per_epoch))
    train_chunk = group.chunk if vmap else group.single_chunk
    for w in workdirs or []:
        os.makedirs(w, exist_ok=True)
    logs = [
        outputs.MetricsLog(w, tensorboard=False) if w else None
        for w in (workdirs or [None] * count)
    ]
    images, labels = (
        loop._on_mesh(splits.train.images, mesh),
        loop._on_mesh(splits.train.labels, mesh),
    )
    chunk = cfg.log_every_steps or run.steps_per_epoch
    diverged: list[str | None] = [None] * count
    timing = {"train_seconds": 0.0, "compile_seconds": 0.0, "trained_examples": 0}
    step = 0
    for epoch in range(cfg.num_epochs):
        rows = _epoch_rows(data_keys, epoch, len(splits.train), cfg)
        position, total = 0, len(rows[0])
        while position < total:
            end = min((position // chunk + 1) * chunk, total)
            lengths = [len(r) for r in rows[0][position:end]]
            if len(set(lengths)) > 1:  # the kept remainder batch runs alone, as in fit
                end = position + lengths.index(lengths[-1])
            idx = np.stack([np.stack(r[position:end]) for r in rows])  # (T, steps, B)
            t0 = time.perf_counter()
            states, metrics = train_chunk(states, images, labels, loop._on_mesh(idx, mesh))
            # Block on every chunk: on CPU with several (forced host) devices,
            # sharded programs dispatched back to back can deadlock.
            jax.block_until_ready(states)
            metrics = jax.device_get(metrics)  # (T, steps) each
            elapsed = time.perf_counter() - t0
            if step == 0:
                timing["compile_seconds"] = elapsed
            else:
                timing["train_seconds"] += elapsed
                timing["trained_examples"] += int(idx[0].size)
            for i in range(count):
                bad = np.flatnonzero(~np.isfinite(metrics["loss"][i]))
                if bad.size and diverged[i] is None:
                    diverged[i] = f"loss became non-finite at step {step + int(bad[0]) + 1}"
            step += end - position
            position = end
            for i, log in enumerate(logs):
                if log is not None:
                    summary = {f"train_{k}": float(np.mean(v[i])) for k, v in metrics.items()}
                    log.write(step, epoch=epoch + position / total, **summary)
        val = _evaluate(group, states, splits.val, vmap) if len(splits.val) else [{}] * count
        for i, log in enumerate(logs):
            if log is not None:
                log.write(step, epoch=epoch + 1, **{f"val_{k}": v for k, v in val[i].items()})
    for log in logs:
        if log is not None:
            log.close()
    val = _evaluate(group, states, splits.val, vmap) if len(splits.val) else [{}] * count
    test = _evaluate(group, states, splits.test, vmap)
    states = jax.tree_util.tree_map(lambda x: x[:count], states)  # without the padding
    wall = time.perf_counter() - t_start
    results = []
    for i, c in enumerate(configs):
        params = jax.tree_util.tree_map(lambda x, i=i: x[i], states.params)
        r = {
            "model": c.model.name,
            "dataset": c.data.name,
            "optimizer": c.optim.name,
            "learning_rate": c.optim.learning_rate,
            "seed": c.seed,
            "params": models.param_count(params),
            "steps": step,
            "epochs": step / run.steps_per_epoch,
            "train_examples": len(splits.train),
            "val_examples": len(splits.val),
            "test_examples": len(splits.test),
            "data_notes": list(splits.notes),
            **{f"val_{k}": v for k, v in val[i].items()},
            **{f"test_{k}": v for k, v in test[i].items()},
            # The group's time shared equally: what this trial cost.
            "wall_seconds": wall / count,
            "compile_seconds": timing["compile_seconds"] / count,
            "examples_per_second": (
                count * timing["trained_examples"] / timing["train_seconds"]
                if timing["train_seconds"] > 0
                else math.nan
            ),
            "git_commit": outputs.git_commit(),
            "params_sha256": tree_sha256(params),
            "backend": jax.default_backend(),
            "devices": jax.device_count(),
            "processes": jax.process_count(),
            "deterministic": bool(c.deterministic),
            "compute_dtype": c.compute_dtype,
            "parallel": "vmap" if vmap else "sequential",
            "group_size": count,
            "status": "done" if diverged[i] is None else "diverged",
        }
        if diverged[i] is not None:
            r["error"] = diverged[i]
        results.append(r)
        if workdirs:  # the checkpoint first: results.json marks the trial finished
            final = jax.tree_util.tree_map(lambda x, i=i: x[i], states)
            ckpt = Checkpointer(os.path.join(workdirs[i], "checkpoints"), keep=1)
            ckpt.save(final, step=step)
            ckpt.close()
            if outputs.is_writer():
                _write_trial(c, workdirs[i], r)
    return states, results


def _write_trial(config, workdir: str, results: dict) -> None:
    loop.prepare_workdir(config, workdir)
    records = outputs.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    from research.viz import plot_run

    plot_run(
        records,
        os.path.join(workdir, "curves.png"),
        title=f"{config.model.name} on {config.data.name} ({config.optim.name})",
    )
    # results.json last: its presence marks the trial finished.
    outputs.atomic_write_json(os.path.join(workdir, "results.json"), _finite(results))


def _finite(results: dict) -> dict:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in results.items()
    }


def probe(
    configs: list[ml_collections.ConfigDict], splits: pipeline.Splits, *, steps: int = 10
) -> dict[str, float]:
    """Times one trial alone against `len(configs)` trials vmapped, on `steps` steps.

    Each variant is compiled and run once (compile time = first call minus a
    second, timed call); the second call gives the steady throughput.

    Returns:
      `sequential_trial_steps_per_s`, `vmap_trial_steps_per_s`, the compile
      seconds of both, and `trials` (the vmapped group size).
    """
    group = build_group(configs[0], splits)
    mesh, cfg = group.steps.mesh, configs[0]
    n, count = len(splits.train), len(configs)
    steps = min(steps, group.run.steps_per_epoch)
    images, labels = splits.train.images, splits.train.labels
    members = padded(configs, group.trial_multiple)  # the vmapped axis, as train_group runs it
    init_keys, data_keys, train_keys = _keys(members)
    rows = _epoch_rows(data_keys, 0, n, cfg)
    idx = np.stack([np.stack(r[:steps]) for r in rows])  # (T, steps, B)

    def timed(fn, state, index, on):
        t0 = time.perf_counter()
        state, metrics = fn(state, on(images), on(labels), on(index))
        jax.block_until_ready((state, metrics))
        return state, time.perf_counter() - t0

    def on_data(x):
        return loop._on_mesh(x, mesh)

    def on_trials(x):
        return loop._on_mesh(x, group.trials_mesh)

    hps = hyperparams(members, group.run.steps_per_epoch)
    one = group.single_init(init_keys[:1], train_keys[:1], {k: v[:1] for k, v in hps.items()})
    states = group.init(init_keys, train_keys, hps)
    one, seq_first = timed(group.single_chunk, one, idx[:1], on_data)
    one, seq = timed(group.single_chunk, one, idx[:1], on_data)
    states, vmap_first = timed(group.chunk, states, idx, on_trials)
    states, vmapped = timed(group.chunk, states, idx, on_trials)
    return {
        "trials": count,
        "steps": steps,
        "sequential_trial_steps_per_s": steps / seq,
        "vmap_trial_steps_per_s": count * steps / vmapped,
        "sequential_compile_seconds": max(seq_first - seq, 0.0),
        "vmap_compile_seconds": max(vmap_first - vmapped, 0.0),
    }
