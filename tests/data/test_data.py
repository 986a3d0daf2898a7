"""Tests for research.data sources: real files from shared/data, real numbers.

The data folder is $RESEARCH_DATA_DIR (CI sets it), else ../shared/data beside the repo.
Prepared TFDS caches are shared across tests through session fixtures, so each dataset
is prepared once per run (CIFAR-10 decompresses 150 MB of xz: ~15 s on 2 cores).
"""

from __future__ import annotations

import functools
import http.server
import lzma
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from research import data
from research.data import sources, tfds_cache
from research.data.tfds_builders import Cifar10, FashionMnist, Mnist, cifar10, files
from research.data.tfds_builders import mnist as mnist_lib
from research.registry import Registry, UnknownNameError

pytestmark = pytest.mark.usefixtures("no_env")  # tests/data/conftest.py

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CIFAR_TRAIN_MEAN_RGB = (125.30691805, 122.95039414, 113.86538318)
CIFAR_TEST1000_COUNTS = [103, 89, 100, 103, 90, 86, 112, 102, 106, 109]


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
    monkeypatch.setenv(tfds_cache.DATA_DIR_ENV, str(data_root))
    monkeypatch.setenv(tfds_cache.CACHE_DIR_ENV, str(shared_cache))
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
    monkeypatch.setenv(tfds_cache.DATA_DIR_ENV, str(nowhere))
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
