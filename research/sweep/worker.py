"""One process's part in a sweep: one loop that claims, trains and reports, until done.

`Worker.drain(work)` is the sweep's only worker loop. It serves two kinds of
work, which differ only in what they train and how they name it:

  * `Stages`: the `sweep.pretrain` stages (a second study), each trained once
    by `loop.train_and_evaluate`;
  * `Trials`: the sweep's trials, in groups that share compiled programs
    (`engine.group_key`, up to `sweep.group_size` on the "vmap" path), trained
    by `engine.train`; under TPE, new trials are asked of the sampler as
    results come in.

Each pass of the loop reads the study, returns when every id is settled
(finished, or failed for good), takes over trials whose worker was lost,
claims a batch of WAITING trials (or asks TPE for new ones), trains it and
tells the study each result; with nothing to claim it waits for trials that run
elsewhere. An attempt that raises is failed and enqueued again, up to
`sweep.max_retries` failed attempts (`queue.Queue.retry_or_give_up`): a poison
trial cannot hold the sweep up. SIGTERM/SIGINT and operating-system errors
(disk full) are not the trial's fault: its attempt is handed back uncounted and
the error goes up. Every Optuna call goes through `research.sweep.study`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

from optuna.trial import FrozenTrial, TrialState

from research.sweep import space, storage
from research.sweep.work import (
    Stages,
    Trials,
    one_line,
    overrides_line,
    value_of,
)
from research.train import engine, outputs

log = logging.getLogger(__name__)


class Worker:
    """One process's part in a sweep: `drain` the stages, then the trials."""

    def __init__(self, config, workdir, sweep, beats, mode, grid, tpe, echo):
        self.config, self.workdir, self.sweep, self.beats = config, workdir, sweep, beats
        self.mode, self.grid, self.tpe, self.echo = mode, grid, tpe, echo
        self.named = space.stages(config)
        self.base = space.base_config(config)
        self.scope = space.trial_scope(config)
        self.grace = config.sweep.grace_seconds
        self.max_retries = config.sweep.max_retries
        self.poll = min(max(config.sweep.heartbeat_seconds / 2, 0.05), 5.0)
        self.metric_key = sweep.metric.removeprefix("val_")  # "accuracy" or "loss"
        self.cache: dict = {}  # data splits, by data config
        self.ran: list[str] = []
        self.recorded: list[str] = []  # finished before, told here from their results.json
        self.pruned: list[str] = []
        self.taken_over: list[str] = []
        self.stages_ran: list[str] = []
        self._waiting_note = ""
        self.trials = Trials(self, {})

    def run(self) -> None:
        """Drains the stages the trials need, then the trials."""
        stages = Stages(self) if self.sweep.stages is not None else None
        if stages is not None and stages.jobs:
            self.drain(stages)
            for t in stages.queue.all():
                if t.state == TrialState.FAIL and "gave_up" in t.user_attrs:
                    self.trials.failed_stages[stages.item(t).name] = t.user_attrs.get("error", "")
        self.drain(self.trials)

    def describe(self) -> str:
        if self.tpe is not None:
            return f"tpe, {self.config.sweep.num_samples} trials"
        return f"{len(self.grid)} trials"

    def finished_before(self) -> list[str]:
        trials = self.trials.queue.all()
        done = {storage.trial_key(t) for t in trials if t.state in storage.FINISHED}
        return sorted(i for i in done if i is not None)

    # ------------------------------------------------------------------ the loop

    def drain(self, work) -> None:
        """Claims, trains and reports `work`'s trials until every one is settled."""
        queue = work.queue
        while True:
            trials = queue.all()
            ids = work.ids(trials)
            settled = {storage.trial_key(t) for t in trials if t.state in storage.FINISHED}
            settled |= queue.given_up(trials)
            if work.complete(trials, ids, settled):
                return
            self._maintain(work, trials, ids)
            batch = self._next_batch(work, trials, settled) or work.ask(trials)
            if batch:
                groups: dict[str, list[FrozenTrial]] = {}
                for t in batch:
                    groups.setdefault(work.group(t), []).append(t)
                for members in groups.values():
                    self._run(work, members)
            else:
                self._wait(work, trials)

    def _maintain(self, work, trials, ids) -> None:
        """Takes over stale trials and enqueues trials that have none."""
        queue = work.queue
        for t in queue.stale(trials):
            key = storage.trial_key(t)
            outcome = queue.take_over(t, work.job(key, trials) if key is not None else None, trials)
            if outcome:
                beat = t.user_attrs.get("heartbeat") or {}
                self.echo(
                    f"took over {work.kind} {key or '(unsampled)'} (#{t.number}): the heartbeat "
                    f"of {beat.get('worker', 'its worker')} stood still for {self.grace:g} s"
                    + ("; failed for good" if outcome == "gave up" else "")
                )
                if key is not None:
                    self.taken_over.append(key)
        for key in queue.orphans([i for i in ids if i is not None], trials):
            queue.enqueue(work.job(key, trials), retry_of=-1)

    def _wait(self, work, trials) -> None:
        running = sorted(
            {
                str(t.user_attrs.get("worker", "?"))
                for t in trials
                if t.state == TrialState.RUNNING and not work.queue.beating(t)
            }
        )
        note = f"waiting for trials running elsewhere ({', '.join(running)})" if running else ""
        if note and note != self._waiting_note:
            self.echo(note)
        self._waiting_note = note
        time.sleep(self.poll)

    def _next_batch(self, work, trials, settled) -> list[FrozenTrial]:
        """Up to `size` WAITING trials of one group, all retries or all fresh, claimed."""
        queue = work.queue
        waiting = [
            t
            for t in sorted(trials, key=lambda t: t.number)
            if t.state == TrialState.WAITING
            and storage.trial_key(t) is not None
            and storage.trial_key(t) not in settled
        ]
        while waiting:
            first = waiting[0]
            key, retry = work.group(first), "retry_of" in first.user_attrs
            same = [
                t for t in waiting if ("retry_of" in t.user_attrs) == retry and work.group(t) == key
            ][: work.size]
            claimed = [t for t in same if queue.claim(t)]
            if claimed:
                fresh = queue.all()  # read after claiming: see storage.Queue
                kept = []
                for t in claimed:
                    why = queue.canonical(t, fresh)
                    if why:
                        queue.fail(t, yielded=why)
                    else:
                        kept.append(t)
                if kept:
                    return kept
            waiting = [t for t in waiting if t not in same]
        return []

    # ------------------------------------------------------------------ train and tell

    def _run(self, work, frozen: list[FrozenTrial]) -> None:
        frozen = [t for t in frozen if not self._recorded(work, t)]
        if not frozen:
            return
        items = [work.item(t) for t in frozen]
        for t, item in zip(frozen, items, strict=True):
            self.echo(work.started(item, t))
        try:
            results, spe = work.train(items, frozen, self._on_epoch(work, frozen, items))
        except outputs.WorkdirBusy as err:
            self._hand_back(work, frozen, f"{work.kind} folder busy: {err}")
            self.echo(f"{work.kind} folder in use by another process; handed back: {err}")
            time.sleep(self.poll)
            return
        except Exception as err:
            if isinstance(err, (engine.Interrupted, OSError)):  # not the trial's fault
                self._hand_back(work, frozen, storage.redact(one_line(err), self.sweep.url))
                raise
            log.debug("%s failed", work.kind, exc_info=True)
            error = storage.redact(one_line(err), self.sweep.url)  # stored and shown: no password
            fresh = work.queue.all()
            for t, item in zip(frozen, items, strict=True):
                job = work.job(storage.trial_key(t), fresh)
                outcome = work.queue.retry_or_give_up(t, error, job, fresh)
                then = {"retry": "enqueued again", "gave up": "failed for good"}.get(outcome)
                self.echo(f"{work.kind} {item.id} failed: {error}" + (f"; {then}" if then else ""))
            return
        except BaseException as err:
            self._hand_back(work, frozen, storage.redact(one_line(err), self.sweep.url))
            raise
        for t, item, r in zip(frozen, items, results, strict=True):
            told = self._tell(work, t, work.folder(item), r, spe)
            if work.kind == "stage":
                self.stages_ran.append(item.id)
            else:
                self.ran.append(item.id)
                if r["status"] == "pruned":
                    self.pruned.append(item.id)
            self.echo(work.finished(item, r, told))

    def _on_epoch(self, work, frozen, items):
        """The engine's hook: report each epoch's metric; the trials the pruner stops."""
        study = work.queue.study
        pruning = self.config.sweep.pruner != "none"

        def on_epoch(epoch: int, val: dict[int, dict[str, float]]) -> set[int]:
            stop = set()
            for i, metrics in val.items():
                value = metrics.get(self.metric_key)
                if value is None or not math.isfinite(value):
                    continue
                number = frozen[i].number
                reported = epoch in frozen[i].intermediate_values  # a retry's are carried over
                if not reported and not study.report(number, value, epoch):
                    continue  # taken over by another worker: its result will not count here
                # Not after the last epoch: there is nothing left to save.
                last = epoch >= items[i].config.num_epochs
                if pruning and not last and study.should_prune(number):
                    stop.add(i)
            return stop

        return on_epoch

    def _recorded(self, work, frozen: FrozenTrial) -> bool:
        """Tells a claimed trial whose folder already has its results.json; True if it did.

        The engine writes results.json last, so its presence means the trial
        finished: its worker died before telling the study, or another sweep
        with the same trial (the same config, hence the same folder) ran it.
        """
        item = work.item(frozen)
        folder = work.folder(item)
        path = os.path.join(folder, "results.json")
        if not os.path.exists(path):
            return False
        with open(path) as f:
            results = json.load(f)
        key = f"val_{self.metric_key}"
        for record in outputs.read_jsonl(os.path.join(folder, "metrics.jsonl")):
            value = record.get(key)
            epoch = record.get("epoch")
            known = frozen.intermediate_values  # a retry carries the epochs reported before
            if isinstance(value, float) and math.isfinite(value) and epoch not in known:
                work.queue.study.report(frozen.number, value, int(epoch))
        spe = results["steps"] / results["epochs"] if results.get("epochs") else None
        self._tell(work, frozen, folder, results, int(round(spe)) if spe else None)
        self.recorded.append(item.id)
        self.echo(
            f"{work.kind} {item.id} {overrides_line(item.overrides)}: {results['status']} "
            f"(its results.json was there: recorded without training)"
        )
        return True

    def _hand_back(self, work, frozen: list[FrozenTrial], why: str) -> None:
        """Fails this worker's trials (uncounted) and enqueues each again, for any worker."""
        fresh = {t.number: t for t in work.queue.all()}
        for t in frozen:
            if work.queue.fail(t, failed=why):
                work.queue.enqueue(
                    work.job(storage.trial_key(t), list(fresh.values())),
                    retry_of=t.number,
                    intermediate_values=dict(fresh[t.number].intermediate_values),
                )

    def _tell(self, work, frozen, folder: str, results: dict, steps_per_epoch) -> bool:
        """Records a trained trial's results on its Optuna trial; False if taken over."""
        queue = work.queue
        attrs = outputs.finite(dict(results))
        records = outputs.read_jsonl(os.path.join(folder, "metrics.jsonl"))
        losses = [r["train_loss"] for r in records if "train_loss" in r]
        attrs.update(
            final_train_loss=outputs.finite(losses[-1]) if losses else None,
            steps_per_epoch=steps_per_epoch,
            workdir=os.path.abspath(folder),
        )
        told = all(queue.set_attr(frozen, key, value) for key, value in attrs.items())
        queue.stopped(frozen)
        if told and results["status"] == "pruned":
            told = queue.study.finish(frozen.number, "pruned")
        elif told:
            value = value_of(results.get(self.sweep.metric), self.sweep.direction)
            told = queue.study.finish(frozen.number, "complete", value)
        if not told:
            log.warning(
                "%s #%d was taken over; its result is not counted", work.kind, frozen.number
            )
        return told
