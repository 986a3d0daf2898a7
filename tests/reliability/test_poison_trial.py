"""Sweeps always return: a poison trial is refused up front, or failed for good.

A trial whose model cannot take the data is refused before the first trial
runs (one line, exit 2, no workdir). A trial that fails only once it trains (or
whose worker is lost) is run `sweep.max_retries` times, then failed for good:
the rest of the sweep finishes, summary.md and trials.csv name it with its
error, and the command exits 4 with one line naming it.
"""

from __future__ import annotations

import csv
import os
import subprocess

import optuna
import pytest
from optuna.trial import TrialState

from research.sweep import runner, storage
from research.sweep import study as optuna_api
from tests.helpers import tiny_sweep


def run(workdir, grid: str) -> subprocess.CompletedProcess:
    """The tiny sweep with its grid replaced by `grid` (one seed, 1 epoch)."""
    ours = ("--config.sweep.grids", "--config.sweep.axes.seed")
    command = [a for a in tiny_sweep.command(workdir) if not a.startswith(ours)]
    command += [f"--config.sweep.grids=({grid},)", "--config.sweep.axes.seed=(0,)"]
    return subprocess.run(command, cwd=tiny_sweep.ROOT, capture_output=True, text=True, timeout=400)


@pytest.mark.slow  # in the full tier: keeps the fast tier under 5 minutes
def test_a_model_that_cannot_take_the_input_refuses_the_sweep_before_any_trial(tmp_path):
    workdir = tmp_path / "poison"
    proc = run(workdir, '{"optim.name": ("sgd",), "model.name": ("simple_cnn", "mobilenet_v1")}')
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "mobilenet_v1" in lines[0] and "cannot take input (8, 8, 1)" in lines[0]
    assert "no trial was run" in lines[0]
    assert not workdir.exists()  # nothing written: not even the folder
    assert "start trial" not in proc.stdout


# batch_size 2048 passes the model check but not training's (1,294 training digits).
POISON = '{"optim.name": ("sgd",), "optim.learning_rate": (0.1,), "batch_size": (64, 2048)}'


@pytest.mark.slow  # 12-20 s: the full tier (the fast tier stays under 5 minutes)
def test_a_trial_that_fails_when_it_trains_is_failed_for_good_and_the_rest_finish(tmp_path):
    workdir = tmp_path / "sweep"
    proc = run(workdir, POISON)
    assert proc.returncode == 4, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    with open(workdir / "trials.csv", newline="") as f:
        rows = {r["batch_size"]: r for r in csv.DictReader(f)}
    bad, good = rows["2048"], rows["64"]
    assert line.startswith("error: 1 of 2 trials failed for good (sweep.max_retries=2")
    assert line.endswith(bad["trial_id"])
    assert good["status"] == "done" and float(good["test_accuracy"]) > 0.5
    assert bad["status"] == "failed" and "config.batch_size=2048" in bad["error"]
    summary = (workdir / "summary.md").read_text()
    assert "Trials finished: 1/2" in summary
    assert f"- {bad['trial_id']} batch_size=2048" in summary and "use at most 1294" in summary
    # Two attempts, both FAIL with the error; the second gave up; no third is waiting.
    journal = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(workdir / "optuna.journal"))
    )
    (summary_,) = optuna.get_all_study_summaries(journal)
    study = optuna.load_study(study_name=summary_.study_name, storage=journal)
    mine = [t for t in study.trials if t.user_attrs["trial_id"] == bad["trial_id"]]
    assert [t.state for t in mine] == [TrialState.FAIL, TrialState.FAIL]
    assert all("batch_size" in t.user_attrs["error"] for t in mine)
    assert "gave_up" in mine[1].user_attrs and "gave_up" not in mine[0].user_attrs
    assert proc.stdout.count(f"trial {bad['trial_id']} failed") == 2
    # A rerun has nothing left to do and says so the same way.
    again = run(workdir, POISON)
    assert again.returncode == 4 and "start trial" not in again.stdout


def test_a_trial_whose_worker_is_lost_max_retries_times_is_failed_for_good():
    backend = optuna.storages.InMemoryStorage()
    study, _ = optuna_api.StudyHandle.open("lost", backend, "maximize")
    now = [0.0]
    queue = storage.Queue(
        study,
        storage.Heartbeats(backend, 60.0),
        grace_seconds=10.0,
        max_retries=2,
        clock=lambda: now[0],
    )
    job = storage.Job("abc")
    queue.enqueue(job)
    outcomes = []
    for _ in range(2):
        (waiting,) = [t for t in study.trials() if t.state == TrialState.WAITING]
        assert study.claim(waiting.number)  # another worker's claim: it beats, then dies
        study.set_trial_attr(waiting.number, "heartbeat", {"worker": "gone:1", "beat": 1})
        assert queue.stale(study.trials()) == []  # first sight starts the clock
        now[0] += 11.0
        (stale,) = queue.stale(study.trials())
        outcomes.append(queue.take_over(stale, job, study.trials()))
    assert outcomes == ["retry", "gave up"]
    trials = study.trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]  # no third attempt
    assert queue.given_up(trials) == {"abc"}
    assert trials[1].user_attrs["gave_up"] == "failed 2 of sweep.max_retries=2 times"
    assert (
        "lost its worker: heartbeat of gone:1 stood still for 10 s" in trials[1].user_attrs["error"]
    )
    now[0] += 100.0
    assert queue.orphans(["abc"], trials) == []  # settled: never enqueued again


def test_max_retries_must_be_at_least_one(tmp_path):
    proc = tiny_sweep.run(tmp_path / "w", "--config.sweep.max_retries=0")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: sweep.max_retries=0 is invalid: must be an integer >= 1"
    assert not os.path.exists(tmp_path / "w")


def test_a_stage_that_fails_for_good_fails_the_trials_that_start_from_it(tmp_path):
    config = tiny_sweep.with_transfer_stage(tiny_sweep.config())
    config.sweep.pretrain.digits_0to4.batch_size = 2048  # fails when it builds, every time
    lines: list[str] = []
    done = runner.run_sweep(config, str(tmp_path), echo=lines.append)
    records = {r.overrides["transfer.strategy"]: r for r in runner.records(config, str(tmp_path))}
    scratch, probe = records["scratch"], records["linear_probe"]
    assert scratch.state == "complete" and done["failed"] == [probe.id]
    assert done["stages"] == [] and done["ran"] == [scratch.id]
    assert probe.state == "fail" and "gave_up" in probe.results
    assert probe.results["error"].startswith(
        "RuntimeError: its pretraining stage digits_0to4 failed for good: ValueError: "
        "config.batch_size=2048 is larger than the training split"
    )
    assert sum(line.startswith("stage ") and "failed" in line for line in lines) == 2
    summary = (tmp_path / "summary.md").read_text()
    assert "Failed for good (1;" in summary and f"- {probe.id} " in summary
