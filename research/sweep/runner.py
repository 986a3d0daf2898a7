"""Running a sweep: trials claimed, grouped, run vmapped or in turn, then tabulated.

Layout of the sweep folder `DIR`:

  DIR/sweep.json              the config, every trial (id, overrides) and the
                              path ("vmap" or "sequential") fixed on the first run
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

Every trial is trained by the engine (`research.train.engine`), in groups of
trials that differ only in seed and optimizer hyperparameters
(`engine.group_key`), transfer trials included. The path is fixed once per
sweep: `vmapped.resolve_parallel` on the first run, written to sweep.json and
reused by every later process and resume, so a sweep never mixes paths and its
table never depends on how busy the machine was. Pretraining stages
(`sweep.pretrain`) are trained first, each once, under a lock every process
waits on.

The report (`sweep.report`) is a generic name ("optimizers": the tables of
`aggregate`) or a "module:function" path of a study's report (e.g.
"research.studies.freezing:report"), called as `report(workdir, trials, config)`.
"""

from __future__ import annotations

import collections
import importlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from research.sweep import claims, space, vmapped
from research.train import engine, loop, outputs

log = logging.getLogger(__name__)


def trial_dir(workdir: str, trial: space.Trial) -> str:
    return os.path.join(workdir, "trials", trial.id)


def lock_path(workdir: str, trial: space.Trial) -> str:
    return os.path.join(workdir, "locks", f"{trial.id}.lock")


def finished(workdir: str, trial: space.Trial) -> bool:
    return os.path.exists(os.path.join(trial_dir(workdir, trial), "results.json"))


def stage_dir(workdir: str, stage: space.Stage) -> str:
    return os.path.join(workdir, "pretrain", stage.id)


def resolved_config(workdir: str, trial: space.Trial, named: dict) -> ml_collections.ConfigDict:
    """The trial's config with "pretrain:NAME" replaced by the stage's folder."""
    if not trial.pretrain:
        return trial.config
    return space.apply(
        trial.config, {"transfer.pretrained": stage_dir(workdir, named[trial.pretrain])}
    )


def run_stages(workdir, stages, splits_of, echo) -> list[str]:
    """Trains each unfinished stage once; waits while another process trains it."""
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
            try:
                splits, reason = splits_of(stage.config)
                run = loop.build_run(stage.config, splits=splits, loader_reason=reason)
                r = loop.train_and_evaluate(stage.config, folder, run=run)
            except loop.TrainingDiverged as err:
                raise ValueError(f"sweep.pretrain.{stage.name}: {err}") from None
            ran.append(stage.id)
            echo(
                f"pretrain {stage.name}: val_accuracy={_fmt(r.get('val_accuracy'))} "
                f"test_accuracy={_fmt(r.get('test_accuracy'))} ({r['wall_seconds']:.1f} s)"
            )
    return ran


def _splits(config: ml_collections.ConfigDict, cache: dict):
    """The trial's data (`loop.prepare_data`), shared by the trials with the same fields."""
    fields = {"data": config.data.to_dict(), "pretrained": config.transfer.pretrained}
    key = ("prepared", json.dumps(fields, sort_keys=True, default=str))
    if key not in cache:
        cache[key] = loop.prepare_data(config, cache)
    return cache[key]


def _groups(trials: list[space.Trial]) -> list[list[space.Trial]]:
    """Trials by `engine.group_key`, in order of first appearance."""
    groups: dict[str, list[space.Trial]] = collections.OrderedDict()
    for t in trials:
        groups.setdefault(engine.group_key(t.config), []).append(t)
    return list(groups.values())


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


REPORTS = {"optimizers": "research.sweep.aggregate:report"}  # generic reports, by name


def resolve_report(name: str) -> Callable:
    """The report function named by `sweep.report`: a generic name or "module:function"."""
    path = REPORTS.get(name, name)
    module, _, attr = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr) if attr else None
    except ImportError:
        fn = None
    if not callable(fn):
        raise ValueError(
            f"config.sweep.report={name!r} is invalid: give a generic report "
            f"({', '.join(REPORTS)}) or a 'module:function' path, e.g. "
            f"'research.studies.freezing:report'"
        )
    return fn


def fixed_parallel(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, str]:
    """The sweep's path: the one in DIR/sweep.json if the sweep ran before, else the rule.

    Raises:
      ValueError: `sweep.parallel` names a path other than the one the sweep started with.
    """
    path, reason = vmapped.resolve_parallel(config.sweep.parallel)
    manifest = os.path.join(workdir, "sweep.json")
    if os.path.exists(manifest):
        with open(manifest) as f:
            first = json.load(f).get("parallel")
        if first in engine.PARALLEL_PATHS:
            if config.sweep.parallel not in ("auto", first):
                raise ValueError(
                    f"config.sweep.parallel={config.sweep.parallel!r}: {workdir} ran its trials "
                    f"with {first!r}, and one comparison must not mix paths; keep "
                    f"{first!r} (or 'auto') or choose a new --workdir"
                )
            return first, f"fixed by the sweep's first run ({manifest})"
    return path, reason


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
    report = resolve_report(config.sweep.report)
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
    groups = _groups(pending)
    mode, reason = fixed_parallel(config, workdir)
    echo(
        f"{len(trials)} trials: {len(skipped)} finished before, {len(pending)} to run here "
        f"({mode}: {reason})"
    )
    _write_manifest(config, workdir, trials, mode, reason)
    needed = {t.pretrain for t in pending if t.pretrain}
    stages_ran = run_stages(workdir, [named[n] for n in named if n in needed], splits_of, echo)
    ran: list[str] = []
    for group in groups:
        run, programs = None, None
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
                configs = [resolved_config(workdir, t, named) for t in ours]
                if run is None:
                    splits, reason = splits_of(configs[0])
                    run = loop.build_run(configs[0], splits=splits, loader_reason=reason)
                    programs = engine.build_programs(run, mode)
                members = [
                    engine.Member(c, trial_dir(workdir, t))
                    for c, t in zip(configs, ours, strict=True)
                ]
                outcomes = engine.train(run, members, programs=programs)
            finally:
                for t in ours:
                    claims.release(lock_path(workdir, t))
            for t, r in zip(ours, [o.results for o in outcomes], strict=True):
                ran.append(t.id)
                echo(
                    f"trial {t.id} {_overrides_line(t.overrides)}: {r['status']} "
                    f"val_accuracy={_fmt(r.get('val_accuracy'))} "
                    f"test_accuracy={_fmt(r.get('test_accuracy'))} "
                    f"({r['wall_seconds']:.1f} s)"
                )
    with claims.held(os.path.join(workdir, "locks", "tables.lock")):
        report(workdir, trials, config)
    return {
        "trials": len(trials),
        "ran": ran,
        "skipped": skipped,
        "stages": stages_ran,
        "parallel": mode,
        "seconds": time.perf_counter() - t0,
    }


def _fmt(value) -> str:
    return "nan" if value is None else f"{value:.4f}"


def _overrides_line(overrides: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in overrides.items())


def _write_manifest(config, workdir, trials, mode, reason) -> None:
    """DIR/sweep.json, per process (process 0's name is sweep.json)."""
    name = "sweep.json" if jax.process_index() == 0 else f"sweep.{jax.process_index()}.json"
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
            "parallel_reason": reason,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "git_commit": outputs.git_commit(),
        },
    )
