"""CIFAR-10 from the official *binary version* record files.

Each `.bin` file is a run of 3073-byte records: 1 label byte (0..9), then the 1024 red,
1024 green and 1024 blue bytes of a 32x32 image, each plane row-major. The builder reads
`data_batch_1..5.bin` and a test file, plain or xz-compressed (`.bin.xz`, as in
shared/data), and checks the md5 of the *decompressed* bytes against the published md5 of
the official `.bin` file, so both forms are held to the same standard.

Two builder configs, because the test split depends on which file is available:
  full:     `test_batch.bin` (10,000 images), the official split. Used for downloads.
  test1000: `test_batch_first1000.bin[.xz]`, the first 1,000 official test images, which is
            all that shared/data holds. Its split info says 1,000 and `data.load` adds a
            note; it has its own cache folder, so it never passes for the full split.
"""

from __future__ import annotations

import io
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from research.data.tfds_builders import files
from research.data.tfds_builders.base import SourceBuilder

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # published on the CIFAR page
ARCHIVE_FOLDER = "cifar-10-batches-bin"  # the folder inside the archive
RECORD_BYTES = 1 + 3 * 32 * 32  # label byte + R, G, B planes

# md5 of each decompressed .bin file: the published md5s of the official files, and for
# the 1,000-image prefix of test_batch.bin the md5 listed in shared/data/README.md.
BIN_MD5 = {
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
    "test_batch_first1000.bin": "371f65da31ad652f5e24b3699a3e6515",
}
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = {"full": "test_batch.bin", "test1000": "test_batch_first1000.bin"}


def parse_records(data: bytes, *, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Splits CIFAR-10 binary records into images (N, 32, 32, 3) uint8 and labels (N,) uint8."""
    if len(data) % RECORD_BYTES:
        raise ValueError(f"{path}: {len(data)} bytes is not a whole number of 3073-byte records")
    records = np.frombuffer(data, np.uint8).reshape(-1, RECORD_BYTES)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # NCHW -> NHWC
    return np.ascontiguousarray(images), records[:, 0]


def read_bin(path: epath.Path) -> bytes:
    """Reads a `.bin` or `.bin.xz` file and checks the md5 of its (decompressed) content."""
    where = os.fspath(path)
    data = files.decompress(path.read_bytes(), path=where)
    name = path.name.removesuffix(".xz")
    files.check_md5(
        data,
        BIN_MD5[name],
        path=where,
        what="decompressed content" if path.suffix == ".xz" else "file",
    )
    return data


class Cifar10(SourceBuilder, skip_registration=True):
    """CIFAR-10: 50,000 train + 10,000 (or 1,000) test, 32x32x3 uint8, in file order."""

    name = "research_cifar10"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Official binary records, official order, uint8 Tensor images."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="full", description="official 10,000-image test split"),
        tfds.core.BuilderConfig(
            name="test1000", description="test split: the first 1,000 official test images"
        ),
    ]

    SUBDIR = "cifar10/cifar-10-batches-bin"
    IMAGE_SHAPE = (32, 32, 3)
    OFFICIAL_SPLIT_SIZES = {"train": 50_000, "test": 10_000}
    CLASS_NAMES = (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    )  # batches.meta.txt, one per line
    DESCRIPTION = "CIFAR-10: 60,000 32x32 colour images in 10 classes (binary version)."
    HOMEPAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
    CITATION = "A. Krizhevsky, Learning Multiple Layers of Features from Tiny Images, 2009."
    LICENSE = "no formal licence; the authors ask for the citation"

    @classmethod
    def config_for(cls, data_dir: str | os.PathLike | None) -> str:
        """The config that `data_dir`'s files can build: test1000 only if that is all there is."""
        if data_dir is None:
            return "full"
        folder = epath.Path(data_dir) / cls.SUBDIR
        for config, name in (("full", TEST_FILE["full"]), ("test1000", TEST_FILE["test1000"])):
            if (folder / name).is_file() or (folder / f"{name}.xz").is_file():
                return config
        return "full"  # nothing there: building will report what is missing

    def _read_splits(self, dl_manager):
        names = (*TRAIN_FILES, TEST_FILE[self.builder_config.name])
        if self.source_dir is not None:
            # Look for every file before the slow part, so a missing one fails at once.
            paths = [files.find_file(self.source_dir, [n, f"{n}.xz"]) for n in names]
            # lzma and md5 release the GIL: one thread per core decompresses in parallel.
            with ThreadPoolExecutor(min(len(paths), os.cpu_count() or 1)) as pool:
                blobs = list(pool.map(read_bin, paths))
            source = os.fspath(self.source_dir)
        elif self.builder_config.name != "full":
            raise ValueError(
                f"config {self.builder_config.name!r} is built only from a local copy that has "
                f"{TEST_FILE['test1000']}[.xz]; the download gives the full test split. "
                f"{files.FIX_HINT}"
            )
        else:
            source, archive = files.download(dl_manager, [URL], ARCHIVE_MD5)
            blobs = []
            with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
                for name in names:  # read the members in memory: nothing is extracted
                    member = f"{ARCHIVE_FOLDER}/{name}"
                    try:
                        data = tar.extractfile(member).read()
                    except KeyError as e:
                        raise ValueError(f"{URL} has no member {member}") from e
                    files.check_md5(data, BIN_MD5[name], path=f"{URL}:{member}")
                    blobs.append(data)
        parsed = [parse_records(b, path=n) for b, n in zip(blobs, names, strict=True)]
        train_images = np.concatenate([images for images, _ in parsed[:-1]])
        train_labels = np.concatenate([labels for _, labels in parsed[:-1]])
        return {"train": (train_images, train_labels), "test": parsed[-1]}, source
