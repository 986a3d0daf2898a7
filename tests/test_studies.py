"""Tests for the study reports (research/sweep/study_*.py) on tiny real sweeps of `digits`.

Each report runs through `run_sweep` exactly as `scripts/sweep.py` runs it, and
the tests assert on the files it writes and on the arrays its figures are drawn from.
"""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from research.layers import filters
from research.sweep import run_sweep, space, study_autoencoder, study_filters
from research.sweep.space import get_sweep_config


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def tiny_config(report: str, model_name: str, **axes):
    config = get_sweep_config()
    config.sweep.report = report
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
    config = tiny_config("filters_and_features", "simple_cnn", seed=(0,))
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

    # The figures' arrays: kernels and maps of the trained model, for one test image.
    (trial,) = space.expand(config)
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
    for r in summary:
        assert 0 < float(r["test_loss_mean"]) < 1.5  # standardized units: 1 = predict the mean
        assert float(r["test_mse_pixels_mean"]) < float(r["test_loss_mean"])  # std < 1
        assert 0.2 < float(r["probe_test_accuracy_mean"]) <= 1.0  # chance is 0.1
        assert float(r["test_loss_std"]) > 0  # two seeds, two different models
    text = (tmp_path / "summary.md").read_text()
    assert text.count("| digits |") == 2 and "probe test accuracy" in text
    assert os.path.getsize(tmp_path / "reconstructions.png") > 1000
    grid = study_autoencoder.reconstruction_grid(str(tmp_path), space.expand(config), {})
    assert list(grid["digits"]) == ["original", "latent 2", "latent 8"]
    for images in grid["digits"].values():
        assert images.shape == (study_autoencoder.NUM_SHOWN, 8, 8, 1)
        assert images.min() >= 0 and images.max() <= 1
