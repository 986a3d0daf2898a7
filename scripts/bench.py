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
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from research.bench import compile_time, frameworks, peers, xla_cpu_flags
from research.bench.frameworks import DATA_BATCHES, LEARNING_RATE
from research.layers import conv_algorithms

MODELS = tuple(peers.BENCH_MODELS)


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


def _worker_command(spec: str, *options: str) -> list[str]:
    """The command line of a `--_worker spec` process of this script."""
    return [sys.executable, os.path.abspath(__file__), "--_worker", spec, *options]


def _worker_result(spec: str, *options: str, env: dict | None = None):
    """Runs a `--_worker spec` process to its end; its `RESULT` line's JSON, or raises.

    The error names the worker and ends with its stderr.
    """
    proc = subprocess.run(
        _worker_command(spec, *options), capture_output=True, text=True, env=env, check=False
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(
            f"benchmark worker {spec} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return json.loads(lines[-1][len("RESULT ") :])


# --------------------------------------------------------------------------- train mode


def _train_worker(spec: str, args) -> None:
    """One framework in this process, driven over stdin/stdout by `Worker`.

    Prints `READY {...}` once built and warmed up; then each `run` line runs
    `--steps` steps and prints `TIME [wall s, cpu s]`; `quit` prints `DONE {...}`.
    """
    model_name, batch, framework = spec.split(",")
    runner = frameworks.build(framework, model_name, int(batch), args.steps, args.torch_threads)
    runner.run()  # warm-up: the first timed repeat must not pay for allocation
    ready = {"compile_s": runner.compile_s, "params": runner.params, "notes": runner.notes}
    print("READY " + json.dumps(ready), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        wall, cpu = time.perf_counter(), time.process_time()
        runner.run()
        print(
            f"TIME {json.dumps([time.perf_counter() - wall, time.process_time() - cpu])}",
            flush=True,
        )
    print("DONE " + json.dumps({"peak_mb": _peak_memory_mb()}), flush=True)


class Worker:
    """A `_train_worker` subprocess: started, then asked for one timed repeat at a time."""

    def __init__(self, model_name: str, batch: int, framework: str, args, conv: str | None = None):
        self.name = f"{model_name}/{batch}/{framework}"
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in finish)
        cmd = _worker_command(
            f"train,{model_name},{batch},{framework}",
            *("--steps", str(args.steps), "--torch-threads", str(args.torch_threads)),
        )
        env = dict(os.environ)
        if conv:  # read where the layers are traced: in the worker only
            env[conv_algorithms.CONV_ENV_VAR] = conv
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
        )
        self.ready = self._read("READY")

    def _read(self, tag: str):
        while True:
            line = self._proc.stdout.readline()
            if not line:  # the worker died: show why
                self._proc.wait()
                self._stderr.seek(0)
                raise RuntimeError(
                    f"benchmark {self.name} failed (exit {self._proc.returncode}):\n"
                    f"{self._stderr.read()[-3000:]}"
                )
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1 :])

    def time_once(self) -> tuple[float, float]:
        """(wall, cpu) seconds of one repeat of `--steps` steps."""
        self._proc.stdin.write("run\n")
        self._proc.stdin.flush()
        return tuple(self._read("TIME"))

    def finish(self) -> dict:
        self._proc.stdin.write("quit\n")
        self._proc.stdin.flush()
        done = self._read("DONE")
        self._proc.wait()
        self._stderr.close()
        return done


def _available(framework: str) -> bool:
    """Whether `framework`'s package is installed; if not, says so on stderr (it is skipped)."""
    import importlib.util

    module = frameworks.FRAMEWORKS.get(framework).requires
    if module is None or importlib.util.find_spec(module) is not None:
        return True
    print(
        f"note: {framework} is not installed; skipped (pip install -r requirements-bench.txt)",
        file=sys.stderr,
    )
    return False


def run_train(args) -> list[dict]:
    """The "train" mode: one row per (model, batch, framework), timed interleaved.

    With `--ours-conv a,b` "ours" runs once per conv algorithm ("ours:a", "ours:b",
    the first being the reference of "time vs ours"): an A/B of our own step.
    """
    names, convs = [], {}
    for framework in args.frameworks:
        if framework == "ours" and args.ours_conv:
            for conv in args.ours_conv:
                names.append(f"ours:{conv}")
                convs[names[-1]] = conv
        elif _available(framework):
            names.append(framework)
    rows = []
    for model_name in args.models:
        for batch in args.batch_sizes:
            workers = {}
            for framework in names:  # one at a time: compiling is timed too
                print(f"building {model_name} batch {batch} {framework} ...", file=sys.stderr)
                workers[framework] = Worker(
                    model_name, batch, framework.split(":")[0], args, convs.get(framework)
                )
            times = {framework: [] for framework in names}
            loads = []
            for r in range(args.repeats):
                for framework in names[r % len(names) :] + names[: r % len(names)]:
                    time.sleep(0.1)  # the previous framework's spinning threads fall asleep
                    times[framework].append(workers[framework].time_once())
                loads.append(os.getloadavg()[0])
            done = {framework: worker.finish() for framework, worker in workers.items()}
            for framework in names:
                walls = [wall / args.steps for wall, _ in times[framework]]
                ms = statistics.median(walls) * 1e3
                ratio = None
                reference = next((n for n in names if n.split(":")[0] == "ours"), None)
                if reference:
                    ours = [wall for wall, _ in times[reference]]
                    ratio = statistics.median(
                        wall / base for (wall, _), base in zip(times[framework], ours, strict=True)
                    )
                rows.append(
                    {
                        "model": model_name,
                        "batch": batch,
                        "framework": framework,
                        "compile_s": workers[framework].ready["compile_s"],
                        "ms_per_step": ms,
                        "min_ms_per_step": min(walls) * 1e3,
                        "cpu_ms_per_step": statistics.median(
                            cpu / args.steps * 1e3 for _, cpu in times[framework]
                        ),
                        "examples_per_s": batch / ms * 1e3,
                        "peak_mb": done[framework]["peak_mb"],
                        "params": workers[framework].ready["params"],
                        "ratio_vs_ours": ratio,
                        "load_average": [min(loads), max(loads)],
                        "notes": workers[framework].ready["notes"],
                    }
                )
    return rows


def markdown_table(rows: list[dict], backend: str) -> str:
    head = (
        "| model | batch | framework | compile s | ms/step | fastest | CPU ms/step | examples/s "
        "| peak MB | time vs ours | notes |\n"
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [f"backend: {backend}", "", head]
    loads = set()
    for r in rows:
        ratio = "" if r["ratio_vs_ours"] is None else f"{r['ratio_vs_ours']:.2f}x"
        low, high = r["load_average"]
        loads.add(f"{r['model']} batch {r['batch']}: {low:.1f}-{high:.1f}")
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['framework']} | {r['compile_s']:.2f} | "
            f"{r['ms_per_step']:.2f} | {r['min_ms_per_step']:.2f} | {r['cpu_ms_per_step']:.2f} | "
            f"{r['examples_per_s']:.0f} | {r['peak_mb']:.0f} | {ratio} | {r['notes']} |"
        )
    lines += ["", "load average while timing: " + "; ".join(sorted(loads))]
    return "\n".join(lines)


# --------------------------------------------------------------------------- profile mode


def _profile_worker(spec: str, args) -> None:
    """Profiles one framework in this process; prints `RESULT {...}` (ms per call)."""
    from research.bench import profile

    model_name, batch, framework = spec.split(",")
    runner = frameworks.build(framework, model_name, int(batch), args.steps, args.torch_threads)
    for _ in range(2):  # warm-up: allocation, kernel choice
        runner.run()
    result = {"model": model_name, "batch": int(batch), "framework": framework}
    result["notes"] = runner.notes
    if framework == "torch":
        result["ops"] = profile.torch_top_ops(runner.run, calls=args.repeats, top=PROFILE_TOP)
    else:
        events = profile.top_events(runner.run, calls=args.repeats, top=None)
        if runner.hlo is not None:
            result["layers"] = profile.by_layer(events, runner.hlo)
        result["events"] = events[:PROFILE_TOP]
    print("RESULT " + json.dumps(result), flush=True)


PROFILE_TOP = 15  # longest events / operators listed per framework


def run_profile(args) -> list[dict]:
    """The "profile" mode: one worker process per (model, batch, framework), one after another."""
    rows = []
    for model_name in args.models:
        for batch in args.batch_sizes:
            for framework in args.frameworks:
                if not _available(framework):
                    continue
                print(f"profiling {model_name} batch {batch} {framework} ...", file=sys.stderr)
                row = _worker_result(
                    f"profile,{model_name},{batch},{framework}",
                    *("--steps", str(args.steps), "--repeats", str(args.repeats)),
                    *("--torch-threads", str(args.torch_threads)),
                )
                row["steps"] = args.steps
                rows.append(row)
    return rows


def profile_tables(rows: list[dict], backend: str) -> str:
    from research.bench import profile

    lines = [f"backend: {backend}; ms per step under each framework's profiler"]
    for r in rows:
        steps = r["steps"]
        lines += ["", f"### {r['model']}, batch {r['batch']}, {r['framework']} ({r['notes']})", ""]
        if "layers" in r:
            lines += [profile.layer_markdown(r["layers"], per=steps)]
        if "events" in r:
            lines += [profile.markdown(r["events"], per=steps, unit="step")]
        if "ops" in r:
            lines += [profile.torch_markdown(r["ops"], per=steps, unit="step")]
    return "\n".join(lines)


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

    _, batch, overrides = SWEEP_MODELS[model_name]
    return compile_time.run_config(model_name, batch, overrides, space.get_sweep_config())


def bench_sweep(model_name: str, trials: list[int], steps: int, repeats: int) -> list[dict]:
    """Trial-steps per second of N trials vmapped (one program) and of one trial alone.

    The engine's own probe (`research.sweep.vmapped.probe`: the programs a sweep
    runs, the vmapped chunk sharded over the devices' "trials" axis) on random
    data of the model's shape; trial i has its own seed (init, batch order) and
    learning rate. Each timed call is a `lax.scan` of `steps` steps; the median
    of `repeats` calls, compile timed apart.
    """
    import jax

    from research.layers import conv_algorithms
    from research.sweep import vmapped

    shape, batch, _ = SWEEP_MODELS[model_name]
    splits = frameworks.synthetic_splits(shape, batch * max(DATA_BATCHES, steps), batch)
    config = _sweep_config(model_name)

    def configs(count):
        out = []
        for i in range(count):
            c = config.copy_and_resolve_references()
            c.seed, c.optim.learning_rate = i, LEARNING_RATE * (1 + i % 4)
            out.append(c)
        return out

    notes = f"conv={conv_algorithms.resolve_conv_algorithm()}, devices={jax.device_count()}"
    rows = []
    for count in trials:
        p = vmapped.probe(configs(count), splits, steps=steps, repeats=repeats)
        rows.append(
            {
                "model": model_name,
                "input": "x".join(map(str, shape)),
                "batch": batch,
                "trials": count,
                "vmap_compile_s": p["vmap_compile_seconds"],
                "sequential_compile_s": p["sequential_compile_seconds"],
                "vmap_trial_steps_per_s": p["vmap_trial_steps_per_s"],
                "sequential_trial_steps_per_s": p["sequential_trial_steps_per_s"],
                "speedup": p["vmap_trial_steps_per_s"] / p["sequential_trial_steps_per_s"],
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
        group = _worker_result(
            f"sweep,{model_name}",
            *("--trials", ",".join(map(str, args.trials))),
            *("--steps", str(args.steps), "--repeats", str(args.repeats)),
        )
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


# --------------------------------------------------------------------------- compile mode

COMPILE_BATCH = 32  # --batch-sizes default in compile mode
COMPILE_STEPS = 3  # --steps default in compile mode: one-step calls timed after the first


def _compile_worker(spec: str, args) -> None:
    """One measurement in this (fresh) process: prints `RESULT {...}`."""

    model_name, input_name, variant = spec.split(",")
    row = compile_time.measure(
        model_name,
        compile_time.SMALL_SHAPES[input_name],
        batch=args.batch_sizes[0],
        variant=variant,
        steps=args.steps,
    )
    print("RESULT " + json.dumps(row), flush=True)


def _measure_compile(model_name: str, input_name: str, variant: str, args) -> dict:
    """Runs `_compile_worker` in a new process without any compilation cache."""

    env = dict(os.environ)
    env["RESEARCH_COMPILATION_CACHE"] = "off"
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.update(compile_time.VARIANTS.get(variant).env)
    load_before = os.getloadavg()[0]
    row = _worker_result(
        f"compile,{model_name},{input_name},{variant}",
        *("--batch-sizes", str(args.batch_sizes[0]), "--steps", str(args.steps)),
        env=env,
    )
    row["load_average"] = [load_before, os.getloadavg()[0]]
    return row


def run_compile(args) -> list[dict]:
    """The "compile" mode: one row per (model, input, variant), medians over `--repeats`."""

    cases = [
        (model_name, input_name, variant)
        for model_name in args.compile_models
        for input_name in args.inputs
        for variant in args.variants
        if compile_time.VARIANTS.get(variant).applies_to(model_name)
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


# Benchmark modes: name -> (function(args) -> rows, table(rows, backend) -> markdown).
MODES: dict[str, tuple[Callable[[argparse.Namespace], list[dict]], Callable]] = {
    "train": (run_train, markdown_table),
    "sweep": (run_sweep, sweep_table),
    "compile": (run_compile, compile_table),
    "profile": (run_profile, profile_tables),
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
    parser.add_argument("--_worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    compiling = args.mode == "compile" or (args._worker or "").startswith("compile,")
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
    if args._worker:
        kind, spec = args._worker.split(",", 1)
        if kind == "sweep":
            rows = bench_sweep(spec, args.trials, args.steps, args.repeats)
            print("RESULT " + json.dumps(rows))
        elif kind == "compile":
            _compile_worker(spec, args)
        elif kind == "profile":
            _profile_worker(spec, args)
        else:
            _train_worker(spec, args)
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
