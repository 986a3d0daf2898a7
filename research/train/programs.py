"""The compiled programs of a group of trials, and what they take as input.

A *group* is trials that share everything but the seed and the numeric optimizer
hyperparameters (`group_key`), each with its own workdir. Their state is a
`TrainState` stacked over a leading trial axis of T trials (`scripts/train.py`
is T = 1). Which compiled program runs a chunk of steps is the only difference
between the two ways of running a group (`build_programs`):

  * "sequential": the plain program, one trial at a time (T = 1 per call), data
    parallel over a ("data",) mesh of every device;
  * "vmap": `jax.vmap` of the same step over the trial axis, all T trials in one
    program; the trial axis is sharded over a ("trials", "data") mesh of shape
    (devices, 1), so each device runs whole trials (the axis is padded to a
    multiple of the device count by repeating the last trial; the repeats are
    computed and dropped).

Randomness per trial (`trial_keys`): `PRNGKey(seed)` splits into (init, data,
train) keys; init draws the parameters, data orders the batches, and step t uses
`fold_in(train_key, t)`. Nothing depends on the other trials of the group, the
process or the machine. The injected hyperparameters (`hyperparams`) are arrays
in each trial's optimizer state, so all trials share one program.

`chunk_inputs` and `time_chunk` run a program's chunk outside the loop, for
measurements.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from research import optim
from research.layers import algorithm_choice, conv_algorithms, pool_algorithms
from research.train import outputs
from research.train.assemble import Run

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
      algorithms: the convolution and max-pool algorithms the programs run ("conv",
        "pool": one name, or `{layer kind: name}` where kinds ran different ones).
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
    algorithms: dict[str, Any]


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


def _algorithms(run: Run) -> dict[str, Any]:
    """What the programs' layers run, per family: one name, or `{layer kind: name}`.

    The model's forward pass is traced once (`jax.eval_shape`, nothing compiled) under
    `algorithm_choice.recording()` in the caller's override context, so fallbacks count:
    "reshape" pooling of overlapping windows (AlexNet's 3x3 stride 2) is recorded as
    "reduce_window" (`algorithm_choice.summarize`).
    """
    x = jax.ShapeDtypeStruct((1, *run.splits.input_shape), jnp.float32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    with algorithm_choice.recording() as ran:
        jax.eval_shape(lambda x: run.model.init(rngs, x), x)
    return {
        "conv": algorithm_choice.summarize(ran["conv"], conv_algorithms.resolve_conv_algorithm()),
        "pool": algorithm_choice.summarize(ran["pool"], pool_algorithms.resolve_pool_algorithm()),
    }


def _vmapped_algorithms():
    """The trace-time context of the vmapped programs (`algorithm_choice.VMAPPED_ALGORITHMS`)."""
    return algorithm_choice.vmapped_override()


def _traced_in(context_fn, fn):
    """`fn`, traced inside `context_fn()` (an `algorithm_choice.override` block)."""

    @functools.wraps(fn)
    def traced(*args):
        with context_fn():
            return fn(*args)

    return traced


def build_programs(run: Run, parallel: str = "sequential", *, devices=None) -> Programs:
    """Compiles (lazily, on first call) the functions that train `run`'s group one way.

    Args:
      run: a `research.train.assemble.build_run` result (model, optimizer, data shapes).
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
            algorithms=_algorithms(run),
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
        algorithms = _algorithms(run)
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


def put_like(tree, like):
    """Host arrays `tree` placed with the shardings of the arrays in `like`."""
    return jax.tree_util.tree_map(
        lambda a, x: jax.make_array_from_callback(
            np.shape(a), x.sharding, lambda index, a=a: np.asarray(a)[index]
        ),
        tree,
        like,
    )
