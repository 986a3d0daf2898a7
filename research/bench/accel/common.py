"""What every part of the accelerator check shares: rows, the context, configs, training.

A part is a function `part(ctx) -> list[Row]`; each row is one measure with its
result, the goal it is judged against and the verdict. A part may fail alone:
its error goes into its row and the check goes on.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import time
import traceback
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"


@dataclasses.dataclass
class Row:
    """One line of the table: a measure, its result, the goal and the verdict."""

    part: str
    measure: str
    result: str
    goal: str = ""
    verdict: str = "info"  # pass | fail | info | skip | error | n/a (smoke)
    data: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Context:
    smoke: bool
    data_dir: str
    out: str
    seeds: int
    airbench: str
    resnet_batches: tuple[int, ...]
    deadline: float  # time.monotonic() by which the check should end
    deterministic: bool = True  # --deterministic: XLA's deterministic GPU ops (no autotuning)
    # Figures one part measured that a later part reuses rather than measuring again
    # (the determinism part's worker runs, read by the speedrun part).
    memo: dict = dataclasses.field(default_factory=dict)


def with_deterministic_flag(xla_flags: str, deterministic: bool) -> str:
    """`xla_flags` with XLA's deterministic-ops flag set to `deterministic` (replaced if there)."""
    name = DETERMINISTIC_FLAG.split("=")[0]
    kept = [f for f in xla_flags.split() if f.split("=")[0] != name]
    return " ".join([*kept, f"{name}={str(deterministic).lower()}"])


def more(ctx: Context, done: int) -> bool:
    """Whether to measure one more item of a part: the first always, later ones in time."""
    return done == 0 or time.monotonic() < ctx.deadline


def left(ctx: Context, cap: float) -> float:
    """Seconds a subprocess may take: what the budget has left, at least 10, at most `cap`."""
    return max(10.0, min(cap, ctx.deadline - time.monotonic()))


def judge(ctx: Context, ok: bool) -> str:
    return "n/a (smoke)" if ctx.smoke else ("pass" if ok else "fail")


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def pick(result: dict) -> dict:
    """The figures of a run's results record that the check's rows keep."""
    keys = ("test_accuracy", "test_loss", "steps", "wall_seconds", "compile_seconds")
    return {k: result.get(k) for k in keys}


def guarded(part: str, check: Callable[[Context], Row], ctx: Context) -> Row:
    """`check(ctx)`, or a row with its error: one failing check does not hide the others."""
    try:
        return check(ctx)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        traceback.print_exc()
        return Row(part, check.__name__.strip("_"), f"error: {first[:300]}", verdict="error")


def write_text(out: str, name: str, text: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, name), "w") as f:
        f.write(text)


# --------------------------------------------------------------------------- configs


def experiment(name: str):
    """The module `experiments/<name>.py` of this checkout."""
    path = os.path.join(ROOT, "experiments", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_fields(config, **fields):
    """A copy of `config` with dotted `fields` set."""
    config = config.copy_and_resolve_references()
    for dotted, value in fields.items():
        node = config
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def configured(ctx: Context, config, **fields):
    """`config` for this check: its data folder, no progress bar, --deterministic recorded."""
    fields = {"data.data_dir": ctx.data_dir, **fields}
    return with_fields(config, progress=False, deterministic=ctx.deterministic, **fields)


def speedrun_smoke_config(ctx: Context, widths=(8, 16, 16)):
    config = configured(ctx, experiment("cifar10_speedrun").get_config("smoke"))
    config.model.overrides.widths = widths
    return config


def speedrun_config(ctx: Context):
    """The speedrun's config: the full recipe, or (smoke) its narrow variant."""
    if ctx.smoke:
        return speedrun_smoke_config(ctx)
    return configured(ctx, experiment("cifar10_speedrun").get_config("full"))


def lenet_config(ctx: Context, **fields):
    """LeNet-5 on MNIST (experiments/lenet5_mnist.py) for this check; smoke: 2,048 images."""
    config = configured(ctx, experiment("lenet5_mnist").get_config(), **fields)
    if ctx.smoke:
        config = with_fields(config, **{"data.train_size": 2048})
    return config


def train(config, splits=None, seeds=None):
    """Trains `config` (once per seed of `seeds`, one after another) through the engine.

    Returns the run and the engine's outcomes (results record and final state each).
    """
    # heavy: JAX only after the check has set XLA_FLAGS (scripts/accelerator_check.py)
    from research.train import engine, loop

    run = loop.build_run(config, splits=splits) if splits else loop.build_run(config)
    members = [engine.Member(with_fields(config, seed=s), None) for s in (seeds or [config.seed])]
    return run, engine.train(run, members)
