"""Running a sweep: trials claimed, grouped, run vmapped or in turn, then tabulated.

Layout of the sweep folder `DIR`:

  DIR/sweep.json              the config, every trial (id, overrides), the
                              parallel mode chosen and the probe's timings
  DIR/trials/<id>/            one training workdir per trial: config.json,
                              metrics.jsonl, curves.png, results.json (written
                              last and atomically: its presence = finished)
  DIR/pretrain/<stage id>/    one training workdir (with checkpoints) per
                              `sweep.pretrain` stage, trained before the trials
  DIR/locks/<id>.lock         a claim held while a process runs the trial
  DIR/trials.csv, summary.md, summary.csv, loss_curves.png, val_accuracy_vs_lr.png

Resumption and sharing: a trial with a results.json is never run again; a trial
is run only by the process that claims its lock (`claims.try_claim`), so any
number of processes can run the same command on the same DIR. A sweep that is
killed leaves locks of a dead process, which the next run takes over (and any
partial trial folders, which are overwritten). Under `jax.distributed`, trial i
goes to process `i % jax.process_count()`.

Transfer trials (a `transfer.strategy` other than scratch, `transfer.rules` or
`transfer.pretrained` set) run one at a time through the plain training loop
(`train.train_and_evaluate`: pretrained weights, freezing rules and BatchNorm
policy, a final checkpoint); the vmapped groups are for trials that differ in
seed and optimizer hyperparameters only. Pretraining stages (`sweep.pretrain`)
are trained first, each once, under a lock every process waits on.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from research.data import pipeline
from research.sweep import claims, reports, space, vmapped
from research.train import outputs

log = logging.getLogger(__name__)


def trial_dir(workdir: str, trial: space.Trial) -> str:
    return os.path.join(workdir, "trials", trial.id)


def lock_path(workdir: str, trial: space.Trial) -> str:
    return os.path.join(workdir, "locks", f"{trial.id}.lock")


def finished(workdir: str, trial: space.Trial) -> bool:
    return os.path.exists(os.path.join(trial_dir(workdir, trial), "results.json"))


def stage_dir(workdir: str, stage: space.Stage) -> str:
    return os.path.join(workdir, "pretrain", stage.id)


def is_transfer(config: ml_collections.ConfigDict) -> bool:
    """True when a trial needs the plain loop: pretrained weights or freezing rules."""
    t = config.transfer
    return bool(t.pretrained) or bool(t.rules) or t.strategy != "scratch"


def resolved_config(workdir: str, trial: space.Trial, named: dict) -> ml_collections.ConfigDict:
    """The trial's config with "pretrain:NAME" replaced by the stage's folder."""
    if not trial.pretrain:
        return trial.config
    return space.apply(
        trial.config, {"transfer.pretrained": stage_dir(workdir, named[trial.pretrain])}
    )


def run_stages(workdir, stages, splits_of, echo) -> list[str]:
    """Trains each unfinished stage once; waits while another process trains it."""
    from research.train import loop

    ran = []
    for stage in stages:
        folder = stage_dir(workdir, stage)
        done = os.path.join(folder, "results.json")
        if os.path.exists(done):
            continue
        lock = os.path.join(workdir, "locks", f"pretrain-{stage.id}.lock")
        with claims.held(lock, timeout_seconds=24 * 3600):
            if os.path.exists(done):  # another process trained it meanwhile
                continue
            echo(f"pretrain {stage.name} ({stage.id}) {_overrides_line(stage.overrides)}")
            r = loop.train_and_evaluate(stage.config, folder, splits=splits_of(stage.config))
            ran.append(stage.id)
            echo(
                f"pretrain {stage.name}: val_accuracy={_fmt(r.get('val_accuracy'))} "
                f"test_accuracy={_fmt(r.get('test_accuracy'))} ({r['wall_seconds']:.1f} s)"
            )
    return ran


def _run_plain(workdir, trial, config, splits) -> dict[str, Any]:
    """One trial through the plain loop; a divergence is recorded, not raised."""
    from research.train import loop

    folder = trial_dir(workdir, trial)
    t0 = time.perf_counter()
    try:
        return loop.train_and_evaluate(config, folder, splits=splits)
    except loop.TrainingDiverged as err:
        r = {"status": "diverged", "error": str(err), "wall_seconds": time.perf_counter() - t0}
        outputs.atomic_write_json(os.path.join(folder, "results.json"), r)
        return r


def _splits(config: ml_collections.ConfigDict, cache: dict) -> pipeline.Splits:
    return pipeline.from_config(config.data, cache)


def _groups(trials: list[space.Trial]) -> list[list[space.Trial]]:
    """Trials by `vmapped.group_key`, in order of first appearance."""
    groups: dict[str, list[space.Trial]] = collections.OrderedDict()
    for t in trials:
        groups.setdefault(vmapped.group_key(t.config), []).append(t)
    return list(groups.values())


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def choose_parallel(
    config: ml_collections.ConfigDict, groups: list[list[space.Trial]], splits_of: Callable
) -> tuple[str, dict[str, Any]]:
    """ "vmap" or "sequential": the setting, or for "auto" the faster by a timing probe.

    The probe runs `sweep.probe_steps` steps of the largest group (at most
    `sweep.group_size` trials) both ways and estimates the whole sweep's time
    each way: compile time per compiled program plus trial-steps over throughput.
    """
    setting = config.sweep.parallel
    largest = max(groups, key=len)
    if setting != "auto":
        return setting, {"reason": "set by sweep.parallel"}
    if len(largest) < 2:
        return "sequential", {"reason": "no two trials can share a program"}
    members = largest[: config.sweep.group_size]
    p = vmapped.probe(
        [t.config for t in members], splits_of(members[0].config), steps=config.sweep.probe_steps
    )
    total_steps = 0
    seq_s = vmap_s = 0.0
    for g in groups:
        run = members[0].config
        steps = len(g) * run.num_epochs * _steps_per_epoch(g[0].config, splits_of)
        total_steps += steps
        seq_s += p["sequential_compile_seconds"] + steps / p["sequential_trial_steps_per_s"]
        n_programs = -(-len(g) // config.sweep.group_size)
        vmap_s += n_programs * p["vmap_compile_seconds"] + steps / p["vmap_trial_steps_per_s"]
    p.update(estimated_sequential_seconds=seq_s, estimated_vmap_seconds=vmap_s)
    p["reason"] = "timing probe"
    return ("vmap" if vmap_s < seq_s else "sequential"), p


def _steps_per_epoch(config, splits_of) -> int:
    n = len(splits_of(config).train)
    return pipeline.steps_per_epoch(n, config.batch_size, config.data.remainder)


def run_sweep(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    echo: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Runs every unfinished trial this process can claim, then writes the tables and plots.

    Args:
      config: a sweep config (`space.get_sweep_config()` plus axes).
      workdir: the sweep folder (created; an existing one is resumed).
      echo: called with one line per trial started or finished (the CLI prints them).

    Returns:
      `{"trials": n, "ran": ids run here, "skipped": ids finished before,
      "stages": pretraining stage ids trained here, "parallel": mode,
      "probe": timings, "seconds": wall time}`.

    Raises:
      ValueError: a bad sweep or trial config (the message names the field).
    """
    t0 = time.perf_counter()
    if config.sweep.report not in reports.REPORTS:
        raise ValueError(
            f"config.sweep.report={config.sweep.report!r} is invalid: known reports: "
            f"{', '.join(reports.REPORTS.names())}"
        )
    trials = space.expand(config)
    os.makedirs(workdir, exist_ok=True)
    cache: dict = {}

    def splits_of(c):
        return _splits(c, cache)

    index, count = jax.process_index(), jax.process_count()
    mine = [t for t in trials if t.index % count == index]
    skipped = [t.id for t in mine if finished(workdir, t)]
    pending = [t for t in mine if not finished(workdir, t)]
    named = space.stages(config)
    plain = [t for t in pending if is_transfer(t.config)]
    pending = [t for t in pending if not is_transfer(t.config)]
    groups = _groups(pending)
    mode, probe = ("sequential", {"reason": "nothing left to run"})
    if groups:
        mode, probe = choose_parallel(config, groups, splits_of)
    echo(
        f"{len(trials)} trials: {len(skipped)} finished before, "
        f"{len(pending) + len(plain)} to run here "
        f"({mode}{', probe ' + _probe_line(probe) if 'vmap_trial_steps_per_s' in probe else ''})"
    )
    _write_manifest(config, workdir, trials, mode, probe)
    needed = {t.pretrain for t in plain if t.pretrain}
    stages_ran = run_stages(workdir, [named[n] for n in named if n in needed], splits_of, echo)
    ran: list[str] = []
    for t in plain:
        if finished(workdir, t) or not claims.try_claim(lock_path(workdir, t)):
            continue
        try:
            if finished(workdir, t):
                continue
            r = _run_plain(workdir, t, resolved_config(workdir, t, named), splits_of(t.config))
        finally:
            claims.release(lock_path(workdir, t))
        ran.append(t.id)
        echo(
            f"trial {t.id} {_overrides_line(t.overrides)}: {r.get('status', 'done')} "
            f"val_accuracy={_fmt(r.get('val_accuracy'))} "
            f"test_accuracy={_fmt(r.get('test_accuracy'))} ({r['wall_seconds']:.1f} s)"
        )
    for group in groups:
        built = None
        size = config.sweep.group_size if mode == "vmap" else 1
        for members in _chunks(group, size):
            claimed = [
                t
                for t in members
                if not finished(workdir, t) and claims.try_claim(lock_path(workdir, t))
            ]
            # Another process may have finished a trial between the check and the claim.
            ours = [t for t in claimed if not finished(workdir, t)]
            for t in claimed:
                if t not in ours:
                    claims.release(lock_path(workdir, t))
            if not ours:
                continue
            try:
                splits = splits_of(ours[0].config)
                if built is None:
                    built = vmapped.build_group(ours[0].config, splits)
                dirs = [trial_dir(workdir, t) for t in ours]
                for d in dirs:
                    _clear(d)
                _, results = vmapped.train_group(
                    [t.config for t in ours], splits, dirs, group=built, vmap=mode == "vmap"
                )
            finally:
                for t in ours:
                    claims.release(lock_path(workdir, t))
            for t, r in zip(ours, results, strict=True):
                ran.append(t.id)
                echo(
                    f"trial {t.id} {_overrides_line(t.overrides)}: {r['status']} "
                    f"val_accuracy={_fmt(r.get('val_accuracy'))} "
                    f"test_accuracy={_fmt(r.get('test_accuracy'))} "
                    f"({r['wall_seconds']:.1f} s)"
                )
    with claims.held(os.path.join(workdir, "locks", "tables.lock")):
        reports.REPORTS.get(config.sweep.report)(workdir, trials, config)
    return {
        "trials": len(trials),
        "ran": ran,
        "skipped": skipped,
        "stages": stages_ran,
        "parallel": mode,
        "probe": probe,
        "seconds": time.perf_counter() - t0,
    }


def _clear(directory: str) -> None:
    """Removes what a killed earlier attempt left in a trial folder (never a results.json)."""
    for name in ("metrics.jsonl", "config.json", "curves.png"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            os.unlink(path)


def _fmt(value) -> str:
    return "nan" if value is None else f"{value:.4f}"


def _overrides_line(overrides: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in overrides.items())


def _probe_line(p: dict) -> str:
    return (
        f"{p['sequential_trial_steps_per_s']:.0f} vs {p['vmap_trial_steps_per_s']:.0f} "
        f"trial-steps/s sequential vs vmap x{p['trials']}"
    )


def _write_manifest(config, workdir, trials, mode, probe) -> None:
    """DIR/sweep.json, per process (process 0's name is sweep.json)."""
    name = "sweep.json" if jax.process_index() == 0 else f"sweep.{jax.process_index()}.json"
    import json

    outputs.atomic_write_json(
        os.path.join(workdir, name),
        {
            "config": json.loads(config.to_json_best_effort(sort_keys=True)),
            "trials": [
                {"id": t.id, "index": t.index, "overrides": t.overrides, "pretrain": t.pretrain}
                for t in trials
            ],
            "stages": [
                {"name": s.name, "id": s.id, "overrides": s.overrides}
                for s in space.stages(config).values()
            ],
            "parallel": mode,
            "probe": probe,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "git_commit": outputs.git_commit(),
        },
    )
