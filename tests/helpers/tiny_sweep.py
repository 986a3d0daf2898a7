"""The tiny digits sweep that the sweep tests share.

simple_cnn on the digits (embedded, no data folder needed): 6 trials, sgd at 3
learning rates x 2 seeds, one after another. Heartbeats come every 0.5 s and a
trial whose heartbeat stood still for 3 s is taken over, so a killed worker's
trial moves on within seconds. Used by tests/sweep/test_sweep.py and
tests/sweep/test_sweep_workers.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

from research.sweep import space

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "sweep.py")
EXPERIMENT = os.path.join(ROOT, "experiments", "compare_optimizers.py")

FLAGS = [
    '--config.sweep.grids=({"optim.name": ("sgd",), "optim.learning_rate": (0.03, 0.1, 0.3)},)',
    "--config.sweep.axes.seed=(0, 1)",
    "--config.sweep.parallel=sequential",
    "--config.sweep.heartbeat_seconds=0.5",
    "--config.sweep.grace_seconds=3",
]


def command(workdir, *args, epochs: int = 1) -> list[str]:
    """`scripts/sweep.py` on the tiny sweep in `workdir`; `args` are further flags."""
    return [
        sys.executable,
        SCRIPT,
        f"--config={EXPERIMENT}:digits",
        f"--workdir={workdir}",
        f"--config.num_epochs={epochs}",
        *FLAGS,
        *args,
    ]


def run(workdir, *args, epochs: int = 1) -> subprocess.CompletedProcess:
    """Runs the sweep to its end (text output captured)."""
    return subprocess.run(
        command(workdir, *args, epochs=epochs),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )


def start(workdir, *args, epochs: int = 1) -> subprocess.Popen:
    """Starts the sweep as a worker process (text pipes), for killing or racing."""
    return subprocess.Popen(
        command(workdir, *args, epochs=epochs),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def config(**sweep):
    """The in-process equivalent: a sweep config of simple_cnn on digits, 1 epoch.

    Keyword arguments set `config.sweep` fields (`axes`, `pruner`, ...).
    """
    c = space.get_sweep_config()
    c.model.name = "simple_cnn"
    c.data.name = "digits"
    c.batch_size = 64
    c.num_epochs = 1
    c.log_every_steps = 5
    c.progress = False
    c.sweep.parallel = "sequential"
    c.sweep.heartbeat_seconds = 0.5
    c.sweep.grace_seconds = 3.0
    for key, value in sweep.items():
        c.sweep[key] = value
    return c


def with_transfer_stage(config, stage_epochs: int | None = None):
    """`config` with a pretraining stage on digits 0-4 and two trials on digits 5-9.

    The trials: `scratch`, and `linear_probe` from the stage ("pretrain:digits_0to4").
    `stage_epochs` sets the stage's own `num_epochs` (None: the config's).
    """
    stage = {"data": {"classes": (0, 1, 2, 3, 4)}}
    if stage_epochs is not None:
        stage["num_epochs"] = stage_epochs
    config.sweep.pretrain = {"digits_0to4": stage}
    target = {"data.classes": ((5, 6, 7, 8, 9),)}
    config.sweep.grids = (
        {**target, "transfer.strategy": ("scratch",)},
        {
            **target,
            "transfer.strategy": ("linear_probe",),
            "transfer.pretrained": ("pretrain:digits_0to4",),
        },
    )
    return config
