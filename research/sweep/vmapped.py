"""Trials at once: which trials can share a program, which path a sweep takes, and the probe.

The engine (`research.train.engine`) trains a group of trials either one after
another with the plain program ("sequential") or all at once with `jax.vmap`
over a trial axis ("vmap"). Both compute the same function of each trial's
config; whether they give the same *bits* depends on the backend (batched and
unbatched contractions may round differently). So a sweep never lets timing
choose between them at run time: `resolve_parallel` turns `sweep.parallel` into
a path by a stated rule, the runner writes it into the sweep's manifest on the
first run, and every later process and resume reuses it.

The rule for "auto": "vmap" on accelerators (GPU, TPU), where one batched
program fills the device far better than many small ones, and "sequential" on
CPU, where the vmapped LeNet-5 measured slower than running trials in turn
(`scripts/bench.py --mode sweep`; the README has the figures).

`probe` times both paths on a sweep's own model, for the benchmark and for a
user deciding whether to set `sweep.parallel` by hand; it never decides a sweep.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections

from research.bench import measure
from research.bench import profile as profile_lib
from research.data import pipeline
from research.sweep.checks import PARALLEL
from research.train import loop

# sweep.parallel = "auto", by backend.
AUTO_PARALLEL: dict[str, str] = {"cpu": "sequential", "gpu": "vmap", "tpu": "vmap"}


def resolve_parallel(setting: str, backend: str | None = None) -> tuple[str, str]:
    """The path a sweep takes for `sweep.parallel = setting`, and why.

    Returns:
      `(path, reason)`: path is "vmap" or "sequential".
    """
    if setting not in PARALLEL:
        raise ValueError(
            f"sweep.parallel={setting!r} is invalid: must be one of {', '.join(PARALLEL)}"
        )
    if setting != "auto":
        return setting, "set by sweep.parallel"
    backend = backend or jax.default_backend()
    path = AUTO_PARALLEL.get(backend, "sequential")
    return path, f"sweep.parallel=auto on backend {backend!r} (engine rule: {AUTO_PARALLEL})"


def probe(
    configs: Sequence[ml_collections.ConfigDict],
    splits: pipeline.Splits,
    *,
    steps: int = 10,
    repeats: int = 1,
    devices=None,
    profile: bool = False,
    sequential: bool = True,
) -> dict[str, float]:
    """Times one trial alone against `len(configs)` trials vmapped, on `steps` steps.

    Both paths run the engine's own programs (`engine.build_programs`): trial i
    with its own seed, hyperparameters and batch order. Each path's first call
    compiles; then `repeats` timed calls (blocked on each) give the steady
    throughput (median); compile time is the first call minus that median.
    Sequential throughput is one trial's: N trials one after another run the
    same compiled program N times. `sequential=False` times the vmapped path
    alone (its sequential figures are None), for a caller that has one trial's already.

    Returns:
      `sequential_trial_steps_per_s`, `vmap_trial_steps_per_s`, the compile
      seconds of both, `trials` and `steps`; with `profile`, also `vmap_profile`:
      the longest events of one more vmapped call (`research.bench.profile`).
    """
    configs = list(configs)
    run = loop.build_run(configs[0], splits=splits)
    vec = measure.Group.build(run, configs, "vmap", devices=devices)  # padded to the devices
    seq = measure.Group.build(run, configs[:1], "sequential") if sequential else None
    steps = min(steps, run.steps_per_epoch)
    idx = measure.first_chunk_rows(configs, vec.data_keys, len(splits.train), steps)

    def timed(group, index):
        group.init()
        group.place(splits.train.images, splits.train.labels, index)
        return measure.steady(group.time(calls=1 + repeats))

    seq_s, seq_compile = timed(seq, idx[:1]) if sequential else (None, None)
    vmap_s, vmap_compile = timed(vec, idx)
    result = {
        "trials": len(configs),
        "steps": steps,
        "sequential_trial_steps_per_s": steps / seq_s if sequential else None,
        "vmap_trial_steps_per_s": len(configs) * steps / vmap_s,
        "sequential_compile_seconds": seq_compile,
        "vmap_compile_seconds": vmap_compile,
    }
    if profile:  # the data is on the device already: the profile is the chunk's own
        result["vmap_profile"] = profile_lib.top_events(lambda: vec.time(calls=1))
    return result
