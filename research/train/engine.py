"""The training engine: one loop for one trial or many.

The engine trains a *group*: trials that share everything but the seed and the
numeric optimizer hyperparameters (`group_key`), each with its own workdir. The
state is a `TrainState` stacked over a leading trial axis of T trials;
`scripts/train.py` is T = 1. Which compiled program runs a chunk of steps is the
only difference between the two ways of running a group (`build_programs`):

  * "sequential": the plain program, one trial at a time (T = 1 per call), data
    parallel over a ("data",) mesh of every device;
  * "vmap": `jax.vmap` of the same step over the trial axis, all T trials in one
    program; the trial axis is sharded over a ("trials", "data") mesh of shape
    (devices, 1), so each device runs whole trials (the axis is padded to a
    multiple of the device count by repeating the last trial; the repeats are
    computed and dropped).

Everything else lives here, once, for both:

  * batch order and chunking: epoch e's order is `fold_in(data_key, e)` of the
    trial's own data key; steps run in `lax.scan` chunks that end at multiples of
    `log_every_steps` (and at a shape change: a kept remainder batch runs alone),
    so a run resumed mid-epoch cuts the epoch exactly where the first run did;
  * evaluation (every example once; padded slots masked);
  * divergence: a trial whose loss turns NaN/Inf is frozen at its last good
    state (inside the compiled chunk, see `steps.train_chunk`) and recorded as
    diverged at its step; the others go on. `on_diverge="stop"` (the command
    line) raises `TrainingDiverged` after the results are written;
  * early stopping: `on_epoch`, called with each epoch's validation metrics,
    may name trials to stop there (a sweep's pruner); they are frozen the same
    way and recorded as pruned at that step;
  * checkpoints and resume: each trial's state is saved in its own workdir
    (`checkpoints/<step>`, with whether it is alive); a group restores the
    newest step that all its trials have, so a killed group resumes to the same
    parameters as an uninterrupted one;
  * SIGTERM/SIGINT: a checkpoint of every trial, then `Interrupted`;
  * metrics.jsonl, TensorBoard, curves.png and one `results.json` schema
    (`results_record`), written by process 0; a workdir is locked while a group
    uses it.

Randomness per trial: `PRNGKey(seed)` splits into (init, data, train) keys; init
draws the parameters, data orders the batches, and step t uses
`fold_in(train_key, t)`. Nothing depends on the other trials of the group, the
process or the machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from research import models, optim
from research.data import pipeline, stream
from research.layers import conv_algorithms
from research.train import outputs
from research.train import transfer as transfer_lib
from research.train.checkpoint import Checkpointer, tree_sha256
from research.train.steps import TrainState

if TYPE_CHECKING:
    from research.train.loop import Run

log = logging.getLogger(__name__)

PARALLEL_PATHS = ("sequential", "vmap")

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


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the message names the step."""


class Interrupted(RuntimeError):
    """SIGTERM or SIGINT arrived; a checkpoint was written first."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def group_key(config: ml_collections.ConfigDict) -> str:
    """Trials with the same key can be trained together (one compiled program)."""
    flat = outputs.flatten(json.loads(config.to_json_best_effort(sort_keys=True)))
    kept = {
        k: v
        for k, v in flat.items()
        if k not in TRIAL_AXIS_FIELDS and k.split(".")[0] not in outputs.COSMETIC_FIELDS
    }
    kept["log_every_steps"] = config.log_every_steps  # sets the chunking, hence the metric log
    return json.dumps(kept, sort_keys=True)


@dataclasses.dataclass(frozen=True)
class Member:
    """One trial of a group: its config and its workdir (None: write nothing)."""

    config: ml_collections.ConfigDict
    workdir: str | None = None


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What training one trial gave: its results record and its final state."""

    results: dict[str, Any]
    state: TrainState


@dataclasses.dataclass(frozen=True)
class Programs:
    """The compiled functions of a group, each over a leading trial axis.

    Attributes:
      parallel: "sequential" (T = 1 per call, the plain program) or "vmap".
      init: `(init_keys[T], train_keys[T], hyperparams[T]) -> states`.
      reinit: `(states, params, batch_stats, hyperparams) -> states`.
      chunk: `(states, alive[T], images, labels, idx[T, S, B]) -> (states, alive, metrics[T, S])`,
        batches gathered from device-resident data.
      chunk_batches: `(states, alive[1], images[S, B, ...], labels[S, B]) -> the same`,
        batches given whole (streamed data; the sequential path only, else None).
      evaluate: `(params, batch_stats, images, labels, idx, mask) -> sums[T]`.
      evaluate_batches: `(params, batch_stats, images[K, B, ...], labels, mask) -> sums[1]`
        (sequential only, else None).
      mesh: the mesh their inputs live on.
      multiple: the trial axis is padded to a multiple of this.
      algorithms: the convolution and max-pool algorithms the programs run.
    """

    parallel: str
    init: Any
    reinit: Any
    chunk: Any
    chunk_batches: Any
    evaluate: Any
    evaluate_batches: Any
    mesh: Mesh
    multiple: int
    algorithms: dict[str, str]


def _squeeze(tree):
    return jax.tree_util.tree_map(lambda x: x[0], tree)


def _unsqueeze(tree):
    return jax.tree_util.tree_map(lambda x: x[None], tree)


def trials_mesh(devices=None) -> Mesh:
    """A ("trials", "data") mesh of shape (len(devices), 1) (default: every device).

    The vmapped programs shard their trial axis over "trials"; the "data" axis
    (size 1) keeps the steps' batch constraint `P("data")` meaningful: each
    device runs whole trials, no batch is split.
    """
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices, dtype=object).reshape(-1, 1), ("trials", "data"))


def _algorithms() -> dict[str, str]:
    return {
        "conv": conv_algorithms.resolve_conv_algorithm(),
        "pool": conv_algorithms.resolve_pool_algorithm(),
    }


def _vmapped_algorithms():
    """The trace-time context of the vmapped programs (`conv_algorithms.VMAPPED_ALGORITHMS`)."""
    return conv_algorithms.vmapped_override()


def _traced_in(context_fn, fn):
    """`fn`, traced inside `context_fn()` (a conv_algorithms override)."""

    @functools.wraps(fn)
    def traced(*args):
        with context_fn():
            return fn(*args)

    return traced


def build_programs(run: Run, parallel: str = "sequential", *, devices=None) -> Programs:
    """Compiles (lazily, on first call) the functions that train `run`'s group one way.

    Args:
      run: a `research.train.loop.build_run` result (model, optimizer, data shapes).
      parallel: "sequential" or "vmap".
      devices: for "vmap", the devices the trial axis is sharded over (default: all).
    """
    if parallel not in PARALLEL_PATHS:
        raise ValueError(f"parallel={parallel!r} must be one of {', '.join(PARALLEL_PATHS)}")
    if parallel == "sequential":
        steps = run.steps
        rep = NamedSharding(steps.mesh, P())

        def init(init_keys, train_keys, hps):
            return _unsqueeze(steps.init(init_keys[0], train_keys[0], _squeeze(hps)))

        def reinit(states, params, batch_stats, hps):
            return _unsqueeze(
                steps.reinit(
                    _squeeze(states), _squeeze(params), _squeeze(batch_stats), _squeeze(hps)
                )
            )

        def chunk(states, alive, images, labels, idx):
            state, ok, metrics = steps.train_chunk(
                _squeeze(states), alive[0], images, labels, idx[0]
            )
            return _unsqueeze(state), ok[None], _unsqueeze(metrics)

        def chunk_batches(states, alive, images, labels):
            state, ok, metrics = steps.train_batches(_squeeze(states), alive[0], images, labels)
            return _unsqueeze(state), ok[None], _unsqueeze(metrics)

        def evaluate(params, batch_stats, *data):
            return _unsqueeze(steps.evaluate(_squeeze(params), _squeeze(batch_stats), *data))

        def evaluate_batches(params, batch_stats, *data):
            sums = steps.evaluate_batches(_squeeze(params), _squeeze(batch_stats), *data)
            return _unsqueeze(sums)

        return Programs(
            parallel="sequential",
            init=jax.jit(init, out_shardings=rep),
            reinit=jax.jit(reinit, out_shardings=rep),
            chunk=jax.jit(chunk, donate_argnums=0, out_shardings=(rep, rep, rep)),
            chunk_batches=jax.jit(chunk_batches, donate_argnums=0, out_shardings=(rep, rep, rep)),
            evaluate=jax.jit(evaluate, out_shardings=rep),
            evaluate_batches=jax.jit(evaluate_batches, out_shardings=rep),
            mesh=steps.mesh,
            multiple=1,
            algorithms=_algorithms(),
        )
    if run.loader == "stream":
        raise ValueError(
            "streamed data (data.loader resolved to 'stream') trains one trial at a time: "
            "set sweep.parallel='sequential' (or data.loader='device' if the data fits)"
        )
    mesh = trials_mesh(devices)
    steps = run.make_steps(mesh)
    # spmd_axis_name: the steps' shardings (P() for the state, P("data") for a batch)
    # gain "trials" on the vmapped axis: P("trials"), P("trials", "data").
    vmap = functools.partial(jax.vmap, spmd_axis_name="trials")
    with _vmapped_algorithms():
        algorithms = _algorithms()
    # Every output has the trial axis first, sharded over "trials": the states that init
    # returns are placed as the chunk returns them, so the chunk compiles once.
    trials = NamedSharding(mesh, P("trials"))
    return Programs(
        parallel="vmap",
        init=jax.jit(vmap(steps.init), out_shardings=trials),
        reinit=jax.jit(vmap(steps.reinit), out_shardings=trials),
        chunk=jax.jit(
            _traced_in(_vmapped_algorithms, vmap(steps.train_chunk, in_axes=(0, 0, None, None, 0))),
            donate_argnums=0,
            out_shardings=trials,
        ),
        chunk_batches=None,
        evaluate=jax.jit(
            _traced_in(
                _vmapped_algorithms, vmap(steps.evaluate, in_axes=(0, 0, None, None, None, None))
            ),
            out_shardings=trials,
        ),
        evaluate_batches=None,
        mesh=mesh,
        multiple=mesh.shape["trials"],
        algorithms=algorithms,
    )


def hyperparams(configs: Sequence, steps_per_epoch: int) -> dict[str, jax.Array]:
    """Each trial's injected hyperparameters, stacked: name -> (T,) values.

    The values are exactly what `optim.from_config` resolves (defaults for an
    unset eps, ranges checked): the injected state of an optimizer on an empty tree.
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


def trial_keys(configs: Sequence) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-trial (init, data, train) keys, each split from `PRNGKey(seed)`; stacked."""
    split = [jax.random.split(jax.random.PRNGKey(c.seed), 3) for c in configs]
    return tuple(jnp.stack([s[i] for s in split]) for i in range(3))


def on_mesh(array: np.ndarray, mesh: Mesh) -> jax.Array:
    """A replicated global array on `mesh` from a host array every process holds."""
    array = np.asarray(array)
    sharding = NamedSharding(mesh, P())
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


@dataclasses.dataclass(frozen=True)
class ChunkInputs:
    """A chunk's inputs other than the states, on the mesh, for measurements."""

    alive: jax.Array  # (trials,), all True
    images: jax.Array
    labels: jax.Array
    indices: tuple[jax.Array, ...]  # (trials, steps, batch) example rows, cycled call by call

    def args(self, i: int = 0) -> tuple:
        """The chunk's arguments after the states, for call `i`: alive, images, labels, rows."""
        return self.alive, self.images, self.labels, self.indices[i % len(self.indices)]


def chunk_inputs(mesh: Mesh, images, labels, indices) -> ChunkInputs:
    """Host `images`, `labels` and `indices` (one array of rows, or a list) placed once."""
    indices = indices if isinstance(indices, list) else [indices]
    return ChunkInputs(
        on_mesh(np.ones(np.shape(indices[0])[0], bool), mesh),
        on_mesh(images, mesh),
        on_mesh(labels, mesh),
        tuple(on_mesh(i, mesh) for i in indices),
    )


def time_chunk(chunk, states, inputs: ChunkInputs, *, calls: int):
    """Wall seconds of `calls` calls of a compiled chunk, for measurements.

    `chunk` is `Programs.chunk` (its first call compiles) or an ahead-of-time
    compiled one. Every call is blocked on (forced host CPU devices can deadlock
    otherwise); every trial starts alive.

    Returns:
      the seconds of each call, and the last call's states and metrics.
    """
    times, metrics, alive = [], None, inputs.alive
    for i in range(calls):
        start = time.perf_counter()
        _, images, labels, rows = inputs.args(i)  # each call starts from the last one's alive
        states, alive, metrics = chunk(states, alive, images, labels, rows)
        jax.block_until_ready((states, metrics))
        times.append(time.perf_counter() - start)
    return times, states, metrics


def _put_like(tree, like):
    """Host arrays `tree` placed with the shardings of the arrays in `like`."""
    return jax.tree_util.tree_map(
        lambda a, x: jax.make_array_from_callback(
            np.shape(a), x.sharding, lambda index, a=a: np.asarray(a)[index]
        ),
        tree,
        like,
    )


def evaluate(run: Run, programs: Programs, states, split) -> list[dict[str, float]]:
    """Per trial, the mean loss (and accuracy) over a whole split, every example once.

    The batches of `pipeline.eval_batches` (padded slots masked), gathered from the
    device-resident split, or read by the stream loader (`data.loader="stream"`).
    """
    mesh = programs.mesh
    n_dev = run.steps.mesh.devices.size
    if run.loader == "stream":
        totals = None
        with stream.eval_chunks(
            split,
            batch_size=run.config.eval_batch_size,
            mesh=mesh,
            read_threads=run.config.data.read_threads,
            prefetch=run.config.data.prefetch,
        ) as chunks:
            for images, labels, mask in chunks:
                sums = programs.evaluate_batches(
                    states.params, states.batch_stats, images, labels, mask
                )
                sums = jax.device_get(sums)
                totals = sums if totals is None else jax.tree_util.tree_map(np.add, totals, sums)
    else:
        idx, mask = pipeline.eval_batches(len(split), run.config.eval_batch_size, n_dev)
        totals = programs.evaluate(
            states.params,
            states.batch_stats,
            on_mesh(split.images, mesh),
            on_mesh(split.labels, mesh),
            on_mesh(idx, mesh),
            on_mesh(mask, mesh),
        )
        totals = jax.device_get(totals)
    return [
        {k: float(v[i]) / float(totals["count"][i]) for k, v in totals.items() if k != "count"}
        for i in range(len(totals["count"]))
    ]


class _DeviceFeed:
    """Chunks of steps over device-resident data: each trial's index rows, stacked."""

    def __init__(self, run, programs, data_keys, chunk: int):
        self.programs, self.mesh = programs, programs.mesh
        train, cfg = run.splits.train, run.config
        self.images = on_mesh(train.images, self.mesh)
        self.labels = on_mesh(train.labels, self.mesh)
        self.plan = functools.partial(
            pipeline.plan_chunks,
            n=len(train),
            batch_size=cfg.batch_size,
            remainder=cfg.data.remainder,
            chunk=chunk,
            num_epochs=cfg.num_epochs,
            last_epoch_fraction=cfg.last_epoch_fraction,
        )
        self.data_keys = data_keys

    @contextlib.contextmanager
    def chunks(self, start: int):
        """Yields `(plan, run_chunk)`: the chunk's plan and `run_chunk(states, alive)`."""

        def gen():
            plans_per_trial = [self.plan(k, start_step=start) for k in self.data_keys]
            for plans in zip(*plans_per_trial, strict=True):
                idx = on_mesh(np.stack([p.rows for p in plans]), self.mesh)  # (T, S, B)
                yield plans[0], self._runner(idx)

        yield gen()

    def _runner(self, idx):
        def run_chunk(states, alive):
            return self.programs.chunk(states, alive, self.images, self.labels, idx)

        return run_chunk

    def state(self, step: int) -> dict | None:
        return None

    def check(self, record: dict, step: int) -> None:
        pass


class _StreamFeed:
    """Chunks of steps read from the array_record files (one trial: `data.loader="stream"`)."""

    def __init__(self, run, programs, data_keys, chunk: int):
        cfg = run.config
        self.programs = programs
        self.stream = stream.TrainStream(
            run.splits.train,
            data_key=data_keys[0],
            batch_size=cfg.batch_size,
            remainder=cfg.data.remainder,
            chunk=chunk,
            num_epochs=cfg.num_epochs,
            last_epoch_fraction=cfg.last_epoch_fraction,
            mesh=programs.mesh,
            workers=cfg.data.workers,
            read_threads=cfg.data.read_threads,
            prefetch=cfg.data.prefetch,
            augment_seed=(
                stream.seed_of(data_keys[0])
                if cfg.data.augment and cfg.data.augment_on == "host"
                else None
            ),
            dataset_fingerprint=run.splits.fingerprint,
        )

    @contextlib.contextmanager
    def chunks(self, start: int):
        with self.stream.chunks(start) as chunks:

            def gen():
                for c in chunks:
                    yield c.plan, self._runner(c)

            yield gen()

    def _runner(self, c):
        def run_chunk(states, alive):
            return self.programs.chunk_batches(states, alive, c.images, c.labels)

        return run_chunk

    def state(self, step: int) -> dict:
        return self.stream.state(step)

    def check(self, record: dict, step: int) -> None:
        if "data" in record:
            self.stream.check_state(record["data"], step)


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


def train(
    run: Run,
    members: Sequence[Member],
    *,
    parallel: str = "sequential",
    programs: Programs | None = None,
    on_diverge: str = "record",
    on_epoch: OnEpoch | None = None,
) -> list[Outcome]:
    """Trains the trials of one group to `num_epochs`, each resumed from its workdir.

    Args:
      run: `research.train.loop.build_run` of any member's config.
      members: the trials, all with `run`'s `group_key`.
      parallel: "sequential" (one after another, the plain program) or "vmap".
      programs: `build_programs(run, parallel)`, to reuse compiled functions.
      on_diverge: "record" (a diverged trial is recorded, the others go on) or
        "stop" (also raise `TrainingDiverged` once the results are written).
      on_epoch: called after each epoch's validation (none without a validation
        split) as `on_epoch(epoch, val)`: `epoch` counts the epochs done (1 after
        the first), `val` maps the position in `members` of each trial still
        training to its validation metrics (`{"loss": ..., "accuracy": ...}`).
        It returns the positions of trials to stop there: each is frozen like a
        diverged trial (its state no longer changes, the others go on) and its
        results have `status: "pruned"`, `pruned_step`, the validation metrics
        of that epoch and no test metrics.

    Returns:
      One `Outcome` per member, in order.

    Raises:
      ValueError: members of different groups; a workdir that is in use
        (`outputs.WorkdirBusy`) or holds a different run.
      TrainingDiverged: with `on_diverge="stop"`.
      Interrupted: SIGTERM/SIGINT (checkpoints written).
      OSError: a write failed (disk full, read-only); older checkpoints are kept.
    """
    if on_diverge not in ("record", "stop"):
        raise ValueError(f"on_diverge={on_diverge!r} must be 'record' or 'stop'")
    members = list(members)
    if len({group_key(m.config) for m in members}) > 1:
        raise ValueError("engine.train: the members differ in more than seed and hyperparameters")
    programs = programs or build_programs(run, parallel)
    if programs.parallel == "sequential":
        return [
            out
            for k, m in enumerate(members)
            for out in _train(run, programs, [m], on_diverge, _shifted(on_epoch, k))
        ]
    return _train(run, programs, members, on_diverge, on_epoch)


# on_epoch(epoch, {position: validation metrics}) -> positions to stop (see `train`).
OnEpoch = Callable[[int, dict[int, dict[str, float]]], Iterable[int]]


def _shifted(on_epoch: OnEpoch | None, k: int) -> OnEpoch | None:
    """`on_epoch` for a group of one: member 0 is member `k` of the whole list."""
    if on_epoch is None:
        return None
    return lambda epoch, val: {i - k for i in on_epoch(epoch, {i + k: v for i, v in val.items()})}


def _train(run: Run, programs: Programs, members: list[Member], on_diverge: str, on_epoch=None):
    locked: list[str] = []
    ckpts: list[Checkpointer | None] = []
    try:
        for m in members:
            if m.workdir:
                outputs.lock_workdir(m.workdir)
                locked.append(m.workdir)
                outputs.prepare_workdir(m.config, m.workdir)
        keep = run.config.keep_checkpoints
        ckpts = [
            Checkpointer(os.path.join(m.workdir, "checkpoints"), keep=keep) if m.workdir else None
            for m in members
        ]
        return _fit(run, programs, members, ckpts, on_diverge, on_epoch)
    finally:
        for c in ckpts:
            if c is not None:
                c.close()
        for w in locked:
            outputs.unlock_workdir(w)


def _fit(run, programs, members, ckpts, on_diverge, on_epoch=None):
    t_start = time.perf_counter()
    count = len(members)
    padded = members + members[-1:] * (-count % programs.multiple)
    configs = [m.config for m in padded]
    cfg = configs[0]
    spe = run.steps_per_epoch
    init_keys, data_keys, train_keys = trial_keys(configs)
    hps = hyperparams(configs, spe)
    chunk = cfg.log_every_steps or spe
    feed = (_StreamFeed if run.loader == "stream" else _DeviceFeed)(run, programs, data_keys, chunk)
    states = programs.init(init_keys, train_keys, hps)
    alive = np.ones(len(padded), bool)
    diverged: list[int | None] = [None] * len(padded)
    pruned: list[int | None] = [None] * len(padded)
    states, start, records = _resume(programs, states, ckpts, alive, diverged, pruned)
    for record in records:
        feed.check(record, start)
    if start == 0 and hasattr(run.model, "data_init"):
        states = _data_init(run, programs, states, hps)
    if start == 0 and cfg.transfer.pretrained:
        states = _start_from_pretrained(run, programs, states, hps, members)

    mesh = programs.mesh
    logs = [
        outputs.MetricsLog(m.workdir, resume_step=start) if m.workdir else None for m in members
    ]
    timing = {"train_seconds": 0.0, "compile_seconds": 0.0, "trained_examples": 0}
    bar = _progress(cfg, run.total_steps, start) if count == 1 and members[0].workdir else None
    step, val, val_step = start, None, -1

    def save():
        _save(ckpts, states, step, alive, diverged, pruned, feed.state(step))

    try:
        with _stop_requests() as stop, feed.chunks(start) as chunks:
            for plan, run_chunk in chunks:
                was_alive = alive.copy()
                t0 = time.perf_counter()
                states, alive_dev, metrics = run_chunk(states, on_mesh(alive, mesh))
                # Block on every chunk: on CPU with several (forced host) devices,
                # sharded programs dispatched back to back can deadlock.
                jax.block_until_ready(states)
                metrics = jax.device_get(metrics)  # (T, S) each: one host sync per chunk
                alive = np.array(jax.device_get(alive_dev), bool)
                elapsed = time.perf_counter() - t0
                size = plan.rows.shape[0]
                if step == start:
                    timing["compile_seconds"] = elapsed
                else:
                    timing["train_seconds"] += elapsed
                    timing["trained_examples"] += int(plan.rows.size)
                for i in np.flatnonzero(was_alive & ~alive):
                    bad = np.flatnonzero(~np.isfinite(metrics["loss"][i]))
                    diverged[i] = step + int(bad[0]) + 1
                step = plan.step + size
                for i, metrics_log in enumerate(logs):
                    if metrics_log is not None and alive[i]:
                        summary = {f"train_{k}": float(np.mean(v[i])) for k, v in metrics.items()}
                        epoch = plan.epoch + (plan.position + size) / spe
                        metrics_log.write(step, epoch=epoch, **summary)
                if bar is not None:
                    bar.update(size)
                    bar.set_postfix({k: f"{float(np.mean(v[0])):.4f}" for k, v in metrics.items()})
                if not alive[:count].any():
                    break
                if plan.epoch_end:
                    if len(run.splits.val):
                        val, val_step = evaluate(run, programs, states, run.splits.val), step
                        for i, metrics_log in enumerate(logs):
                            if metrics_log is not None and alive[i]:
                                values = {f"val_{k}": v for k, v in val[i].items()}
                                metrics_log.write(step, epoch=plan.epoch + 1, **values)
                        if on_epoch is not None:
                            live = {i: val[i] for i in range(count) if alive[i]}
                            for i in set(on_epoch(plan.epoch + 1, live)) & set(live):
                                alive[i] = False
                                pruned[i] = step
                                if i == count - 1:
                                    alive[count:] = False  # the padding repeats the last trial
                    every = cfg.checkpoint_every_epochs
                    last = plan.epoch + 1 == cfg.num_epochs
                    if last or (every and (plan.epoch + 1) % every == 0):
                        save()
                    if not alive[:count].any():
                        break  # every trial stopped at this epoch's end
                if stop:
                    save()
                    raise Interrupted(
                        f"stopped by signal {stop[0]} at step {step}; {_where(ckpts)}. "
                        f"Run the same command again to resume.",
                        stop[0],
                    )
    finally:
        for metrics_log in logs:
            if metrics_log is not None:
                metrics_log.close()
        if bar is not None:
            bar.close()

    if len(run.splits.val) and val_step != step:
        val = evaluate(run, programs, states, run.splits.val)
    test = evaluate(run, programs, states, run.splits.test)
    wall = time.perf_counter() - t_start
    outcomes = []
    for i, m in enumerate(members):
        state = jax.tree_util.tree_map(lambda x, i=i: x[i], states)
        record = results_record(
            m.config,
            run,
            state,
            # A pruned trial was frozen right after this validation: the same numbers.
            val=val[i] if val is not None and (alive[i] or pruned[i] is not None) else {},
            test=test[i] if alive[i] else {},
            timing=timing,
            wall_seconds=wall,
            programs=programs,
            group_size=count,
            diverged_step=diverged[i],
            pruned_step=pruned[i],
            checkpoints=ckpts[i],
            resumed_from_step=start,
        )
        if m.workdir and outputs.is_writer():
            _write_outputs(m.config, m.workdir, record)
        outcomes.append(Outcome(record, state))
    first = next((o.results for o in outcomes if o.results["status"] == "diverged"), None)
    if on_diverge == "stop" and first is not None:
        raise TrainingDiverged(first["error"])
    return outcomes


def _where(ckpts) -> str:
    dirs = [c.directory for c in ckpts if c is not None]
    if len(dirs) == 1:
        return f"checkpoint written to {dirs[0]}"
    return f"checkpoints written in {len(dirs)} trial folders"


def _save(ckpts, states, step: int, alive, diverged, pruned, data_state) -> None:
    """Each trial's state as checkpoint `step` of its own workdir.

    The record keeps whether the trial is alive (and where it diverged or was
    stopped) and the data loader's position, for a resume to check.
    """
    for i, c in enumerate(ckpts):
        if c is not None:
            state = jax.tree_util.tree_map(lambda x, i=i: x[i], states)
            extra = {
                "alive": bool(alive[i]),
                "diverged_step": diverged[i],
                "pruned_step": pruned[i],
            }
            if data_state is not None:
                extra["data"] = data_state
            c.save(state, step=step, extra=extra)


def _resume(programs, states, ckpts, alive, diverged, pruned) -> tuple[Any, int, list[dict]]:
    """The newest step every trial has a good checkpoint of, restored; else a fresh start.

    Updates `alive`, `diverged` and `pruned` in place from the checkpoints' records, and
    returns `(states, step, records)`.
    """
    if not any(c is not None and c.steps() for c in ckpts):
        return states, 0, []
    rep = NamedSharding(programs.mesh, P())
    like = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=rep), states
    )
    restored = [c.restore(like) if c is not None else None for c in ckpts]
    if any(r is None for r in restored):
        return states, 0, []  # some trial has nothing to resume from: all start again
    target = min(r.step for r in restored)
    for i, r in enumerate(restored):
        if r.step != target:
            restored[i] = ckpts[i].restore(like, step=target)
            if restored[i] is None:
                return states, 0, []
    for i, r in enumerate(restored):
        alive[i] = bool(r.record.get("alive", True))
        diverged[i] = r.record.get("diverged_step")
        pruned[i] = r.record.get("pruned_step")
    trees = [jax.device_get(r.state) for r in restored]
    trees += trees[-1:] * (len(alive) - len(trees))  # the padding repeats the last trial
    alive[len(restored) :] = alive[len(restored) - 1]
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *trees)
    log.info("resumed from checkpoints at step %d", target)
    return _put_like(stacked, states), target, [r.record for r in restored]


def _data_init(run, programs, states, hps):
    """The model's data-dependent initialisation, once per trial before the first step.

    A zoo model may define `data_init(variables, train_images) -> variables` (e.g.
    airbench's whitening layer, set from patches of the training images);
    `train_images` are the normalized training split's (N, H, W, C) host images.
    """
    host = jax.device_get((states.params, states.batch_stats))
    done = []
    for i in range(states.step.shape[0]):  # each trial of the (padded) group
        params, batch_stats = jax.tree_util.tree_map(lambda x, i=i: x[i], host)
        out = run.model.data_init(
            {"params": params, "batch_stats": batch_stats}, run.splits.train.images
        )
        done.append((out["params"], out.get("batch_stats", batch_stats)))
    params, batch_stats = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *done)
    params = _put_like(params, states.params)
    batch_stats = _put_like(batch_stats, states.batch_stats)
    return programs.reinit(states, params, batch_stats, hps)


def _start_from_pretrained(run, programs, states, hps, members):
    """Loads the pretrained parameters into every trial; writes each transfer.json."""
    cfg = run.config.transfer
    host = jax.device_get(states)
    params, batch_stats = [], []
    n = np.shape(host.step)[0]
    source = transfer_lib.read_pretrained(cfg.pretrained)
    for i in range(n):
        p, b, report = transfer_lib.load_pretrained(
            cfg.pretrained,
            jax.tree_util.tree_map(lambda x, i=i: x[i], host.params),
            jax.tree_util.tree_map(lambda x, i=i: x[i], host.batch_stats),
            head=cfg.head,
            reset_head=cfg.reset_head,
            source=source,
        )
        params.append(p)
        batch_stats.append(b)
        if i < len(members) and members[i].workdir and outputs.is_writer():
            for d in run.freeze_decisions:
                {"freeze": report.frozen, "train": report.trained}.get(
                    d.rule, report.scaled
                ).append(d.path)
            outputs.atomic_write_json(
                os.path.join(members[i].workdir, "transfer.json"), report.as_dict()
            )
    stack = functools.partial(jax.tree_util.tree_map, lambda *xs: np.stack(xs))
    params = _put_like(stack(*params), states.params)
    batch_stats = _put_like(stack(*batch_stats), states.batch_stats)
    return programs.reinit(states, params, batch_stats, hps)


def _progress(cfg, total: int, start: int):
    if not cfg.progress or not outputs.is_writer():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, leave=False)


def results_record(
    config,
    run: Run,
    state: TrainState,
    *,
    val: dict,
    test: dict,
    timing: dict,
    wall_seconds: float,
    programs: Programs,
    group_size: int,
    diverged_step: int | None,
    checkpoints: Checkpointer | None,
    resumed_from_step: int = 0,
    pruned_step: int | None = None,
) -> dict[str, Any]:
    """The one schema of `results.json`, for every run and every sweep trial.

    Times of a group are shared equally among its trials (what one trial cost).
    A diverged trial has `status: "diverged"`, the step, and no val/test metrics.
    A pruned trial (stopped by `train`'s `on_epoch`) has `status: "pruned"`,
    `pruned_step`, the validation metrics it was stopped on and no test metrics.
    """
    steps_done = int(jax.device_get(state.step))
    train_seconds = timing["train_seconds"]
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
        "compile_seconds": timing["compile_seconds"] / group_size,
        "examples_per_second": (
            group_size * timing["trained_examples"] / train_seconds
            if train_seconds > 0
            else math.nan
        ),
        "params_sha256": tree_sha256(state.params),
        "parallel": programs.parallel,
        "group_size": group_size,
        "conv_algorithm": programs.algorithms["conv"],
        "pool_algorithm": programs.algorithms["pool"],
        "compute_dtype": config.compute_dtype,
        "deterministic": bool(config.deterministic),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "versions": _versions(),
        "git_commit": outputs.git_commit(),
    }
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
    import importlib.metadata

    return {name: importlib.metadata.version(name) for name in ("jax", "jaxlib", "flax", "optax")}


def _write_outputs(config, workdir: str, record: dict) -> None:
    """curves.png, then results.json (last: its presence marks the run finished)."""
    records = outputs.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    from research.viz import plot_run

    plot_run(
        records,
        os.path.join(workdir, "curves.png"),
        title=f"{config.model.name} on {config.data.name} ({config.optim.name})",
    )
    outputs.atomic_write_json(os.path.join(workdir, "results.json"), record)
