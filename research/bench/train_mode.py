"""Train mode of `scripts/bench.py`: our training step against plain Flax, PyTorch, Keras.

Each framework runs in its own worker process (`workers.Interactive`: its threads,
XLA flags and peak memory stay its own), all started and compiled first; then the
timed repeats are interleaved: repeat r runs `steps` steps in every framework in turn
(the order rotating each repeat), so a change in machine load hits all of them alike.
One row per (model, batch, framework): compile seconds, the median milliseconds per
step over the repeats (and the fastest), process CPU milliseconds per step, examples
per second, peak memory, and "time vs ours" (the median over repeats of that repeat's
time over ours). `ours_conv` runs "ours" once per conv algorithm: an A/B of our step.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
import time

from research.bench import frameworks, workers

MODULE = "train_mode"


def serve(job: dict) -> None:
    """One framework in this process, driven over stdin/stdout by `start`.

    Prints `READY {...}` once built and warmed up; then each `run` line runs
    `steps` steps and prints `TIME [wall s, cpu s]`; `quit` prints `DONE {...}`.
    """
    model_name, batch, framework = job["spec"].split(",")
    runner = frameworks.build(framework, model_name, int(batch), job["steps"], job["torch_threads"])
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
    print("DONE " + json.dumps({"peak_mb": workers.peak_memory_mb()}), flush=True)


def start(model_name: str, batch: int, framework: str, args, conv: str | None = None):
    """A started `serve` worker of one framework, once it is built and warmed up."""
    # heavy (JAX): not at the top, or PyTorch's worker (this module) would load it
    from research.layers import algorithm_choice

    env = dict(os.environ)
    if conv:  # read where the layers are traced: in the worker only
        env[algorithm_choice.CONV_ENV_VAR] = conv
    job = {
        "spec": f"{model_name},{batch},{framework}",
        "steps": args.steps,
        "torch_threads": args.torch_threads,
    }
    worker = workers.Interactive(f"{model_name}/{batch}/{framework}", MODULE, job, env)
    worker.ready = worker.read("READY")
    return worker


def time_once(worker) -> tuple[float, float]:
    """(wall, cpu) seconds of one repeat of `steps` steps."""
    worker.send("run")
    return tuple(worker.read("TIME"))


def available(framework: str) -> bool:
    """Whether `framework`'s package is installed; if not, says so on stderr (it is skipped)."""
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
        elif available(framework):
            names.append(framework)
    rows = []
    for model_name in args.models:
        for batch in args.batch_sizes:
            started = {}
            for framework in names:  # one at a time: compiling is timed too
                print(f"building {model_name} batch {batch} {framework} ...", file=sys.stderr)
                started[framework] = start(
                    model_name, batch, framework.split(":")[0], args, convs.get(framework)
                )
            times = {framework: [] for framework in names}
            loads = []
            for r in range(args.repeats):
                for framework in names[r % len(names) :] + names[: r % len(names)]:
                    time.sleep(0.1)  # the previous framework's spinning threads fall asleep
                    times[framework].append(time_once(started[framework]))
                loads.append(os.getloadavg()[0])
            done = {framework: worker.finish("DONE") for framework, worker in started.items()}
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
                        "compile_s": started[framework].ready["compile_s"],
                        "ms_per_step": ms,
                        "min_ms_per_step": min(walls) * 1e3,
                        "cpu_ms_per_step": statistics.median(
                            cpu / args.steps * 1e3 for _, cpu in times[framework]
                        ),
                        "examples_per_s": batch / ms * 1e3,
                        "peak_mb": done[framework]["peak_mb"],
                        "params": started[framework].ready["params"],
                        "ratio_vs_ours": ratio,
                        "load_average": [min(loads), max(loads)],
                        "notes": started[framework].ready["notes"],
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


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
