"""Sweep mode of `scripts/bench.py`: trials run at once against one after another.

For each model of `SWEEP_MODELS` (LeNet-5 on 28x28x1, batch 128; simple_cnn on
8x8x1, batch 64), in a worker process of its own, and each N of `trials`: the
trial-steps per second of N trials vmapped into one program
(`research.sweep.vmapped.probe`: the engine's programs, trial axis sharded over the
devices) and of trials run one after another, their ratio, and the throughput over
one trial vmapped alone. Compile seconds are reported apart.
"""

from __future__ import annotations

import json
import os
import sys

from research.bench import compile_time, frameworks, workers
from research.bench.frameworks import DATA_BATCHES, LEARNING_RATE

# model -> (input shape (H, W, C), batch, config.model.overrides): the shapes the
# sweeps train on (LeNet-5 on MNIST, simple_cnn on digits).
SWEEP_MODELS = {
    "lenet5": ((28, 28, 1), 128, {"padding": 2}),
    "simple_cnn": ((8, 8, 1), 64, {}),
}
SWEEP_TRIALS = (1, 4, 16)  # default N on a CPU; --trials 1,4,16,64 for the full list


def _sweep_config(model_name: str):
    from research.sweep import space  # heavy (JAX, Optuna): loaded when used, not at import

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
    # heavy (JAX, Optuna): loaded by the measurement, not with the bench modes
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
        job = {
            "spec": model_name,
            "trials": list(args.trials),
            "steps": args.steps,
            "repeats": args.repeats,
        }
        group = workers.result("sweep_mode", job)
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


def worker(job: dict) -> None:
    """One model's rows in this process; prints `RESULT [...]`."""
    workers.answer(bench_sweep(job["spec"], job["trials"], job["steps"], job["repeats"]))


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
