"""XLA's own CPU options (its oneDNN rewrites, XNNPACK, the runtime's threading) against ours.

    python scripts/bench.py --mode xla-flags --models lecture_cnn,lenet5 --steps 10 --repeats 5

Each variant runs our engine's training program (`frameworks.ours`: the program
`scripts/train.py` runs, synthetic data) in its own process, because XLA reads `XLA_FLAGS`
once, when its CPU client starts; the conv algorithm comes from `RESEARCH_CONV_ALGORITHM`
and the oneDNN team size from `RESEARCH_ONEDNN_THREADS`, both read in that process too.
A flag this jaxlib does not know ends its process; the row says so instead of a time.

The rows: our default ("onednn": oneDNN's direct convolutions called from the program),
XLA's own convolution with and without each of its oneDNN/XNNPACK options, and our
default under XLA's scheduler and threading options. Results are per step, median and
best of the repeats; a shared machine's load is recorded beside them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys


@dataclasses.dataclass(frozen=True)
class Variant:
    description: str
    conv: str  # RESEARCH_CONV_ALGORITHM in the worker
    xla_flags: str = ""  # appended to XLA_FLAGS in the worker
    env: tuple[tuple[str, str], ...] = ()  # other variables for the worker


VARIANTS: dict[str, Variant] = {
    "ours": Variant("our default: oneDNN direct convolutions (custom calls)", "onednn"),
    "ours_1_thread_per_call": Variant(
        "ours, each oneDNN call on 1 OpenMP thread",
        "onednn",
        env=(("RESEARCH_ONEDNN_THREADS", "1"),),
    ),
    "ours_all_threads_per_call": Variant(
        "ours, each oneDNN call on every core (no cap)",
        "onednn",
        env=(("RESEARCH_ONEDNN_THREADS", str(os.cpu_count() or 1)),),
    ),
    "ours_concurrency_scheduler": Variant(
        "ours + --xla_cpu_enable_concurrency_optimized_scheduler",
        "onednn",
        "--xla_cpu_enable_concurrency_optimized_scheduler=true",
    ),
    "ours_single_thread_eigen": Variant(
        "ours + --xla_cpu_multi_thread_eigen=false", "onednn", "--xla_cpu_multi_thread_eigen=false"
    ),
    "xla": Variant("XLA's own convolution (Eigen), default flags", "xla"),
    "xla_use_onednn": Variant(
        "XLA's convolution + --xla_cpu_use_onednn", "xla", "--xla_cpu_use_onednn=true"
    ),
    "xla_onednn_custom_call": Variant(
        "XLA's convolution + --xla_cpu_experimental_onednn_custom_call",
        "xla",
        "--xla_cpu_experimental_onednn_custom_call=true",
    ),
    "xla_xnnpack": Variant(
        "XLA's convolution + --xla_cpu_use_xnnpack", "xla", "--xla_cpu_use_xnnpack=true"
    ),
}

_WORKER = """
import json, statistics, sys, time
from research.bench import frameworks
model, batch, steps, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
runner = frameworks.ours(model, batch, steps)
runner.run()  # the first call: allocations and any lazy setup
seconds = []
for _ in range(repeats):
    start = time.perf_counter()
    runner.run()
    seconds.append((time.perf_counter() - start) / steps)
print(json.dumps({"compile_s": runner.compile_s, "step_s": seconds, "notes": runner.notes}))
"""


def measure(name: str, model: str, batch: int, steps: int, repeats: int) -> dict:
    """One variant's row: milliseconds per step (median, best), or why it did not run."""
    variant = VARIANTS[name]
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, **dict(variant.env), "RESEARCH_CONV_ALGORITHM": variant.conv}
    env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {variant.xla_flags}".strip()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    load = os.getloadavg()[0]
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER, model, str(batch), str(steps), str(repeats)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    row = {"variant": name, "description": variant.description, "model": model, "batch": batch}
    row.update(xla_flags=variant.xla_flags, load_average=[load, os.getloadavg()[0]])
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        row["error"] = lines[-1][-300:] if lines else f"exit code {proc.returncode}"
        return row
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    row.update(
        step_ms=1000 * statistics.median(out["step_s"]),
        best_ms=1000 * min(out["step_s"]),
        compile_s=out["compile_s"],
        notes=out["notes"],
    )
    return row


def run(models, batch_sizes, steps: int, repeats: int, variants=tuple(VARIANTS)) -> list[dict]:
    return [
        measure(name, model, batch, steps, repeats)
        for model in models
        for batch in batch_sizes
        for name in variants
    ]


def table(rows: list[dict], backend: str = "cpu") -> str:
    """Markdown: one row per variant, its time against `ours` of the same model and batch."""
    del backend  # CPU flags: the table is the same whatever `scripts/bench.py` passes
    ours = {(r["model"], r["batch"]): r.get("step_ms") for r in rows if r["variant"] == "ours"}
    lines = [
        "| model | batch | variant | flags | ms/step (median) | best | vs ours | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        flags = f"`{r['xla_flags']}`" if r["xla_flags"] else ""
        load = "/".join(f"{x:.1f}" for x in r["load_average"])
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['batch']} | {r['variant']} | {flags} | did not run: "
                f"{r['error']} | | | {load} |"
            )
            continue
        base = ours.get((r["model"], r["batch"]))
        ratio = f"{r['step_ms'] / base:.2f}x" if base else ""
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['variant']} | {flags} | {r['step_ms']:.1f} | "
            f"{r['best_ms']:.1f} | {ratio} | {load} |"
        )
    return "\n".join(lines)
