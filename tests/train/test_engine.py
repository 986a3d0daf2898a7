"""The engine with a group of trials: vmapped against alone, divergence, kill and resume.

One loop trains one trial (`scripts/train.py`) and a sweep's groups; these tests
hold the group to what a lone run computes. On this CPU the vmapped program
rounds differently from the plain one (batched and unbatched contractions), so
"the same" is float rounding there, and bit for bit on the sequential path.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from research.config import get_base_config
from research.sweep import space
from research.train import assemble, engine, loop, outputs
from research.train.status import TrialStatus
from tests.helpers.training import EXPERIMENT, ROOT, sweep_args, sweep_results

TRAIN = os.path.join(ROOT, "scripts", "train.py")


def config(seed=0, lr=0.03, name="momentum", epochs=2):
    c = get_base_config()
    c.model.name = "simple_cnn"
    c.data.name = "digits"
    c.batch_size = 64
    c.num_epochs = epochs
    c.log_every_steps = 5
    c.progress = False
    c.optim.name = name
    c.optim.learning_rate = lr
    c.seed = seed
    return c


def train_losses(workdir) -> list[float]:
    records = outputs.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    return [r["train_loss"] for r in records if "train_loss" in r]


def test_trial_status_records_divergence_pruning_and_padding():
    # Three trials padded to four (the padding repeats the last trial).
    status = TrialStatus.fresh(3, 4)
    assert status.any_alive() and status.alive.tolist() == [True] * 4
    # A chunk of 5 steps from step 10: trial 1's loss turns NaN at its third step.
    losses = np.ones((4, 5))
    losses[1, 2:] = np.nan
    status.after_chunk(np.array([True, False, True, True]), losses, step=10)
    assert status.diverged == [None, 13, None, None]
    # Pruning the last trial stops its padding copy too.
    status.prune(2, step=20)
    assert status.alive.tolist() == [True, False, False, False]
    assert status.pruned == [None, None, 20, None]
    assert status.checkpoint_record(1) == {"alive": False, "diverged_step": 13, "pruned_step": None}
    # A resume reads it back from each trial's checkpoint record.
    again = TrialStatus.fresh(3, 4)
    again.restore([status.checkpoint_record(i) for i in range(3)])
    assert again.alive.tolist() == [True, False, False, False]
    assert again.diverged == [None, 13, None, None] and again.pruned == [None, None, 20, None]
    status.prune(0, step=20)
    assert not status.any_alive()


def test_the_engine_keeps_its_public_names_in_one_place():
    # What callers import from `engine` and `loop` comes from the part that holds it.
    from research.train import feeds, programs

    assert engine.build_programs is programs.build_programs and engine.evaluate is feeds.evaluate
    assert engine.train is loop.train and engine.Interrupted is loop.Interrupted
    assert loop.build_run is assemble.build_run and loop.Run is assemble.Run


def test_a_vmapped_trial_computes_what_train_and_evaluate_computes(tmp_path):
    configs = [config(seed=0, lr=0.03), config(seed=1, lr=0.1)]
    run = assemble.build_run(configs[0])
    group = engine.train(
        run,
        [engine.Member(c, str(tmp_path / f"v{i}")) for i, c in enumerate(configs)],
        parallel="vmap",
    )
    alone = loop.train_and_evaluate(configs[1], str(tmp_path / "alone"))
    vmapped = group[1].results
    assert vmapped["parallel"] == "vmap" and vmapped["group_size"] == 2
    assert alone["parallel"] == "sequential" and alone["group_size"] == 1
    assert vmapped["pool_algorithm"] == "reduce_window"  # the vmapped programs' CPU choice
    assert vmapped["test_accuracy"] == pytest.approx(alone["test_accuracy"], abs=1e-3)
    assert vmapped["test_loss"] == pytest.approx(alone["test_loss"], rel=1e-4)
    np.testing.assert_allclose(
        train_losses(tmp_path / "v1"), train_losses(tmp_path / "alone"), rtol=1e-5
    )
    # The trials really differ (own seed, learning rate, batch order).
    assert group[0].results["params_sha256"] != vmapped["params_sha256"]
    lrs = [float(o.state.opt_state.hyperparams["learning_rate"]) for o in group]
    assert lrs == pytest.approx([0.03, 0.1])


@pytest.mark.slow
def test_a_diverging_trial_is_frozen_and_the_others_go_on(tmp_path):
    configs = [config(seed=0), config(seed=1, lr=1e8), config(seed=2)]
    run = assemble.build_run(configs[0])
    programs = engine.build_programs(run, "vmap")
    members = [engine.Member(c, str(tmp_path / f"t{i}")) for i, c in enumerate(configs)]
    with_it = engine.train(run, members, programs=programs)
    # The same trial alone, on the sequential path, diverges at the same step.
    (alone,) = engine.train(run, [engine.Member(configs[1])], parallel="sequential")
    bad = with_it[1].results
    assert bad["status"] == alone.results["status"] == "diverged"
    assert bad["diverged_step"] == alone.results["diverged_step"]
    assert bad["steps"] == bad["diverged_step"] - 1  # frozen at its last good step
    assert "test_accuracy" not in bad and "val_accuracy" not in bad
    assert "loss became non-finite at step" in bad["error"]
    # Its results.json is valid JSON (no bare NaN); its metrics stop where it diverged.
    text = (tmp_path / "t1" / "results.json").read_text()
    assert "NaN" not in text and json.loads(text)["status"] == "diverged"
    steps = [r["step"] for r in outputs.read_jsonl(tmp_path / "t1" / "metrics.jsonl")]
    assert all(step < bad["diverged_step"] for step in steps)
    # The others trained to the end and match a group without the diverging trial.
    without = engine.train(
        run, [engine.Member(configs[0]), engine.Member(configs[2])], programs=programs
    )
    for o, w in zip([with_it[0], with_it[2]], without, strict=True):
        assert o.results["status"] == "done" and o.results["steps"] == 40
        assert o.results["test_loss"] == pytest.approx(w.results["test_loss"], rel=1e-5)
        assert o.results["test_accuracy"] == pytest.approx(w.results["test_accuracy"], abs=1e-3)


def test_members_of_different_groups_are_refused():
    run = assemble.build_run(config())
    other = config()
    other.batch_size = 32
    with pytest.raises(ValueError, match="differ in more than seed and hyperparameters"):
        engine.train(run, [engine.Member(config()), engine.Member(other)])


# ------------------------------------------------------------------ through the scripts


@pytest.mark.slow
def test_a_sequential_sweep_trial_is_bit_identical_to_train_py(tmp_path):
    swept = subprocess.run(
        sweep_args(tmp_path / "sweep", "sequential", epochs=2),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert swept.returncode == 0, swept.stderr[-2000:]
    (trial,) = [
        t
        for t in space.expand(_digits_sweep())
        if t.config.seed == 1 and t.config.optim.learning_rate == 0.03
    ]
    trial_results = sweep_results(tmp_path / "sweep")[trial.id]
    with open(tmp_path / "sweep" / "trials" / trial.id / "config.json") as f:
        trial_config = json.load(f)
    alone = subprocess.run(
        [
            sys.executable,
            TRAIN,
            f"--config={os.path.join(ROOT, 'experiments', 'digits.py')}",
            f"--workdir={tmp_path / 'alone'}",
            *[f"--config.{k}={v}" for k, v in _cli_fields(trial_config).items()],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert alone.returncode == 0, alone.stderr[-2000:]
    with open(tmp_path / "alone" / "results.json") as f:
        alone_results = json.load(f)
    assert set(alone_results) == set(trial_results)  # exactly the same fields
    assert alone_results["params_sha256"] == trial_results["params_sha256"]
    timing = {"wall_seconds", "compile_seconds", "examples_per_second"}
    for key in set(trial_results) - timing:
        assert alone_results[key] == trial_results[key], key
    assert train_losses(tmp_path / "alone") == train_losses(
        tmp_path / "sweep" / "trials" / trial.id
    )


def _digits_sweep():
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_optimizers", EXPERIMENT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("digits")
    c.num_epochs = 2
    c.sweep.grids = ({"optim.name": ("momentum",), "optim.learning_rate": (0.03,)},)
    c.sweep.axes = {"seed": (0, 1, 2)}
    return c


def _cli_fields(trial_config: dict) -> dict:
    """The fields of a trial's config.json that differ from experiments/digits.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "digits", os.path.join(ROOT, "experiments", "digits.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    base = outputs.flatten(json.loads(module.get_config().to_json_best_effort()))
    wanted = outputs.flatten(trial_config)
    return {
        k: v for k, v in wanted.items() if base.get(k) != v and not k.startswith("model.overrides")
    }


@pytest.mark.slow
def test_the_sweep_table_does_not_depend_on_machine_load(tmp_path):
    """The same sweep on an idle CPU and on one kept busy by two spinning processes."""
    args = sweep_args(tmp_path / "idle", "auto", epochs=2)
    idle = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert idle.returncode == 0, idle.stderr[-2000:]
    spin = "import time\nt = time.time()\nwhile time.time() - t < 600: pass"
    burners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
    try:
        busy = subprocess.run(
            sweep_args(tmp_path / "busy", "auto", epochs=2),
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    finally:
        for b in burners:
            b.kill()
    assert busy.returncode == 0, busy.stderr[-2000:]
    assert (tmp_path / "idle" / "summary.md").read_text() == (
        tmp_path / "busy" / "summary.md"
    ).read_text()

    def rows(folder):  # every column but the wall-clock time
        with open(folder / "trials.csv") as f:
            return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in csv.DictReader(f)]

    assert rows(tmp_path / "idle") == rows(tmp_path / "busy")
    assert len(rows(tmp_path / "idle")) == 3
    with open(tmp_path / "busy" / "sweep.json") as f:
        assert json.load(f)["parallel"] == "sequential"
