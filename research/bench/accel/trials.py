"""Parts "trials" (trials at once, issue 25 item 1) and "pool" (the max-pool algorithm A/B).

trials: trial-steps/s of N trials vmapped into one program against one trial alone
(`research.sweep.vmapped.probe`), in the check's determinism mode:
  * LeNet-5 on MNIST, N = 1, 4, 16, 64 (goals: >= 12x one trial's throughput at
    N = 16, >= 40x at N = 64);
  * the airbench network (the speedrun's) at batch 1024 on CIFAR-10, N = 1, 4, 16
    (the same goal at N = 16), one epoch's steps at most per chunk.
One trial's throughput is measured once per model (at N = 1) and every N is divided
by it. The longest GPU events of one LeNet-5 chunk at N = 1 and 16 go to
`profile_trials.md` (`research.bench.profile`), where issue 25 starts its search.

pool: the GPU's default max pool, "reduce_window" (gradient: XLA's select-and-scatter),
against "reshape" (a reshape + max, element-wise gradient): LeNet-5 trial-steps/s for
one trial and N = 16 vmapped, and the speedrun's seconds per run with the other one.
"""

from __future__ import annotations

from research.bench import profile
from research.bench.accel.common import (
    Context,
    Row,
    judge,
    lenet_config,
    more,
    pct,
    pick,
    speedrun_config,
    train,
    with_fields,
    write_text,
)

LENET_TRIALS = (1, 4, 16, 64)
AIRBENCH_TRIALS = (1, 4, 16)
AIRBENCH_BATCH = 1024
# Goals of issue 25 item 1: N -> vmapped throughput over one trial's.
GOALS = {16: 12.0, 64: 40.0}
POOL_ALGORITHMS = ("reduce_window", "reshape")  # the pool part's A/B (GPU default first)


def _lenet(ctx: Context):
    """LeNet-5's config for measuring trials and its data, loaded."""
    # heavy: JAX only after the check has set XLA_FLAGS (scripts/accelerator_check.py)
    from research.train import loop

    base = lenet_config(ctx)
    return base, loop.prepare_data(base)[0]


def _airbench(ctx: Context):
    """The speedrun's config at batch 1024 (smoke: its narrow variant) and its data."""
    # heavy: JAX only after the check has set XLA_FLAGS (scripts/accelerator_check.py)
    from research.train import loop

    base = speedrun_config(ctx)
    if not ctx.smoke:
        base = with_fields(base, batch_size=AIRBENCH_BATCH)
    return base, loop.prepare_data(base)[0]


def _scaling(ctx: Context, model: str, base, splits, counts, steps, profiled=()) -> list[Row]:
    # heavy: JAX only after the check has set XLA_FLAGS (scripts/accelerator_check.py)
    from research.sweep import vmapped

    rows, single, profiles = [], None, []  # single: one trial's trial-steps/s (N = 1)
    for n in counts:
        if not more(ctx, len(rows)):
            break
        configs = [with_fields(base, seed=s) for s in range(n)]
        try:
            p = vmapped.probe(
                configs, splits, steps=steps, profile=n in profiled, sequential=single is None
            )
        except Exception as err:  # out of memory at this N is a result; larger N would be too
            oom = "RESOURCE_EXHAUSTED" in str(err) or "out of memory" in str(err).lower()
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            result = "out of memory" if oom else f"error: {first[:300]}"
            measure = f"N = {n} {model} trials vmapped, batch {base.batch_size}"
            rows.append(Row("trials", measure, result, verdict="info" if oom else "error"))
            break
        if "vmap_profile" in p:
            title = f"## N = {n} {model} trials vmapped, one chunk of {p['steps']} steps"
            profiles.append(f"{title}\n\n{profile.markdown(p['vmap_profile'])}")
            write_text(ctx.out, "profile_trials.md", "\n".join(profiles))
        single = single or p["sequential_trial_steps_per_s"]
        ratio = p["vmap_trial_steps_per_s"] / single
        goal = GOALS.get(n)
        rows.append(
            Row(
                "trials",
                f"N = {n} {model} trials vmapped, batch {base.batch_size} (one trial alone: "
                f"{single:.3g} trial-steps/s; deterministic={base.deterministic})",
                f"{p['vmap_trial_steps_per_s']:.3g} trial-steps/s = {ratio:.2f}x one trial",
                f">= {goal:g}x at N = {n}" if goal else "",
                judge(ctx, ratio >= goal) if goal else "info",
                {**p, "model": model, "one_trial_steps_per_s": single, "ratio_to_one_trial": ratio},
            )
        )
    return rows


def part_trials(ctx: Context) -> list[Row]:
    base, splits = _lenet(ctx)
    lenet = (1, 4) if ctx.smoke else LENET_TRIALS
    profiled = (1, 4) if ctx.smoke else (1, 16)  # where the time goes, one trial and many
    rows = _scaling(ctx, "LeNet-5", base, splits, lenet, 2 if ctx.smoke else 100, profiled)
    if more(ctx, 0 if ctx.smoke else len(rows)):
        base, splits = _airbench(ctx)
        counts = (1, 4) if ctx.smoke else AIRBENCH_TRIALS
        rows += _scaling(ctx, "airbench", base, splits, counts, 2 if ctx.smoke else 48)
    return rows


def part_pool(ctx: Context) -> list[Row]:
    # heavy: JAX only after the check has set XLA_FLAGS (scripts/accelerator_check.py)
    from research.layers import algorithm_choice, pool_algorithms
    from research.sweep import vmapped
    from research.train import loop

    base, splits = _lenet(ctx)
    n, steps = (4, 2) if ctx.smoke else (16, 100)
    rows = []
    for pool in POOL_ALGORITHMS:
        if not more(ctx, len(rows)):
            break
        with algorithm_choice.override(pool=pool):  # the programs are traced inside
            p = vmapped.probe([with_fields(base, seed=s) for s in range(n)], splits, steps=steps)
        rows.append(
            Row(
                "pool",
                f"pool={pool}: LeNet-5 trial-steps/s, one trial / N = {n} vmapped",
                f"{p['sequential_trial_steps_per_s']:.3g} / {p['vmap_trial_steps_per_s']:.3g}",
                data={"pool": pool, **p},
            )
        )
    config = speedrun_config(ctx)
    cifar, _ = loop.prepare_data(config)
    default = pool_algorithms.resolve_pool_algorithm()  # the speedrun part's: not run again
    for pool in [p for p in POOL_ALGORITHMS if p != default]:
        if not more(ctx, len(rows)):
            break
        with algorithm_choice.override(pool=pool):
            _, outcomes = train(config, splits=cifar, seeds=[0] if ctx.smoke else [0, 1])
        results = [o.results for o in outcomes]
        seconds = [r["wall_seconds"] for r in results]
        rows.append(
            Row(
                "pool",
                f"pool={results[0]['pool_algorithm']}: speedrun seconds per run, the last of "
                f"{len(seconds)} (run 1, compiling: {seconds[0]:.1f} s; pool={default}: the "
                "speedrun part's)",
                f"{seconds[-1]:.2f} s; test acc {pct(results[-1]['test_accuracy'])}",
                data={
                    "pool": pool,
                    "ran": results[0]["pool_algorithm"],
                    "seconds": seconds,
                    **pick(results[-1]),
                },
            )
        )
    return rows
