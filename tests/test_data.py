"""Tests for research.data sources: real files from shared/data, real numbers.

The data folder is $RESEARCH_DATA_DIR (CI sets it), else ../shared/data beside the repo.
Prepared TFDS caches are shared across tests through session fixtures, so each dataset
is prepared once per run (CIFAR-10 decompresses 150 MB of xz: ~15 s on 2 cores).
"""

from __future__ import annotations

import functools
import http.server
import lzma
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import write_image_folder
from etils import epath

from research import data
from research.data import pipeline, sources
from research.data.tfds_builders import Cifar10, FashionMnist, Mnist, cifar10, files
from research.data.tfds_builders import folder as folder_lib
from research.data.tfds_builders import mnist as mnist_lib
from research.registry import Registry, UnknownNameError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CIFAR_TRAIN_MEAN_RGB = (125.30691805, 122.95039414, 113.86538318)
CIFAR_TEST1000_COUNTS = [103, 89, 100, 103, 90, 86, 112, 102, 106, 109]


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    """Each test sets the env variables it wants; none leak in from the shell."""
    monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(sources.CACHE_DIR_ENV, raising=False)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tfds_cache")


@pytest.fixture(scope="session")
def mnist(data_root, shared_cache) -> data.RawDataset:
    return data.load("mnist", data_dir=data_root, cache_dir=shared_cache)


@pytest.fixture(scope="session")
def fashion_mnist(data_root, shared_cache) -> data.RawDataset:
    return data.load("fashion_mnist", data_dir=data_root, cache_dir=shared_cache)


@pytest.fixture(scope="session")
def cifar(data_root, shared_cache) -> data.RawDataset:
    return data.load("cifar10", data_dir=data_root, cache_dir=shared_cache)


def flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


# ------------------------------------------------------------------------- registry


def test_registry_lists_the_four_datasets():
    assert isinstance(data.DATASETS, Registry)
    assert data.names() == ("cifar10", "digits", "fashion_mnist", "mnist")


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownNameError) as e:
        data.load("mnsit")
    message = str(e.value)
    for name in data.names():
        assert name in message
    assert "Did you mean 'mnist'?" in message
    assert "tfds:NAME" in message


def test_catalog_without_tensorflow_says_what_to_install(monkeypatch):
    monkeypatch.setattr(sources, "tensorflow_available", lambda: False)
    with pytest.raises(ImportError, match="pip install tensorflow") as e:
        data.load("tfds:svhn_cropped")
    assert "digits, mnist, fashion_mnist and cifar10 work without it" in str(e.value)


# --------------------------------------------------------------------------- digits


def test_digits_embedded_with_a_fixed_stratified_split():
    ds = data.load("digits")
    assert ds.train_images.shape == (1438, 8, 8, 1)
    assert ds.test_images.shape == (359, 8, 8, 1)
    assert len(ds.train_images) + len(ds.test_images) == 1797
    assert ds.train_images.dtype == ds.test_images.dtype == np.uint8
    assert ds.train_labels.dtype == np.int32
    # round(0.2 * n) of each class; sklearn's class sizes are 178, 182, 177, 183, 181, ...
    assert np.bincount(ds.test_labels).tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]
    assert np.bincount(ds.train_labels).tolist() == [
        142,
        146,
        142,
        146,
        145,
        146,
        145,
        143,
        139,
        144,
    ]
    # Pixels are round(v * 255 / 16) for v in 0..16: 0 and 255 occur, nothing else sneaks in.
    allowed = set(np.round(np.arange(17) * 255 / 16).astype(int))
    assert set(np.unique(ds.train_images)) <= allowed
    assert ds.train_images.min() == 0 and ds.train_images.max() == 255
    assert any("no official test split" in n for n in ds.notes)
    again = data.load("digits")
    np.testing.assert_array_equal(again.test_images, ds.test_images)


# ---------------------------------------------------------------- MNIST-like builders


def test_mnist_numbers(mnist, data_root):
    assert mnist.train_images.shape == (60000, 28, 28, 1)
    assert mnist.test_images.shape == (10000, 28, 28, 1)
    assert mnist.train_images.dtype == np.uint8 and mnist.train_labels.dtype == np.int32
    assert np.bincount(mnist.train_labels).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(mnist.test_labels).tolist() == MNIST_TEST_COUNTS
    assert mnist.train_images.mean() == pytest.approx(33.318, abs=1e-3)
    # The official file order is kept (TFDS would shuffle by key hash by default).
    assert mnist.train_labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert mnist.test_labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert mnist.num_classes == 10 and mnist.class_names[3] == "3"
    assert mnist.notes == ()
    assert mnist.source.startswith(str(data_root / "mnist"))


@pytest.mark.slow
def test_fashion_mnist_numbers(fashion_mnist):
    assert fashion_mnist.train_images.shape == (60000, 28, 28, 1)
    assert np.bincount(fashion_mnist.train_labels).tolist() == [6000] * 10
    assert np.bincount(fashion_mnist.test_labels).tolist() == [1000] * 10
    assert fashion_mnist.class_names[0] == "T-shirt/top"
    assert fashion_mnist.class_names[9] == "Ankle boot"


def test_mnist_md5_table_matches_the_md5sums_files(data_root):
    for builder, folder in ((Mnist, "mnist"), (FashionMnist, "fashion_mnist")):
        lines = (data_root / folder / "MD5SUMS").read_text().splitlines()
        listed = {name: md5 for md5, name in (line.split() for line in lines)}
        assert listed == builder.MD5
        for mirror in builder.MIRRORS:
            assert mirror.startswith("http") and mirror.endswith("/")


def test_cache_is_reused_not_rebuilt(mnist, data_root, shared_cache, monkeypatch):
    before = {p: p.stat().st_mtime_ns for p in shared_cache.rglob("*") if p.is_file()}

    def must_not_run(*args, **kwargs):
        raise AssertionError("prepared again: the cache was not reused")

    monkeypatch.setattr(Mnist, "_split_generators", must_not_run)
    monkeypatch.setattr(Mnist, "_generate_examples", must_not_run)
    # Both folders from the environment this time.
    monkeypatch.setenv(sources.DATA_DIR_ENV, str(data_root))
    monkeypatch.setenv(sources.CACHE_DIR_ENV, str(shared_cache))
    again = data.load("mnist")
    after = {p: p.stat().st_mtime_ns for p in shared_cache.rglob("*") if p.is_file()}
    assert {p: t for p, t in after.items() if p in before} == before
    np.testing.assert_array_equal(again.train_images, mnist.train_images)
    np.testing.assert_array_equal(again.test_labels, mnist.test_labels)


# --------------------------------------------------------------------------- CIFAR-10


@pytest.mark.slow
def test_cifar10_numbers(cifar):
    assert cifar.train_images.shape == (50000, 32, 32, 3)
    assert cifar.train_images.dtype == np.uint8 and cifar.train_labels.dtype == np.int32
    assert cifar.train_labels[0] == 6  # a frog
    assert cifar.train_images[0, 0, :5, 0].tolist() == [59, 43, 50, 68, 98]  # red, row 0
    mean_rgb = cifar.train_images.reshape(-1, 3).mean(axis=0, dtype=np.float64)
    np.testing.assert_allclose(mean_rgb, CIFAR_TRAIN_MEAN_RGB, atol=1e-4)
    assert np.bincount(cifar.train_labels).tolist() == [5000] * 10
    assert cifar.class_names[6] == "frog"


@pytest.mark.slow
def test_cifar10_test_split_is_partial_and_says_so(cifar, shared_cache):
    assert cifar.test_images.shape == (1000, 32, 32, 3)
    assert cifar.test_labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert np.bincount(cifar.test_labels).tolist() == CIFAR_TEST1000_COUNTS
    assert any("test split is partial: 1,000 of 10,000" in n for n in cifar.notes)
    builder = Cifar10(data_dir=shared_cache, config="test1000")
    assert builder.info.splits["test"].num_examples == 1000
    assert builder.info.splits["train"].num_examples == 50000


def test_cifar10_config_follows_the_available_test_file(data_root, tmp_path):
    assert Cifar10.config_for(data_root) == "test1000"
    assert Cifar10.config_for(None) == "full"  # a download has the whole test set
    folder = tmp_path / Cifar10.SUBDIR
    folder.mkdir(parents=True)
    (folder / "test_batch.bin").touch()
    assert Cifar10.config_for(tmp_path) == "full"


def test_cifar10_xz_is_checked_after_decompressing(data_root, tmp_path):
    original = data_root / Cifar10.SUBDIR / "test_batch_first1000.bin.xz"
    content = cifar10.read_bin(epath.Path(original))
    assert files.md5_hex(content) == "371f65da31ad652f5e24b3699a3e6515"
    # A valid xz stream with one changed pixel: only the md5 of the content can tell.
    changed = bytearray(content)
    changed[1] ^= 1
    bad = tmp_path / original.name
    bad.write_bytes(lzma.compress(bytes(changed)))
    with pytest.raises(ValueError, match="md5 of the decompressed content") as e:
        cifar10.read_bin(epath.Path(bad))
    assert str(bad) in str(e.value) and "371f65da31ad652f5e24b3699a3e6515" in str(e.value)
    # A damaged xz stream fails its own CRC, reported with the file's name.
    shutil.copy(original, bad)
    flip_byte(bad, len(bad.read_bytes()) // 2)
    with pytest.raises(ValueError, match="corrupt") as e:
        cifar10.read_bin(epath.Path(bad))
    assert str(bad) in str(e.value)


def test_cifar10_tables():
    assert cifar10.URL == "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    assert set(cifar10.BIN_MD5) == {*cifar10.TRAIN_FILES, *cifar10.TEST_FILE.values()}
    assert all(len(md5) == 32 and int(md5, 16) >= 0 for md5 in cifar10.BIN_MD5.values())


# --------------------------------------------------------------------------- errors


def test_corrupted_file_gives_a_checksum_error_naming_it(data_root, tmp_path):
    folder = tmp_path / "data" / "mnist"
    shutil.copytree(data_root / "mnist", folder)
    bad = folder / "t10k-labels-idx1-ubyte.gz"
    flip_byte(bad, 100)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="checksum mismatch") as e:
        data.load("mnist", data_dir=tmp_path / "data", cache_dir=cache)
    message = str(e.value)
    assert str(bad) in message
    assert Mnist.MD5[bad.name] in message  # what was expected
    assert "RESEARCH_DATA_DIR" in message  # how to fix it
    assert not (cache / "research_mnist" / "1.0.0").exists()  # nothing half-written is reused


def test_missing_folder_error(tmp_path, monkeypatch):
    nowhere = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="does not exist") as e:
        data.load("mnist", data_dir=nowhere, cache_dir=tmp_path / "cache")
    assert str(nowhere) in str(e.value) and "RESEARCH_DATA_DIR" in str(e.value)
    monkeypatch.setenv(sources.DATA_DIR_ENV, str(nowhere))
    with pytest.raises(FileNotFoundError, match=r"from the \$RESEARCH_DATA_DIR"):
        data.load("cifar10", cache_dir=tmp_path / "cache")


def test_missing_file_error(data_root, tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in Mnist.MD5:
        if name != "train-labels-idx1-ubyte.gz":
            (folder / name).symlink_to(data_root / "mnist" / name)
    with pytest.raises(FileNotFoundError, match="missing file") as e:
        data.load("mnist", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert str(folder) in str(e.value) and "train-labels-idx1-ubyte.gz" in str(e.value)


# ------------------------------------------------------------------- download path


@pytest.fixture
def local_mirror(data_root):
    """An HTTP server on 127.0.0.1 serving data_root: a stand-in for the canonical URLs."""

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(QuietHandler, directory=str(data_root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_tries_mirrors_and_checks_md5(local_mirror, data_root, tmp_path):
    # TFDS's own download manager (requests, no TensorFlow), as the builders use it.
    dl_manager = tfds.download.DownloadManager(download_dir=tmp_path / "downloads")
    name = "t10k-labels-idx1-ubyte.gz"
    # The first mirror answers 404, as a dead mirror would; the second has the file.
    mirrors = [local_mirror + "gone/" + name, local_mirror + "mnist/" + name]
    url, got = files.download(dl_manager, mirrors, Mnist.MD5[name])
    assert url == mirrors[1]
    assert got == (data_root / "mnist" / name).read_bytes()
    labels = mnist_lib.parse_idx(files.decompress(got, path=url), path=url, shape=())
    assert np.bincount(labels).tolist() == MNIST_TEST_COUNTS
    with pytest.raises(ValueError, match="checksum mismatch") as e:
        files.download(dl_manager, mirrors[1:], Mnist.MD5["train-labels-idx1-ubyte.gz"])
    assert mirrors[1] in str(e.value)
    with pytest.raises(OSError, match="could not download from any mirror") as e:
        files.download(dl_manager, mirrors[:1], Mnist.MD5[name])
    assert mirrors[0] in str(e.value)


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
    import jax

    key = jax.random.PRNGKey(0)
    plans = list(
        pipeline.plan_chunks(key, n=50, batch_size=8, remainder="keep", chunk=4, num_epochs=2)
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
        expected = pipeline.epoch_batches(jax.random.fold_in(key, epoch), 50, 8, "keep")
        np.testing.assert_array_equal(rows, np.concatenate([b.ravel() for b in expected]))
    resumed = list(
        pipeline.plan_chunks(
            key, n=50, batch_size=8, remainder="keep", chunk=4, num_epochs=2, start_step=9
        )
    )
    assert [(p.step, len(p.rows)) for p in resumed] == [(9, 2), (11, 2), (13, 1)]
    np.testing.assert_array_equal(resumed[0].rows, plans[3].rows[2:])


def test_eval_batches_pad_with_the_last_example_and_mask_it():
    idx, mask = pipeline.eval_batches(10, 4, 2)
    assert idx.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 9, 9]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]
    idx, _ = pipeline.eval_batches(10, 5, 2)  # batch rounded up to a multiple of 2 devices
    assert idx.shape == (2, 6)
