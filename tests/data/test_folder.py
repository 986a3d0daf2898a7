"""The `folder:PATH` dataset: a folder of images per class, cached until a file changes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from research import data
from research.data import pipeline
from research.data.tfds_builders import folder as folder_lib
from tests.helpers.images import write_image_folder

pytestmark = pytest.mark.usefixtures("no_env")  # tests/data/conftest.py


# ------------------------------------------------------------------ folder:PATH


def folder_name(root) -> str:
    return f"folder:{root}"


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def test_folder_dataset_from_generated_pngs(tmp_path):
    root = tmp_path / "photos"
    # Created out of order: class names are sorted, whatever the file system lists first.
    written = write_image_folder(root, classes=("zebra", "ant", "moose"), per_class=(10, 5, 7))
    ds = data.load(folder_name(root), cache_dir=tmp_path / "cache")
    assert ds.class_names == ("ant", "moose", "zebra") and ds.num_classes == 3
    assert ds.image_shape == (8, 8, 3) and ds.val_images is None
    # round(0.2 * n) of each class held out as test: 1 ant, 1 moose, 2 zebras.
    assert np.bincount(ds.test_labels, minlength=3).tolist() == [1, 1, 2]
    assert np.bincount(ds.train_labels, minlength=3).tolist() == [4, 6, 8]
    assert any("no test/ folder: 4 of 22 train/ images (20% of each class" in n for n in ds.notes)
    # Every image is stored exactly (PNG is lossless) under its class.
    for label, name in enumerate(ds.class_names):
        want = sorted(p.tobytes() for f, p in written.items() if f.split("/")[1] == name)
        images = np.concatenate([ds.train_images, ds.test_images])
        labels = np.concatenate([ds.train_labels, ds.test_labels])
        got = [img.tobytes() for img in images[labels == label]]
        assert sorted(got) == want
    # The carved test split depends on the files alone: a second cache carves the same.
    again = data.load(folder_name(root), cache_dir=tmp_path / "other_cache")
    np.testing.assert_array_equal(again.test_images, ds.test_images)


def test_folder_with_val_and_test_folders(tmp_path):
    root = tmp_path / "photos"
    write_image_folder(root, classes=("a", "b"), per_class=6)
    write_image_folder(root, classes=("a", "b"), per_class=2, split="val", seed=1)
    write_image_folder(root, classes=("b",), per_class=3, split="test", seed=2)  # a subset
    ds = data.load(folder_name(root), cache_dir=tmp_path / "cache")
    assert len(ds.train_labels) == 12 and len(ds.val_labels) == 4 and len(ds.test_labels) == 3
    assert ds.test_labels.tolist() == [1, 1, 1]
    assert not any("no test/ folder" in n for n in ds.notes)
    splits = pipeline.prepare(ds, val_size=0.1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 4, 3)
    assert any("validation split: the dataset's own (4 examples)" in n for n in splits.notes)
    assert splits.class_names == ("a", "b")


def test_folder_cache_is_reused_unless_a_file_changes(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    write_image_folder(root, classes=("a", "b"), per_class=5)
    cache = tmp_path / "cache"
    first = data.open_records(folder_name(root), cache_dir=cache)
    built = files_under(cache)

    def must_not_run(*args, **kwargs):
        raise AssertionError("built again: the cache was not reused")

    monkeypatch.setattr(folder_lib.Folder, "_split_generators", must_not_run)
    again = data.open_records(folder_name(root), cache_dir=cache)
    assert again.source == first.source and files_under(cache) == built
    monkeypatch.undo()

    def rebuilt(change) -> dict:
        before = set(files_under(cache))
        change()
        opened = data.open_records(folder_name(root), cache_dir=cache)
        assert set(files_under(cache)) - before, "nothing new was built"
        return opened.split_sizes

    image = root / "train" / "a" / "000.png"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, newer
    assert rebuilt(lambda: None) == {"train": 8, "test": 2}
    assert rebuilt(lambda: shutil.copy(image, root / "train" / "b" / "new.jpeg.png")) == {
        "train": 9,
        "test": 2,
    }
    assert rebuilt(lambda: (root / "train" / "b" / "000.png").unlink()) == {"train": 8, "test": 2}


def test_corrupt_image_is_named_in_one_line_and_nothing_is_cached(tmp_path, monkeypatch):
    from PIL import Image

    root = tmp_path / "photos"
    written = write_image_folder(root, classes=("a", "b"), per_class=4)
    cache = tmp_path / "cache"
    png = (root / "train" / "b" / "001.png").read_bytes()
    Image.fromarray(written["train/b/001.png"]).save(tmp_path / "good.jpg", quality=95)
    jpeg = (tmp_path / "good.jpg").read_bytes()
    started = []
    original = folder_lib.Folder._generate
    monkeypatch.setattr(
        folder_lib.Folder, "_generate", lambda *a: started.append(1) or original(*a)
    )
    damaged = {
        "garbage": ("002.png", b"not an image"),  # fails on the header
        "truncated png": ("002.png", png[: len(png) // 2]),  # fails reading its EXIF
        "truncated jpeg": ("zz.jpg", jpeg[:-70]),  # header intact: fails while decoding
    }
    for damage, (name, content) in damaged.items():
        for path in (root / "train" / "a").iterdir():
            if path.name in ("002.png", "zz.jpg"):
                path.unlink()
        bad = root / "train" / "a" / name
        bad.write_bytes(content)
        with pytest.raises(ValueError, match="cannot read image") as err:
            data.load(folder_name(root), cache_dir=cache)
        message = str(err.value)
        assert "\n" not in message and str(bad) in message and "fix or remove it" in message
        assert message.startswith(f"folder:{root}: ")
        # Nothing that a later run could take for a built dataset: lock files only.
        assert [f for f in files_under(cache) if not f.endswith(".lock")] == [], damage
    assert started, "no damage reached the writing of records"


def test_folder_sizes_must_agree_unless_image_size_is_set(tmp_path):
    from PIL import Image

    root = tmp_path / "photos"
    write_image_folder(root, classes=("a", "b"), per_class=3)
    # A 16x8 image: red left and right quarters, green middle half.
    wide = np.zeros((8, 16, 3), np.uint8)
    wide[:, :4, 0] = wide[:, 12:, 0] = 255
    wide[:, 4:12, 1] = 255
    Image.fromarray(wide).save(root / "train" / "b" / "wide.png")
    with pytest.raises(ValueError, match="images differ in size") as err:
        data.load(folder_name(root), cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert "train/a/000.png is 8x8" in message and "train/b/wide.png is 16x8" in message
    assert "data.image_size=N" in message
    ds = data.load(folder_name(root), cache_dir=tmp_path / "cache", image_size=4)
    assert ds.image_shape == (4, 4, 3)
    assert any("scaled to cover 4x4 and centre-cropped" in n for n in ds.notes)
    everything = np.concatenate([ds.train_images, ds.test_images])
    resized_wide = [img for img in everything if img[..., 1].min() > 200]
    assert len(resized_wide) == 1  # the centre of the wide image: all green, red cut off
    assert resized_wide[0][..., 0].max() < 30


def test_folder_of_grayscale_jpegs_has_one_channel(tmp_path):
    root = tmp_path / "scans"
    written = write_image_folder(root, classes=("x", "y"), per_class=5, mode="L", suffix=".jpg")
    ds = data.load(folder_name(root), cache_dir=tmp_path / "cache")
    assert ds.image_shape == (8, 8, 1)
    assert len(ds.train_labels) + len(ds.test_labels) == len(written) == 10
    # JPEG is lossy: the mean brightness survives, not every pixel.
    mean = np.mean([p.mean() for p in written.values()])
    assert np.concatenate([ds.train_images, ds.test_images]).mean() == pytest.approx(mean, abs=3)
    # One colour image among grey ones makes every image RGB.
    write_image_folder(root, classes=("y",), per_class=1, seed=5, suffix=".png")
    assert data.load(folder_name(root), cache_dir=tmp_path / "cache").image_shape == (8, 8, 3)


def test_folder_layout_errors(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        data.load(folder_name(tmp_path / "nowhere"), cache_dir=cache)
    assert "/train/<class>/*.png|jpg|jpeg" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no train/ folder"):
        data.load(folder_name(tmp_path / "empty"), cache_dir=cache)
    root = tmp_path / "photos"
    write_image_folder(root, classes=("a",), per_class=2)
    (root / "train" / "b").mkdir()
    with pytest.raises(ValueError, match="class folder train/b has no .png/.jpg/.jpeg images"):
        data.load(folder_name(root), cache_dir=cache)
    (root / "train" / "b").rmdir()
    write_image_folder(root, classes=("c",), per_class=1, split="val")
    with pytest.raises(ValueError, match="val/ has classes that train/ lacks: c"):
        data.load(folder_name(root), cache_dir=cache)
