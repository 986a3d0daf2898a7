"""Sweeps: expansion and ids, choosing on validation, the path rule, kill and resume, stages.

Runs that need their own process (kill and resume, the command line) go through
`scripts/sweep.py` in a subprocess, on tiny digits sweeps. Several workers on
one storage, takeover of lost trials, TPE and pruning: tests/sweep/test_sweep_workers.py.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest

from research.sweep import aggregate, runner, space, storage, vmapped
from tests.helpers import tiny_sweep
from tests.helpers.tiny_sweep import EXPERIMENT, ROOT, SCRIPT


def sweep_config(**axes):
    return tiny_sweep.config(axes=axes, parallel="auto")  # the default path rule


def results_files(workdir):
    folder = os.path.join(workdir, "trials")
    paths = [os.path.join(folder, t, "results.json") for t in sorted(os.listdir(folder))]
    return {p: os.stat(p).st_mtime_ns for p in paths if os.path.exists(p)}


# ------------------------------------------------------------------ the sweep config


def test_grid_is_the_union_of_subgrids_times_axes():
    config = sweep_config(seed=(0, 1, 2))
    config.sweep.grids = (
        {"optim.name": ("sgd",), "optim.learning_rate": (0.03, 0.1, 0.3)},
        {"optim": {"name": ("adam",), "learning_rate": (1e-3, 3e-3)}},  # nested works too
    )
    trials = space.expand(config)
    assert len(trials) == (3 + 2) * 3
    assert len({t.id for t in trials}) == 15
    assert trials[0].overrides == {"optim.learning_rate": 0.03, "optim.name": "sgd", "seed": 0}
    assert trials[0].config.optim.learning_rate == 0.03 and trials[-1].config.seed == 2
    assert [t.config.optim.name for t in trials].count("adam") == 6
    assert "sweep" not in trials[0].config


def test_plain_axes_are_a_product_and_random_mode_is_seeded():
    config = sweep_config(
        optim={"name": ("sgd", "adam"), "learning_rate": (0.1, 0.01)}, seed=(0, 1)
    )
    assert len(space.expand(config)) == 8
    config.sweep.mode = "random"
    config.sweep.num_samples = 3
    first = [t.id for t in space.expand(config)]
    assert len(first) == 3 and first == [t.id for t in space.expand(config)]
    config.sweep.sample_seed = 1
    assert [t.id for t in space.expand(config)] != first
    config.sweep.num_samples = 100  # more than the grid: the whole grid
    assert len(space.expand(config)) == 8


def test_trial_ids_hash_the_whole_config_so_a_non_swept_change_makes_new_ids():
    config = sweep_config(seed=(0, 1))
    ids = [t.id for t in space.expand(config)]
    assert ids[0] == space.config_id(space.expand(config)[0].config)
    config.progress = True  # cosmetic: the same trials
    config.log_every_steps = 7
    assert [t.id for t in space.expand(config)] == ids
    config.num_epochs = 2  # not swept, but it changes what the trials compute
    changed = [t.id for t in space.expand(config)]
    assert len(set(changed)) == 2 and not set(changed) & set(ids)
    # The study of a sweep: the same fields (and the search), not the storage or report.
    name = storage.study_name(config)
    config.sweep.storage = "elsewhere.journal"
    config.sweep.report = "research.studies.freezing:report"
    assert storage.study_name(config) == name
    config.sweep.pruner = "median"
    assert storage.study_name(config) != name


def test_trial_ids_are_stable_hashes_of_the_overrides():
    a = space.trial_id({"optim.name": "sgd", "seed": 0})
    assert a == space.trial_id({"seed": 0, "optim.name": "sgd"})  # order does not matter
    assert a != space.trial_id({"optim.name": "sgd", "seed": 1})
    # The id is a function of the overrides alone: fixed forever (folders depend on it).
    assert (
        space.trial_id({"seed": 0})
        == hashlib.sha256(b'{"seed":0}').hexdigest()[:12]
        == "bd0488843468"
    )
    assert len(a) == 12


@pytest.mark.parametrize(
    "axes, grids, message",
    [
        ({"optim": {"lr": (0.1,)}}, (), "'optim.lr' is not a config field"),
        ({"sed": (0, 1)}, (), "'sed' is not a config field"),
        ({}, ({"optim.momentm": (0.9,)},), "'optim.momentm' is not a config field"),
        ({"seed": 3}, (), "must be a list of values"),
        ({"seed": (-1,)}, (), "config.seed=-1"),
        ({"optim": {"name": ("sgdd",)}}, (), "optim.name"),
        ({"seed": (0,)}, ({"seed": (1,)},), "also in sweep.axes"),
    ],
)
def test_bad_sweep_config_names_the_field(axes, grids, message):
    config = sweep_config(**axes)
    config.sweep.grids = grids
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        space.expand(config)


def test_cli_bad_axis_is_one_clear_message_and_exit_2(tmp_path):
    workdir = tmp_path / "sweep"
    done = tiny_sweep.run(workdir, '--config.sweep.grids=({"optim.lr": (0.1,)},)')
    assert done.returncode == 2, done.stderr
    assert "'optim.lr' is not a config field" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not workdir.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, extra, message",
    [
        (f"{EXPERIMENT}:nosuch", [], "compare_optimizers.py:nosuch: unknown variant; use mnist"),
        (os.path.join(ROOT, "experiments"), [], "Is a directory"),
        (f"{EXPERIMENT}:digits", ["--config.nosuch=1"], "--config.nosuch: the config has no such"),
        (f"{EXPERIMENT}:digits", ["--config.sweep.report=nope"], "config.sweep.report='nope'"),
        (
            f"{EXPERIMENT}:digits",
            ["--config.sweep.axes.optim.lerning_rate=(0.1,)"],
            "bad config override --config.sweep.axes.optim.lerning_rate: the config has no such",
        ),
        (
            f"{EXPERIMENT}:digits",
            ["--config.sweep.storage=postgresql://u:s3cret@127.0.0.1:9/db"],
            "://u:***@127.0.0.1:9/db' cannot be opened",
        ),
        (
            os.path.join(ROOT, "experiments", "digits.py"),
            [],
            "the config has no `sweep` section",
        ),
    ],
)
def test_cli_bad_inputs_are_one_line_and_exit_2(tmp_path, config, extra, message):
    workdir = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, SCRIPT, f"--config={config}", f"--workdir={workdir}", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not workdir.exists()


# ------------------------------------------------------------------ the path of a sweep


def test_auto_path_is_a_stated_rule_not_a_timing(monkeypatch):
    def no_probe(*args, **kwargs):
        raise AssertionError("a sweep must not time anything to choose its path")

    monkeypatch.setattr(vmapped, "probe", no_probe)
    assert vmapped.resolve_parallel("auto", "cpu")[0] == "sequential"
    assert vmapped.resolve_parallel("auto", "gpu")[0] == "vmap"
    assert vmapped.resolve_parallel("auto", "tpu")[0] == "vmap"
    assert vmapped.resolve_parallel("vmap", "cpu") == ("vmap", "set by sweep.parallel")
    with pytest.raises(ValueError, match=r"sweep.parallel='fast' is invalid"):
        vmapped.resolve_parallel("fast")


def test_the_first_runs_path_is_kept_by_every_later_run(tmp_path):
    config = sweep_config(seed=(0,))
    workdir = str(tmp_path)
    with open(tmp_path / "sweep.json", "w") as f:
        json.dump({"parallel": "vmap"}, f)  # as a GPU machine would have started it
    assert runner.fixed_parallel(config, workdir)[0] == "vmap"  # "auto" on this CPU
    config.sweep.parallel = "sequential"
    with pytest.raises(ValueError, match=r"ran its trials with 'vmap'.*must not mix paths"):
        runner.fixed_parallel(config, workdir)
    config.sweep.parallel = "vmap"
    assert runner.fixed_parallel(config, workdir)[0] == "vmap"


# ------------------------------------------------------------------ aggregation


def test_group_by_keeps_the_order_of_first_appearance():
    rows = [{"m": "b", "d": 1, "s": 0}, {"m": "a", "d": 1, "s": 0}, {"m": "b", "d": 1, "s": 1}]
    groups = aggregate.group_by(rows, "m", "d")
    assert list(groups) == [("b", 1), ("a", 1)]
    assert [r["s"] for r in groups[("b", 1)]] == [0, 1]
    with pytest.raises(KeyError, match="'x'"):
        aggregate.group_by(rows, "x")


def _row(lr, seed, val, test, loss=0.5, status="done", name="sgd"):
    return {
        "trial_id": f"{name}-{lr}-{seed}",
        "optim.name": name,
        "optim.learning_rate": lr,
        "seed": seed,
        "status": status,
        "val_accuracy": val,
        "test_accuracy": test,
        "test_loss": 0.3,
        "final_train_loss": loss,
        "steps_to_target": 100 if val and val > 0.9 else None,
        "wall_seconds": 1.0,
        "params_sha256": "x",
    }


def test_best_learning_rate_is_chosen_on_validation_not_test():
    rows = [
        # lr 0.1: better on validation, worse on test.
        _row(0.1, 0, 0.95, 0.80, loss=0.2),
        _row(0.1, 1, 0.93, 0.82, loss=0.4),
        # lr 0.3: worse on validation, better on test.
        _row(0.3, 0, 0.90, 0.99),
        _row(0.3, 1, 0.91, 0.98),
        # lr 1.0: best validation for seed 0, diverged for seed 1 -> counts as 0.
        _row(1.0, 0, 0.99, 0.99),
        _row(1.0, 1, None, None, status="diverged"),
        _row(1e-3, 0, 0.5, 0.5, name="adam"),
    ]
    summary = aggregate.summarize(rows, 0.9)
    sgd = next(s for s in summary if s["optim.name"] == "sgd")
    assert sgd["best_learning_rate"] == 0.1
    assert sgd["val_accuracy_mean"] == pytest.approx(0.94)
    assert sgd["test_accuracy_mean"] == pytest.approx(0.81)
    assert sgd["test_accuracy_std"] == pytest.approx(np.std([0.80, 0.82], ddof=1))
    assert sgd["final_train_loss_mean"] == pytest.approx(0.3)
    assert sgd["steps_to_target_mean"] == 100 and sgd["reached_target"] == "2/2"
    assert [s["optim.name"] for s in summary] == ["sgd", "adam"]
    text = aggregate.markdown(summary, 0.9, finished=7, total=7)
    assert "| sgd | 0.1 | 2 | 0.9400 | 0.8100 ± 0.0141 |" in text


# ------------------------------------------------------------------ the command line


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    workdir = str(tmp_path / "sweep")
    proc = tiny_sweep.start(workdir, epochs=4)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.isdir(os.path.join(workdir, "trials")) and results_files(workdir):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    before = results_files(workdir)
    assert 1 <= len(before) < 6, "the kill should land after the first trial and before the last"
    with open(os.path.join(workdir, "sweep.json")) as f:
        name = json.load(f)["study"]
    journal = storage.open_storage(os.path.join(workdir, "optuna.journal"))
    study = optuna.load_study(study_name=name, storage=journal)
    running = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]

    done = tiny_sweep.run(workdir, epochs=4)
    assert done.returncode == 0, done.stderr
    after = results_files(workdir)
    assert len(after) == 6
    for path, mtime in before.items():
        assert after[path] == mtime  # finished trials were not run again
    assert f"ran {6 - len(before)}," in done.stdout  # only the unfinished trials trained
    # The dead worker's trial stood RUNNING in the study: taken over once its heartbeat stopped
    # (and if its results.json was written before the kill, recorded without training again).
    assert ("took over trial" in done.stdout) == bool(running)
    with open(os.path.join(workdir, "trials.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert {r["optim.learning_rate"] for r in rows} == {"0.03", "0.1", "0.3"}
    assert all(float(r["val_accuracy"]) > 0.3 for r in rows)
    with open(os.path.join(workdir, "summary.csv")) as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == 1 and summary[0]["seeds"] == "2"
    best = summary[0]["best_learning_rate"]
    mean_val = {
        lr: np.mean([float(r["val_accuracy"]) for r in rows if r["optim.learning_rate"] == lr])
        for lr in ("0.03", "0.1", "0.3")
    }
    assert float(best) == float(max(mean_val, key=mean_val.get))
    with open(os.path.join(workdir, "summary.md")) as f:
        assert "Trials finished: 6/6" in f.read()
    for png in ("loss_curves.png", "val_accuracy_vs_lr.png"):
        with open(os.path.join(workdir, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(workdir, "sweep.json")) as f:
        manifest = json.load(f)
    assert manifest["parallel"] == "sequential" and len(manifest["trials"]) == 6
    assert manifest["storage"] == os.path.join(workdir, "optuna.journal")
    study = optuna.load_study(
        study_name=manifest["study"], storage=storage.open_storage(manifest["storage"])
    )
    assert sorted(t.state.name for t in study.trials).count("COMPLETE") == 6


# ------------------------------------------------------------------ pretraining stages


def stage_config(stage_epochs=1):
    config = sweep_config(seed=(0,))
    config.sweep.report = "research.studies.freezing:report"
    config.sweep.parallel = "sequential"
    return tiny_sweep.with_transfer_stage(config, stage_epochs)


def test_stage_ids_enter_the_ids_of_the_trials_that_use_them():
    before = {t.pretrain: t.id for t in space.expand(stage_config())}
    after = {t.pretrain: t.id for t in space.expand(stage_config(stage_epochs=2))}
    assert before[""] == after[""]  # scratch does not use the stage
    assert before["digits_0to4"] != after["digits_0to4"]
    (stage,) = space.stages(stage_config()).values()
    assert stage.overrides == {"data.classes": [0, 1, 2, 3, 4], "num_epochs": 1}
    assert stage.id == space.config_id(stage.config)


def test_a_trial_naming_an_unknown_stage_is_an_error():
    config = stage_config()
    config.sweep.grids = ({"transfer.pretrained": ("pretrain:nope",)},)
    with pytest.raises(ValueError, match=r"pretrain:nope.*stages: digits_0to4"):
        space.expand(config)


@pytest.mark.slow
def test_stage_runs_once_first_and_transfer_trials_start_from_it(tmp_path):
    workdir = str(tmp_path)
    config = stage_config()
    done = runner.run_sweep(config, workdir)
    (stage,) = space.stages(config).values()
    stage_folder = runner.stage_dir(workdir, stage)
    assert done["stages"] == [stage.id] and len(done["ran"]) == 2
    assert os.path.isdir(os.path.join(stage_folder, "checkpoints"))
    probe = next(t for t in space.expand(config) if t.pretrain)
    with open(os.path.join(runner.trial_dir(workdir, probe), "transfer.json")) as f:
        report = json.load(f)
    assert report["source"] == os.path.abspath(stage_folder)
    assert report["loaded"] and report["frozen"]
    assert all("head" not in p for p in report["frozen"])
    with open(os.path.join(runner.trial_dir(workdir, probe), "config.json")) as f:
        assert json.load(f)["transfer"]["pretrained"] == stage_folder
    # Resumed: neither the stage nor any trial runs again; the report is rewritten.
    again = runner.run_sweep(config, workdir)
    assert again["stages"] == [] and again["ran"] == [] and len(again["skipped"]) == 2
    with open(os.path.join(workdir, "summary.md")) as f:
        text = f.read()
    assert "Trials finished: 2/2" in text
    assert "| linear_probe |" in text and "| scratch |" in text
    assert os.path.exists(os.path.join(workdir, "accuracy_vs_target_size.png"))
