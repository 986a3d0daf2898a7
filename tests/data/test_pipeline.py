"""The pipeline's pieces: normalization, the carved splits, chunk plans, padded evaluation."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from research.data import batching, pipeline

pytestmark = pytest.mark.usefixtures("no_env")  # tests/data/conftest.py


# ------------------------------------------------------------------ pipeline pieces


def test_mean_std_are_exact_and_normalize_matches_the_formula():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
    hist = pipeline.pixel_histogram(images, chunk=7)  # pieces add up: any cut, any order
    np.testing.assert_array_equal(hist, pipeline.pixel_histogram(images[::-1]))
    assert hist.shape == (3, 256) and hist.sum() == images.size
    mean, std = pipeline.mean_std(hist)
    pixels = images.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-7)
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-6)
    # A worked example: values 0 and 255 in equal numbers -> mean 0.5, std 0.5.
    assert pipeline.mean_std(np.array([[2] + [0] * 254 + [2]])) == (
        pytest.approx([0.5]),
        pytest.approx([0.5]),
    )
    table = pipeline.normalize_table(mean, std)
    formula = ((images.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
    np.testing.assert_array_equal(pipeline.normalize(images, table), formula)  # bit for bit


def test_carve_with_classes_indexes_the_raw_records():
    labels = {"train": np.array([0, 1, 2, 1, 0, 2, 2, 1, 0, 1]), "test": np.array([2, 0, 1])}
    carved = pipeline.carve(
        counts={"train": 10, "test": 3},
        labels=labels,
        num_classes=3,
        class_names=("a", "b", "c"),
        val_size=2,
        split_seed=0,
        classes=(2, 1),
    )
    kept = np.flatnonzero(np.isin(labels["train"], (2, 1)))  # 7 records
    assert sorted([*carved.train, *carved.val]) == kept.tolist()
    assert len(carved.val) == 2 and carved.val_from == "train"
    assert carved.test.tolist() == [0, 2]
    assert carved.class_names == ("c", "b") and carved.num_classes == 2
    assert carved.map_labels(labels["test"][carved.test]).tolist() == [0, 1]  # c -> 0, b -> 1
    with pytest.raises(ValueError, match=r"data.val_size=7 must be .* \[0, 7\)"):
        pipeline.carve(
            counts={"train": 10, "test": 3},
            labels=labels,
            num_classes=3,
            val_size=7,
            classes=(2, 1),
        )


def test_plan_chunks_cut_epochs_like_the_training_loop():
    key = jax.random.PRNGKey(0)
    plans = list(
        batching.plan_chunks(key, n=50, batch_size=8, remainder="keep", chunk=4, num_epochs=2)
    )
    # 7 steps an epoch (6 of 8, one of 2): chunks of 4, then the rest, the remainder alone.
    assert [(p.epoch, p.step, p.position, p.rows.shape) for p in plans] == [
        (0, 0, 0, (4, 8)),
        (0, 4, 4, (2, 8)),
        (0, 6, 6, (1, 2)),
        (1, 7, 0, (4, 8)),
        (1, 11, 4, (2, 8)),
        (1, 13, 6, (1, 2)),
    ]
    assert [p.epoch_end for p in plans] == [False, False, True, False, False, True]
    for epoch in (0, 1):
        rows = np.concatenate([p.rows.ravel() for p in plans if p.epoch == epoch])
        expected = batching.epoch_batches(jax.random.fold_in(key, epoch), 50, 8, "keep")
        np.testing.assert_array_equal(rows, np.concatenate([b.ravel() for b in expected]))
    resumed = list(
        batching.plan_chunks(
            key, n=50, batch_size=8, remainder="keep", chunk=4, num_epochs=2, start_step=9
        )
    )
    assert [(p.step, len(p.rows)) for p in resumed] == [(9, 2), (11, 2), (13, 1)]
    np.testing.assert_array_equal(resumed[0].rows, plans[3].rows[2:])


def test_eval_batches_pad_with_the_last_example_and_mask_it():
    idx, mask = batching.eval_batches(10, 4, 2)
    assert idx.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 9, 9]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]
    idx, _ = batching.eval_batches(10, 5, 2)  # batch rounded up to a multiple of 2 devices
    assert idx.shape == (2, 6)
