"""Training-step benchmark: our step against plain Flax, PyTorch eager and Keras-JAX.

The question: how fast does one training step (forward, backward and an Adam
update on a batch of random 28x28x1 images, softmax cross-entropy) run on this
backend, for the same model in each framework?

    python scripts/bench.py --models lenet5,lecture_cnn --batch-sizes 128 \
        --frameworks ours,flax-plain,torch,keras --steps 20 --repeats 7 --out bench.json

"ours" is the zoo's own model in the training engine; the peers build the same
network from one layer list and must have the zoo model's parameter count, or
the run stops with an error (`research/bench/`: what each framework runs).

Each framework runs in its own worker process (its threads, XLA flags and peak
memory stay its own), all started and compiled first; then the timed repeats
are interleaved: repeat r runs `--steps` steps in every framework in turn
(the order rotating each repeat), so a change in machine load hits all of them
alike. The table gives, per (model, batch, framework): compile seconds, the
median milliseconds per step over the repeats (and the fastest repeat), the
process CPU milliseconds per step (all threads; compare it to ms/step to see
how many cores a framework keeps busy), examples per second, peak memory (CPU:
peak resident set; GPU: the device's peak bytes in use), and "time vs ours",
the median over repeats of that repeat's time over ours (> 1: ours is faster).
Load averages during the timed repeats are printed with the table: timings on
a shared machine are only comparable within one run.

An A/B of our own step in the same interleaved run: `--ours-conv im2col,tiled`
runs "ours" once per conv algorithm (rows "ours:im2col", "ours:tiled"; the
first is the reference of "time vs ours"), e.g.

    python scripts/bench.py --models lenet5 --frameworks ours,torch --ours-conv im2col,tiled

Optional frameworks that are not installed (requirements-bench.txt) are
skipped with a note. Run time: about 3 minutes for the default command on a
2-core CPU.

Sweep mode (`--mode sweep`): trials run at once against one after another.

    python scripts/bench.py --mode sweep --trials 1,4,16 --steps 5 --repeats 3 --out sweep.json

For each model of `--sweep-models` (LeNet-5 on 28x28x1, batch 128; simple_cnn
on 8x8x1, batch 64) and each N of `--trials`, the trial-steps per second of
N trials vmapped into one program (`research.sweep.vmapped.probe`: the engine's programs, trial
axis sharded over the devices) and of trials run one after another, their
ratio, and the throughput over one trial vmapped alone (the issue's GPU goal:
>= 8x at N=16 for LeNet-5). Compile seconds are reported apart. The default N
are 1,4,16 (a CPU finishes them in a few minutes); ask for the issue's full
list with `--trials 1,4,16,64`.

Profile mode (`--mode profile`): where each framework's step spends its time.

    python scripts/bench.py --mode profile --models lecture_cnn --frameworks ours,torch

For each model and framework, in a fresh worker process, `--repeats` calls of
`--steps` steps under the framework's profiler, after two warm-up calls:
"ours" as a table per layer, forward and backward (`research.bench.profile.by_layer`:
XLA's thunks charged to the layers by the HLO's op_name metadata), then its
longest events; PyTorch as its operators by input shape (self time); the other
JAX frameworks as their longest events. Milliseconds per step. The profilers
add their own overhead, and one process's profile is one sample: compare shares
within a table, and step times with the train mode.

Compile mode (`--mode compile`): the time a run waits for its first step.

    python scripts/bench.py --mode compile --compile-models googlenet,resnet34 \
        --inputs 28x28x1 --variants default,opt0 --repeats 3 --out compile.json

For each zoo model of `--compile-models` (default: all) at its registry
`small_overrides`, each input of `--inputs` and each variant of `--variants`
(`research.bench.compile_time.VARIANTS`: model options such as `scan_blocks`,
XLA compiler options, the conv algorithm; a variant a model has no field for is
skipped), a fresh process with no compilation cache builds the run, compiles and
runs the engine's init and a one-step chunk, and reports each phase in wall and
CPU seconds, then the step time. Repeats are interleaved (repeat r measures every
model and variant in turn), medians are reported, and the load average around
each measurement is kept. "same numbers" compares the parameters after the
first step with the default variant's, bit for bit.

XLA-flags mode (`--mode xla-flags`): our oneDNN convolutions against XLA's own CPU
and oneDNN options (research/bench/xla_cpu_flags.py; figures in docs/performance-cpu.md).

    python scripts/bench.py --mode xla-flags --models lecture_cnn --batch-sizes 32 \
        --steps 3 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable

from research.bench import (
    compile_time,
    frameworks,
    peers,
    profile_mode,
    sweep_mode,
    train_mode,
    xla_cpu_flags,
)
from research.layers import conv_algorithms

MODELS = tuple(peers.BENCH_MODELS)
SWEEP_MODELS = sweep_mode.SWEEP_MODELS
SWEEP_TRIALS = sweep_mode.SWEEP_TRIALS
COMPILE_BATCH = compile_time.COMPILE_BATCH
COMPILE_STEPS = compile_time.COMPILE_STEPS

# Benchmark modes: name -> (function(args) -> rows, table(rows, backend) -> markdown).
MODES: dict[str, tuple[Callable[[argparse.Namespace], list[dict]], Callable]] = {
    "train": (train_mode.run_train, train_mode.markdown_table),
    "sweep": (sweep_mode.run_sweep, sweep_mode.sweep_table),
    "compile": (compile_time.run_compile, compile_time.compile_table),
    "profile": (profile_mode.run_profile, profile_mode.profile_tables),
    "xla-flags": (  # XLA's own CPU/oneDNN flags against ours (research/bench/xla_cpu_flags.py)
        lambda a: xla_cpu_flags.run(a.models, a.batch_sizes, a.steps, a.repeats),
        xla_cpu_flags.table,
    ),
}


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
    parser.add_argument(
        "--batch-sizes", type=_csv(int), default=None, help="default: 128 (compile mode: 32)"
    )
    parser.add_argument(
        "--frameworks",
        type=_csv(str, frameworks.FRAMEWORKS.names()),
        default=["ours", "flax-plain", "torch", "keras"],
    )
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
    parser.add_argument(
        "--ours-conv",
        type=_csv(str, conv_algorithms.CONV_ALGORITHMS.names()),
        default=None,
        help="run ours once per conv algorithm (an A/B of our step); default: the backend's",
    )
    parser.add_argument(
        "--compile-models",
        type=_csv(str),
        default=None,
        help="compile mode: zoo models, at their small_overrides (default: all)",
    )
    parser.add_argument(
        "--inputs",
        type=_csv(str, tuple(compile_time.SMALL_SHAPES)),
        default=["28x28x1"],
        help="compile mode: input shapes",
    )
    parser.add_argument(
        "--variants",
        type=_csv(str, compile_time.VARIANTS.names()),
        default=["default"],
        help="compile mode: ways of building the run (research.bench.compile_time.VARIANTS)",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="steps per timed repeat (default 20; compile: 3)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repeats, median reported (default 7; compile: 3 fresh processes; "
        "profile: 3 profiled calls)",
    )
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="torch.set_num_threads; 0: torch default"
    )
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    compiling = args.mode == "compile"
    if args.batch_sizes is None:
        args.batch_sizes = [COMPILE_BATCH if compiling else 128]
    if args.steps is None:
        args.steps = COMPILE_STEPS if compiling else 20
    if args.repeats is None:
        args.repeats = 3 if compiling or args.mode == "profile" else 7
    if args.mode == "compile":  # the zoo's names: imported only here (jax, flax)
        from research import models

        known = models.names()
        args.compile_models = args.compile_models or list(known)
        bad = [m for m in args.compile_models if m not in known]
        if bad:
            parser.error(f"--compile-models: unknown {bad}; known: {', '.join(known)}")
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
