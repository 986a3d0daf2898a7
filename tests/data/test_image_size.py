"""`data.image_size` on the built-in datasets, and what the input-too-small error says."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import re

import numpy as np
import pytest

from research import config as config_lib
from research import data, models, train
from research.config import get_base_config
from research.data import sources, stream_splits
from research.data.tfds_builders import resize


def test_digits_resized_by_the_folder_policy():
    ds = data.load("digits", image_size=32)
    original = data.load("digits")
    assert ds.image_shape == (32, 32, 1)
    assert ds.train_images.shape == (1438, 32, 32, 1) and ds.test_images.shape == (359, 32, 32, 1)
    np.testing.assert_array_equal(ds.train_labels, original.train_labels)
    assert ds.notes[-1] == "images scaled to cover 32x32 and centre-cropped"
    # One function for every dataset: the same pixels as Pillow's ImageOps.fit, bicubic.
    from PIL import Image, ImageOps

    expected = ImageOps.fit(
        Image.fromarray(original.train_images[0, ..., 0]), (32, 32), Image.Resampling.BICUBIC
    )
    np.testing.assert_array_equal(ds.train_images[0, ..., 0], np.asarray(expected))
    # Scaling by 4 keeps the ink: the mean brightness moves by under 2 of 255.
    assert abs(ds.train_images.mean() - original.train_images.mean()) < 2


def test_fit_array_crops_the_centre_of_a_wide_image():
    wide = np.zeros((8, 16, 3), np.uint8)
    wide[:, :4, 0] = wide[:, 12:, 0] = 255  # red outer quarters
    wide[:, 4:12, 1] = 255  # green middle half
    out = resize.fit_array(wide, 4)
    assert out.shape == (4, 4, 3)
    assert out[..., 1].min() > 200 and out[..., 0].max() < 30  # red borders cut off


def test_resize_raw_keeps_a_val_split():
    raw = data.load("digits")
    with_val = dataclasses.replace(
        raw, val_images=raw.test_images[:5], val_labels=raw.test_labels[:5]
    )
    out = sources.resize_raw(with_val, 12)
    assert out.val_images.shape == (5, 12, 12, 1)
    np.testing.assert_array_equal(out.val_labels, raw.test_labels[:5])


@pytest.mark.parametrize(
    "name", ["digits", "mnist", "fashion_mnist", "cifar10", "tfds:svhn_cropped"]
)
def test_config_accepts_image_size_for_every_dataset_kind(name):
    config = get_base_config()
    config.data.name = name
    config.data.image_size = 32
    config_lib.validate(config)  # no error


def test_negative_image_size_is_named():
    config = get_base_config()
    config.data.image_size = -1
    with pytest.raises(ValueError, match=re.escape("config.data.image_size=-1")):
        config_lib.validate(config)
    with pytest.raises(ValueError, match="must be 0 .* or a size >= 1"):
        data.load("digits", image_size=-1)


@pytest.mark.slow  # 12-20 s: the full tier (the fast tier stays under 5 minutes)
def test_mnist_prepared_once_per_size_and_quietly(data_root, tmp_path, caplog):
    cache = tmp_path / "cache"
    out, err = io.StringIO(), io.StringIO()
    caplog.set_level(logging.INFO)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        small = data.load("mnist", data_dir=data_root, cache_dir=cache, image_size=14)
    assert small.train_images.shape == (60000, 14, 14, 1)
    assert small.test_images.shape == (10000, 14, 14, 1)
    assert "images scaled to cover 14x14 and centre-cropped" in small.notes
    original = data.load("mnist", data_dir=data_root, cache_dir=cache)
    assert original.image_shape == (28, 28, 1)
    np.testing.assert_array_equal(small.train_labels, original.train_labels)
    np.testing.assert_array_equal(
        small.train_images[123], resize.fit_array(original.train_images[123], 14)
    )
    # The cache keys on the size: one folder per size, beside the original.
    prepared = sorted(p.name for p in (cache / "research_resized").iterdir() if p.is_dir())
    assert prepared == ["research_mnist-default-1.0.0-14px-f1"]
    streamed = data.open_records("mnist", data_dir=data_root, cache_dir=cache, image_size=14)
    assert streamed.image_shape == (14, 14, 1)
    assert streamed.split_sizes == {"train": 60000, "test": 10000}
    data.open_records("mnist", data_dir=data_root, cache_dir=cache, image_size=20)
    prepared = sorted(p.name for p in (cache / "research_resized").iterdir() if p.is_dir())
    assert prepared == [
        "research_mnist-default-1.0.0-14px-f1",
        "research_mnist-default-1.0.0-20px-f1",
    ]
    # The streaming loader reads the same resized records; its caches live beside them.
    config = get_base_config()
    config.data.update(name="mnist", data_dir=str(data_root or ""), cache_dir=str(cache))
    config.data.image_size = 14
    splits = stream_splits.open_splits(config.data)
    assert splits.input_shape == (14, 14, 1)
    assert splits.mean == pytest.approx(
        [small.train_images[splits.train.records].mean() / 255], rel=1e-6
    )


def test_local_mnist_load_does_not_say_downloading(data_root, tmp_path, caplog):
    out, err = io.StringIO(), io.StringIO()
    caplog.set_level(logging.DEBUG)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        ds = data.load("mnist", data_dir=data_root, cache_dir=tmp_path / "cache")
    assert ds.train_images.shape == (60000, 28, 28, 1)
    printed = out.getvalue() + err.getvalue() + caplog.text
    if data_root is not None:  # local files (else the loader downloads, and may say so)
        assert "Downloading and preparing" not in printed
        assert "downloaded and prepared" not in printed
        assert "preparing research_mnist into" in caplog.text  # our one INFO line instead


def test_too_small_error_names_image_size_and_small_overrides():
    model = models.create("lenet5", num_classes=10)
    with pytest.raises(ValueError) as err:
        models.check_input("lenet5", model, (8, 8, 1))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("model 'lenet5' cannot take input (8, 8, 1): its smallest input is")
    smallest = models.smallest_usable_size(model, 1)
    # `config.FIELD=VALUE`: read the same way on the command line and in Python.
    assert f"resize the data with config.data.image_size={smallest} (or larger)" in message
    assert "--config" not in message
    models.check_input("lenet5", model, (smallest, smallest, 1))  # the fix works
    with pytest.raises(ValueError):
        models.check_input("lenet5", model, (smallest - 1, smallest - 1, 1))
    assert "config.model.overrides.padding=2 with config.data.image_size=" in message
    vgg = models.create("vgg11", num_classes=10)
    with pytest.raises(ValueError, match="cannot take") as err:
        models.check_input("vgg11", vgg, (28, 28, 1))
    flags = "config.model.overrides.pool_padding=SAME config.model.overrides.pooled_size=None"
    assert f"use the model's small-input overrides {flags}" in str(err.value)


@pytest.mark.slow  # in the full tier: keeps the fast tier under 5 minutes
def test_lenet5_trains_on_digits_with_image_size_32(tmp_path):
    config = get_base_config()  # digits, 8x8
    config.model.name = "lenet5"
    config.data.image_size = 32  # the one override: LeNet-5's own 32x32 input
    config.batch_size = 64
    config.num_epochs = 2
    config.optim.name = "adam"
    config.optim.learning_rate = 1e-3
    config.progress = False
    config.log_every_steps = 0
    res = train.train_and_evaluate(config, str(tmp_path))
    assert res["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
