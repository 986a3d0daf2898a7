"""Sweeps on Optuna storage: several workers, lost workers, the study itself, TPE and pruning.

Workers are `scripts/sweep.py` processes on tiny digits sweeps (simple_cnn, 6
trials of 1-4 epochs), sharing a journal file, a SQLite file or a PostgreSQL
database (a throwaway local server, `tests/helpers/postgres.py`). Heartbeats come
every 0.5 s and a trial whose heartbeat stood still for 3 s is taken over, so a
killed worker's trial moves on within seconds.
"""

from __future__ import annotations

import collections
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from research import data
from research.data import pipeline
from research.sweep import runner, space, storage
from research.sweep import study as optuna_api
from research.train import engine, loop
from tests.helpers import mysql, postgres, tiny_sweep

STORAGES = {
    "journal": lambda tmp: "",  # the default: DIR/optuna.journal
    "sqlite": lambda tmp: f"sqlite:///{tmp}/sweep.db",
    "postgresql": lambda tmp: postgres.database_url(),  # a throwaway local server
    "mysql": lambda tmp: mysql.database_url(),  # a throwaway local MariaDB server
}


def start_worker(workdir, storage_url="", *args, epochs=1):
    return tiny_sweep.start(workdir, f"--config.sweep.storage={storage_url}", *args, epochs=epochs)


def load(workdir, storage_url=""):
    """The sweep's study, opened the way any Optuna user would (no code of ours)."""
    with open(os.path.join(workdir, "sweep.json")) as f:
        name = json.load(f)["study"]
    url = storage_url or optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(os.path.join(workdir, "optuna.journal"))
    )
    return optuna.load_study(study_name=name, storage=url)


def completions(study) -> collections.Counter:
    """Trial id -> how many Optuna trials finished it."""
    return collections.Counter(
        t.user_attrs["trial_id"]
        for t in study.trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    )


sweep_config = tiny_sweep.config


# ------------------------------------------------------------------ the storage's transitions


# The fast tier runs the journal file; SQLite, PostgreSQL and MySQL (the same code past
# open_storage) are slow-tier.
BOTH = [
    "journal",
    pytest.param("sqlite", marks=pytest.mark.slow),
    pytest.param("postgresql", marks=pytest.mark.slow),
    pytest.param("mysql", marks=pytest.mark.slow),
]

CLAIMER = """
import sys, time
sys.path.insert(0, {root!r})
from research.sweep import storage, study as optuna_api
url, name, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
study = optuna_api.StudyHandle.load(name, storage.open_storage(url))
with storage.Heartbeats(study.storage, 60.0) as beats:
    queue = storage.Queue(study, beats, grace_seconds=120.0)
    waiting = [t for t in queue.all() if t.state.name == "WAITING"]
    while time.time() < start:
        time.sleep(0.001)
    print(" ".join(str(t.number) for t in waiting if queue.claim(t)))
"""


@pytest.mark.parametrize("kind", BOTH)
def test_of_workers_racing_for_the_same_trials_exactly_one_gets_each(tmp_path, kind):
    url = storage.storage_url(STORAGES[kind](tmp_path), str(tmp_path))
    backend = storage.open_storage(url)
    study, created = optuna_api.StudyHandle.open("race", backend, "maximize")
    assert created
    queue = storage.Queue(study, storage.Heartbeats(backend, 60.0), grace_seconds=120.0)
    for i in range(120):
        queue.enqueue(storage.Job(f"t{i}"))
    script = tmp_path / "claim.py"
    script.write_text(CLAIMER.format(root=tiny_sweep.ROOT))
    start = time.time() + 4  # all three start claiming at once, after their imports
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), url, "race", str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-1000:] for _, err in outs]
    claimed = [int(n) for out, _ in outs for n in out.split()]
    assert sorted(claimed) == list(range(120))  # every trial once: none twice, none lost
    assert all(t.state == TrialState.RUNNING for t in study.trials())


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_the_optuna_adapter_on_the_journal_and_sqlite_storages(tmp_path, kind):
    url = storage.storage_url(STORAGES[kind](tmp_path), str(tmp_path))
    study, created = optuna_api.StudyHandle.open("adapter", storage.open_storage(url), "maximize")
    if kind == "journal":
        size = os.path.getsize(url)
    other, created_again = optuna_api.StudyHandle.open(
        "adapter", storage.open_storage(url), "maximize"
    )  # a second worker
    assert (created, created_again) == (True, False)
    if kind == "journal":
        assert os.path.getsize(url) == size  # joining an existing study only reads it
    study.set_user_attr("config", {"seed": 1})
    assert other.user_attrs == {"config": {"seed": 1}}
    dist = optuna.distributions.FloatDistribution(0.01, 1.0, log=True)
    study.enqueue({"lr": 0.1}, {"lr": dist}, {"trial_id": "t0"}, {1: 0.25})
    study.enqueue({"lr": 0.3}, {"lr": dist}, {"trial_id": "t1"})
    t0, t1 = other.trials()
    assert t0.state == TrialState.WAITING and t0.params == {"lr": 0.1}
    assert t0.intermediate_values == {1: 0.25} and t1.user_attrs == {"trial_id": "t1"}
    assert study.claim(t0.number) and not other.claim(t0.number)  # one worker wins
    assert study.trial_id(t0.number) == other.trial_id(t0.number) != study.trial_id(t1.number)
    assert study.set_trial_attr(t0.number, "worker", "me")
    assert study.report(t0.number, 0.5, 2) and not study.should_prune(t0.number)
    assert study.finish(t0.number, "complete", 0.5)
    assert not other.finish(t0.number, "fail")  # finished: a second transition fails
    assert not study.set_trial_attr(t0.number, "late", 1) and not study.report(t0.number, 1.0, 3)
    assert other.claim(t1.number) and other.finish(t1.number, "pruned")
    asked = study.ask()  # nothing WAITING: the sampler's new RUNNING trial
    lr = study.trial(asked).suggest_float("lr", 0.01, 1.0, log=True)
    assert 0.01 <= lr <= 1.0 and study.finish(asked, "fail")
    done = other.trials()
    assert [t.state for t in done] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert done[0].value == 0.5 and done[0].intermediate_values == {1: 0.25, 2: 0.5}
    assert done[0].user_attrs == {"trial_id": "t0", "worker": "me"} and done[2].params == {"lr": lr}
    assert [name for name, _ in optuna_api.summaries(study.storage)] == ["adapter"]


def test_a_stale_trial_is_taken_over_by_exactly_one_worker_with_its_history():
    backend = optuna.storages.InMemoryStorage()
    study, _ = optuna_api.StudyHandle.open("stale", backend, "maximize")
    now = [0.0]
    beats = storage.Heartbeats(backend, 60.0)
    watchers = [
        storage.Queue(study, beats, grace_seconds=10.0, clock=lambda: now[0]) for _ in range(2)
    ]
    job = storage.Job("abc", {"seed": 0}, {"seed": optuna.distributions.IntDistribution(0, 3)})
    watchers[0].enqueue(job)
    (trial,) = study.trials()
    assert study.claim(trial.number)  # as another worker would: no heartbeat of ours
    assert study.report(trial.number, 0.5, 1)

    def beat(n):
        study.set_trial_attr(trial.number, "heartbeat", {"worker": "elsewhere:1", "beat": n})

    beat(1)
    for q in watchers:
        assert q.stale(study.trials()) == []  # first sight: the clock starts now
    now[0] = 8.0
    beat(2)  # alive: the heartbeat moved within the grace period
    assert [q.stale(study.trials()) for q in watchers] == [[], []]
    now[0] = 17.0
    assert [q.stale(study.trials()) for q in watchers] == [[], []]  # 9 s since it moved
    now[0] = 18.5
    stale = [q.stale(study.trials()) for q in watchers]
    assert [[t.number for t in s] for s in stale] == [[0], [0]]
    taken = [q.take_over(s[0], job) for q, s in zip(watchers, stale, strict=True)]
    assert taken == ["retry", ""]  # both saw it stale; one moved it to FAIL
    old, new = study.trials()
    assert (
        old.state == TrialState.FAIL
        and "elsewhere:1 stood still for 10 s" in old.user_attrs["failed"]
    )
    assert new.state == TrialState.WAITING and new.params == {"seed": 0}
    assert new.user_attrs["trial_id"] == "abc" and new.user_attrs["retry_of"] == 0
    assert new.intermediate_values == {1: 0.5}  # the epochs it had reported, carried over


# ------------------------------------------------------------------ workers on one storage


@pytest.mark.slow
@pytest.mark.parametrize("kind", BOTH)
def test_two_workers_share_a_sweep_and_run_each_trial_once(tmp_path, kind):
    workdir = str(tmp_path / "sweep")
    url = STORAGES[kind](tmp_path)
    procs = [start_worker(workdir, url) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    ran = [
        line.split()[1] for out, _ in outs for line in out.splitlines() if line.startswith("trial ")
    ]
    assert len(ran) == 6 and len(set(ran)) == 6  # every trial exactly once, over both
    assert all(len(r) for r in ran)
    for out, _ in outs:  # each worker returned only once the table was complete
        assert "Trials finished: 6/6" in out
    study = load(workdir, url)
    assert completions(study) == {i: 1 for i in ran}
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}


@pytest.mark.slow
@pytest.mark.parametrize("kind", BOTH)
def test_a_killed_workers_trial_is_taken_over_and_resumed_from_its_checkpoint(tmp_path, kind):
    workdir = str(tmp_path / "sweep")
    url = STORAGES[kind](tmp_path)
    victim = start_worker(workdir, url, epochs=4)
    started: list[str] = []
    reader = threading.Thread(
        target=lambda: [started.append(line) for line in victim.stdout], daemon=True
    )
    reader.start()
    deadline, killed = time.monotonic() + 300, None
    while killed is None and time.monotonic() < deadline and victim.poll() is None:
        for line in list(started):
            if line.startswith("start trial "):
                folder = os.path.join(workdir, "trials", line.split()[2])
                ckpts = os.path.join(folder, "checkpoints")
                done = os.path.exists(os.path.join(folder, "results.json"))
                if (
                    not done
                    and os.path.isdir(ckpts)
                    and any(n.isdigit() for n in os.listdir(ckpts))
                ):
                    victim.send_signal(signal.SIGKILL)  # mid-trial, after its first checkpoint
                    killed = line.split()[2]
        time.sleep(0.02)
    victim.wait()
    assert killed is not None, "the worker should have been killed mid-trial"
    assert not os.path.exists(os.path.join(workdir, "trials", killed, "results.json"))

    rescuer = start_worker(workdir, url, epochs=4)
    out, err = rescuer.communicate(timeout=600)
    assert rescuer.returncode == 0, err[-2000:]
    assert f"took over trial {killed}" in out
    assert "Trials finished: 6/6" in out
    study = load(workdir, url)
    assert set(completions(study).values()) == {1} and len(completions(study)) == 6
    mine = sorted(
        (t for t in study.trials if t.user_attrs["trial_id"] == killed), key=lambda t: t.number
    )
    assert [t.state for t in mine] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "stood still" in mine[0].user_attrs["failed"]
    assert mine[1].user_attrs["retry_of"] == mine[0].number
    with open(os.path.join(workdir, "trials", killed, "results.json")) as f:
        results = json.load(f)
    assert results["resumed_from_step"] >= 20  # at least its first epoch came from the checkpoint
    assert results["steps"] == 80 and sorted(mine[1].intermediate_values) == [1, 2, 3, 4]


# ------------------------------------------------------------------ the study itself


def test_the_study_holds_params_values_and_results_and_a_changed_field_is_a_new_study(tmp_path):
    workdir = str(tmp_path)
    config = sweep_config()
    config.sweep.grids = ({"optim.name": ("sgd",), "optim.learning_rate": (0.1,)},)
    config.sweep.axes = {"seed": (0, 1)}
    config.num_epochs = 2
    first = runner.run_sweep(config, workdir)
    assert len(first["ran"]) == 2

    study = load(workdir)  # optuna.load_study on the journal file: no code of ours
    assert study.study_name == first["study"] == storage.study_name(config)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    by_seed = {t.params["seed"]: t for t in study.trials}
    trial = by_seed[1]
    assert trial.params == {"optim.learning_rate": 0.1, "optim.name": "sgd", "seed": 1}
    with open(os.path.join(workdir, "trials", trial.user_attrs["trial_id"], "results.json")) as f:
        results = json.load(f)
    assert trial.value == results["val_accuracy"]
    assert sorted(trial.intermediate_values) == [1, 2]
    assert trial.intermediate_values[2] == results["val_accuracy"]
    for key in ("test_accuracy", "test_loss", "params_sha256", "status", "steps"):
        assert trial.user_attrs[key] == results[key], key
    assert trial.user_attrs["workdir"] == os.path.join(
        workdir, "trials", trial.user_attrs["trial_id"]
    )
    assert study.user_attrs["parallel"] == "sequential"

    again = runner.run_sweep(config, workdir)  # the same config: nothing runs
    assert again["ran"] == [] and len(again["skipped"]) == 2

    journal = os.path.join(workdir, "optuna.journal")
    size = os.path.getsize(journal)
    config.sweep.parallel = "vmap"  # not the path the sweep started with: refused
    with pytest.raises(ValueError, match="ran its trials with 'sequential'"):
        runner.run_sweep(config, workdir)
    assert os.path.getsize(journal) == size  # refused before the storage was touched
    config.sweep.parallel = "sequential"

    config.optim.momentum = 0.5  # not swept, and sgd ignores it: still a different config
    lines: list[str] = []
    changed = runner.run_sweep(config, workdir, echo=lines.append)
    assert changed["study"] != first["study"] and len(changed["ran"]) == 2
    assert not set(changed["ran"]) & set(first["ran"])  # new trial ids: nothing reused
    assert any(
        f"held study {first['study']}" in line and "optim.momentum" in line for line in lines
    )
    with open(os.path.join(workdir, "sweep.json")) as f:
        manifest = json.load(f)
    assert manifest["study"] == changed["study"]
    assert manifest["replaced_studies"][0]["study"] == first["study"]
    assert "optim.momentum" in manifest["replaced_studies"][0]["fields_differ"]
    names = {s.study_name for s in optuna.get_all_study_summaries(load(workdir)._storage)}
    assert {first["study"], changed["study"]} <= names


# ------------------------------------------------------------------ pruning in the engine


@pytest.mark.parametrize("parallel", ["sequential", pytest.param("vmap", marks=pytest.mark.slow)])
def test_the_engines_on_epoch_hook_stops_one_trial_and_the_others_go_on(tmp_path, parallel):
    config = sweep_config()
    config.num_epochs = 2
    config.sweep.axes = {"seed": (0, 1)}
    a, b = (t.config for t in space.expand(config))
    splits = pipeline.prepare(data.load("digits"), val_size=0.1)
    run = loop.build_run(a, splits=splits)
    programs = engine.build_programs(run, parallel)
    seen = []

    def on_epoch(epoch, val):
        seen.append((epoch, sorted(val), {i: v["accuracy"] for i, v in val.items()}))
        return {1} if epoch == 1 else set()

    members = [engine.Member(a, str(tmp_path / "a")), engine.Member(b, str(tmp_path / "b"))]
    outcomes = engine.train(run, members, programs=programs, on_epoch=on_epoch)
    # The same group without the hook (on "vmap" the trials share one program, so
    # "untouched" means: the same bits as in that group).
    plain = [engine.Member(a, str(tmp_path / "a2")), engine.Member(b, str(tmp_path / "b2"))]
    reference = engine.train(run, plain, programs=programs)
    done, pruned = (o.results for o in outcomes)
    spe = run.steps_per_epoch
    if parallel == "sequential":  # a trains (epochs 1, 2), then b, stopped after epoch 1
        assert [(e, live) for e, live, _ in seen] == [(1, [0]), (2, [0]), (1, [1])]
    else:  # both train at once; b is frozen after epoch 1
        assert [(e, live) for e, live, _ in seen] == [(1, [0, 1]), (2, [0])]
    judged = next(v[1] for e, live, v in seen if 1 in live)
    assert pruned["status"] == "pruned" and pruned["pruned_step"] == spe
    assert pruned["steps"] == spe and pruned["epochs"] == 1
    assert pruned["val_accuracy"] == judged  # what the hook judged it on
    assert "test_accuracy" not in pruned
    assert done["status"] == "done" and done["steps"] == 2 * spe
    assert done["params_sha256"] == reference[0].results["params_sha256"]  # untouched by the hook
    assert reference[1].results["status"] == "done"
    with open(tmp_path / "b" / "results.json") as f:
        assert json.load(f)["status"] == "pruned"


# ------------------------------------------------------------------ search


def tpe_config(mode="tpe", seeds=(0,)):
    config = sweep_config()
    config.optim.name = "adam"
    config.num_epochs = 4
    config.sweep.grids = ({"optim.learning_rate": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)},)
    config.sweep.axes = {"seed": seeds}
    config.sweep.mode = mode
    config.sweep.num_samples = 6 if mode == "tpe" else 0
    return config


def trial_steps(records) -> int:
    return sum(r.results["steps"] for r in records if r.finished)


def best_rate(records, metric="val_accuracy") -> float:
    done = [r for r in records if r.results.get("status") == "done"]
    best = max(done, key=lambda r: r.results[metric])
    return best.config.optim.learning_rate


@pytest.mark.slow
def test_tpe_with_the_median_pruner_finds_the_grids_best_decade_in_fewer_steps(tmp_path):
    grid = runner.run_sweep(tpe_config("grid"), str(tmp_path / "grid"))
    grid_records = runner.records(tpe_config("grid"), str(tmp_path / "grid"))
    config = tpe_config()
    config.sweep.num_samples = 8  # 8 TPE trials of 4 epochs against the 7-point grid
    config.sweep.startup_trials = 4
    config.sweep.pruner = "median"
    config.sweep.pruner_startup_trials = 2
    tpe = runner.run_sweep(config, str(tmp_path / "tpe"))
    records = runner.records(config, str(tmp_path / "tpe"))
    assert len(records) == 8 and all(r.finished for r in records)
    assert tpe["pruned"], "the median pruner should stop some hopeless trials"
    assert trial_steps(records) < trial_steps(grid_records) == 7 * 4 * 20
    # Within the decade around the grid's best rate (a factor of sqrt(10) each way).
    ratio = best_rate(records) / best_rate(grid_records)
    assert abs(math.log10(ratio)) <= 0.5, (best_rate(records), best_rate(grid_records))
    assert len(grid["ran"]) == 7
    with open(tmp_path / "tpe" / "summary.md") as f:
        assert f"Trials finished: 8/8 ({len(tpe['pruned'])} pruned" in f.read()


def test_tpe_proposes_rates_inside_the_grids_range_reproducibly():
    from research.sweep import search

    grid = space.expand(tpe_config())
    box = search.Space.of(grid)
    assert box.continuous == ["optim.learning_rate"] and box.categorical == ["seed"]
    proposals = []
    for _ in range(2):
        study = optuna.create_study(direction="maximize")
        points = []
        for _ in range(5):
            trial = study.ask()
            study.sampler = search.sampler(tpe_config(), trial.number)
            points.append(box.propose(trial))
            study.tell(trial, -abs(math.log10(points[-1]["optim.learning_rate"]) + 2.5))
        proposals.append(points)
    assert proposals[0] == proposals[1]  # seeded by sample_seed and the trial's number
    rates = [p["optim.learning_rate"] for p in proposals[0]]
    assert all(1e-4 <= r <= 1e-1 for r in rates) and len(set(rates)) == 5
    assert box.point({"optim.learning_rate": 0.002, "seed": 0}) == {
        "optim.learning_rate": 0.002,
        "seed": 0,
    }


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"mode": "tpe"}, "sweep.num_samples=0 is invalid for sweep.mode='tpe'"),
        ({"mode": "bayes"}, "sweep.mode='bayes' is invalid: must be one of grid, random, tpe"),
        ({"pruner": "hyperband"}, "sweep.pruner='hyperband' is invalid"),
        ({"grace_seconds": 1.0}, "sweep.grace_seconds=1.0 is invalid: must be more than twice"),
        (
            {"heartbeat_seconds": 0.0},
            "sweep.heartbeat_seconds=0.0 is invalid: must be a number > 0",
        ),
    ],
)
def test_bad_search_fields_name_the_field(changes, message):
    config = tpe_config("grid")
    for key, value in changes.items():
        config.sweep[key] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        space.expand(config)


def test_pruning_a_grid_that_compares_optimizers_must_be_asked_for():
    config = sweep_config(pruner="median")
    config.sweep.grids = (
        {"optim.name": ("sgd",), "optim.learning_rate": (0.1,)},
        {"optim.name": ("adam",), "optim.learning_rate": (1e-3,)},
    )
    with pytest.raises(ValueError, match=r"compares optimizers \(adam, sgd\).*prune_comparisons"):
        space.expand(config)
    config.sweep.prune_comparisons = True
    assert len(space.expand(config)) == 2
    config.sweep.prune_comparisons = False
    config.sweep.mode = "tpe"  # a search, not a comparison: pruning is its point
    config.sweep.num_samples = 4
    assert len(space.expand(config)) == 2


def test_tpe_needs_a_learning_rate_range():
    config = tpe_config()
    config.sweep.num_samples = 3
    config.sweep.grids = ({"optim.learning_rate": (1e-3,)},)
    with pytest.raises(ValueError, match="sweep optim.learning_rate over at least two values"):
        space.expand(config)
