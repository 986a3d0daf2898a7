"""The small digits runs the training tests share: configs, the train script, its outputs.

A run of simple_cnn on digits (embedded, no data folder needed), through the
engine in process (`fast_config`) or through `scripts/train.py` (`run_script`),
and a three-seed sweep of one vmapped group through `scripts/sweep.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from research.config import get_base_config
from research.train import outputs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "train.py")
DIGITS = os.path.join(ROOT, "experiments", "digits.py")
SWEEP = os.path.join(ROOT, "scripts", "sweep.py")
EXPERIMENT = os.path.join(ROOT, "experiments", "compare_optimizers.py")

# A small, fast run: 3 epochs of simple_cnn on digits (1,294 train examples, 20 steps/epoch).
FAST = [
    "--config.num_epochs=3",
    "--config.batch_size=64",
    "--config.log_every_steps=5",
    "--config.progress=False",
]


def fast_config(**changes):
    config = get_base_config()
    config.model.name = "simple_cnn"
    config.data.name = "digits"
    config.batch_size = 64
    config.num_epochs = 3
    config.log_every_steps = 5
    config.progress = False
    config.optim.name = "adam"
    config.optim.learning_rate = 1e-3
    for key, value in changes.items():
        node = config
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return config


def run_script(workdir, *args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, SCRIPT, f"--config={DIGITS}", f"--workdir={workdir}", *FAST, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        cwd=ROOT,
    )


def results(workdir) -> dict:
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


def losses(workdir) -> list[float]:
    records = outputs.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    return [r["train_loss"] for r in records if "train_loss" in r]


def sweep_args(workdir, parallel, epochs=3):
    return [
        sys.executable,
        SWEEP,
        f"--config={EXPERIMENT}:digits",
        f"--workdir={workdir}",
        f"--config.num_epochs={epochs}",
        '--config.sweep.grids=({"optim.name": ("momentum",), "optim.learning_rate": (0.03,)},)',
        "--config.sweep.axes.seed=(0, 1, 2)",
        f"--config.sweep.parallel={parallel}",
        # A killed sweep's trials are taken over 3 s after their heartbeat stops.
        "--config.sweep.heartbeat_seconds=0.5",
        "--config.sweep.grace_seconds=3",
    ]


def sweep_results(workdir) -> dict[str, dict]:
    folder = os.path.join(workdir, "trials")
    out = {}
    for trial in sorted(os.listdir(folder)):
        path = os.path.join(folder, trial, "results.json")
        if os.path.exists(path):
            with open(path) as f:
                out[trial] = json.load(f)
    return out
