"""Part "determinism": the ways of making a GPU run bitwise reproducible, side by side.

Issue 25 item 2: `deterministic=True` (bit-identical params from two separate
processes) should cost at most 1.25x the non-deterministic time, on the speedrun and
on a LeNet-5 step. Each mode of `MODES` runs in two fresh processes, one after the
other (`worker.run_job`), each training the speedrun for two seeds or more (the
first run compiles; the first process of "off" trains all `--seeds` and that of
"ops" 3, the speedrun part's runs of those modes) and then timing a LeNet-5 step:

  off     deterministic=False: XLA's defaults, autotuned, not bitwise;
  ops     determinism="ops": --xla_gpu_deterministic_ops (autotuning off);
  pinned  determinism="pinned": --xla_gpu_exclude_nondeterministic_ops, autotuning kept,
          its results dumped to a file by the first process and loaded by the second
          (`research.environment`; the file lives in `<out>/autotune`, new each check).

A row per mode: whether the two processes' params_sha256 agree, seconds per run
(median of the runs after each process's first) and LeNet-5 ms per step, each also
as a ratio to "off". No compilation cache between the processes (a cache hit would
run the first process's executable and prove nothing), except in --smoke.
"""

from __future__ import annotations

import os
import statistics

from research.bench.accel import worker
from research.bench.accel.common import Context, Row, judge, more

# mode -> the config fields that select it.
MODES = {
    "off": {"deterministic": False},
    "ops": {"deterministic": True, "determinism": "ops"},
    "pinned": {"deterministic": True, "determinism": "pinned"},
}
GOAL_RATIO = 1.25  # deterministic time over "off", at most (issue 25 item 2)
DETERMINISTIC_SEEDS = 3  # the "ops" mode's first process (the speedrun part's deterministic runs)


def speedrun_job(ctx: Context, fields: dict, seeds: list[int], lenet_steps=0) -> dict:
    """The worker job of the speedrun (smoke: its narrow variant) with `fields` set."""
    base = {"data.data_dir": ctx.data_dir}
    if ctx.smoke:
        base["model.overrides.widths"] = [8, 16, 16]
    variant = "smoke" if ctx.smoke else "full"
    return worker.job("cifar10_speedrun", variant, {**base, **fields}, seeds, lenet_steps)


def worker_env(ctx: Context) -> dict:
    """The environment of the check's workers: no compilation cache (smoke: a shared
    one, since its figures are not judged), autotune files under `<out>/autotune`."""
    cache = os.path.join(ctx.out, "xla-cache") if ctx.smoke else "off"
    return {
        "RESEARCH_COMPILATION_CACHE": cache,
        "RESEARCH_AUTOTUNE_DIR": os.path.join(ctx.out, "autotune"),
    }


def worker_timeout(ctx: Context) -> float:
    """A worker's allowance: 4 minutes (smoke: 10). Not cut to what the budget has left:
    a worker stopped half way measures nothing; the budget decides whether one starts."""
    return 600.0 if ctx.smoke else 240.0


def steady_seconds(runs: list[dict]) -> float:
    """The median seconds of the runs after a process's first (which compiles)."""
    later = runs[1:] or runs
    return statistics.median(r["wall_seconds"] for r in later)


def first_seeds(ctx: Context, mode: str) -> list[int]:
    """The seeds of a mode's first process: the speedrun part's runs of that mode too
    (`--seeds` for "off", airbench94's own mode; `DETERMINISTIC_SEEDS` for "ops")."""
    if ctx.smoke:
        return [0]
    return list(range(max(2, {"off": ctx.seeds, "ops": DETERMINISTIC_SEEDS}.get(mode, 2))))


def measure_mode(ctx: Context, mode: str) -> dict:
    """Two processes of `mode`: their runs, LeNet-5 steps and records. The first
    process's answer is kept in `ctx.memo[mode]` for the speedrun part."""
    processes = []
    for seeds in (first_seeds(ctx, mode), [0] if ctx.smoke else [0, 1]):
        spec = speedrun_job(ctx, MODES[mode], seeds, lenet_steps=10 if ctx.smoke else 100)
        processes.append(worker.run_job(spec, env=worker_env(ctx), timeout=worker_timeout(ctx)))
    ctx.memo[mode] = processes[0]
    both = min(len(p["runs"]) for p in processes)  # the seeds both processes trained
    shas = [[r["params_sha256"] for r in p["runs"][:both]] for p in processes]
    seconds = [steady_seconds(p["runs"]) for p in processes]
    return {
        "mode": mode,
        "fields": MODES[mode],
        "equal": shas[0] == shas[1],
        "params_sha256": shas,
        "seconds_per_run": statistics.median(seconds),
        "first_run_seconds": [p["runs"][0]["wall_seconds"] for p in processes],
        "test_accuracy": [r["test_accuracy"] for p in processes for r in p["runs"]],
        "lenet_ms_per_step": statistics.median(p["step"]["ms_per_step"] for p in processes),
        "records": [p["record"] for p in processes],
    }


def part_determinism(ctx: Context) -> list[Row]:
    rows, measured = [], {}
    for mode in MODES:
        if not more(ctx, len(rows)):
            rows.append(Row("determinism", mode, "not run: out of time", verdict="skip"))
            continue
        try:
            m = measured[mode] = measure_mode(ctx, mode)
        except Exception as err:  # one mode's failure (a flag XLA refuses) is its row
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            rows.append(Row("determinism", mode, f"error: {first[:300]}", verdict="error"))
            continue
        off = measured.get("off")
        ratio = m["seconds_per_run"] / off["seconds_per_run"] if off else None
        step_ratio = m["lenet_ms_per_step"] / off["lenet_ms_per_step"] if off else None
        m.update(ratio_to_off=ratio, lenet_ratio_to_off=step_ratio)
        fields = ", ".join(f"{k}={v!r}" for k, v in MODES[mode].items())
        versus = (
            f" ({ratio:.2f}x / {step_ratio:.2f}x off)"
            if ratio is not None and mode != "off"
            else ""
        )
        deterministic = MODES[mode]["deterministic"]
        ok = m["equal"] and ratio is not None and max(ratio, step_ratio) <= GOAL_RATIO
        flags = (m["records"][-1] or {}).get("xla_flags", "")
        rows.append(
            Row(
                "determinism",
                f"{mode} ({fields}): two processes, speedrun params_sha256; seconds per run; "
                f"LeNet-5 ms per step (XLA_FLAGS of the second: {flags!r})",
                f"{'equal' if m['equal'] else 'DIFFER'}: {m['params_sha256'][0][0][:12]}; "
                f"{m['seconds_per_run']:.2f} s; {m['lenet_ms_per_step']:.3f} ms{versus}",
                f"equal, <= {GOAL_RATIO}x off" if deterministic else "",
                judge(ctx, ok) if deterministic else "info",
                m,
            )
        )
    return rows
