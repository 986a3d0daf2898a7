"""Time to the first training step: build, init, trace, lower, XLA compile, first chunk.

The question (issue 11, "Compile time"): how long does a run of each zoo model
wait before its first step, and where does that time go? `measure` answers it
for one model in the current process, as the engine does it:

  build    `research.train.loop.build_run` on synthetic data of the model's input
           shape (config validation, model, optimizer, the per-trial steps);
  init     the engine's `init` program (`build_programs(run, "sequential").init`):
           traced, lowered, XLA-compiled and run;
  chunk    the engine's training chunk (a `lax.scan` of the pure step, here over
           one step): traced (`jit(...).trace`: Python and Flax), lowered to
           StableHLO, XLA-compiled, and its first call run to completion.

"Time to first step" is the sum of the four. Each phase is timed in wall seconds
and in CPU seconds of the process (all threads). After the first step the same
compiled chunk runs `steps` more times, one call per step, for the step time
(median; includes one dispatch per step, well under a millisecond), and the
parameters' SHA-256 after the first step is recorded, so two variants that must
compute the same numbers can be compared bit for bit (a variant with a different
parameter layout is converted to the default layout first, `models.unstack_blocks`).

Compile times are only meaningful in a fresh process with no compilation cache:
`scripts/bench.py --mode compile` starts one process per measurement with
`RESEARCH_COMPILATION_CACHE=off` and never enables JAX's persistent cache.

Variants (`VARIANTS`): what may cut the compile time, measured against "default"
in the same interleaved run: model options (`model_overrides`, applied only to
models that have those fields), XLA compiler options of the init and chunk
programs (`init_options`, `chunk_options`), and environment variables read at trace time
(`env`, e.g. the conv algorithm).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from research import config as config_lib
from research.bench import frameworks, workers
from research.registry import Registry

SMALL_SHAPES = {"28x28x1": (28, 28, 1), "32x32x3": (32, 32, 3)}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way of building a run, measured against "default".

    Attributes:
      description: what changes, for the table.
      model_overrides: constructor fields on top of the registry's `small_overrides`;
        a model without one of these fields does not run this variant.
      init_options: XLA options of the init program's compile
        (`jax.stages.Lowered.compile(compiler_options=...)`).
      chunk_options: XLA options of the training chunk's compile.
      env: environment variables of the measuring process (read at trace time).
    """

    description: str
    model_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    init_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    chunk_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def applies_to(self, model_name: str) -> bool:
        """Whether model `model_name` has every field of `model_overrides`."""
        from research import models  # heavy (JAX): loaded when used, not with the bench modes

        build = models.spec(model_name).build
        cls = getattr(build, "func", build)
        fields = {f.name for f in dataclasses.fields(cls)}
        return set(self.model_overrides) <= fields


_OPT0 = {"xla_backend_optimization_level": 0}
_OPT1 = {"xla_backend_optimization_level": 1}
_CHEAP_LLVM = {"xla_llvm_disable_expensive_passes": True}

VARIANTS: Registry[Variant] = Registry(
    "compile variant",
    {
        "default": Variant("the registry's small_overrides, the backend's defaults"),
        "scan": Variant(
            "identical blocks as one nn.scan (scan_blocks=True; stacked parameters)",
            model_overrides={"scan_blocks": True},
        ),
        "opt0": Variant(
            "XLA backend (LLVM) optimization level 0, init and chunk",
            init_options=_OPT0,
            chunk_options=_OPT0,
        ),
        "opt1": Variant(
            "XLA backend (LLVM) optimization level 1, init and chunk",
            init_options=_OPT1,
            chunk_options=_OPT1,
        ),
        "cheap_llvm": Variant(
            "xla_llvm_disable_expensive_passes, init and chunk",
            init_options=_CHEAP_LLVM,
            chunk_options=_CHEAP_LLVM,
        ),
        "opt0_init": Variant(
            "LLVM optimization level 0 for the init program only", init_options=_OPT0
        ),
        "cheap_llvm_init": Variant(
            "xla_llvm_disable_expensive_passes for the init program only",
            init_options=_CHEAP_LLVM,
        ),
        "conv_xla": Variant(
            "XLA's own convolution (RESEARCH_CONV_ALGORITHM=xla)",
            env={"RESEARCH_CONV_ALGORITHM": "xla"},
        ),
        "conv_im2col": Variant(
            "im2col convolution (RESEARCH_CONV_ALGORITHM=im2col)",
            env={"RESEARCH_CONV_ALGORITHM": "im2col"},
        ),
        "conv_tiled": Variant(
            "tiled convolution, the CPU default before oneDNN (RESEARCH_CONV_ALGORITHM=tiled)",
            env={"RESEARCH_CONV_ALGORITHM": "tiled"},
        ),
    },
)


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


class _Phases:
    """Wall and CPU seconds of named phases, in order."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def time(self, name: str, fn: Callable[[], Any]) -> Any:
        wall, cpu = _clock()
        out = fn()
        self.wall[name] = time.perf_counter() - wall
        self.cpu[name] = time.process_time() - cpu
        return out


def run_config(model_name: str, batch: int, overrides: Mapping[str, Any], config=None):
    """A config for `model_name` with `overrides`: Adam, `batch` examples per step.

    `config` is the one to fill (e.g. `research.sweep.get_sweep_config()`); default a
    new base config. The bench's every "ours" measurement is built here.
    """
    config = config or config_lib.get_base_config()
    config.model.name = model_name
    config.model.overrides = dict(overrides)
    config.data.name = "digits"  # only validated: the data are synthetic
    config.batch_size = batch
    config.num_epochs = 1
    config.progress = False
    config.optim.name = "adam"
    config.optim.learning_rate = frameworks.LEARNING_RATE
    return config


def measure(
    model_name: str,
    input_shape: tuple[int, int, int],
    *,
    batch: int = 32,
    variant: str = "default",
    steps: int = 3,
) -> dict[str, Any]:
    """Times the way to model `model_name`'s first training step in this process.

    Args:
      model_name: a zoo model; built with its registry `small_overrides` and the
        variant's `model_overrides`.
      input_shape: `(H, W, C)`, e.g. (28, 28, 1).
      batch: examples per step.
      variant: a name from `VARIANTS` (its `env` must already be set: the caller's job).
      steps: further one-step calls timed after the first (their median is `step_ms`).

    Returns:
      wall and CPU seconds per phase (`wall`, `cpu`: build, init_trace, init_lower,
      init_compile, init_run, trace, lower, compile, first_step), their sums
      `first_step_s` / `first_step_cpu_s`, `step_ms` (median), `params_sha256`
      after the first step (in the default layout), the parameter count, what ran
      (conv/pool algorithms), HLO size of the chunk, and the process's peak RSS.
    """
    # heavy (JAX, the training stack): loaded by the measurement, not with the bench modes
    import jax

    from research import models
    from research.bench import measure as measure_lib
    from research.train import loop
    from research.train.checkpoint import tree_sha256

    var = VARIANTS.get(variant)
    spec = models.spec(model_name)
    overrides = {**spec.small_overrides, **var.model_overrides}
    phases = _Phases()
    splits = frameworks.synthetic_splits(input_shape, 4 * batch, batch)  # 4 batches of train
    config = run_config(model_name, batch, overrides)

    def to_default(params):  # a scanned model's parameters in the default layout
        return models.unstack_blocks(params, models.scan_groups(run.model))

    def build():
        run = loop.build_run(config, splits=splits)
        return run, measure_lib.Group.build(run, [config], "sequential")

    run, group = phases.time("build", build)
    programs = group.programs

    def compiled(prefix: str, options, jitted, *args):
        traced = phases.time(f"{prefix}trace", lambda: jitted.trace(*args))
        lowered = phases.time(f"{prefix}lower", traced.lower)
        options = dict(options) or None
        return phases.time(f"{prefix}compile", lambda: lowered.compile(options)), lowered

    init, _ = compiled("init_", var.init_options, programs.init, *group.init_args())
    group.states = phases.time("init_run", lambda: jax.block_until_ready(init(*group.init_args())))
    init_sha = tree_sha256(to_default(jax.tree_util.tree_map(lambda x: x[0], group.states.params)))

    # Four batches' example indices, each a chunk of one step: (trials 1, steps 1, batch).
    rows = list(np.arange(4 * batch, dtype=np.int32).reshape(4, 1, 1, batch))
    group.place(splits.train.images, splits.train.labels, rows)
    chunk, lowered = compiled("", var.chunk_options, programs.chunk, *group.chunk_args(0))
    phases.time("first_step", lambda: group.time(calls=1, chunk=chunk))
    params = jax.tree_util.tree_map(lambda x: x[0], group.states.params)
    sha = tree_sha256(to_default(params))
    group.inputs = dataclasses.replace(
        group.inputs, indices=group.inputs.indices[1:] + group.inputs.indices[:1]
    )
    times = group.time(calls=steps, chunk=chunk)
    metrics = group.metrics
    return {
        "model": model_name,
        "input": "x".join(map(str, input_shape)),
        "batch": batch,
        "variant": variant,
        "overrides": {k: repr(v) for k, v in overrides.items()},
        "wall": phases.wall,
        "cpu": phases.cpu,
        "first_step_s": sum(phases.wall.values()),
        "first_step_cpu_s": sum(phases.cpu.values()),
        "step_ms": statistics.median(times) * 1e3 if times else None,
        "params": models.param_count(params),
        "init_sha256": init_sha,
        "params_sha256": sha,
        "loss_finite": bool(np.isfinite(np.asarray(metrics["loss"])).all()) if times else None,
        "hlo_chars": len(lowered.as_text()),
        "algorithms": programs.algorithms,
        "compiler_options": {"init": dict(var.init_options), "chunk": dict(var.chunk_options)},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "env": {k: os.environ.get(k, "") for k in var.env},
    }


# --------------------------------------------------------------------------- the mode

COMPILE_BATCH = 32  # --batch-sizes default in compile mode
COMPILE_STEPS = 3  # --steps default in compile mode: one-step calls timed after the first


def worker(job: dict) -> None:
    """One measurement in this (fresh) process: prints `RESULT {...}`."""
    model_name, input_name, variant = job["spec"].split(",")
    row = measure(
        model_name,
        SMALL_SHAPES[input_name],
        batch=job["batch"],
        variant=variant,
        steps=job["steps"],
    )
    workers.answer(row)


def _measure_compile(model_name: str, input_name: str, variant: str, args) -> dict:
    """Runs `worker` in a new process without any compilation cache."""
    env = dict(os.environ)
    env["RESEARCH_COMPILATION_CACHE"] = "off"
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.update(VARIANTS.get(variant).env)
    load_before = os.getloadavg()[0]
    job = {
        "spec": f"{model_name},{input_name},{variant}",
        "batch": args.batch_sizes[0],
        "steps": args.steps,
    }
    row = workers.result("compile_time", job, env=env)
    row["load_average"] = [load_before, os.getloadavg()[0]]
    return row


def run_compile(args) -> list[dict]:
    """The "compile" mode: one row per (model, input, variant), medians over `--repeats`."""
    cases = [
        (model_name, input_name, variant)
        for model_name in args.compile_models
        for input_name in args.inputs
        for variant in args.variants
        if VARIANTS.get(variant).applies_to(model_name)
    ]
    runs: dict[tuple, list[dict]] = {case: [] for case in cases}
    for r in range(args.repeats):
        for model_name in args.compile_models:
            for input_name in args.inputs:
                group = [c for c in cases if c[:2] == (model_name, input_name)]
                for case in group[r % len(group) :] + group[: r % len(group)]:
                    print(f"repeat {r + 1}/{args.repeats}: {' '.join(case)} ...", file=sys.stderr)
                    runs[case].append(_measure_compile(*case, args))
    rows = []
    for case, measured in runs.items():
        row = dict(measured[0])
        for key in ("first_step_s", "first_step_cpu_s", "step_ms"):
            row[key] = statistics.median(m[key] for m in measured)
        for kind in ("wall", "cpu"):
            row[kind] = {
                phase: statistics.median(m[kind][phase] for m in measured) for phase in row[kind]
            }
        loads = [x for m in measured for x in m["load_average"]]
        row["load_average"] = [min(loads), max(loads)]
        row["repeats"] = measured
        row["deterministic"] = len({m["params_sha256"] for m in measured}) == 1
        reference = runs.get((*case[:2], "default"))
        for key, sha in (("same_init", "init_sha256"), ("same_numbers", "params_sha256")):
            row[key] = None if reference is None else reference[0][sha] == row[sha]
        rows.append(row)
    return rows


def compile_table(rows: list[dict], backend: str) -> str:
    head = (
        "| model | input | variant | to first step s | CPU s | init s | trace+lower s "
        "| XLA compile s | first step s | step ms | same init/step | HLO kchars |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"
    )
    loads = [x for r in rows for x in r["load_average"]]
    lines = [
        f"backend: {backend}; medians of {len(rows[0]['repeats'])} fresh processes, no "
        f"compilation cache; load average {min(loads):.1f}-{max(loads):.1f}",
        "",
        head,
    ]
    for r in rows:
        w = r["wall"]
        init = sum(v for k, v in w.items() if k.startswith("init_"))
        same = "/".join(
            {None: "", True: "yes", False: "no"}[r[k]] for k in ("same_init", "same_numbers")
        )
        lines.append(
            f"| {r['model']} | {r['input']} | {r['variant']} | {r['first_step_s']:.1f} | "
            f"{r['first_step_cpu_s']:.1f} | {init:.1f} | {w['trace'] + w['lower']:.1f} | "
            f"{w['compile']:.1f} | {w['first_step']:.2f} | {r['step_ms']:.1f} | {same} | "
            f"{r['hlo_chars'] / 1e3:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
