"""Running a sweep: workers share an Optuna study, train its trials, then tabulate.

Layout of the sweep folder `DIR`:

  DIR/optuna.journal          the sweep's state (the default `sweep.storage`;
                              a database URL or another path may be given)
  DIR/sweep.json              the config, the study and storage, the trials and
                              the path ("vmap" or "sequential") fixed on the first run
  DIR/trials/<id>/            one training workdir per trial: config.json,
                              metrics.jsonl, curves.png, checkpoints/, results.json
  DIR/pretrain/<stage id>/    one training workdir per `sweep.pretrain` stage
  DIR/trials.csv, summary.md, summary.csv, loss_curves.png, val_accuracy_vs_lr.png

Workers: any number of processes, on any number of hosts, run the same command
against the same storage (`research.sweep.storage`). Each takes WAITING trials
of the study (an atomic transition: each trial is run by one worker), trains
them and tells their results; a finished trial is never run again. A worker
that dies mid-trial stops its heartbeat, and another worker takes the trial
over after `sweep.grace_seconds` and resumes it from the checkpoints in its
folder (when the hosts share DIR). A worker returns only when every trial of
the sweep has finished, waiting for trials that run elsewhere: so "the sweep
command returned" means "the table is complete".

Grid and random sweeps enqueue `space.expand`'s trials when the study is
created. A TPE sweep asks Optuna for `sweep.num_samples` trials as results come
in (`research.sweep.search`). With a pruner, each epoch's validation metric is
reported to the trial, and a trial the pruner judges hopeless is stopped there.

Before anything is written, every trial's config, model and input are checked
(`check_trials`: the data is prepared and each distinct model built and traced
on it, nothing compiled), so a trial that cannot run refuses the whole sweep in
one line; a refused sweep leaves the workdir and the storage as they were. A
trial that still fails while training (or loses its worker) is run again up to
`sweep.max_retries` attempts, then failed for good: the sweep finishes the
rest, writes the tables (the failed trials and their errors at the end of
`summary.md` and in `trials.csv`) and returns their ids under "failed".

Every trial is trained by the engine (`research.train.engine`), in groups of
trials that differ only in seed and optimizer hyperparameters
(`engine.group_key`): up to `sweep.group_size` at once on the "vmap" path, one
at a time on the "sequential" path. The path is fixed once per sweep:
`vmapped.resolve_parallel` when the study is created, recorded on the study and
in sweep.json, and reused by every later worker, so a sweep never mixes paths
and its table never depends on how busy the machine was. Pretraining stages
(`sweep.pretrain`) are trained first, each once, in a second study. One loop
does the claiming, training and telling for both (`research.sweep.worker`).

The report (`sweep.report`) is a generic name ("optimizers": the tables of
`aggregate`) or a "module:function" path of a study's report (e.g.
"research.studies.freezing:report"), called as `report(workdir, records,
config)` with one `storage.Record` per trial of the sweep, read from the storage.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from research import models
from research.sweep import aggregate, search, space, storage, vmapped
from research.sweep import study as optuna_api
from research.sweep.work import prepared, resolved_config, slots, stage_dir, trial_dir
from research.sweep.worker import Worker
from research.train import engine, outputs

__all__ = [
    "check_trials",
    "fixed_parallel",
    "records",
    "resolve_report",
    "resolved_config",
    "run_sweep",
    "stage_dir",
    "trial_dir",
]

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


def _recorded_parallel(workdir: str, study=None) -> tuple[str | None, str]:
    """The path the sweep's first run recorded (on its study, else DIR/sweep.json), if any."""
    if study is not None and study.user_attrs.get("parallel") in engine.PARALLEL_PATHS:
        return study.user_attrs["parallel"], f"study {study.name}"
    manifest = os.path.join(workdir, "sweep.json")
    if os.path.exists(manifest):
        with open(manifest) as f:
            recorded = json.load(f).get("parallel")
        if recorded in engine.PARALLEL_PATHS:
            return recorded, manifest
    return None, ""


def fixed_parallel(config: ml_collections.ConfigDict, workdir: str, study=None) -> tuple[str, str]:
    """The sweep's path: the one its first run recorded (study, else DIR/sweep.json), else the rule.

    Raises:
      ValueError: `sweep.parallel` names a path other than the one the sweep started with.
    """
    first, where = _recorded_parallel(workdir, study)
    if first is None:
        return vmapped.resolve_parallel(config.sweep.parallel)
    if config.sweep.parallel not in ("auto", first):
        raise ValueError(
            f"config.sweep.parallel={config.sweep.parallel!r}: {workdir} ran its trials "
            f"with {first!r}, and one comparison must not mix paths; keep "
            f"{first!r} (or 'auto') or choose a new workdir"
        )
    return first, f"fixed by the sweep's first run ({where})"


def _settled_parallel(config, workdir, sweep: storage.Sweep) -> tuple[str, str]:
    """`fixed_parallel`; the study's creator records it, the others wait for that."""
    if not sweep.created:
        deadline = time.monotonic() + config.sweep.grace_seconds
        while "parallel" not in sweep.trials.user_attrs and time.monotonic() < deadline:
            time.sleep(0.05)
    mode, reason = fixed_parallel(config, workdir, sweep.trials)
    if "parallel" not in sweep.trials.user_attrs:  # the creator, or it died before this
        sweep.trials.set_user_attr("parallel", mode)
        sweep.trials.set_user_attr("parallel_reason", reason)
    return mode, reason


def check_trials(config: ml_collections.ConfigDict, grid: list[space.Trial], cache: dict) -> None:
    """Checks that every trial's (and stage's) model takes its data, before anything runs.

    The data of each distinct data config is prepared (into `cache`, which the
    worker reuses) and each distinct model is built and traced on its input
    shape (`models.check_input`: nothing is compiled). A trial that starts from a
    pretraining stage is checked as its stage's architecture on its own data.

    Raises:
      ValueError: one line naming the trial's overrides and what its model cannot take.
    """
    named = space.stages(config)
    checks = [(f"sweep.pretrain.{s.name}", s.config) for s in named.values()]
    for t in grid:
        cfg = space.apply(t.config, {"transfer.pretrained": ""}) if t.pretrain else t.config
        checks.append((f"trial {t.overrides}", cfg))
    seen = set()
    for where, cfg in checks:
        key = json.dumps(
            [cfg.model.to_dict(), cfg.data.to_dict(), cfg.compute_dtype, cfg.transfer.pretrained],
            sort_keys=True,
            default=str,
        )
        if key in seen:
            continue
        seen.add(key)
        try:
            splits, _ = prepared(cfg, cache)
            overrides = dict(cfg.model.overrides)
            if cfg.compute_dtype == "bfloat16":
                overrides["dtype"] = jax.numpy.bfloat16
            model = models.create(cfg.model.name, num_classes=splits.num_classes, **overrides)
            models.check_input(cfg.model.name, model, splits.input_shape)
        except ValueError as err:
            raise ValueError(f"{where}: {err}; no trial was run") from None


def run_sweep(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    echo: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Runs trials of the sweep until every one has settled, then writes the tables and plots.

    Args:
      config: a sweep config (`space.get_sweep_config()` plus axes).
      workdir: the sweep folder (created; an existing one is resumed).
      echo: called with one line per trial started, finished, failed or taken over.

    Returns:
      `{"trials": n, "ran": ids trained here, "skipped": ids finished before,
      "recorded": ids whose results.json was there but not in the study (told
      here without training), "pruned": ids pruned here, "taken_over": ids
      taken over here, "failed": ids failed for good (`sweep.max_retries`),
      "stages": stage ids trained here, "parallel": path, "study": name,
      "storage": where (no password), "seconds": wall time}`.

    Raises:
      ValueError: a bad sweep or trial config, or storage (the message names it);
        nothing was written then.
      engine.Interrupted: SIGTERM/SIGINT; the trials were handed back to the study.
    """
    t0 = time.perf_counter()
    report = resolve_report(config.sweep.report)
    grid = space.expand(config)  # every input error surfaces here, before anything is written
    tpe = search.Space.of(grid) if config.sweep.mode == "tpe" else None
    if jax.process_count() > 1:
        raise ValueError(
            "scripts/sweep.py runs one worker per process and shares trials through "
            "sweep.storage; start it on each host without jax.distributed"
        )
    url = storage.database_url(config, workdir)
    fixed_parallel(config, workdir)  # a path other than the recorded one: refused here
    cache: dict = {}
    check_trials(config, grid, cache)
    sweep = storage.open_sweep(
        config, workdir, url=url, sampler=search.sampler(config), pruner=search.pruner(config)
    )
    os.makedirs(workdir, exist_ok=True)
    for name, diff in sweep.replaced:
        echo(
            f"{workdir} held study {name}, whose config differs ({', '.join(diff[:6])}"
            f"{', ...' if len(diff) > 6 else ''}): this config is the new study {sweep.name}"
        )
    mode, reason = _settled_parallel(config, workdir, sweep)
    _write_manifest(config, workdir, grid if tpe is None else [], mode, reason, sweep)
    with storage.Heartbeats(sweep.trials.storage, config.sweep.heartbeat_seconds) as beats:
        worker = Worker(config, workdir, sweep, beats, mode, grid, tpe, echo)
        worker.cache = cache
        skipped = worker.finished_before()
        echo(
            f"study {sweep.name} in {storage.shown(sweep.url)}: "
            f"{worker.describe()}, {len(skipped)} finished before ({mode}: {reason})"
        )
        worker.run()
        records = _records(config, grid, tpe, worker.trials.queue.all())
    failed = [r for r in records if r.state == "fail" and "gave_up" in r.results]
    with storage.report_lock(workdir):
        report(workdir, records, config)
        if failed:
            _note_failures(workdir, failed)
    return {
        "trials": len(records),
        "ran": worker.ran,
        "skipped": skipped,
        "recorded": worker.recorded,
        "pruned": worker.pruned,
        "taken_over": worker.taken_over,
        "failed": [r.id for r in failed],
        "stages": worker.stages_ran,
        "parallel": mode,
        "study": sweep.name,
        "storage": storage.shown(sweep.url),
        "seconds": time.perf_counter() - t0,
    }


def _note_failures(workdir: str, failed: list[storage.Record]) -> None:
    """Adds the trials failed for good to the report's summary.md and trials.csv.

    Whatever the report, its tables cover finished trials; a failed one gets a
    line under summary.md and a row in trials.csv (`status` "failed", `error`).
    """
    lines = ["", f"Failed for good ({len(failed)}; sweep.max_retries attempts each):", ""]
    for r in failed:
        overrides = " ".join(f"{k}={v}" for k, v in r.overrides.items())
        lines.append(f"- {r.id} {overrides}: {r.results.get('error', '?')}")
    path = os.path.join(workdir, "summary.md")
    text = ""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    aggregate.write_text(path, text + "\n".join(lines) + "\n")
    path = os.path.join(workdir, "trials.csv")
    rows: list[dict] = []
    if os.path.exists(path):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    for r in failed:
        rows.append(
            {"trial_id": r.id, **r.overrides, "status": "failed", "error": r.results.get("error")}
        )
    aggregate.write_csv(rows, path)


def _records(config, grid, tpe, trials) -> list[storage.Record]:
    if tpe is None:
        wanted = grid
    else:
        base, named = space.base_config(config), space.stages(config)
        chosen = [t for t in slots(trials)[: config.sweep.num_samples] if t.params]
        wanted = [
            space.make_trial(base, tpe.point(t.params), named, i, space.trial_scope(config))
            for i, t in enumerate(chosen)
        ]
    return storage.records(wanted, trials)


def records(config: ml_collections.ConfigDict, workdir: str) -> list[storage.Record]:
    """The sweep's trials as its storage holds them, in sweep order (for reports and notebooks).

    Raises:
      ValueError: a bad config or storage; KeyError: the sweep has not started.
    """
    grid = space.expand(config)
    tpe = search.Space.of(grid) if config.sweep.mode == "tpe" else None
    backend = storage.open_storage(storage.database_url(config, workdir))
    study = optuna_api.StudyHandle.load(storage.study_name(config), backend)
    return _records(config, grid, tpe, study.trials())


def _write_manifest(config, workdir, trials, mode, reason, sweep: storage.Sweep) -> None:
    """DIR/sweep.json: what this sweep is, where its state lives (no password), and its path."""
    outputs.atomic_write_json(
        os.path.join(workdir, "sweep.json"),
        {
            "config": storage.public_config(config),
            "study": sweep.name,
            "storage": storage.shown(sweep.url),
            "replaced_studies": [{"study": n, "fields_differ": d} for n, d in sweep.replaced],
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
            "host": storage.worker_name(),
            "git_commit": outputs.git_commit(),
        },
    )
