"""What this project promises on an accelerator, measured in one command.

    python scripts/accelerator_check.py --out runs/accel            # the full check (a GPU)
    python scripts/accelerator_check.py --smoke --out runs/accel    # every part, tiny, on CPU

Prints a markdown table and writes it, with every figure, into --out
(`table.md`, `results.json`; results.json is rewritten after each part, so a
crash keeps what was measured). The header names the device, JAX's version,
the git commit and XLA_FLAGS. Parts (`--parts`, default all), each a function
that may fail alone (its error goes into its row and the check goes on):

  tests     the GPU test subset: tests/layers/test_conv_algorithms.py, test_onednn.py
            and test_trial_conv.py (every conv and max-pool algorithm equal to XLA's,
            forward and gradient, at matmul precision "highest", run by pytest in a
            subprocess); two short runs of
            the airbench network in deterministic mode with bit-identical
            params_sha256 (XLA's --xla_gpu_deterministic_ops=true is set before
            JAX starts and recorded); a LeNet-5 run with compute_dtype bfloat16
            whose parameters stay float32 while its convolutions and matmuls run in
            bfloat16.
  lenet     LeNet-5 on MNIST (experiments/lenet5_mnist.py, no validation split):
            seconds to 99% test accuracy, compilation included: runs of 2, 3, 4,
            6, 8, 12 epochs (the cosine schedule fits each length), the first to
            reach 99% gives the time (goal < 5 s).
  trials    trial-steps/s of N = 1, 4, 16, 64 LeNet-5 trials vmapped into one
            program against one trial at a time (`research.sweep.vmapped.probe`;
            goal: >= 8x one trial's throughput at N = 16); the longest events
            (kernels on GPU) of one chunk at N = 1 and 16 go to
            `profile_trials.md` (`research.bench.profile`).
  speedrun  experiments/cifar10_speedrun.py (airbench94 ported) for --seeds seeds
            (10): mean +- std test accuracy on the 1,000 test images of shared/data
            and seconds per run; then airbench94.py itself (PyTorch) on the same GPU
            and images, when its source is at --airbench (.peers/airbench94.py,
            `make accel-peers`; skipped with a note otherwise). Goals: mean >= 94.0%;
            faster than airbench94 measured here (its paper: 3.83 s on an A100).
  pool      the max-pool algorithm A/B on this backend (the GPU's default,
            "reduce_window", whose gradient is XLA's select-and-scatter, against
            "reshape", a reshape + max with an element-wise gradient): LeNet-5
            trial-steps/s for one trial and N = 16 vmapped, and the speedrun's
            seconds per run with the other one (2 seeds). Last, so that the budget drops it
            before the goals' parts; it informs DEFAULT_POOL_ALGORITHM.
  resnet50  ResNet-50 at 224x224, bfloat16 compute, training images/s on
            synthetic data through the engine's compiled chunk, at batch 256 and
            512 (`--resnet-batches`; an out-of-memory batch is reported as such).
            Goal >= 3,000/s on one H100-class GPU (NVIDIA's PyTorch RN50 with AMP on
            an A100: 2,470 img/s).

--smoke runs every part at tiny sizes (MNIST/CIFAR-10 subsets, N = 1, 4, ResNet-18
at 32x32, the speedrun's narrow variant for 1 epoch, 1 seed) on CPU in about
3 minutes; its goals are not judged ("n/a"). tests/bench/test_accelerator_check.py
runs it (slow tier).

--deterministic on (default, as the configs' deterministic=True) sets XLA's
--xla_gpu_deterministic_ops=true, which also turns autotuning off; off sets it
false, as deterministic=False does (measured on an H200: 3.2x faster speedrun
runs; the README's "Accelerators" has both tables). The value replaces any
setting of that flag in XLA_FLAGS.

No persistent compilation cache is used (compile times are part of the
figures). TFDS preparation goes to $RESEARCH_CACHE_DIR, by default
`.accel-cache/` in the repository.

On a GPU machine without network (H100/H200, Python 3.12, JAX 0.11 with CUDA,
flax, optax and orbax-checkpoint installed), from the repository root:

  here, once:  make accel-wheels   # .whl/: the other packages, Python 3.12 manylinux
               make accel-data     # .gpu-data/1,2,3: shared/data in pieces < 64 MiB
               make accel-peers AIRBENCH_GIT=<a clone of KellerJordan/cifar10-airbench>
  then three device calls back to back (the machine keeps ignored files between
  calls while it is warm; each call carries < 64 MiB):
    1. carry [".whl", ".peers", ".gpu-data/1"], command `nvidia-smi -L`
    2. carry [".gpu-data/2"], command `true`
    3. carry [".gpu-data/3"], timeout_s 600, command:
       python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \\
         --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; \\
       PYTHONUNBUFFERED=1 python3 scripts/accelerator_check.py --data-dir .gpu-data \\
         --out $OUT/accel
  The table comes back in $OUT/accel/table.md; put it in README.md ("Accelerators").
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# In this order: the speedrun before ResNet-50, whose second batch size is the first
# thing the time budget drops.
PARTS = ("tests", "lenet", "trials", "speedrun", "resnet50", "pool")
DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"
# Data pieces for the device machine (`make accel-data`): each under 64 MiB with the tree.
DATA_PIECES = {
    "1": [
        "mnist",
        "cifar10/cifar-10-batches-bin/batches.meta.txt",
        "cifar10/cifar-10-batches-bin/test_batch_first1000.bin.xz",
        "cifar10/cifar-10-batches-bin/data_batch_1.bin.xz",
    ],
    "2": [f"cifar10/cifar-10-batches-bin/data_batch_{i}.bin.xz" for i in (2, 3)],
    "3": [f"cifar10/cifar-10-batches-bin/data_batch_{i}.bin.xz" for i in (4, 5)],
}
LENET_EPOCHS = (2, 3, 4, 6, 8, 12)
POOL_ALGORITHMS = ("reduce_window", "reshape")  # the pool part's A/B (GPU default first)
TRIALS = (1, 4, 16, 64)


@dataclasses.dataclass
class Row:
    """One line of the table: a measure, its result, the goal and the verdict."""

    part: str
    measure: str
    result: str
    goal: str = ""
    verdict: str = "info"  # pass | fail | info | skip | error | n/a (smoke)
    data: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Context:
    smoke: bool
    data_dir: str
    out: str
    seeds: int
    airbench: str
    resnet_batches: tuple[int, ...]
    deadline: float  # time.monotonic() by which the check should end
    deterministic: bool = True  # --deterministic: XLA's deterministic GPU ops (no autotuning)


def with_deterministic_flag(xla_flags: str, deterministic: bool) -> str:
    """`xla_flags` with XLA's deterministic-ops flag set to `deterministic` (replaced if there)."""
    name = DETERMINISTIC_FLAG.split("=")[0]
    kept = [f for f in xla_flags.split() if f.split("=")[0] != name]
    return " ".join([*kept, f"{name}={str(deterministic).lower()}"])


def more(ctx: Context, done: int) -> bool:
    """Whether to measure one more item of a part: the first always, later ones in time."""
    return done == 0 or time.monotonic() < ctx.deadline


def judge(ctx: Context, ok: bool) -> str:
    return "n/a (smoke)" if ctx.smoke else ("pass" if ok else "fail")


# --------------------------------------------------------------------------- data


def pack_data(source: str, dest: str) -> None:
    """Copies `source` (laid out like shared/data) into `dest/1`, `dest/2`, `dest/3`."""
    for piece, paths in DATA_PIECES.items():
        size = 0
        for rel in paths:
            src, dst = os.path.join(source, rel), os.path.join(dest, piece, rel)
            if not os.path.exists(src):
                raise FileNotFoundError(f"{src} is missing (is --pack-data a shared/data folder?)")
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if os.path.isdir(src):
                shutil.copytree(src, dst, dirs_exist_ok=True)
                size += sum(
                    os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(dst) for f in fs
                )
            else:
                shutil.copy2(src, dst)
                size += os.path.getsize(dst)
        print(f"{os.path.join(dest, piece)}: {size / 2**20:.1f} MiB")


def data_root(path: str) -> str:
    """`path` itself, or, if it holds the pieces of `pack_data`, a merged tree of links."""
    pieces = [os.path.join(path, p) for p in DATA_PIECES if os.path.isdir(os.path.join(path, p))]
    if not pieces:
        return path
    merged = os.path.join(path, "merged")
    for piece in pieces:
        for folder, _, files in os.walk(piece):
            for name in files:
                src = os.path.join(folder, name)
                dst = os.path.join(merged, os.path.relpath(src, piece))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                if not os.path.lexists(dst):
                    os.symlink(os.path.abspath(src), dst)
    return merged


# --------------------------------------------------------------------------- helpers


def _experiment(name: str):
    path = os.path.join(ROOT, "experiments", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _with(config, **fields):
    """A copy of `config` with dotted `fields` set."""
    config = config.copy_and_resolve_references()
    for dotted, value in fields.items():
        node = config
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def _configured(ctx: Context, config, **fields):
    """`config` for this check: its data folder, no progress bar, --deterministic recorded."""
    fields = {"data.data_dir": ctx.data_dir, **fields}
    return _with(config, progress=False, deterministic=ctx.deterministic, **fields)


def _train(config, splits=None, seeds=None):
    """Trains `config` (once per seed of `seeds`, one after another) through the engine.

    Returns the run and the engine's outcomes (results record and final state each).
    """
    from research.train import engine, loop

    run = loop.build_run(config, splits=splits) if splits else loop.build_run(config)
    members = [engine.Member(_with(config, seed=s), None) for s in (seeds or [config.seed])]
    return run, engine.train(run, members)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


# --------------------------------------------------------------------------- parts


def part_tests(ctx: Context) -> list[Row]:
    return [_guarded("tests", check, ctx) for check in (_conv_tests, _determinism, _bfloat16)]


def _guarded(part: str, check: Callable[[Context], Row], ctx: Context) -> Row:
    """`check(ctx)`, or a row with its error: one failing check does not hide the others."""
    try:
        return check(ctx)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        traceback.print_exc()
        return Row(part, check.__name__.strip("_"), f"error: {first[:300]}", verdict="error")


def _conv_tests(ctx: Context) -> Row:
    # This process holds JAX's preallocated share of the GPU: the tests allocate as they go.
    env = {
        **os.environ,
        "JAX_DEFAULT_MATMUL_PRECISION": "highest",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    }
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    cmd += [
        "tests/layers/test_conv_algorithms.py",
        "tests/layers/test_onednn.py",
        "tests/layers/test_trial_conv.py",
    ]
    if ctx.smoke:  # two cases per algorithm and the pooling tests
        cmd += ["-k", "7-8-3 or max_pool or pool_algorithm"]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=_left(ctx, 300)
    )
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|errors?|skipped)", summary)}
    ok = proc.returncode == 0 and counts.get("passed", 0) > 0
    return Row(
        "tests",
        "conv/pool algorithms = XLA's, fwd + grad (tests/layers/test_conv_algorithms.py, "
        "matmul precision highest)",
        summary or proc.stderr.strip()[-300:],
        "all pass",
        "pass" if ok else "fail",
        {"returncode": proc.returncode, **counts},
    )


def _speedrun_smoke_config(ctx, widths=(8, 16, 16)):
    config = _configured(ctx, _experiment("cifar10_speedrun").get_config("smoke"))
    config.model.overrides.widths = widths
    return config


def _determinism(ctx: Context) -> Row:
    import jax

    if not ctx.deterministic:
        measure = "two runs, deterministic=True, bit-identical"
        return Row("tests", measure, "skipped: --deterministic off", verdict="skip")
    # In --smoke the speedrun part's very program (a persistent-cache hit there).
    config = _speedrun_smoke_config(ctx, (8, 16, 16) if ctx.smoke else (64, 256, 256))
    config.deterministic = True
    if not ctx.smoke:
        config.data.train_size, config.batch_size = 8192, 1024
    _, outcomes = _train(config, seeds=[0, 0])  # the same seed twice, one compiled program
    results = [o.results for o in outcomes]
    shas = [r["params_sha256"] for r in results]
    flags = os.environ.get("XLA_FLAGS", "")
    return Row(
        "tests",
        f"two runs, deterministic=True, bit-identical (airbench net, {results[0]['steps']} steps "
        f"of {config.batch_size}; {jax.default_backend()}; XLA_FLAGS={flags!r})",
        f"params_sha256 {'equal' if shas[0] == shas[1] else 'DIFFER'}: {shas[0][:12]}",
        "equal",
        "pass" if shas[0] == shas[1] else "fail",
        {"params_sha256": shas, "xla_flags": flags},
    )


def _contraction_dtypes(jaxpr) -> list[str]:
    """The input dtypes of every convolution and matmul in `jaxpr` (recursively)."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
            found.append("/".join(sorted({str(v.aval.dtype) for v in eqn.invars})))
        for sub in eqn.params.values():
            inner = getattr(sub, "jaxpr", sub)
            if hasattr(inner, "eqns"):
                found += _contraction_dtypes(inner)
    return found


def _bfloat16(ctx: Context) -> Row:
    import jax
    import jax.numpy as jnp
    import numpy as np

    config = _configured(
        ctx,
        _experiment("lenet5_mnist").get_config(),
        compute_dtype="bfloat16",
        num_epochs=1,
        **{"data.train_size": 1024 if ctx.smoke else 0},
    )
    run, (outcome,) = _train(config)
    result = outcome.results
    dtypes = {str(x.dtype) for x in jax.tree_util.tree_leaves(outcome.state.params)}
    x = jnp.zeros((2, *run.splits.input_shape), jnp.float32)
    variables = {"params": outcome.state.params}
    jaxpr = jax.make_jaxpr(lambda v, x: run.model.apply(v, x, train=False))(variables, x)
    contractions = _contraction_dtypes(jaxpr.jaxpr)
    bf16 = sum(d == "bfloat16" for d in contractions)
    ok = dtypes == {"float32"} and bf16 == len(contractions) > 0
    ok = ok and np.isfinite(result["test_loss"])
    return Row(
        "tests",
        "bf16 compute, float32 parameters (LeNet-5, MNIST, 1 epoch)",
        f"params {sorted(dtypes)}; {bf16}/{len(contractions)} convs/matmuls in bfloat16; "
        f"test acc {_pct(result['test_accuracy'])}",
        "params float32, contractions bf16",
        "pass" if ok else "fail",
        {"param_dtypes": sorted(dtypes), "contractions": contractions, **_pick(result)},
    )


def _pick(result: dict) -> dict:
    keys = ("test_accuracy", "test_loss", "steps", "wall_seconds", "compile_seconds")
    return {k: result.get(k) for k in keys}


def part_lenet(ctx: Context) -> list[Row]:
    base = _configured(
        ctx,
        _experiment("lenet5_mnist").get_config(),
        checkpoint_every_epochs=0,
        **{"data.val_size": 0},
    )
    if ctx.smoke:
        base = _with(base, **{"data.train_size": 2048})
    from research.train import loop

    splits, _ = loop.prepare_data(base)  # loaded once, outside the timings
    ladder = (1,) if ctx.smoke else LENET_EPOCHS
    tried = []
    for epochs in ladder:
        if not more(ctx, len(tried)):
            break
        _, (outcome,) = _train(_with(base, num_epochs=epochs), splits=splits)
        r = outcome.results
        tried.append({"epochs": epochs, **_pick(r)})
        if r["test_accuracy"] >= 0.99:
            break
    hit = next((t for t in tried if t["test_accuracy"] >= 0.99), None)
    detail = "; ".join(
        f"{t['epochs']} ep: {_pct(t['test_accuracy'])} in {t['wall_seconds']:.1f} s" for t in tried
    )
    result = f"{hit['wall_seconds']:.2f} s ({hit['epochs']} epochs)" if hit else "not reached"
    return [
        Row(
            "lenet",
            f"LeNet-5 MNIST: seconds to 99% test accuracy, compile included ({detail})",
            result,
            "< 5 s",
            judge(ctx, bool(hit) and hit["wall_seconds"] < 5),
            {"runs": tried},
        )
    ]


def _lenet_trials(ctx: Context):
    """LeNet-5's config for measuring trials (smoke: 2,048 images) and its data, loaded."""
    from research.train import loop

    base = _configured(ctx, _experiment("lenet5_mnist").get_config())
    if ctx.smoke:
        base = _with(base, **{"data.train_size": 2048})
    return base, loop.prepare_data(base)[0]


def _speedrun_config(ctx: Context):
    """The speedrun's config: the full recipe, or (smoke) its narrow variant."""
    if ctx.smoke:
        return _speedrun_smoke_config(ctx)
    return _configured(ctx, _experiment("cifar10_speedrun").get_config("full"))


def part_trials(ctx: Context) -> list[Row]:
    from research.sweep import vmapped

    base, splits = _lenet_trials(ctx)
    steps = 2 if ctx.smoke else 100
    rows, single, profiles = [], None, []
    profiled = (1, 4) if ctx.smoke else (1, 16)  # where the time goes, one trial and many
    for n in (1, 4) if ctx.smoke else TRIALS:
        if not more(ctx, len(rows)):
            break
        configs = [_with(base, seed=s) for s in range(n)]
        p = vmapped.probe(configs, splits, steps=steps, profile=n in profiled)
        if "vmap_profile" in p:
            from research.bench import profile

            title = f"## N = {n} LeNet-5 trials vmapped, one chunk of {steps} steps"
            profiles.append(f"{title}\n\n{profile.markdown(p['vmap_profile'])}")
            _write_text(ctx.out, "profile_trials.md", "\n".join(profiles))
        single = single or p["sequential_trial_steps_per_s"]
        ratio = p["vmap_trial_steps_per_s"] / single
        rows.append(
            Row(
                "trials",
                f"N = {n} LeNet-5 trials vmapped (one after another: "
                f"{p['sequential_trial_steps_per_s']:.3g} trial-steps/s)",
                f"{p['vmap_trial_steps_per_s']:.3g} trial-steps/s = {ratio:.2f}x one trial",
                ">= 8x at N = 16" if n == 16 else "",
                judge(ctx, ratio >= 8) if n == 16 else "info",
                {**p, "ratio_to_one_trial": ratio},
            )
        )
    return rows


def _images_per_second(config, splits, steps: int) -> dict:
    """Training images/s of the engine's compiled chunk (sequential program), after compiling."""
    import jax
    import numpy as np

    from research.train import engine, loop

    run = loop.build_run(config, splits=splits)
    programs = engine.build_programs(run, "sequential")
    init_keys, _, train_keys = engine.trial_keys([config])
    states = programs.init(init_keys, train_keys, engine.hyperparams([config], run.steps_per_epoch))
    rows = np.arange(steps * config.batch_size, dtype=np.int32) % len(splits.train)
    inputs = engine.chunk_inputs(
        programs.mesh,
        splits.train.images,
        splits.train.labels,
        rows.reshape(1, steps, config.batch_size),
    )
    # Compile + run, then two timed calls.
    times, _, metrics = engine.time_chunk(programs.chunk, states, inputs, calls=3)
    best = min(times[1:])
    return {
        "images_per_second": steps * config.batch_size / best,
        "compile_seconds": times[0] - best,
        "seconds_per_step": best / steps,
        "loss": float(np.mean(jax.device_get(metrics["loss"]))),
    }


def part_resnet50(ctx: Context) -> list[Row]:
    from research.bench import frameworks
    from research.config import get_base_config

    name, size, classes = ("resnet18", 32, 10) if ctx.smoke else ("resnet50", 224, 1000)
    batches = (2,) if ctx.smoke else ctx.resnet_batches
    steps = 1 if ctx.smoke else 10
    rows = []
    for batch in batches:
        if not more(ctx, len(rows)):
            rows.append(Row("resnet50", f"batch {batch}", "not run: out of time", verdict="skip"))
            continue
        config = _configured(
            ctx,
            get_base_config(),
            batch_size=batch,
            compute_dtype="float32" if ctx.smoke else "bfloat16",
            **{
                "model.name": name,
                "optim.name": "momentum",
                "optim.learning_rate": 0.1,
                "data.val_size": 0,
            },
        )
        if ctx.smoke:
            config.model.overrides.cifar_stem = True
        splits = frameworks.synthetic_splits((size, size, 3), 2 * batch, 0, classes=classes)
        try:
            m = _images_per_second(config, splits, steps)
        except Exception as err:  # an out-of-memory batch is a result, not a crash
            oom = "RESOURCE_EXHAUSTED" in str(err) or "out of memory" in str(err).lower()
            rows.append(
                Row(
                    "resnet50",
                    f"{name} {size}x{size}, batch {batch}",
                    "out of memory" if oom else f"error: {str(err).splitlines()[0][:200]}",
                    verdict="info" if oom else "error",
                )
            )
            continue
        rows.append(
            Row(
                "resnet50",
                f"{name} {size}x{size} {config.compute_dtype}, batch {batch}, synthetic data "
                f"(compile {m['compile_seconds']:.0f} s)",
                f"{m['images_per_second']:.0f} img/s",
                data={"batch": batch, **m},
            )
        )
    best = max(
        (r for r in rows if "images_per_second" in r.data),
        default=None,
        key=lambda r: r.data["images_per_second"],
    )
    if best is not None:
        ips = best.data["images_per_second"]
        rows.append(
            Row(
                "resnet50",
                f"best training throughput (batch {best.data['batch']}; reference: NVIDIA "
                "PyTorch RN50 AMP on an A100, 2,470 img/s)",
                f"{ips:.0f} img/s",
                ">= 3,000 img/s",
                judge(ctx, ips >= 3000),
                {"best_batch": best.data["batch"], "images_per_second": ips},
            )
        )
    return rows


def part_speedrun(ctx: Context) -> list[Row]:
    import jax

    config = _speedrun_config(ctx)
    from research.train import loop

    splits, _ = loop.prepare_data(config)  # TFDS preparation, outside the timings
    seeds = list(range(ctx.seeds))
    _, outcomes = _train(config, splits=splits, seeds=seeds)
    results = [o.results for o in outcomes]
    accs = [r["test_accuracy"] for r in results]
    times = [r["wall_seconds"] for r in results]
    mean = statistics.fmean(accs)
    std = statistics.stdev(accs) if len(accs) > 1 else math.nan
    later = times[1:] or times
    ours = statistics.median(later)
    rows = [
        Row(
            "speedrun",
            f"ours (experiments/cifar10_speedrun.py{':smoke' if ctx.smoke else ''}, "
            f"{config.compute_dtype}): test accuracy over {len(accs)} seeds, "
            f"{results[0]['test_examples']} test images",
            f"{_pct(mean)} +- {100 * std:.2f}" if len(accs) > 1 else _pct(mean),
            ">= 94.0% mean",
            judge(ctx, mean >= 0.94),
            {"accuracies": accs, "mean": mean, "std": std},
        ),
        Row(
            "speedrun",
            f"ours: seconds per run, median of runs 2..n (run 1, compiling: {times[0]:.1f} s; "
            f"{results[0]['steps']} steps; {jax.devices()[0].device_kind})",
            f"{ours:.2f} s",
            "< airbench94's time on this GPU (paper: 3.83 s, A100)",
            "info",
            {"seconds": times, "median_after_first": ours},
        ),
    ]
    rows.append(_airbench(ctx, splits_source=config, ours=ours))
    return rows


def part_pool(ctx: Context) -> list[Row]:
    from research.layers import conv_algorithms
    from research.sweep import vmapped
    from research.train import loop

    base, splits = _lenet_trials(ctx)
    n, steps = (4, 2) if ctx.smoke else (16, 100)
    rows = []
    for pool in POOL_ALGORITHMS:
        if not more(ctx, len(rows)):
            break
        with conv_algorithms.override(pool=pool):  # the programs are traced inside
            p = vmapped.probe([_with(base, seed=s) for s in range(n)], splits, steps=steps)
        rows.append(
            Row(
                "pool",
                f"pool={pool}: LeNet-5 trial-steps/s, one trial / N = {n} vmapped",
                f"{p['sequential_trial_steps_per_s']:.3g} / {p['vmap_trial_steps_per_s']:.3g}",
                data={"pool": pool, **p},
            )
        )
    config = _speedrun_config(ctx)
    cifar, _ = loop.prepare_data(config)
    default = conv_algorithms.resolve_pool_algorithm()  # the speedrun part's: not run again
    for pool in [p for p in POOL_ALGORITHMS if p != default]:
        if not more(ctx, len(rows)):
            break
        with conv_algorithms.override(pool=pool):
            _, outcomes = _train(config, splits=cifar, seeds=[0] if ctx.smoke else [0, 1])
        results = [o.results for o in outcomes]
        seconds = [r["wall_seconds"] for r in results]
        rows.append(
            Row(
                "pool",
                f"pool={results[0]['pool_algorithm']}: speedrun seconds per run, the last of "
                f"{len(seconds)} (run 1, compiling: {seconds[0]:.1f} s; pool={default}: the "
                "speedrun part's)",
                f"{seconds[-1]:.2f} s; test acc {_pct(results[-1]['test_accuracy'])}",
                data={
                    "pool": pool,
                    "ran": results[0]["pool_algorithm"],
                    "seconds": seconds,
                    **_pick(results[-1]),
                },
            )
        )
    return rows


AIRBENCH_DRIVER = r"""
import contextlib, io, json, os, sys, time, importlib.util
import torch
source, workdir, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.chdir(workdir)
spec = importlib.util.spec_from_file_location("airbench94", source)
ab = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ab)
def run(name):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        acc = ab.main(name)
    last = [l for l in buffer.getvalue().splitlines() if "eval" in l][-1]
    return acc, float(last.strip().strip("|").split("|")[-1])
run("warmup")  # cudnn autotuning and CUDA start-up, random labels (airbench's own warmup)
for i in range(runs):
    acc, seconds = run(i)
    print(json.dumps({"run": i, "accuracy": acc, "seconds": seconds}), flush=True)
"""


def _airbench(ctx: Context, splits_source, ours: float) -> Row:
    measure = "airbench94.py itself (PyTorch, same GPU, same test images)"
    if not os.path.exists(ctx.airbench):
        note = f"skipped: {ctx.airbench} not found (make accel-peers)"
        return Row("speedrun", measure, note, verdict="skip")
    try:
        import torch
    except ImportError:
        return Row("speedrun", measure, "skipped: torch is not installed", verdict="skip")
    if not torch.cuda.is_available():
        return Row("speedrun", measure, "skipped: needs a CUDA GPU", verdict="skip")
    import numpy as np

    from research import data as data_lib

    raw = data_lib.load("cifar10", data_dir=ctx.data_dir)
    workdir = os.path.join(ctx.out, "airbench")
    os.makedirs(os.path.join(workdir, "cifar10"), exist_ok=True)
    for name, images, labels in (
        ("train", raw.train_images, raw.train_labels),
        ("test", raw.test_images, raw.test_labels),
    ):
        torch.save(
            {
                "images": torch.tensor(np.asarray(images, np.uint8)),
                "labels": torch.tensor(np.asarray(labels, np.int64)),
                "classes": list(raw.class_names),
            },
            os.path.join(workdir, "cifar10", f"{name}.pt"),
        )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            AIRBENCH_DRIVER,
            os.path.abspath(ctx.airbench),
            workdir,
            str(ctx.seeds),
        ],
        capture_output=True,
        text=True,
        timeout=240 if not ctx.smoke else 60,  # its own allowance, whatever the budget
    )
    found = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if not found:
        return Row("speedrun", measure, f"error: {proc.stderr.strip()[-300:]}", verdict="error")
    accs = [f["accuracy"] for f in found]
    secs = [f["seconds"] for f in found]
    theirs = statistics.median(secs)
    std = statistics.stdev(accs) if len(accs) > 1 else math.nan
    return Row(
        "speedrun",
        f"{measure}: {len(found)} runs after a warmup run; median seconds (its own timer)",
        f"{_pct(statistics.fmean(accs))} +- {100 * std:.2f}; {theirs:.2f} s; ours/theirs "
        f"{ours / theirs:.2f}x time",
        "ours faster",
        judge(ctx, ours < theirs),
        {"accuracies": accs, "seconds": secs, "median_seconds": theirs},
    )


PART_FUNCTIONS: dict[str, Callable[[Context], list[Row]]] = {
    "tests": part_tests,
    "lenet": part_lenet,
    "trials": part_trials,
    "speedrun": part_speedrun,
    "resnet50": part_resnet50,
    "pool": part_pool,
}


def _left(ctx: Context, cap: float) -> float:
    return max(10.0, min(cap, ctx.deadline - time.monotonic()))


# --------------------------------------------------------------------------- report


def header() -> dict:
    import importlib.metadata

    import jax

    from research.train import outputs

    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "torch"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return {
        "device_kind": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "versions": versions,
        "python": platform.python_version(),
        "git_commit": outputs.git_commit(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def table(meta: dict, rows: list[Row], mode: str, seconds: float) -> str:
    v = meta["versions"]
    lines = [
        f"Accelerator check ({mode}): {meta['device_kind']} ({meta['backend']}, "
        f"{meta['devices']} device(s)), JAX {v.get('jax')}, flax {v.get('flax')}, "
        f"optax {v.get('optax')}, Python {meta['python']}, commit {meta['git_commit'][:12]}, "
        f"XLA_FLAGS `{meta['xla_flags']}`, {meta['date']}, {seconds:.0f} s in all.",
        "",
        "| part | measure | result | goal | verdict |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r.part, r.measure, r.result, r.goal, r.verdict]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def run_check(ctx: Context, parts: list[str]) -> tuple[str, dict]:
    t0 = time.monotonic()
    meta = header()
    rows: list[Row] = []
    record = {"mode": "smoke" if ctx.smoke else "full", **meta, "parts": {}}
    os.makedirs(ctx.out, exist_ok=True)
    for name in parts:
        start = time.monotonic()
        print(f"[accelerator_check] {name} ...", file=sys.stderr, flush=True)
        try:
            got = PART_FUNCTIONS[name](ctx)
            error = None
        except Exception as err:  # the check goes on; the row says what went wrong
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            got = [
                Row(
                    name,
                    "part failed",
                    f"error: {type(err).__name__}: {first[:300]}",
                    verdict="error",
                )
            ]
            error = traceback.format_exc()
            print(error, file=sys.stderr)
        rows += got
        record["parts"][name] = {
            "seconds": time.monotonic() - start,
            "rows": [dataclasses.asdict(r) for r in got],
            "error": error,
        }
        record["seconds"] = time.monotonic() - t0
        _write(ctx.out, table(meta, rows, record["mode"], record["seconds"]), record)
    return table(meta, rows, record["mode"], record["seconds"]), record


def _write_text(out: str, name: str, text: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, name), "w") as f:
        f.write(text)


def _write(out: str, text: str, record: dict) -> None:
    _write_text(out, "table.md", text)
    _write_text(out, "results.json", json.dumps(record, indent=1, default=str))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, CPU, ~3 minutes")
    parser.add_argument("--out", default="runs/accel", help="folder for table.md, results.json")
    parser.add_argument("--data-dir", default="", help="shared/data-like folder, or its pieces")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {PARTS}")
    parser.add_argument("--seeds", type=int, default=0, help="speedrun seeds (10; smoke 1)")
    parser.add_argument("--airbench", default=os.path.join(ROOT, ".peers", "airbench94.py"))
    parser.add_argument("--resnet-batches", default="256,512")
    parser.add_argument("--budget", type=float, default=0, help="seconds (450; smoke 900)")
    parser.add_argument(
        "--deterministic",
        choices=("on", "off"),
        default="on",
        help="XLA's deterministic GPU ops, as the configs' default deterministic=True (on), "
        "or autotuned kernels as deterministic=False (off); overrides XLA_FLAGS' setting",
    )
    parser.add_argument("--pack-data", metavar="SRC", help="split SRC into --out/1,2,3; exit")
    args = parser.parse_args(argv)
    if args.pack_data:
        pack_data(args.pack_data, args.out)
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        print(f"error: --parts {','.join(bad)}: choose from {','.join(PARTS)}", file=sys.stderr)
        return 2
    data_dir = args.data_dir or os.environ.get("RESEARCH_DATA_DIR", "")
    if not data_dir:
        for guess in (os.path.join(ROOT, ".gpu-data"), os.path.join(ROOT, "..", "shared", "data")):
            if os.path.isdir(guess):
                data_dir = guess
                break
    pieces = [p for p in DATA_PIECES if os.path.isdir(os.path.join(data_dir, p))]
    if pieces and len(pieces) < len(DATA_PIECES):
        missing = sorted(set(DATA_PIECES) - set(pieces))
        print(
            f"error: {data_dir} holds data pieces {','.join(pieces)} but not "
            f"{','.join(missing)}: carry them first (a machine given back loses earlier pieces)",
            file=sys.stderr,
        )
        return 2
    if not data_dir or not os.path.isdir(data_dir):
        print(
            f"error: --data-dir {data_dir!r} is not a folder (shared/data or .gpu-data)",
            file=sys.stderr,
        )
        return 2
    # Before JAX starts: deterministic GPU ops or not (--deterministic), TFDS files in the repo.
    deterministic = args.deterministic == "on"
    os.environ["XLA_FLAGS"] = with_deterministic_flag(
        os.environ.get("XLA_FLAGS", ""), deterministic
    )
    os.environ.setdefault("RESEARCH_CACHE_DIR", os.path.join(ROOT, ".accel-cache"))
    if args.smoke:  # compile times are not figures here: identical programs compile once
        import tempfile

        import jax

        jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="accel-xla-"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    # Past the budget a part measures no further items (its first always runs).
    budget = args.budget or (900 if args.smoke else 450)
    ctx = Context(
        smoke=args.smoke,
        data_dir=os.path.abspath(data_root(data_dir)),
        out=os.path.abspath(args.out),
        seeds=args.seeds or (1 if args.smoke else 10),
        airbench=args.airbench,
        resnet_batches=tuple(int(b) for b in args.resnet_batches.split(",")),
        deadline=time.monotonic() + budget,
        deterministic=deterministic,
    )
    text, _ = run_check(ctx, parts)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
