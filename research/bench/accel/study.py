"""Part "optimizers": the optimizer study at speedrun scale (issue 25 item 4), if it exists.

    python scripts/sweep.py --config experiments/optimizers_cifar10.py --workdir <out>/optimizers

run as its own command line, in a subprocess, with what the budget has left (at most
10 minutes, the study's goal, compilation included). --smoke runs the study's CPU
variant (the first of "smoke", "cpu" among the experiment's VARIANTS). The row gives
the exit status and the wall seconds; the sweep's `summary.md`, where written, is
copied to `<out>/optimizers.md`. Without the experiment file the part says so in one
row and is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from research.bench.accel.common import ROOT, Context, Row, experiment, judge, left

EXPERIMENT = os.path.join("experiments", "optimizers_cifar10.py")
GOAL_SECONDS = 600.0  # the whole sweep on one GPU, compilation included
CPU_VARIANTS = ("smoke", "cpu")


def command(ctx: Context, workdir: str) -> list[str] | None:
    """The study's command line; None where --smoke finds no CPU variant to run."""
    config = EXPERIMENT
    if ctx.smoke:
        variants = getattr(experiment("optimizers_cifar10"), "VARIANTS", ())
        small = [v for v in CPU_VARIANTS if v in variants]
        if not small:
            return None
        config = f"{EXPERIMENT}:{small[0]}"
    return [sys.executable, "scripts/sweep.py", "--config", config, "--workdir", workdir]


def part_optimizers(ctx: Context) -> list[Row]:
    measure = f"optimizer study ({EXPERIMENT}): one sweep, wall seconds"
    if not os.path.exists(os.path.join(ROOT, EXPERIMENT)):
        return [Row("optimizers", measure, f"skipped: {EXPERIMENT} not found", verdict="skip")]
    workdir = os.path.join(ctx.out, "optimizers")
    cmd = command(ctx, workdir)
    if cmd is None:
        note = f"skipped: no CPU variant ({', '.join(CPU_VARIANTS)}) for --smoke"
        return [Row("optimizers", measure, note, verdict="skip")]
    env = {**os.environ, "RESEARCH_DATA_DIR": ctx.data_dir}
    start = time.monotonic()
    try:
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=left(ctx, GOAL_SECONDS),
        )
    except subprocess.TimeoutExpired as err:
        seconds = time.monotonic() - start
        note = f"not finished in {seconds:.0f} s (this call's budget); rerun it alone"
        return [Row("optimizers", measure, note, verdict="skip", data={"timeout": err.timeout})]
    seconds = time.monotonic() - start
    summary = os.path.join(workdir, "summary.md")
    if os.path.exists(summary):
        shutil.copy(summary, os.path.join(ctx.out, "optimizers.md"))
    ok = proc.returncode == 0
    tail = (proc.stderr.strip().splitlines() or [""])[-1][:300]
    result = f"{seconds:.0f} s" + ("; table in optimizers.md" if os.path.exists(summary) else "")
    return [
        Row(
            "optimizers",
            f"{measure}: {' '.join(cmd[1:])}",
            result if ok else f"error (exit {proc.returncode}): {tail}",
            f"<= {GOAL_SECONDS:.0f} s, compile included",
            judge(ctx, seconds <= GOAL_SECONDS) if ok else "error",
            {"returncode": proc.returncode, "seconds": seconds, "command": cmd},
        )
    ]
