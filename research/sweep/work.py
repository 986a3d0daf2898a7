"""The two kinds of work a sweep worker drains: pretraining stages and trials.

`Stages` and `Trials` tell `research.sweep.worker.Worker.drain` what differs
between them: which ids must settle, what to enqueue again, how trials group
(trials that share compiled programs), what a folder is called, what to echo,
and how a claimed batch is trained (`loop.train_and_evaluate` for a stage,
`engine.train` on shared programs for a group of trials; TPE also asks the
sampler for new trials). The loop itself, and every report to the study, is
the worker's.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from optuna.trial import FrozenTrial

from research.sweep import search, space, storage
from research.train import engine, loop

# User attrs that describe what a trial runs (copied to its retries), not how it went.
JOB_ATTRS = ("overrides", "stage")


def trial_dir(workdir: str, trial: space.Trial) -> str:
    return os.path.join(workdir, "trials", trial.id)


def stage_dir(workdir: str, stage: space.Stage) -> str:
    return os.path.join(workdir, "pretrain", stage.id)


def resolved_config(workdir: str, trial: space.Trial, named: dict):
    """The trial's config with "pretrain:NAME" replaced by the stage's folder."""
    if not trial.pretrain:
        return trial.config
    return space.apply(
        trial.config, {"transfer.pretrained": stage_dir(workdir, named[trial.pretrain])}
    )


def prepared(config, cache: dict):
    """The config's data (`loop.prepare_data`), shared by the configs with the same fields."""
    fields = {"data": config.data.to_dict(), "pretrained": config.transfer.pretrained}
    key = ("prepared", json.dumps(fields, sort_keys=True, default=str))
    if key not in cache:
        cache[key] = loop.prepare_data(config, cache)
    return cache[key]


def run_of(config, cache: dict) -> loop.Run:
    splits, reason = prepared(config, cache)
    return loop.build_run(config, splits=splits, loader_reason=reason)


def slots(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """TPE: the sampled trials, in order (retries and yielded trials are no slots)."""
    return [
        t
        for t in sorted(trials, key=lambda t: t.number)
        if "retry_of" not in t.user_attrs and not storage.yielded(t)
    ]


def job_attrs(attrs: dict) -> dict:
    return {k: attrs[k] for k in JOB_ATTRS if k in attrs}


def value_of(value, direction: str) -> float:
    """A trial's value; a missing or non-finite one (a diverged trial) as the worst."""
    if value is None or not math.isfinite(value):
        return 0.0 if direction == "maximize" else math.inf
    return float(value)


def fmt(value) -> str:
    return "nan" if value is None else f"{value:.4f}"


def overrides_line(overrides: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in overrides.items())


def one_line(err: BaseException) -> str:
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= 400 else text[:397] + "..."


class Stages:
    """The `sweep.pretrain` stages the grid's trials use, as work for `Worker.drain`."""

    kind = "stage"
    size = 1

    def __init__(self, w):  # w: the Worker (its config, study, grid and caches)
        self.w = w
        needed = {t.pretrain for t in w.grid if t.pretrain}
        self.by_id = {s.id: s for name, s in w.named.items() if name in needed}
        self.queue = storage.Queue(
            w.sweep.stages, w.beats, grace_seconds=w.grace, max_retries=w.max_retries
        )
        self.jobs = {
            s.id: storage.Job(s.id, attrs={"stage": s.name, "overrides": space._plain(s.overrides)})
            for s in self.by_id.values()
        }
        if w.sweep.stages_created:
            for job in self.jobs.values():
                self.queue.enqueue(job)

    def ids(self, trials) -> list[str | None]:
        return list(self.jobs)

    def complete(self, trials, ids, settled) -> bool:
        return all(i in settled for i in ids)

    def job(self, key: str, trials) -> storage.Job:
        return self.jobs[key]

    def item(self, frozen: FrozenTrial) -> space.Stage:
        return self.by_id[storage.trial_key(frozen)]

    def group(self, frozen: FrozenTrial) -> str:
        return str(storage.trial_key(frozen))

    def folder(self, stage: space.Stage) -> str:
        return stage_dir(self.w.workdir, stage)

    def ask(self, trials) -> list[FrozenTrial]:
        return []

    def started(self, stage: space.Stage, frozen: FrozenTrial) -> str:
        return f"pretrain {stage.name} ({stage.id}) {overrides_line(stage.overrides)}"

    def finished(self, stage: space.Stage, r: dict, told: bool) -> str:
        return (
            f"pretrain {stage.name}: val_accuracy={fmt(r.get('val_accuracy'))} "
            f"test_accuracy={fmt(r.get('test_accuracy'))} ({r['wall_seconds']:.1f} s)"
        )

    def train(self, stages, frozen, on_epoch) -> tuple[list[dict], int]:
        (stage,) = stages
        run = run_of(stage.config, self.w.cache)
        results = loop.train_and_evaluate(stage.config, self.folder(stage), run=run)
        return [results], run.steps_per_epoch


class Trials:
    """The sweep's trials (the grid's, or TPE's as it proposes them), as work for `drain`."""

    kind = "trial"

    def __init__(self, w, failed_stages: dict[str, str]):  # w: the Worker
        self.w = w
        self.size = w.config.sweep.group_size if w.mode == "vmap" else 1
        self.dists = search.distributions(w.grid)
        self.by_id = {t.id: t for t in w.grid}
        self.failed_stages = failed_stages  # stage name -> why it failed for good
        self.queue = storage.Queue(
            w.sweep.trials, w.beats, grace_seconds=w.grace, max_retries=w.max_retries
        )
        self._programs: tuple[str, Any, Any] | None = None  # (group key, run, programs)
        if w.sweep.created and w.tpe is None:
            for t in w.grid:
                self.queue.enqueue(search.job(t, self.dists))

    def ids(self, trials) -> list[str | None]:
        """The trial ids that must finish: the grid's, or the first num_samples slots'."""
        if self.w.tpe is None:
            return [t.id for t in self.w.grid]
        return [storage.trial_key(t) for t in slots(trials)[: self.w.config.sweep.num_samples]]

    def complete(self, trials, ids, settled) -> bool:
        done = all(i is not None and i in settled for i in ids)
        return done and (self.w.tpe is None or len(ids) >= self.w.config.sweep.num_samples)

    def job(self, key: str, trials) -> storage.Job:
        """What to enqueue again for trial id `key`: its grid job, else its last trial's."""
        if key in self.by_id and self.w.tpe is None:
            return search.job(self.by_id[key], self.dists)
        last = max((t for t in trials if storage.trial_key(t) == key), key=lambda t: t.number)
        return storage.Job(
            key, dict(last.params), dict(last.distributions), job_attrs(last.user_attrs)
        )

    def item(self, frozen: FrozenTrial) -> space.Trial:
        """The sweep trial an Optuna trial runs."""
        key = storage.trial_key(frozen)
        if key not in self.by_id:
            w = self.w
            trial = space.make_trial(w.base, w.tpe.point(frozen.params), w.named, 0, w.scope)
            if trial.id != key:
                raise RuntimeError(f"trial #{frozen.number}: params {frozen.params} are not {key}")
            self.by_id[key] = trial
        return self.by_id[key]

    def group(self, frozen: FrozenTrial) -> str:
        return engine.group_key(self.item(frozen).config)

    def folder(self, trial: space.Trial) -> str:
        return trial_dir(self.w.workdir, trial)

    def started(self, trial: space.Trial, frozen: FrozenTrial) -> str:
        retry = (
            f" (retry of #{frozen.user_attrs['retry_of']})"
            if "retry_of" in frozen.user_attrs
            else ""
        )
        return f"start trial {trial.id} {overrides_line(trial.overrides)}{retry}"

    def finished(self, trial: space.Trial, r: dict, told: bool) -> str:
        return (
            f"trial {trial.id} {overrides_line(trial.overrides)}: {r['status']} "
            f"val_accuracy={fmt(r.get('val_accuracy'))} "
            f"test_accuracy={fmt(r.get('test_accuracy'))} "
            f"({r['wall_seconds']:.1f} s){'' if told else ' [taken over: not counted]'}"
        )

    def ask(self, trials) -> list[FrozenTrial]:
        """TPE: new trials proposed by the sampler, up to `size`, within the budget."""
        w, s = self.w, self.w.config.sweep
        if w.tpe is None:
            return []
        study, out = w.sweep.trials, []
        for _ in range(self.size):
            if len(slots(self.queue.all())) >= s.num_samples:
                break
            number = study.ask()  # a new RUNNING trial (or a retry enqueued meanwhile)
            self.queue.started(number)
            frozen = next(t for t in self.queue.all() if t.number == number)
            if "trial_id" not in frozen.user_attrs:
                # Seeded by the trial's number: see research.sweep.search.
                study.set_sampler(search.sampler(w.config, number))
                point = w.tpe.propose(study.trial(number))
                chosen = space.make_trial(w.base, point, w.named, number, w.scope)
                study.set_trial_attr(number, "overrides", space._plain(chosen.overrides))
                study.set_trial_attr(number, "trial_id", chosen.id)
                self.by_id[chosen.id] = chosen
            fresh = self.queue.all()  # read after the trial exists: see storage.Queue
            frozen = next(t for t in fresh if t.number == number)
            numbers = [t.number for t in slots(fresh)]
            why = self.queue.canonical(frozen, fresh)
            if not why and number in numbers and numbers.index(number) >= s.num_samples:
                why = f"over the budget of sweep.num_samples={s.num_samples}"
            if why:
                self.queue.fail(frozen, yielded=why)
                continue
            out.append(frozen)
        return out

    def train(self, trials, frozen, on_epoch) -> tuple[list[dict], int]:
        w = self.w
        for trial in trials:
            if trial.pretrain in self.failed_stages:
                raise RuntimeError(
                    f"its pretraining stage {trial.pretrain} failed for good: "
                    f"{self.failed_stages[trial.pretrain]}"
                )
        configs = [resolved_config(w.workdir, t, w.named) for t in trials]
        key = engine.group_key(configs[0])
        if self._programs is None or self._programs[0] != key:
            self._programs = None  # the last group's compiled programs are let go first
            run = run_of(configs[0], w.cache)
            self._programs = (key, run, engine.build_programs(run, w.mode))
        _, run, programs = self._programs
        members = [engine.Member(c, self.folder(t)) for c, t in zip(configs, trials, strict=True)]
        outcomes = engine.train(run, members, programs=programs, on_epoch=on_epoch)
        return [o.results for o in outcomes], run.steps_per_epoch
