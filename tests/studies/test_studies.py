"""Tests for the study reports (research/studies/) on tiny real sweeps of `digits`, and
their tables from hand-made rows.

Each report runs through `run_sweep` exactly as `scripts/sweep.py` runs it, and
the tests assert on the files it writes and on the arrays its figures are drawn from.
"""

from __future__ import annotations

import csv
import os

import jax
import numpy as np
import pytest

from research.layers import algorithm_choice, filters
from research.studies import architectures as study_architectures
from research.studies import autoencoder as study_autoencoder
from research.studies import filters as study_filters
from research.studies import freezing as study_freezing
from research.sweep import run_sweep, runner, space, storage
from research.sweep.space import get_sweep_config
from tests.helpers import tiny_sweep
from tests.helpers.curves import FINETUNE_LOWER_LR_100, LENET5_MNIST, RESNET18_MNIST
from tests.helpers.curves import curve as _curve


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def tiny_config(report: str, model_name: str, **axes):
    config = get_sweep_config()
    config.sweep.report = f"research.studies.{report}:report"
    config.model.name = model_name
    config.data.name = "digits"  # 8x8, embedded: no data folder needed
    config.batch_size = 64
    config.num_epochs = 1
    config.log_every_steps = 0
    config.progress = False
    config.sweep.parallel = "sequential"
    config.sweep.axes = axes
    return config


# ------------------------------------------------------------------ classic filters


def test_sobel_sees_a_vertical_edge_and_not_a_horizontal_one():
    vertical = np.zeros((8, 8), np.float32)
    vertical[:, :4] = 1.0  # bright left half: a vertical edge between columns 3 and 4
    horizontal = vertical.T.copy()
    rv = study_filters.filter_responses(vertical)
    rh = study_filters.filter_responses(horizontal)
    assert set(rv) == set(filters.FILTERS) and rv["sobel_x"].shape == (6, 6)
    # Bright-to-dark from left to right: +4 = (1 + 2 + 1) on the two columns touching the edge.
    np.testing.assert_allclose(rv["sobel_x"][:, 2:4], 4.0)
    np.testing.assert_allclose(rv["sobel_x"][:, [0, 1, 4, 5]], 0.0)
    np.testing.assert_allclose(rv["sobel_y"], 0.0)
    np.testing.assert_allclose(rh["sobel_x"], 0.0)
    np.testing.assert_allclose(rh["sobel_y"][2:4, :], 4.0)
    np.testing.assert_allclose(rv["scharr_x"][:, 2:4], 16.0)  # 3 + 10 + 3
    np.testing.assert_allclose(rv["vertical_edge"][:, 2:4], 3.0)
    assert study_filters.grayscale(np.full((2, 2, 3), 255, np.uint8)) == pytest.approx(1.0)


# ------------------------------------------------------------------ filters_and_features


@pytest.mark.slow
def test_filters_report_writes_figures_and_table(tmp_path, monkeypatch):
    monkeypatch.setattr(study_filters, "NATURAL_DATASET", "digits")  # stands in for CIFAR-10
    config = tiny_config("filters", "simple_cnn", seed=(0,))
    run_sweep(config, str(tmp_path))
    for name in ("classic_filters.png", "learned_kernels.png", "feature_maps.png"):
        assert os.path.getsize(tmp_path / name) > 1000
    rows = read_csv(tmp_path / "filters.csv")
    assert [r["filter"] for r in rows] == list(filters.FILTERS)
    assert len(rows[0]) == 3  # the filter and one column per image
    (summary,) = read_csv(tmp_path / "summary.csv")
    assert float(summary["test_accuracy"]) > 0.5
    assert summary["first_layer_kernels"] == "32x3x3"  # simple_cnn: 32 3x3 kernels
    text = (tmp_path / "summary.md").read_text()
    assert "| sobel_x |" in text and "test accuracy" in text
    # One epoch: one validation value in the storage, no curve to judge a plateau on.
    assert "validation curve not judged (1 epoch: no curve to judge)" in text

    # The figures' arrays: kernels and maps of the trained model, for one test image.
    (trial,) = runner.records(config, str(tmp_path))
    out = study_filters.write_report(str(tmp_path), [trial], config, natural_dataset=None)
    assert out["kernels"].shape == (32, 3, 3)
    assert set(out["maps"]) == {"conv1", "conv2"}
    assert out["maps"]["conv1"].shape == (8, 8, 32) and out["maps"]["conv2"].shape == (4, 4, 64)
    assert all(r.shape == (6, 6) for r in next(iter(out["responses"].values())).values())


# ------------------------------------------------------------------ autoencoder


def test_linear_probe_separates_separable_codes():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 4)) * 5
    labels = np.repeat(np.arange(3), 60)
    codes = centres[labels] + rng.normal(size=(180, 4))
    acc = study_autoencoder.linear_probe(codes[::2], labels[::2], codes[1::2], labels[1::2])
    assert acc > 0.95


@pytest.mark.slow
def test_autoencoder_report_table_figure_and_probe(tmp_path):
    config = tiny_config(
        "autoencoder",
        "conv_autoencoder",
        model={"overrides": {"latent_dim": (2, 8)}},
        seed=(0, 1),
    )
    config.model.overrides.latent_dim = 2
    config.model.overrides.widths = (8, 16)
    config.model.overrides.output = "linear"
    config.optim.name = "adam"
    config.optim.learning_rate = 3e-3
    run_sweep(config, str(tmp_path))
    trials = read_csv(tmp_path / "trials.csv")
    assert len(trials) == 4
    summary = read_csv(tmp_path / "summary.csv")
    assert [(r["dataset"], int(r["latent_dim"]), int(r["seeds"])) for r in summary] == [
        ("digits", 2, 2),
        ("digits", 8, 2),
    ]
    # Each trained model reconstructs better than the same model untrained (same init).
    from research.train import engine, loop

    for trial in space.expand(config):
        run = loop.build_run(trial.config)
        programs = engine.build_programs(run)
        init_keys, _, train_keys = engine.trial_keys([trial.config])
        hps = engine.hyperparams([trial.config], run.steps_per_epoch)
        untrained = programs.init(init_keys, train_keys, hps)
        (before,) = engine.evaluate(run, programs, untrained, run.splits.test)
        (row,) = [r for r in trials if r["trial_id"] == trial.id]
        assert float(row["test_loss"]) < 0.8 * before["loss"], (row, before)
    for r in summary:
        assert 0 < float(r["test_loss_mean"]) < 1.5  # standardized units: 1 = predict the mean
        assert float(r["test_mse_pixels_mean"]) < float(r["test_loss_mean"])  # std < 1
        assert 0.2 < float(r["probe_test_accuracy_mean"]) <= 1.0  # chance is 0.1
        assert float(r["test_loss_std"]) > 0  # two seeds, two different models
    text = (tmp_path / "summary.md").read_text()
    assert text.count("| digits |") == 2 and "probe test accuracy" in text
    # One epoch per trial: each row's loss curve has one value, so it is marked not judged.
    assert "‡ digits latent 2: 1 epoch: no curve to judge" in text
    assert [r["plateau"] for r in summary] == ["not judged (1 epoch: no curve to judge)"] * 2
    assert os.path.getsize(tmp_path / "reconstructions.png") > 1000
    records = runner.records(config, str(tmp_path))  # from the sweep's storage
    assert [r.state for r in records] == ["complete"] * 4
    grid = study_autoencoder.reconstruction_grid(str(tmp_path), records, {})
    assert list(grid["digits"]) == ["original", "latent 2", "latent 8"]
    for images in grid["digits"].values():
        assert images.shape == (study_autoencoder.NUM_SHOWN, 8, 8, 1)
        assert images.min() >= 0 and images.max() <= 1


# ------------------------------------------------------------------ plateau marks


def _records(config, curves, accuracies):
    """Finished storage records of `config`'s trials with the given curves and results."""
    return [
        storage.Record(t, "complete", {"test_accuracy": a, "params": 10}, _curve(c), i)
        for i, (t, c, a) in enumerate(zip(space.expand(config), curves, accuracies, strict=True))
    ]


def test_architecture_report_marks_a_model_still_improving(tmp_path, monkeypatch):
    # FLOPs are checked below (test_architecture_summary_and_flops_...); here only the table.
    flops = {"mlp": 1e3, "simple_cnn": 1e4}
    monkeypatch.setattr(study_architectures, "flops_per_example", lambda name, *_: flops[name])
    config = tiny_config("architectures", "mlp", model={"name": ("mlp", "simple_cnn")}, seed=(0, 1))
    # Trials in sweep order: (mlp, seed 0), (mlp, 1), (simple_cnn, 0), (simple_cnn, 1).
    curves = [RESNET18_MNIST, LENET5_MNIST, FINETUNE_LOWER_LR_100, FINETUNE_LOWER_LR_100]
    records = _records(config, curves, [0.944, 0.960, 0.768, 0.770])
    out = study_architectures.report(str(tmp_path), records, config)
    mlp, cnn = out["summary"]
    # mlp: the mean of two flat curves, its last epoch against the best of epochs 1-16.
    mean = np.mean([RESNET18_MNIST, LENET5_MNIST], axis=0)
    assert mlp["plateau"].reached is True
    assert mlp["plateau"].gain == pytest.approx(mean[-1] - mean[:16].max())
    assert cnn["plateau"].reached is False
    text = (tmp_path / "summary.md").read_text()
    assert "| digits | mlp | 2 | 0.9520 ± 0.0113 | 10 |" in text
    assert "| digits | simple_cnn | 2 | 0.7690 ± 0.0014 † | 10 |" in text
    assert "† digits simple_cnn: accuracy +3.8 pp over the last 4 of 20 epochs" in text
    assert "rose by 0.5 pp or more in the last 20 % of its epochs" in text
    (row_mlp, row_cnn) = read_csv(tmp_path / "summary.csv")
    assert row_cnn["plateau"] == "still improving (accuracy +3.8 pp over the last 4 of 20 epochs)"
    assert (
        row_mlp["plateau"] == "reached its plateau (accuracy +0.0 pp over the last 4 of 20 epochs)"
    )
    # Ranked per dataset: 0.952 ± 0.011 against 0.769 ± 0.001 over 2 seeds is resolved.
    assert (row_mlp["overlaps_top"], row_cnn["overlaps_top"]) == ("top", "no")
    assert "Ranking not resolved" not in text


# ------------------------------------------------------------------ tables from rows


def _stage_config():
    return tiny_sweep.with_transfer_stage(tiny_config("freezing", "simple_cnn", seed=(0,)))


def test_freezing_summary_means_over_seeds_and_pivots_by_target_size():
    def row(strategy, size, seed, acc, status="done"):
        return {
            "trial_id": f"{strategy}{size}{seed}",
            "pair": "mnist_0to4 → mnist[5,6,7,8,9]",
            "strategy": strategy,
            "target_size": size,
            "train_examples": size or 5000,
            "seed": seed,
            "status": status,
            "test_accuracy": acc,
            "val_accuracy": acc,
            "wall_seconds": 1.0,
        }

    rows = [
        row("linear_probe", 100, 0, 0.8),
        row("linear_probe", 100, 1, 0.9),
        row("scratch", 100, 0, 0.5),
        row("scratch", 100, 1, 0.4, status="diverged"),  # a diverged trial counts as 0
        row("scratch", 0, 0, 0.97),
    ]
    curves = {r["trial_id"]: _curve(LENET5_MNIST) for r in rows}
    curves["linear_probe1000"] = curves["linear_probe1001"] = _curve(FINETUNE_LOWER_LR_100)
    summary = study_freezing.summarize(rows, curves)
    probe = next(r for r in summary if r["strategy"] == "linear_probe")
    assert probe["seeds"] == 2
    assert probe["test_accuracy_mean"] == pytest.approx(0.85)
    assert probe["test_accuracy_std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    scratch = next(r for r in summary if r["strategy"] == "scratch" and r["target_size"] == 100)
    assert scratch["test_accuracy_mean"] == pytest.approx(0.25)
    text = study_freezing.markdown(summary, finished=5, total=8)
    assert "Trials finished: 5/8" in text
    assert "| strategy | 100 examples | all (5,000) examples |" in text
    assert "| linear_probe | 0.850 ± 0.071 † | — |" in text
    assert "| scratch | 0.250 ± 0.354 | 0.970 ± 0.000 (1) |" in text
    assert "† linear_probe, 100 examples: accuracy +3.8 pp over the last 4 of 20 epochs" in text
    # Strategies are ranked per target size (caveats' rule): at 100 examples, two seeds'
    # 95 % t-intervals (half-width 12.71 * std / sqrt(2)) overlap; "all" has one strategy.
    assert (probe["overlaps_top"], scratch["overlaps_top"]) == ("top", "yes")
    half = 12.7062 * np.std([0.8, 0.9], ddof=1) / np.sqrt(2)
    assert probe["test_accuracy_ci95_low"] == pytest.approx(0.85 - half, abs=1e-4)
    assert (
        "mnist_0to4 → mnist[5,6,7,8,9], 100 examples: Ranking not resolved by 2 seeds: the "
        "95 % t-interval of the mean test accuracy of the top row (linear_probe 0.2147..1.4853) "
        "overlaps scratch " in text
    )
    assert "all (5,000) examples: Ranking" not in text


def test_freezing_labels_name_strategies_and_pairs():
    trials = space.expand(_stage_config())
    pairs = study_freezing.pair_labels(trials)
    assert pairs == {"digits[5,6,7,8,9]": "digits_0to4 → digits[5,6,7,8,9]"}
    probe = space.apply(trials[0].config, {"transfer.strategy": "linear_probe"})
    assert study_freezing.strategy_label(probe) == "linear_probe_random_init"
    first2 = space.apply(probe, {"transfer.strategy": "freeze_first_n", "transfer.n": 2})
    assert study_freezing.strategy_label(first2) == "freeze_first_2"


def test_architecture_summary_and_flops_of_a_dense_network():
    from research import models

    rows = [
        {
            "dataset": "mnist",
            "model": "mlp",
            "seed": s,
            "test_accuracy": a,
            "params": 100,
            "flops": 200.0,
            "examples_per_second": e,
            "wall_seconds": 2.0,
            "overrides": "{}",
        }
        for s, a, e in ((0, 0.9, 1000.0), (1, 0.8, 3000.0))
    ]
    (r,) = study_architectures.summarize(rows)
    assert r["seeds"] == 2 and r["test_accuracy_mean"] == pytest.approx(0.85)
    assert r["examples_per_second"] == pytest.approx(2000.0)
    text = study_architectures.markdown([r], finished=2, total=4)
    # No validation curves given: the row is not judged, and says so.
    assert "| mnist | mlp | 2 | 0.8500 ± 0.0707 ‡ | 100 | 200 | 2000 | 2.0 |" in text
    assert "‡ mnist mlp: 0 epochs: no curve to judge" in text
    # A dense network costs about 2 FLOPs (multiply + add) per weight.
    flops = study_architectures.flops_per_example("mlp", "{}", (8, 8, 1), 10)
    model = models.create("mlp", num_classes=10)
    x = jax.numpy.zeros((1, 8, 8, 1))
    weights = models.param_count(model.init(jax.random.PRNGKey(0), x)["params"])
    assert 1.5 * weights < flops < 3 * weights


@pytest.mark.slow  # in the full tier: keeps the fast tier under 5 minutes
def test_architecture_flops_are_the_models_whatever_the_conv_algorithm(monkeypatch):
    """The lecture CNN's FLOPs: its convolutions' multiply-adds, on every backend's default.

    At 28x28x1: conv1 28*28*32*(5*5*1), conv2 10*10*64*(5*5*32), conv3 6*6*128*(5*5*64),
    conv4 2*2*64*(5*5*128) multiply-adds, 2 FLOPs each: 27.86M; the dense layers, bias
    adds, ReLUs and pooling add about 0.2M. "tiled" (the CPU default) would count the
    zeros of its banded kernels as well (30.4M).
    """
    macs = 28 * 28 * 32 * 25 + 10 * 10 * 64 * 800 + 6 * 6 * 128 * 1600 + 2 * 2 * 64 * 3200
    count = study_architectures.flops_per_example.__wrapped__  # uncached
    counts = {}
    for algorithm in ("tiled", "im2col"):
        monkeypatch.setenv(algorithm_choice.CONV_ENV_VAR, algorithm)
        counts[algorithm] = count("lecture_cnn", "{}", (28, 28, 1), 10)
    assert counts["tiled"] == counts["im2col"]
    assert 2 * macs < counts["tiled"] < 2 * macs + 0.4e6
