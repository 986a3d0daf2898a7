"""One training job of the accelerator check in a process of its own, with its own XLA flags.

    python -m research.bench.accel.worker '{"experiment": "cifar10_speedrun", ...}'

XLA reads its flags once, when the backend starts, so measuring a determinism mode
takes a fresh process. The job (JSON, see `job`) names an experiment config, the
fields set on it (`deterministic`, `determinism`, the data folder, ...), the seeds
trained one after another, and whether to time a LeNet-5 step as well. The worker
sets the process up as a run would (`research.environment.setup_environment`), then
prints one `RESULT {...}` line per seed (params_sha256, seconds, accuracy) and, if
asked, one `STEP {...}` line (LeNet-5 milliseconds per step), and last a
`RECORD {...}` line: what pinned the GPU's algorithms (`determinism_record`) and
XLA_FLAGS. `run_job` starts one and reads these lines back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from research import environment
from research.bench import frameworks, workers
from research.bench.accel import common

# XLA flags that choose how a GPU run is made deterministic: a worker starts without any
# of them, whatever the checking process set, so that only its job's mode applies.
DETERMINISM_FLAG_NAMES = (
    "--xla_gpu_deterministic_ops",
    "--xla_gpu_exclude_nondeterministic_ops",
    "--xla_gpu_dump_autotune_results_to",
    "--xla_gpu_load_autotune_results_from",
)


def job(experiment: str, variant: str, fields: dict, seeds: list[int], lenet_steps=0) -> dict:
    """A worker's job: `experiments/<experiment>.py:<variant>` with dotted `fields` set,
    trained for each of `seeds`; then, if `lenet_steps`, a LeNet-5 chunk of that many
    steps timed."""
    return {
        "experiment": experiment,
        "variant": variant,
        "fields": fields,
        "seeds": list(seeds),
        "lenet_steps": lenet_steps,
    }


def clean_xla_flags(xla_flags: str) -> str:
    """`xla_flags` without any determinism flag (`DETERMINISM_FLAG_NAMES`)."""
    return " ".join(f for f in xla_flags.split() if f.split("=")[0] not in DETERMINISM_FLAG_NAMES)


def run_job(spec: dict, *, env: dict, timeout: float) -> dict:
    """Runs `spec` in a new worker process; `{"runs", "step", "record"}`, or raises.

    `env` is added to this process's environment (XLA_FLAGS cleaned of determinism
    flags first). The error names the job and ends with the worker's stderr.
    """
    full = workers.environment({**os.environ, **env})
    full["XLA_FLAGS"] = clean_xla_flags(full.get("XLA_FLAGS", ""))
    cmd = [sys.executable, "-m", "research.bench.accel.worker", json.dumps(spec)]
    fields = spec["fields"]
    name = (
        f"worker {spec['experiment']}:{spec['variant']} deterministic="
        f"{fields.get('deterministic')} determinism={fields.get('determinism')}"
    )
    try:
        proc = subprocess.run(
            cmd, cwd=common.ROOT, env=full, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{name} timed out after {timeout:.0f} s") from None
    found = {"runs": [], "step": None, "record": None}
    for line in proc.stdout.splitlines():
        tag, _, payload = line.partition(" ")
        if tag == "RESULT":
            found["runs"].append(json.loads(payload))
        elif tag in ("STEP", "RECORD"):
            found[tag.lower()] = json.loads(payload)
    if proc.returncode or not found["runs"]:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}): {proc.stderr.strip()[-1500:]}")
    return found


def _config(spec: dict):
    config = common.experiment(spec["experiment"]).get_config(spec["variant"])
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["fields"].items()}
    return common.with_fields(config, progress=False, **fields)


def _lenet_step_ms(fields: dict, steps: int) -> dict:
    """LeNet-5's training step in this process (batch 128, MNIST's shape, random data)."""
    # heavy: JAX only after main's _setup has set this worker's XLA flags
    from research.bench import measure
    from research.train import loop

    keep = {k: v for k, v in fields.items() if k in ("deterministic", "determinism")}
    config = common.with_fields(
        common.experiment("lenet5_mnist").get_config(), progress=False, **keep
    )
    splits = frameworks.synthetic_splits((28, 28, 1), config.batch_size * 8, config.batch_size)
    group = measure.Group.build(loop.build_run(config, splits=splits), [config], "sequential")
    group.init()
    rows = measure.cycled_rows(1, steps, config.batch_size, len(splits.train))
    group.place(splits.train.images, splits.train.labels, rows)
    seconds, compile_s = measure.steady(group.time(calls=4))
    return {"ms_per_step": seconds / steps * 1e3, "compile_seconds": compile_s}


def _record() -> dict:
    return {**environment.determinism_record(), "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _setup(config) -> None:
    """The process set-up of a run (before JAX uses a device): XLA's determinism flags."""
    environment.setup_environment(config)


def main(spec: dict) -> None:
    config = _config(spec)
    _setup(config)
    _, outcomes = common.train(config, seeds=spec["seeds"])
    for seed, outcome in zip(spec["seeds"], outcomes, strict=True):
        r = outcome.results
        run = {"seed": seed, "params_sha256": r["params_sha256"], **common.pick(r)}
        print("RESULT " + json.dumps(run), flush=True)
    if spec["lenet_steps"]:
        step = _lenet_step_ms(spec["fields"], spec["lenet_steps"])
        print("STEP " + json.dumps(step), flush=True)
    print("RECORD " + json.dumps(_record()), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
