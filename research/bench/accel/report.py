"""The accelerator check's run, its table, and the table of issue 25's goals.

`run_check(ctx, parts)` runs each part in turn and rewrites `table.md`,
`results.json` and `goals.md` in `ctx.out` after each one, so a crash keeps what
was measured. `goals_table(records)` reads one or more results.json records (the
two device calls of `--part 1` and `--part 2`) and gives one row per goal of issue
25: the goal, what was measured, and whether it is met ("not measured" where no
record holds the figure).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable

from research.bench.accel import checks, determinism, speedrun, study, training, trials
from research.bench.accel.common import Context, Row, write_text

PART_FUNCTIONS: dict[str, Callable[[Context], list[Row]]] = {
    "tests": checks.part_tests,
    "lenet": training.part_lenet,
    "trials": trials.part_trials,
    "resnet50": training.part_resnet50,
    "pool": trials.part_pool,
    "speedrun": speedrun.part_speedrun,
    "determinism": determinism.part_determinism,
    "optimizers": study.part_optimizers,
}
# Two device calls of at most 8 minutes each: --part 1, then --part 2. In each, the
# goals' parts first; "pool" last, where the budget drops it first. The optimizer study
# takes up to 10 minutes by its own goal: a third call of its own (--part 3).
PART_GROUPS = {
    "1": ("tests", "lenet", "trials", "resnet50", "pool"),
    "2": ("determinism", "speedrun"),
    "3": ("optimizers",),
}
PARTS = PART_GROUPS["1"] + PART_GROUPS["2"] + PART_GROUPS["3"]


def header() -> dict:
    # heavy: JAX only after the check has set XLA_FLAGS (scripts/accelerator_check.py)
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


def _cells(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"


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
    lines += [_cells([r.part, r.measure, r.result, r.goal, r.verdict]) for r in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- goals


def _rows(records: list[dict], part: str) -> list[dict]:
    return [r for rec in records for r in rec.get("parts", {}).get(part, {}).get("rows", [])]


def _trials(records, model: str, n: int):
    for r in _rows(records, "trials"):
        d = r["data"]
        if d.get("model") == model and d.get("trials") == n:
            return f"{d['ratio_to_one_trial']:.2f}x", d["ratio_to_one_trial"] >= trials.GOALS[n]
    return None


def _bitwise(records):
    modes = [r["data"] for r in _rows(records, "determinism") if r["data"].get("fields")]
    deterministic = [m for m in modes if m["fields"]["deterministic"]]
    if not deterministic:
        return None
    text = "; ".join(f"{m['mode']}: {'equal' if m['equal'] else 'DIFFER'}" for m in deterministic)
    return text, any(m["equal"] for m in deterministic)


def _cost(key: str):
    def goal(records):
        modes = [r["data"] for r in _rows(records, "determinism") if r["data"].get(key)]
        modes = [m for m in modes if m["fields"]["deterministic"]]
        if not modes:
            return None
        text = "; ".join(f"{m['mode']}: {m[key]:.2f}x" for m in modes)
        ok = any(m["equal"] and m[key] <= determinism.GOAL_RATIO for m in modes)
        return text, ok

    return goal


def _speedrun(index_of: Callable[[list[dict]], tuple[str, bool] | None]):
    def goal(records):
        rows = _rows(records, "speedrun")
        return index_of(rows) if rows else None

    return goal


def _accuracy(rows):
    d = rows[0]["data"]
    if "mean" not in d:
        return None
    return f"{100 * d['mean']:.2f}% over {len(d['accuracies'])}", d["mean"] >= 0.94


def _vs_airbench(rows):
    theirs = next((r["data"] for r in rows if "median_seconds" in r["data"]), None)
    ours = next((r["data"] for r in rows if "median_after_first" in r["data"]), None)
    if not theirs or not ours:
        return None
    ratio = ours["median_after_first"] / theirs["median_seconds"]
    return f"{ratio:.2f}x", ratio <= speedrun.GOAL_VS_AIRBENCH


def _deterministic_speedrun(rows):
    d = next((r["data"] for r in rows if "ratio_to_autotuned" in r["data"]), None)
    if d is None:
        return None
    return f"{d['ratio_to_autotuned']:.2f}x", d["ratio_to_autotuned"] <= speedrun.GOAL_DETERMINISTIC


def _resnet(records):
    best = [r["data"] for r in _rows(records, "resnet50") if "best_batch" in r["data"]]
    if not best:
        return None
    kinds = [rec["device_kind"] for rec in records if rec.get("parts", {}).get("resnet50")]
    goal = training.resnet_goal(kinds[0])
    return f"{best[0]['images_per_second']:,.0f} img/s", best[0]["images_per_second"] >= goal


def _lenet(records):
    runs = [t for r in _rows(records, "lenet") for t in r["data"].get("runs", [])]
    hit = next((t for t in runs if t["test_accuracy"] >= 0.99), None)
    if not runs:
        return None
    if hit is None:
        return "99% not reached", False
    return f"{hit['wall_seconds']:.2f} s", hit["wall_seconds"] < training.LENET_GOAL_SECONDS


def _study(records):
    rows = [r for r in _rows(records, "optimizers") if "seconds" in r["data"]]
    if not rows:
        return None
    d = rows[0]["data"]
    return f"{d['seconds']:.0f} s (exit {d['returncode']})", rows[0]["verdict"] == "pass"


GOALS: list[tuple[str, Callable]] = [
    ("1. 16 LeNet-5 trials vmapped >= 12x one trial", lambda r: _trials(r, "LeNet-5", 16)),
    ("1. 64 LeNet-5 trials vmapped >= 40x one trial", lambda r: _trials(r, "LeNet-5", 64)),
    ("1. 16 airbench trials (batch 1024) >= 12x one trial", lambda r: _trials(r, "airbench", 16)),
    ("2. deterministic=True: two processes bit-identical", _bitwise),
    ("2. deterministic cost on the speedrun <= 1.25x", _cost("ratio_to_off")),
    ("2. deterministic cost on a LeNet-5 step <= 1.25x", _cost("lenet_ratio_to_off")),
    ("3. speedrun (autotuned) <= 0.85x airbench94's seconds", _speedrun(_vs_airbench)),
    ("3. speedrun >= 94.0% mean test accuracy over 10 seeds", _speedrun(_accuracy)),
    ("3. speedrun deterministic within 1.25x of autotuned", _speedrun(_deterministic_speedrun)),
    ("4. optimizer study in <= 10 minutes, compile included", _study),
    ("5. ResNet-50 bf16 >= 6,000 img/s (H200) / 5,000 (H100)", _resnet),
    ("5. LeNet-5 to 99% on MNIST < 3 s, deterministic", _lenet),
]  # fmt: skip


def goals_table(records: list[dict]) -> str:
    """Issue 25's goals against `records` (results.json of one or more calls)."""
    smoke = any(rec.get("mode") == "smoke" for rec in records)
    lines = []
    for rec in records:
        lines.append(
            f"- {rec.get('mode')} check, parts {', '.join(rec.get('parts', {}))}: "
            f"{rec.get('device_kind')}, commit {str(rec.get('git_commit'))[:12]}, "
            f"XLA_FLAGS `{rec.get('xla_flags')}`, {rec.get('date')}"
        )
    lines += ["", "| goal (issue 25) | measured | met? |", "|---|---|---|"]
    for text, find in GOALS:
        try:
            found = find(records)
        except (KeyError, IndexError, TypeError, ValueError) as err:
            found = (f"unreadable: {type(err).__name__}", False)
        if found is None:
            lines.append(_cells([text, "not measured", ""]))
            continue
        measured, ok = found
        lines.append(_cells([text, measured, "n/a (smoke)" if smoke else ("yes" if ok else "no")]))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- run


def _write(out: str, text: str, record: dict) -> None:
    write_text(out, "table.md", text)
    write_text(out, "results.json", json.dumps(record, indent=1, default=str))
    write_text(out, "goals.md", goals_table([json.loads(json.dumps(record, default=str))]))


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
            message = f"error: {type(err).__name__}: {first[:300]}"
            got = [Row(name, "part failed", message, verdict="error")]
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
