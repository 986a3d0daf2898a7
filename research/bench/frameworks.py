"""One training-step runner per framework, all on the same problem.

The problem: a model of `peers.BENCH_MODELS` on batches of random 28x28x1
images with integer labels, softmax cross-entropy, Adam with step size
`LEARNING_RATE`. A runner is built (model, optimizer, data, compilation) and
then runs `steps` steps per call of `Runner.run`, synchronised at the end, so
the caller times whole calls.

  * ours: the zoo model (`research.models.create`) in `research.train.steps.make_steps`,
    what `scripts/train.py` runs: one call is one jitted `train_chunk`, a `lax.scan`
    over `steps` steps, the layers on the backend's default conv/pool algorithms
    (`research.layers.conv_algorithms`, `pool_algorithms`).
  * flax-plain: `flax.linen.Conv`/`nn.max_pool` + `optax.adam`, one `jax.jit` call per
    step (the textbook Flax loop).
  * torch: `torch.nn` modules, eager, `torch.optim.Adam`, NCHW inputs,
    `torch.set_num_threads(threads)` (0: torch's default, one per core).
  * keras: Keras 3 on its JAX backend, `Sequential` + Adam, `train_on_batch` (one
    jitted step per call, as `fit` runs them).

Every runner reports its parameter count, checked against the zoo model's
(`peers.check_param_count`) before anything is timed.
"""

from __future__ import annotations

import dataclasses
import os
import time
import types
from collections.abc import Callable

import numpy as np

from research.bench import peers
from research.registry import Registry

LEARNING_RATE = 1e-3  # Adam's step size, the same in every framework
DATA_BATCHES = 8  # distinct random batches cycled through


@dataclasses.dataclass
class Runner:
    """A built and compiled training loop.

    Attributes:
      run: runs `steps` training steps and returns when they are done.
      compile_s: seconds to build and compile (eager frameworks: the first step).
      params: trainable parameters of the framework's model.
      notes: what ran (algorithms, threads, versions).
      hlo: the compiled program's HLO text, where one program runs the steps (ours),
        for `profile.by_layer`; None elsewhere.
    """

    run: Callable[[], None]
    compile_s: float
    params: int
    notes: str
    hlo: str | None = None


def random_data(batch: int, seed: int = 0):
    """`DATA_BATCHES` batches of uniform images `(B, 28, 28, 1)` and labels, as NumPy."""
    rng = np.random.default_rng(seed)
    n = batch * DATA_BATCHES
    images = rng.random((n, *peers.INPUT_SHAPE), dtype=np.float32)
    labels = rng.integers(0, peers.NUM_CLASSES, n).astype(np.int32)
    return images, labels


def synthetic_splits(
    input_shape: tuple[int, ...],
    train: int,
    evaluate: int,
    seed: int = 0,
    classes: int = peers.NUM_CLASSES,
):
    """`pipeline.Splits` of uniform random images and labels of `classes` classes.

    `train` training examples, `evaluate` each for validation and test (drawn in that
    order from one generator); normalization mean 0.5, std 0.25 per channel. For
    measurements that only need shapes: the engine's programs, compile times, probes.
    """
    # heavy (JAX, TFDS): this module also loads in the drivers and the PyTorch worker
    from research.data import pipeline

    rng = np.random.default_rng(seed)

    def split(count):
        images = rng.random((count, *input_shape), dtype=np.float32)
        return pipeline.Split(images, rng.integers(0, classes, count).astype(np.int32))

    channels = input_shape[-1]
    return pipeline.Splits(
        split(train),
        split(evaluate),
        split(evaluate),
        classes,
        tuple(input_shape),
        (0.5,) * channels,
        (0.25,) * channels,
    )


def ours(name: str, batch: int, steps: int, threads: int = 0) -> Runner:
    # lazy: a worker loads only its own framework (no JAX in the PyTorch worker)
    import jax

    from research import models, optim
    from research.bench import measure
    from research.train import engine
    from research.train import steps as steps_lib

    start = time.perf_counter()
    model = peers.zoo_model(name)
    fns = steps_lib.make_steps(
        model, optim.create("adam", learning_rate=LEARNING_RATE), input_shape=peers.INPUT_SHAPE
    )
    # The engine's sequential program: what scripts/train.py runs (a trial axis of 1).
    programs = engine.build_programs(_OneModelRun(fns, model, peers.INPUT_SHAPE), "sequential")
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    group = measure.Group(programs, keys[:1], None, keys[1:], {})
    group.init()
    images, labels = random_data(batch)
    group.place(images, labels, measure.cycled_rows(1, steps, batch, images.shape[0]))
    chunk = programs.chunk.lower(*group.chunk_args()).compile()
    compile_s = time.perf_counter() - start
    params = models.param_count(jax.tree_util.tree_map(lambda x: x[0], group.states.params))

    def run_once():
        group.time(calls=1, chunk=chunk)

    algorithms = programs.algorithms
    notes = f"engine program, conv={algorithms['conv']}, pool={algorithms['pool']}"
    return Runner(run_once, compile_s, params, notes, hlo=chunk.as_text())


class _OneModelRun:
    """What `engine.build_programs` reads of a run, for a model outside a config: its
    steps, and the model and input shape whose layers' algorithms it records."""

    loader = "device"

    def __init__(self, steps, model, input_shape):
        self.steps = steps
        self.model = model
        self.splits = types.SimpleNamespace(input_shape=tuple(input_shape))


def flax_plain(name: str, batch: int, steps: int, threads: int = 0) -> Runner:
    # lazy: a worker loads only its own framework (no JAX in the PyTorch worker)
    import jax
    import jax.numpy as jnp
    import optax

    from research import models

    start = time.perf_counter()
    model = peers.flax_plain_model(name)
    tx = optax.adam(LEARNING_RATE)
    images, labels = random_data(batch)
    batches = [
        (
            jnp.asarray(images[i * batch : (i + 1) * batch]),
            jnp.asarray(labels[i * batch : (i + 1) * batch]),
        )
        for i in range(DATA_BATCHES)
    ]
    params = model.init(jax.random.PRNGKey(0), batches[0][0])["params"]
    opt_state = tx.init(params)

    def train_step(params, opt_state, x, y, key):
        def loss_fn(p):
            logits = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    key = jax.random.PRNGKey(1)
    step = jax.jit(train_step, donate_argnums=(0, 1))
    step = step.lower(params, opt_state, *batches[0], key).compile()
    compile_s = time.perf_counter() - start
    count = models.param_count(params)
    counter = 0

    def run():
        nonlocal params, opt_state, counter
        for _ in range(steps):
            x, y = batches[counter % DATA_BATCHES]
            params, opt_state, loss = step(
                params, opt_state, x, y, jax.random.fold_in(key, counter)
            )
            counter += 1
        jax.block_until_ready(loss)

    return Runner(run, compile_s, count, "flax.linen.Conv + optax, one jit call per step")


def pytorch(name: str, batch: int, steps: int, threads: int = 0) -> Runner:
    import torch  # optional (requirements-bench.txt), and only in its own worker

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = peers.torch_model(name)
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = torch.nn.CrossEntropyLoss()
    images, labels = random_data(batch)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    y_all = torch.from_numpy(labels).long()
    batches = [
        (x_all[i * batch : (i + 1) * batch], y_all[i * batch : (i + 1) * batch])
        for i in range(DATA_BATCHES)
    ]
    model.train()
    counter = 0

    def run():
        nonlocal counter
        for _ in range(steps):
            x, y = batches[counter % DATA_BATCHES]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            counter += 1
        loss.item()

    start = time.perf_counter()
    run()  # eager: the first steps allocate and pick kernels; reported as "compile"
    compile_s = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    notes = f"torch {torch.__version__} eager, {torch.get_num_threads()} threads"
    return Runner(run, compile_s, params, notes)


def keras_jax(name: str, batch: int, steps: int, threads: int = 0) -> Runner:
    os.environ["KERAS_BACKEND"] = "jax"
    import keras  # optional (requirements-bench.txt); reads KERAS_BACKEND at import

    keras.utils.set_random_seed(0)
    model = peers.keras_model(name)
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    images, labels = random_data(batch)
    batches = [
        (images[i * batch : (i + 1) * batch], labels[i * batch : (i + 1) * batch])
        for i in range(DATA_BATCHES)
    ]
    counter = 0

    def run():
        nonlocal counter
        for _ in range(steps):
            x, y = batches[counter % DATA_BATCHES]
            model.train_on_batch(x, y)  # returns host floats: synchronised
            counter += 1

    start = time.perf_counter()
    run()  # traces and compiles the train function
    compile_s = time.perf_counter() - start
    notes = f"keras {keras.__version__} on jax, train_on_batch"
    return Runner(run, compile_s, model.count_params(), notes)


@dataclasses.dataclass(frozen=True)
class Framework:
    """A runner factory and the optional package it needs (None: always available)."""

    build: Callable[..., Runner]
    requires: str | None = None


FRAMEWORKS: Registry[Framework] = Registry(
    "framework",
    {
        "ours": Framework(ours),
        "flax-plain": Framework(flax_plain),
        "torch": Framework(pytorch, "torch"),
        "keras": Framework(keras_jax, "keras"),
    },
)


def build(framework: str, name: str, batch: int, steps: int, threads: int = 0) -> Runner:
    """Builds `framework`'s runner for benchmark model `name`; raises if its size differs."""
    runner = FRAMEWORKS.get(framework).build(name, batch, steps, threads)
    peers.check_param_count(name, framework, runner.params)
    return runner
