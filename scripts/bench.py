"""Training-step benchmark: our engine against plain Flax, PyTorch eager and Keras-JAX.

The question: how fast does one training step (forward, backward and an Adam
update, batch of random 28x28x1 images with integer labels, softmax
cross-entropy) run on this backend, for the same model in each framework?

    python scripts/bench.py --models lenet5,lecture_cnn --batch-sizes 128 \
        --frameworks ours,flax-plain,torch,keras --out bench.json

Prints a markdown table: compile seconds, median milliseconds per step,
examples per second, peak memory (CPU: the process's peak resident set,
`ru_maxrss`; GPU: the device's peak bytes in use) and the speed of each
framework relative to ours (> 1: ours is faster). Each (model, batch,
framework) runs in its own subprocess, so peak memory, thread settings and
XLA flags of one do not leak into another.

Frameworks:
  * ours: `research.train.steps.make_steps` (what `scripts/train.py` runs):
    `repeats` jitted calls of `train_chunk`, each a `lax.scan` over `--steps`
    steps; the layers use the backend's default conv/pool algorithms
    (`research.layers.conv_algorithms`; override with
    RESEARCH_CONV_ALGORITHM / RESEARCH_POOL_ALGORITHM).
  * flax-plain: `flax.linen.Conv`/`nn.max_pool` + `optax.adam`, one `jax.jit`
    call per step (the textbook Flax loop), timed over `--steps` calls.
  * torch: the same network as `torch.nn` modules, eager, `torch.optim.Adam`;
    NCHW inputs, `torch.set_num_threads(--torch-threads)` (0: torch's default).
  * keras: Keras 3 with KERAS_BACKEND=jax, `Sequential` + Adam, timed with
    `train_on_batch` (one jitted step per call, as `fit` runs them).

Optional frameworks that are not installed (requirements-bench.txt) are
skipped with a note. Run time: about 2-4 minutes for the default command on a
2-core CPU.

Sweep mode (`--mode sweep`): trials run at once against one after another.

    python scripts/bench.py --mode sweep --trials 1,4,16 --steps 5 --repeats 3 --out sweep.json

For each model of `--sweep-models` (LeNet-5 on 28x28x1, batch 128; simple_cnn
on 8x8x1, batch 64) and each N of `--trials`, the trial-steps per second of
N trials vmapped into one program (`research.sweep.vmapped.build_group`, trial
axis sharded over the devices) and of trials run one after another, their
ratio, and the throughput over one trial vmapped alone (the issue's GPU goal:
>= 8x at N=16 for LeNet-5). Compile seconds are reported apart. The default N
are 1,4,16 (a CPU finishes them in a few minutes); ask for the issue's full
list with `--trials 1,4,16,64`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import _checkout  # noqa: F401  (first: `research` from this checkout)

INPUT_SHAPE = (28, 28, 1)  # (H, W, C) of one example, as MNIST
NUM_CLASSES = 10
LEARNING_RATE = 1e-3  # Adam's step size, the same in every framework
DATA_BATCHES = 8  # distinct random batches cycled through (ours: on-device data)


# --------------------------------------------------------------------------- shared helpers


def _peak_memory_mb() -> float:
    """Peak memory of this process: the device's peak bytes on GPU, else peak RSS."""
    try:
        import jax

        stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
        if stats and "peak_bytes_in_use" in stats:
            return stats["peak_bytes_in_use"] / 2**20
    except ImportError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _random_data(batch: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    n = batch * DATA_BATCHES
    images = rng.random((n, *INPUT_SHAPE), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, n).astype(np.int32)
    return images, labels


def _timed_loop(run_steps: Callable[[int], None], steps: int, repeats: int) -> list[float]:
    """Seconds per step of `repeats` runs of `run_steps(steps)` (each ends synchronised)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_steps(steps)
        times.append((time.perf_counter() - start) / steps)
    return times


# --------------------------------------------------------------------------- frameworks


def bench_ours(model_name: str, batch: int, steps: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from research import models, optim
    from research.layers import conv_algorithms
    from research.train.steps import make_steps

    overrides = {"padding": 2} if model_name == "lenet5" else {}
    model = models.create(model_name, num_classes=NUM_CLASSES, **overrides)
    tx = optim.create("adam", learning_rate=LEARNING_RATE)
    fns = make_steps(model, tx, input_shape=INPUT_SHAPE)
    images, labels = _random_data(batch)
    images, labels = jnp.asarray(images), jnp.asarray(labels)
    idx = jnp.asarray(np.arange(steps * batch).reshape(steps, batch) % images.shape[0], jnp.int32)
    state = fns.init(jax.random.PRNGKey(0), jax.random.PRNGKey(1))

    start = time.perf_counter()
    compiled = fns.train_chunk.lower(state, images, labels, idx).compile()
    compile_s = time.perf_counter() - start
    state, metrics = compiled(state, images, labels, idx)  # warm-up
    jax.block_until_ready(metrics)

    def run(n):
        nonlocal state
        state, metrics = compiled(state, images, labels, idx)
        jax.block_until_ready(metrics)

    times = _timed_loop(run, steps, repeats)
    algos = (
        f"conv={conv_algorithms.resolve_conv_algorithm()}, "
        f"pool={conv_algorithms.resolve_pool_algorithm()}"
    )
    return {"compile_s": compile_s, "step_times": times, "notes": algos}


def _flax_plain_model(model_name: str):
    import flax.linen as nn

    class LeNet5(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.relu(nn.Conv(6, (5, 5), padding=2)(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = nn.relu(nn.Conv(16, (5, 5), padding="VALID")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = x.reshape((x.shape[0], -1))  # (N, 5 * 5 * 16)
            x = nn.relu(nn.Dense(120)(x))
            x = nn.relu(nn.Dense(84)(x))
            return nn.Dense(NUM_CLASSES)(x)

    class LectureCNN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.relu(nn.Conv(32, (5, 5), padding="SAME")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            for width in (64, 128, 64):
                x = nn.relu(nn.Conv(width, (5, 5), padding="VALID")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = x.reshape((x.shape[0], -1))  # (N, 64)
            x = nn.relu(nn.Dense(1024)(x))
            x = nn.Dropout(0.1, deterministic=not train)(x)
            return nn.Dense(NUM_CLASSES)(x)

    return {"lenet5": LeNet5, "lecture_cnn": LectureCNN}[model_name]()


def bench_flax_plain(model_name: str, batch: int, steps: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    model = _flax_plain_model(model_name)
    tx = optax.adam(LEARNING_RATE)
    images, labels = _random_data(batch)
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

    step = jax.jit(train_step, donate_argnums=(0, 1))
    key = jax.random.PRNGKey(1)
    start = time.perf_counter()
    compiled = step.lower(params, opt_state, *batches[0], key).compile()
    compile_s = time.perf_counter() - start
    counter = 0

    def run(n):
        nonlocal params, opt_state, counter
        for _ in range(n):
            x, y = batches[counter % DATA_BATCHES]
            params, opt_state, loss = compiled(
                params, opt_state, x, y, jax.random.fold_in(key, counter)
            )
            counter += 1
        jax.block_until_ready(loss)

    run(2)  # warm-up
    return {"compile_s": compile_s, "step_times": _timed_loop(run, steps, repeats), "notes": ""}


def _torch_model(model_name: str):
    from torch import nn

    if model_name == "lenet5":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, NUM_CLASSES),
        )  # fmt: skip
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5), nn.ReLU(),
        nn.Conv2d(64, 128, 5), nn.ReLU(),
        nn.Conv2d(128, 64, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 1024), nn.ReLU(), nn.Dropout(0.1),
        nn.Linear(1024, NUM_CLASSES),
    )  # fmt: skip


def bench_torch(model_name: str, batch: int, steps: int, repeats: int, threads: int = 0) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = _torch_model(model_name)
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = torch.nn.CrossEntropyLoss()
    images, labels = _random_data(batch)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    y_all = torch.from_numpy(labels).long()
    batches = [
        (x_all[i * batch : (i + 1) * batch], y_all[i * batch : (i + 1) * batch])
        for i in range(DATA_BATCHES)
    ]
    model.train()
    counter = 0

    def run(n):
        nonlocal counter
        for _ in range(n):
            x, y = batches[counter % DATA_BATCHES]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            counter += 1
        loss.item()

    start = time.perf_counter()
    run(1)  # eager: the first step allocates and picks kernels; reported as "compile"
    compile_s = time.perf_counter() - start
    run(2)
    times = _timed_loop(run, steps, repeats)
    return {
        "compile_s": compile_s,
        "step_times": times,
        "notes": f"eager, {torch.get_num_threads()} threads",
    }


def bench_keras(model_name: str, batch: int, steps: int, repeats: int) -> dict:
    os.environ["KERAS_BACKEND"] = "jax"
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    if model_name == "lenet5":
        body = [
            layers.ZeroPadding2D(2),
            layers.Conv2D(6, 5, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(16, 5, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(120, activation="relu"),
            layers.Dense(84, activation="relu"),
            layers.Dense(NUM_CLASSES),
        ]
    else:
        body = [
            layers.Conv2D(32, 5, activation="relu", padding="same"),
            layers.MaxPooling2D(2, strides=2),
            layers.Conv2D(64, 5, activation="relu"),
            layers.Conv2D(128, 5, activation="relu"),
            layers.Conv2D(64, 5, activation="relu"),
            layers.MaxPooling2D(2, strides=2),
            layers.Flatten(),
            layers.Dense(1024, activation="relu"),
            layers.Dropout(0.1),
            layers.Dense(NUM_CLASSES),
        ]
    model = keras.Sequential([keras.Input(INPUT_SHAPE), *body])
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    images, labels = _random_data(batch)
    batches = [
        (images[i * batch : (i + 1) * batch], labels[i * batch : (i + 1) * batch])
        for i in range(DATA_BATCHES)
    ]
    counter = 0

    def run(n):
        nonlocal counter
        for _ in range(n):
            x, y = batches[counter % DATA_BATCHES]
            loss = model.train_on_batch(x, y)  # returns host floats: synchronised
            counter += 1
        return loss

    start = time.perf_counter()
    run(1)  # traces and compiles the train function
    compile_s = time.perf_counter() - start
    run(2)
    return {
        "compile_s": compile_s,
        "step_times": _timed_loop(run, steps, repeats),
        "notes": f"keras {keras.__version__}, train_on_batch",
    }


FRAMEWORKS: dict[str, tuple[str | None, Callable[..., dict]]] = {
    # name: (module that must be importable, benchmark function)
    "ours": (None, bench_ours),
    "flax-plain": (None, bench_flax_plain),
    "torch": ("torch", bench_torch),
    "keras": ("keras", bench_keras),
}
MODELS = ("lenet5", "lecture_cnn")


# --------------------------------------------------------------------------- driver


def _worker(spec: str, args) -> None:
    """Runs one (model, batch, framework) and prints its result as one JSON line."""
    if spec.startswith("sweep,"):
        rows = bench_sweep(spec.split(",")[1], args.trials, args.steps, args.repeats)
        print("RESULT " + json.dumps(rows))
        return
    model_name, batch, framework = spec.split(",")
    fn = FRAMEWORKS[framework][1]
    kwargs = {"threads": args.torch_threads} if framework == "torch" else {}
    result = fn(model_name, int(batch), args.steps, args.repeats, **kwargs)
    result["peak_mb"] = _peak_memory_mb()
    print("RESULT " + json.dumps(result))


def _available(framework: str) -> bool:
    import importlib.util

    module = FRAMEWORKS[framework][0]
    return module is None or importlib.util.find_spec(module) is not None


def _run_one(model_name: str, batch: int, framework: str, args) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--_worker",
        f"{model_name},{batch},{framework}",
        "--steps",
        str(args.steps),
        "--repeats",
        str(args.repeats),
        "--torch-threads",
        str(args.torch_threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(
            f"benchmark {model_name}/{batch}/{framework} failed (exit {proc.returncode}):\n"
            f"{proc.stderr[-3000:]}"
        )
    result = json.loads(lines[-1][len("RESULT ") :])
    ms = statistics.median(result.pop("step_times")) * 1e3
    return {
        "model": model_name,
        "batch": batch,
        "framework": framework,
        "compile_s": result["compile_s"],
        "ms_per_step": ms,
        "examples_per_s": batch / ms * 1e3,
        "peak_mb": result["peak_mb"],
        "notes": result["notes"],
    }


def run_train(args) -> list[dict]:
    """The "train" mode: one row per (model, batch, framework)."""
    rows = []
    for model_name in args.models:
        for batch in args.batch_sizes:
            group = []
            for framework in args.frameworks:
                if not _available(framework):
                    print(
                        f"note: {framework} is not installed; skipped "
                        f"(pip install -r requirements-bench.txt)",
                        file=sys.stderr,
                    )
                    continue
                print(f"running {model_name} batch {batch} {framework} ...", file=sys.stderr)
                group.append(_run_one(model_name, batch, framework, args))
            ours = next((r for r in group if r["framework"] == "ours"), None)
            for row in group:
                # Time of that framework over ours: > 1 means ours is faster.
                row["ratio_vs_ours"] = row["ms_per_step"] / ours["ms_per_step"] if ours else None
            rows.extend(group)
    return rows


# --------------------------------------------------------------------------- sweep mode

# model -> (input shape (H, W, C), batch, config.model.overrides): the shapes the
# sweeps train on (LeNet-5 on MNIST, simple_cnn on digits).
SWEEP_MODELS = {
    "lenet5": ((28, 28, 1), 128, {"padding": 2}),
    "simple_cnn": ((8, 8, 1), 64, {}),
}
SWEEP_TRIALS = (1, 4, 16)  # default N on a CPU; --trials 1,4,16,64 for the full list


def _sweep_config(model_name: str):
    from research.sweep import space

    shape, batch, overrides = SWEEP_MODELS[model_name]
    config = space.get_sweep_config()
    config.model.name = model_name
    config.model.overrides = overrides
    config.data.name = "digits"  # only validated: the data below are synthetic
    config.batch_size = batch
    config.num_epochs = 1
    config.progress = False
    config.optim.name = "adam"
    config.optim.learning_rate = LEARNING_RATE
    return config


def bench_sweep(model_name: str, trials: list[int], steps: int, repeats: int) -> list[dict]:
    """Trial-steps per second of N trials vmapped (one program) and of one trial alone.

    Runs the real `research.sweep.vmapped` programs (`build_group`: the
    vmapped `chunk` sharded over the devices' "trials" axis, and the plain
    `single_chunk`) on random data of the model's shape; trial i has its own
    seed (init, batch order) and learning rate. Each timed call is a `lax.scan`
    of `steps` steps; compile is timed apart (`lower().compile()`).
    Sequential throughput is one trial's: N trials one after another run the
    same compiled program N times, so their trial-steps/s is the same for all N.
    """
    import jax
    import numpy as np

    from research.data import pipeline
    from research.layers import conv_algorithms
    from research.sweep import vmapped
    from research.train import loop

    shape, batch, _ = SWEEP_MODELS[model_name]
    rng = np.random.default_rng(0)
    n = batch * DATA_BATCHES

    def split(count):
        images = rng.random((count, *shape), dtype=np.float32)
        return pipeline.Split(images, rng.integers(0, NUM_CLASSES, count).astype(np.int32))

    splits = pipeline.Splits(
        split(n), split(batch), split(batch), NUM_CLASSES, shape, (0.5,), (0.25,)
    )
    config = _sweep_config(model_name)
    group = vmapped.build_group(config, splits)

    def timed(fn, state, mesh, count):
        idx = rng.integers(0, n, (count, steps, batch)).astype(np.int32)  # (T, steps, B)
        data = [loop._on_mesh(a, mesh) for a in (splits.train.images, splits.train.labels, idx)]
        start = time.perf_counter()
        compiled = fn.lower(state, *data).compile()
        compile_s = time.perf_counter() - start
        state, metrics = compiled(state, *data)  # warm-up
        jax.block_until_ready((state, metrics))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            state, metrics = compiled(state, *data)
            # Block on every call (CPU with forced host devices can deadlock otherwise).
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - start)
        return compile_s, statistics.median(times)

    def configs(count):
        out = []
        for i in range(count):
            c = config.copy_and_resolve_references()
            c.seed, c.optim.learning_rate = i, LEARNING_RATE * (1 + i % 4)
            out.append(c)
        return vmapped.padded(out, group.trial_multiple)

    one = configs(1)[:1]
    keys = vmapped._keys(one)
    hps = vmapped.hyperparams(one, group.run.steps_per_epoch)
    state = group.single_init(keys[0], keys[2], hps)
    seq_compile, seq_s = timed(group.single_chunk, state, group.steps.mesh, 1)
    seq_rate = steps / seq_s
    notes = f"conv={conv_algorithms.resolve_conv_algorithm()}, devices={jax.device_count()}"
    rows = []
    for count in trials:
        members = configs(count)  # padded to a multiple of the device count
        keys = vmapped._keys(members)
        hps = vmapped.hyperparams(members, group.run.steps_per_epoch)
        states = group.init(keys[0], keys[2], hps)
        vmap_compile, vmap_s = timed(group.chunk, states, group.trials_mesh, len(members))
        vmap_rate = count * steps / vmap_s  # padding trials are not counted
        rows.append(
            {
                "model": model_name,
                "input": "x".join(map(str, shape)),
                "batch": batch,
                "trials": count,
                "vmap_compile_s": vmap_compile,
                "sequential_compile_s": seq_compile,
                "vmap_trial_steps_per_s": vmap_rate,
                "sequential_trial_steps_per_s": seq_rate,
                "speedup": vmap_rate / seq_rate,
                "vs_one_vmapped": None,  # filled in by run_sweep (N=1 row)
                "notes": notes,
            }
        )
    return rows


def run_sweep(args) -> list[dict]:
    """The "sweep" mode: one row per (model, N); each model in its own subprocess."""
    rows = []
    for model_name in args.sweep_models:
        print(f"running sweep {model_name} N={args.trials} ...", file=sys.stderr)
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--_worker",
            f"sweep,{model_name}",
            "--trials",
            ",".join(map(str, args.trials)),
            "--steps",
            str(args.steps),
            "--repeats",
            str(args.repeats),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise RuntimeError(
                f"sweep benchmark {model_name} failed (exit {proc.returncode}):\n"
                f"{proc.stderr[-3000:]}"
            )
        group = json.loads(lines[-1][len("RESULT ") :])
        base = next((r for r in group if r["trials"] == 1), None)
        for r in group:
            # Throughput over one trial run vmapped alone (the GPU goal: >= 8 at N=16).
            if base:
                r["vs_one_vmapped"] = r["vmap_trial_steps_per_s"] / base["vmap_trial_steps_per_s"]
        rows.extend(group)
    return rows


def sweep_table(rows: list[dict], backend: str) -> str:
    head = (
        "| model | input | batch | N | vmap trial-steps/s | sequential trial-steps/s | "
        "vmap / sequential | vs N=1 vmapped | vmap compile s | seq compile s | notes |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [f"backend: {backend}, load average {os.getloadavg()[0]:.1f}", "", head]
    for r in rows:
        vs_one = "" if r["vs_one_vmapped"] is None else f"{r['vs_one_vmapped']:.2f}x"
        lines.append(
            f"| {r['model']} | {r['input']} | {r['batch']} | {r['trials']} | "
            f"{r['vmap_trial_steps_per_s']:.1f} | {r['sequential_trial_steps_per_s']:.1f} | "
            f"{r['speedup']:.2f}x | {vs_one} | {r['vmap_compile_s']:.1f} | "
            f"{r['sequential_compile_s']:.1f} | {r['notes']} |"
        )
    return "\n".join(lines)


# Benchmark modes: name -> (function(args) -> rows, table(rows, backend) -> markdown).
MODES: dict[str, tuple[Callable[[argparse.Namespace], list[dict]], Callable]] = {
    "train": (run_train, None),  # markdown_table, set below
    "sweep": (run_sweep, sweep_table),
}


def markdown_table(rows: list[dict], backend: str) -> str:
    head = (
        "| model | batch | framework | compile s | ms/step | examples/s | "
        "peak MB | time vs ours | notes |\n|---|---:|---|---:|---:|---:|---:|---:|---|"
    )
    lines = [f"backend: {backend}", "", head]
    for r in rows:
        ratio = "" if r["ratio_vs_ours"] is None else f"{r['ratio_vs_ours']:.2f}x"
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['framework']} | {r['compile_s']:.2f} | "
            f"{r['ms_per_step']:.2f} | {r['examples_per_s']:.0f} | {r['peak_mb']:.0f} | "
            f"{ratio} | {r['notes']} |"
        )
    return "\n".join(lines)


MODES["train"] = (run_train, markdown_table)


def _csv(kind: Callable[[str], object], valid=None):
    def parse(text: str):
        values = [kind(v) for v in text.split(",") if v]
        bad = [v for v in values if valid is not None and v not in valid]
        if bad or not values:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected a comma-separated list of {', '.join(valid or ['ints'])}"
            )
        return values

    return parse


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=_csv(str, MODELS), default=list(MODELS))
    parser.add_argument("--batch-sizes", type=_csv(int), default=[128])
    parser.add_argument("--frameworks", type=_csv(str, tuple(FRAMEWORKS)), default=list(FRAMEWORKS))
    parser.add_argument("--mode", choices=sorted(MODES), default="train")
    parser.add_argument(
        "--sweep-models", type=_csv(str, tuple(SWEEP_MODELS)), default=list(SWEEP_MODELS)
    )
    parser.add_argument(
        "--trials",
        type=_csv(int),
        default=list(SWEEP_TRIALS),
        help="sweep mode: trials run at once (the issue's list: 1,4,16,64)",
    )
    parser.add_argument("--steps", type=int, default=20, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats; median reported")
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="torch.set_num_threads; 0: torch default"
    )
    parser.add_argument("--out", help="also write the rows as JSON here")
    parser.add_argument("--_worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        _worker(args._worker, args)
        return
    run, table = MODES[args.mode]
    rows = run(args)
    import jax

    backend = jax.default_backend()
    print(table(rows, backend))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {"backend": backend, "load_average": os.getloadavg(), "rows": rows}, f, indent=2
            )


if __name__ == "__main__":
    main()
