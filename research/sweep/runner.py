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

Every trial is trained by the engine (`research.train.engine`), in groups of
trials that differ only in seed and optimizer hyperparameters
(`engine.group_key`): up to `sweep.group_size` at once on the "vmap" path, one
at a time on the "sequential" path. The path is fixed once per sweep:
`vmapped.resolve_parallel` when the study is created, recorded on the study and
in sweep.json, and reused by every later worker, so a sweep never mixes paths
and its table never depends on how busy the machine was. Pretraining stages
(`sweep.pretrain`) are trained first, each once, in a second study.

The report (`sweep.report`) is a generic name ("optimizers": the tables of
`aggregate`) or a "module:function" path of a study's report (e.g.
"research.studies.freezing:report"), called as `report(workdir, records,
config)` with one `storage.Record` per trial of the sweep, read from the storage.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optuna
from optuna.trial import FrozenTrial, TrialState

from research.sweep import search, space, storage, vmapped
from research.train import engine, loop, outputs

log = logging.getLogger(__name__)


def trial_dir(workdir: str, trial: space.Trial) -> str:
    return os.path.join(workdir, "trials", trial.id)


def stage_dir(workdir: str, stage: space.Stage) -> str:
    return os.path.join(workdir, "pretrain", stage.id)


def resolved_config(workdir: str, trial: space.Trial, named: dict) -> ml_collections.ConfigDict:
    """The trial's config with "pretrain:NAME" replaced by the stage's folder."""
    if not trial.pretrain:
        return trial.config
    return space.apply(
        trial.config, {"transfer.pretrained": stage_dir(workdir, named[trial.pretrain])}
    )


def _splits(config: ml_collections.ConfigDict, cache: dict):
    """The trial's data (`loop.prepare_data`), shared by the trials with the same fields."""
    fields = {"data": config.data.to_dict(), "pretrained": config.transfer.pretrained}
    key = ("prepared", json.dumps(fields, sort_keys=True, default=str))
    if key not in cache:
        cache[key] = loop.prepare_data(config, cache)
    return cache[key]


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


def fixed_parallel(
    config: ml_collections.ConfigDict, workdir: str, study: optuna.Study | None = None
) -> tuple[str, str]:
    """The sweep's path: the one its first run recorded (study, else DIR/sweep.json), else the rule.

    Raises:
      ValueError: `sweep.parallel` names a path other than the one the sweep started with.
    """
    first, where = None, ""
    if study is not None and study.user_attrs.get("parallel") in engine.PARALLEL_PATHS:
        first, where = study.user_attrs["parallel"], f"study {study.study_name}"
    manifest = os.path.join(workdir, "sweep.json")
    if first is None and os.path.exists(manifest):
        with open(manifest) as f:
            recorded = json.load(f).get("parallel")
        if recorded in engine.PARALLEL_PATHS:
            first, where = recorded, manifest
    if first is None:
        return vmapped.resolve_parallel(config.sweep.parallel)
    if config.sweep.parallel not in ("auto", first):
        raise ValueError(
            f"config.sweep.parallel={config.sweep.parallel!r}: {workdir} ran its trials "
            f"with {first!r}, and one comparison must not mix paths; keep "
            f"{first!r} (or 'auto') or choose a new --workdir"
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


def run_sweep(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    echo: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Runs trials of the sweep until every one has finished, then writes the tables and plots.

    Args:
      config: a sweep config (`space.get_sweep_config()` plus axes).
      workdir: the sweep folder (created; an existing one is resumed).
      echo: called with one line per trial started, finished or taken over (the CLI prints them).

    Returns:
      `{"trials": n, "ran": ids trained here, "skipped": ids finished before,
      "recorded": ids whose results.json was there but not in the study (told
      here without training), "pruned": ids pruned here, "taken_over": ids
      taken over here, "stages": stage ids trained here, "parallel": path,
      "study": name, "storage": where, "seconds": wall time}`.

    Raises:
      ValueError: a bad sweep or trial config, or storage (the message names it).
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
    os.makedirs(workdir, exist_ok=True)
    sweep = storage.open_sweep(
        config, workdir, sampler=search.sampler(config), pruner=search.pruner(config)
    )
    for name, diff in sweep.replaced:
        echo(
            f"{workdir} held study {name}, whose config differs ({', '.join(diff[:6])}"
            f"{', ...' if len(diff) > 6 else ''}): this config is the new study {sweep.name}"
        )
    mode, reason = _settled_parallel(config, workdir, sweep)
    _write_manifest(config, workdir, grid if tpe is None else [], mode, reason, sweep)
    with storage.Heartbeats(sweep.trials._storage, config.sweep.heartbeat_seconds) as beats:
        worker = _Worker(config, workdir, sweep, beats, mode, grid, tpe, echo)
        skipped = worker.finished_before()
        echo(
            f"study {sweep.name} in {storage.shown(sweep.url)}: "
            f"{worker.describe()}, {len(skipped)} finished before ({mode}: {reason})"
        )
        worker.run_stages()
        worker.run_trials()
        records = worker.records()
    with storage.report_lock(workdir):
        report(workdir, records, config)
    return {
        "trials": len(records),
        "ran": worker.ran,
        "skipped": skipped,
        "recorded": worker.recorded,
        "pruned": worker.pruned,
        "taken_over": worker.taken_over,
        "stages": worker.stages_ran,
        "parallel": mode,
        "study": sweep.name,
        "storage": storage.shown(sweep.url),
        "seconds": time.perf_counter() - t0,
    }


class _Worker:
    """One process's part in a sweep: claim, train and tell, until the study is done."""

    def __init__(self, config, workdir, sweep, beats, mode, grid, tpe, echo):
        self.config, self.workdir, self.sweep, self.beats = config, workdir, sweep, beats
        self.mode, self.grid, self.tpe, self.echo = mode, grid, tpe, echo
        self.named = space.stages(config)
        self.base = space.base_config(config)
        self.scope = space.trial_scope(config)
        self.grace = config.sweep.grace_seconds
        self.poll = min(max(config.sweep.heartbeat_seconds / 2, 0.05), 5.0)
        self.size = config.sweep.group_size if mode == "vmap" else 1
        self.dists = search.distributions(grid)
        self.by_id = {t.id: t for t in grid}
        self.queue = storage.Queue(sweep.trials, beats, grace_seconds=self.grace)
        self.ran: list[str] = []
        self.recorded: list[str] = []  # finished before, told here from their results.json
        self.pruned: list[str] = []
        self.taken_over: list[str] = []
        self.stages_ran: list[str] = []
        self._cache: dict = {}  # data splits, by data config
        self._programs: tuple[str, Any, Any] | None = None  # (group key, run, programs)
        self._waiting_note = ""
        self.metric_key = sweep.metric.removeprefix("val_")  # "accuracy" or "loss"
        if sweep.created and tpe is None:
            for t in grid:
                self.queue.enqueue(search.job(t, self.dists))

    # ------------------------------------------------------------------ bookkeeping

    def describe(self) -> str:
        if self.tpe is not None:
            return f"tpe, {self.config.sweep.num_samples} trials"
        return f"{len(self.grid)} trials"

    def finished_before(self) -> list[str]:
        done = {storage.trial_key(t) for t in self.queue.all() if t.state in storage.FINISHED}
        return sorted(i for i in done if i is not None)

    def _slots(self, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        return _slots(trials)

    def _ids(self, trials: list[FrozenTrial]) -> list[str | None]:
        """The trial ids that must finish: the grid's, or the first num_samples slots'."""
        if self.tpe is None:
            return [t.id for t in self.grid]
        slots = self._slots(trials)[: self.config.sweep.num_samples]
        return [storage.trial_key(t) for t in slots]

    def _trial(self, frozen: FrozenTrial) -> space.Trial:
        """The sweep trial an Optuna trial runs."""
        key = storage.trial_key(frozen)
        if key not in self.by_id:
            point = self.tpe.point(frozen.params)
            trial = space.make_trial(self.base, point, self.named, 0, self.scope)
            if trial.id != key:
                raise RuntimeError(f"trial #{frozen.number}: params {frozen.params} are not {key}")
            self.by_id[key] = trial
        return self.by_id[key]

    def records(self) -> list[storage.Record]:
        return _records(self.config, self.grid, self.tpe, self.queue.all())

    def _job(self, key: str, trials: list[FrozenTrial]) -> storage.Job:
        """What to enqueue again for trial id `key`: its grid job, else its last trial's."""
        if key in self.by_id and self.tpe is None:
            return search.job(self.by_id[key], self.dists)
        last = max((t for t in trials if storage.trial_key(t) == key), key=lambda t: t.number)
        return storage.Job(
            key, dict(last.params), dict(last.distributions), _job_attrs(last.user_attrs)
        )

    # ------------------------------------------------------------------ the loop

    def _maintain(self, queue: storage.Queue, trials, ids, job_of) -> None:
        """Takes over stale trials and enqueues trials that have none."""
        for t in queue.stale(trials):
            key = storage.trial_key(t)
            job = job_of(key, trials) if key is not None else None
            if queue.take_over(t, job):
                beat = t.user_attrs.get("heartbeat") or {}
                self.echo(
                    f"took over trial {key or '(unsampled)'} (#{t.number}): the heartbeat of "
                    f"{beat.get('worker', 'its worker')} stood still for {self.grace:g} s"
                )
                if key is not None:
                    self.taken_over.append(key)
        for key in queue.orphans([i for i in ids if i is not None], trials):
            queue.enqueue(job_of(key, trials), retry_of=-1)

    def _wait(self, trials, ids) -> None:
        running = sorted(
            {
                str(t.user_attrs.get("worker", "?"))
                for t in trials
                if t.state == TrialState.RUNNING and t._trial_id not in self.beats
            }
        )
        note = f"waiting for trials running elsewhere ({', '.join(running)})" if running else ""
        if note and note != self._waiting_note:
            self.echo(note)
        self._waiting_note = note
        time.sleep(self.poll)

    def _claim(self, queue, candidates: list[FrozenTrial]) -> list[FrozenTrial]:
        """Claims `candidates` (WAITING); keeps the canonical ones, yields the rest."""
        claimed = [t for t in candidates if queue.claim(t)]
        if not claimed:
            return []
        fresh = queue.all()  # read after claiming: see storage.Queue
        kept = []
        for t in claimed:
            why = queue.canonical(t, fresh)
            if why:
                queue.fail(t, yielded=why)
            else:
                kept.append(t)
        return kept

    def run_trials(self) -> None:
        queue = self.queue
        while True:
            trials = queue.all()
            ids = self._ids(trials)
            finished = {storage.trial_key(t) for t in trials if t.state in storage.FINISHED}
            complete = all(i is not None and i in finished for i in ids)
            if complete and (self.tpe is None or len(ids) >= self.config.sweep.num_samples):
                return
            self._maintain(queue, trials, ids, self._job)
            batch = self._next_batch(queue, trials, finished)
            if not batch and self.tpe is not None:
                batch = self._ask(queue, trials)
            if batch:
                self._train(queue, batch)
            else:
                self._wait(trials, ids)

    def _next_batch(self, queue, trials, finished) -> list[FrozenTrial]:
        """Up to `size` WAITING trials of one group, all retries or all fresh, claimed."""
        waiting = [
            t
            for t in sorted(trials, key=lambda t: t.number)
            if t.state == TrialState.WAITING
            and storage.trial_key(t) is not None
            and storage.trial_key(t) not in finished
        ]
        while waiting:
            first = waiting[0]
            key = engine.group_key(self._trial(first).config)
            retry = "retry_of" in first.user_attrs
            same = [
                t
                for t in waiting
                if ("retry_of" in t.user_attrs) == retry
                and engine.group_key(self._trial(t).config) == key
            ][: self.size]
            kept = self._claim(queue, same)
            if kept:
                return kept
            waiting = [t for t in waiting if t not in same]
        return []

    def _ask(self, queue, trials) -> list[FrozenTrial]:
        """TPE: new trials proposed by the sampler, up to `size`, within the budget."""
        s = self.config.sweep
        study = self.sweep.trials
        out = []
        for _ in range(self.size):
            if len(self._slots(queue.all())) >= s.num_samples:
                break
            trial = study.ask()  # a new RUNNING trial (or a retry enqueued meanwhile)
            self.beats.add(trial._trial_id)
            trial.set_user_attr("worker", queue.worker)
            if "trial_id" not in trial.user_attrs:
                # Seeded by the trial's number: see research.sweep.search.
                study.sampler = search.sampler(self.config, trial.number)
                point = self.tpe.propose(trial)
                chosen = space.make_trial(self.base, point, self.named, trial.number, self.scope)
                trial.set_user_attr("overrides", space._plain(chosen.overrides))
                trial.set_user_attr("trial_id", chosen.id)
                self.by_id[chosen.id] = chosen
            fresh = queue.all()  # read after the trial exists: see storage.Queue
            frozen = next(t for t in fresh if t.number == trial.number)
            slots = [t.number for t in self._slots(fresh)]
            why = queue.canonical(frozen, fresh)
            if not why and frozen.number in slots and slots.index(frozen.number) >= s.num_samples:
                why = f"over the budget of sweep.num_samples={s.num_samples}"
            if why:
                queue.fail(frozen, yielded=why)
                continue
            out.append(frozen)
        return out

    # ------------------------------------------------------------------ training

    def _run_of(self, config) -> loop.Run:
        splits, reason = _splits(config, self._cache)
        return loop.build_run(config, splits=splits, loader_reason=reason)

    def _build(self, configs) -> tuple[Any, Any]:
        key = engine.group_key(configs[0])
        if self._programs is None or self._programs[0] != key:
            self._programs = None  # the last group's compiled programs are let go first
            run = self._run_of(configs[0])
            self._programs = (key, run, engine.build_programs(run, self.mode))
        return self._programs[1], self._programs[2]

    def _train(self, queue, batch: list[FrozenTrial]) -> None:
        groups: dict[str, list[FrozenTrial]] = {}
        for t in batch:
            groups.setdefault(engine.group_key(self._trial(t).config), []).append(t)
        for members in groups.values():
            self._train_group(queue, members)

    def _train_group(self, queue, frozen: list[FrozenTrial]) -> None:
        study = self.sweep.trials
        frozen = [t for t in frozen if not self._recorded(queue, t)]
        if not frozen:
            return
        trials = [self._trial(t) for t in frozen]
        handles = [optuna.Trial(study, t._trial_id) for t in frozen]
        pruning = self.config.sweep.pruner != "none"

        def on_epoch(epoch: int, val: dict[int, dict[str, float]]) -> set[int]:
            stop = set()
            for i, metrics in val.items():
                value = metrics.get(self.metric_key)
                if value is None or not math.isfinite(value):
                    continue
                try:
                    if epoch not in frozen[i].intermediate_values:  # a retry's are carried over
                        handles[i].report(value, epoch)
                    # Not after the last epoch: there is nothing left to save.
                    last = epoch >= trials[i].config.num_epochs
                    if pruning and not last and handles[i].should_prune():
                        stop.add(i)
                except optuna.exceptions.UpdateFinishedTrialError:
                    continue  # taken over by another worker: its result will not count here
            return stop

        for t, trial in zip(frozen, trials, strict=True):
            retry = f" (retry of #{t.user_attrs['retry_of']})" if "retry_of" in t.user_attrs else ""
            self.echo(f"start trial {trial.id} {_overrides_line(trial.overrides)}{retry}")
        try:
            configs = [resolved_config(self.workdir, t, self.named) for t in trials]
            run, programs = self._build(configs)
            members = [
                engine.Member(c, trial_dir(self.workdir, t))
                for c, t in zip(configs, trials, strict=True)
            ]
            outcomes = engine.train(run, members, programs=programs, on_epoch=on_epoch)
        except outputs.WorkdirBusy as err:
            self._hand_back(queue, frozen, f"trial folder busy: {err}")
            self.echo(f"trial folder in use by another process; handed back: {err}")
            time.sleep(self.poll)
            return
        except BaseException as err:
            self._hand_back(queue, frozen, f"{type(err).__name__}: {err}")
            raise
        for t, trial, handle, outcome in zip(frozen, trials, handles, outcomes, strict=True):
            r = outcome.results
            folder = trial_dir(self.workdir, trial)
            told = self._tell(t, handle, folder, r, run.steps_per_epoch)
            self.ran.append(trial.id)
            if r["status"] == "pruned":
                self.pruned.append(trial.id)
            self.echo(
                f"trial {trial.id} {_overrides_line(trial.overrides)}: {r['status']} "
                f"val_accuracy={_fmt(r.get('val_accuracy'))} "
                f"test_accuracy={_fmt(r.get('test_accuracy'))} "
                f"({r['wall_seconds']:.1f} s){'' if told else ' [taken over: not counted]'}"
            )

    def _recorded(self, queue, frozen: FrozenTrial) -> bool:
        """Tells a claimed trial whose folder already has its results.json; True if it did.

        The engine writes results.json last, so its presence means the trial
        finished: its worker died before telling the study, or another sweep
        with the same trial (the same config, hence the same folder) ran it.
        """
        trial = self._trial(frozen)
        folder = trial_dir(self.workdir, trial)
        path = os.path.join(folder, "results.json")
        if not os.path.exists(path):
            return False
        with open(path) as f:
            results = json.load(f)
        handle = optuna.Trial(self.sweep.trials, frozen._trial_id)
        key = f"val_{self.metric_key}"
        for record in outputs.read_jsonl(os.path.join(folder, "metrics.jsonl")):
            value = record.get(key)
            epoch = record.get("epoch")
            known = frozen.intermediate_values  # a retry carries the epochs reported before
            if isinstance(value, float) and math.isfinite(value) and epoch not in known:
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    handle.report(value, int(epoch))
        spe = results["steps"] / results["epochs"] if results.get("epochs") else None
        self._tell(frozen, handle, folder, results, int(round(spe)) if spe else None)
        self.recorded.append(trial.id)
        self.echo(
            f"trial {trial.id} {_overrides_line(trial.overrides)}: {results['status']} "
            f"(its results.json was there: recorded without training)"
        )
        return True

    def _hand_back(self, queue, frozen: list[FrozenTrial], why: str) -> None:
        """Fails this worker's trials and enqueues each again, for any worker to resume."""
        fresh = {t.number: t for t in queue.all()}
        for t in frozen:
            if queue.fail(t, failed=why):
                queue.enqueue(
                    self._job(storage.trial_key(t), list(fresh.values())),
                    retry_of=t.number,
                    intermediate_values=dict(fresh[t.number].intermediate_values),
                )

    def _tell(self, frozen, handle, folder: str, results: dict, steps_per_epoch) -> bool:
        """Records a trained trial's results on its Optuna trial; False if taken over."""
        study = self.sweep.trials
        attrs = outputs.finite(dict(results))
        records = outputs.read_jsonl(os.path.join(folder, "metrics.jsonl"))
        losses = [r["train_loss"] for r in records if "train_loss" in r]
        attrs.update(
            final_train_loss=outputs.finite(losses[-1]) if losses else None,
            steps_per_epoch=steps_per_epoch,
            workdir=os.path.abspath(folder),
        )
        try:
            for key, value in attrs.items():
                handle.set_user_attr(key, value)
            self.beats.discard(frozen._trial_id)
            if results["status"] == "pruned":
                study.tell(handle, state=TrialState.PRUNED)
            else:
                study.tell(handle, _value(results.get(self.sweep.metric), self.sweep.direction))
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as err:
            log.warning(
                "trial #%d was taken over; its result is not counted: %s", frozen.number, err
            )
            return False
        return True

    # ------------------------------------------------------------------ pretraining stages

    def run_stages(self) -> None:
        needed = {t.pretrain for t in self.grid if t.pretrain}
        stages = [s for name, s in self.named.items() if name in needed]
        if not stages:
            return
        queue = storage.Queue(self.sweep.stages, self.beats, grace_seconds=self.grace)
        jobs = {
            s.id: storage.Job(s.id, attrs={"stage": s.name, "overrides": space._plain(s.overrides)})
            for s in stages
        }
        by_id = {s.id: s for s in stages}
        if self.sweep.stages_created:
            for job in jobs.values():
                queue.enqueue(job)
        while True:
            trials = queue.all()
            finished = {storage.trial_key(t) for t in trials if t.state in storage.FINISHED}
            if all(i in finished for i in jobs):
                return
            self._maintain(queue, trials, list(jobs), lambda key, _: jobs[key])
            waiting = [
                t
                for t in sorted(trials, key=lambda t: t.number)
                if t.state == TrialState.WAITING and storage.trial_key(t) not in finished
            ]
            claimed = []
            for t in waiting:
                claimed = self._claim(queue, [t])
                if claimed:
                    break
            if claimed:
                self._train_stage(queue, claimed[0], by_id[storage.trial_key(claimed[0])])
            else:
                self._wait(trials, list(jobs))

    def _train_stage(self, queue, frozen: FrozenTrial, stage: space.Stage) -> None:
        folder = stage_dir(self.workdir, stage)
        self.echo(f"pretrain {stage.name} ({stage.id}) {_overrides_line(stage.overrides)}")
        try:
            r = loop.train_and_evaluate(stage.config, folder, run=self._run_of(stage.config))
        except BaseException as err:
            if queue.fail(frozen, failed=f"{type(err).__name__}: {err}"):
                queue.enqueue(
                    storage.Job(stage.id, attrs=_job_attrs(frozen.user_attrs)),
                    retry_of=frozen.number,
                )
            if isinstance(err, loop.TrainingDiverged):
                raise ValueError(f"sweep.pretrain.{stage.name}: {err}") from None
            raise
        self.stages_ran.append(stage.id)
        handle = optuna.Trial(self.sweep.stages, frozen._trial_id)
        try:
            for key, value in outputs.finite(dict(r)).items():
                handle.set_user_attr(key, value)
            handle.set_user_attr("workdir", os.path.abspath(folder))
            self.beats.discard(frozen._trial_id)
            self.sweep.stages.tell(handle, _value(r.get(self.sweep.metric), self.sweep.direction))
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            log.warning("stage %s was taken over meanwhile", stage.name)
        self.echo(
            f"pretrain {stage.name}: val_accuracy={_fmt(r.get('val_accuracy'))} "
            f"test_accuracy={_fmt(r.get('test_accuracy'))} ({r['wall_seconds']:.1f} s)"
        )


def _slots(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """TPE: the sampled trials, in order (retries and yielded trials are no slots)."""
    return [
        t
        for t in sorted(trials, key=lambda t: t.number)
        if "retry_of" not in t.user_attrs and not storage.yielded(t)
    ]


def _records(config, grid, tpe, trials: list[FrozenTrial]) -> list[storage.Record]:
    if tpe is None:
        wanted = grid
    else:
        base, named = space.base_config(config), space.stages(config)
        slots = [t for t in _slots(trials)[: config.sweep.num_samples] if t.params]
        wanted = [
            space.make_trial(base, tpe.point(t.params), named, i, space.trial_scope(config))
            for i, t in enumerate(slots)
        ]
    return storage.records(wanted, trials)


def records(config: ml_collections.ConfigDict, workdir: str) -> list[storage.Record]:
    """The sweep's trials as its storage holds them, in sweep order (for reports and notebooks).

    Raises:
      ValueError: a bad config or storage; KeyError: the sweep has not started.
    """
    grid = space.expand(config)
    tpe = search.Space.of(grid) if config.sweep.mode == "tpe" else None
    backend = storage.open_storage(storage.storage_url(config.sweep.storage, workdir))
    study = optuna.load_study(study_name=storage.study_name(config), storage=backend)
    return _records(config, grid, tpe, study.get_trials(deepcopy=False))


# User attrs that describe what a trial runs (copied to its retries), not how it went.
JOB_ATTRS = ("overrides", "stage")


def _job_attrs(attrs: dict) -> dict:
    return {k: attrs[k] for k in JOB_ATTRS if k in attrs}


def _value(value, direction: str) -> float:
    """A trial's value; a missing or non-finite one (a diverged trial) as the worst."""
    if value is None or not math.isfinite(value):
        return 0.0 if direction == "maximize" else math.inf
    return float(value)


def _fmt(value) -> str:
    return "nan" if value is None else f"{value:.4f}"


def _overrides_line(overrides: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in overrides.items())


def _write_manifest(config, workdir, trials, mode, reason, sweep: storage.Sweep) -> None:
    """DIR/sweep.json: what this sweep is, where its state lives, and its path."""
    outputs.atomic_write_json(
        os.path.join(workdir, "sweep.json"),
        {
            "config": json.loads(config.to_json_best_effort(sort_keys=True)),
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
