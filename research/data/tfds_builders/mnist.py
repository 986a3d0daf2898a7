"""MNIST and Fashion-MNIST from the original IDX `.gz` files.

Both use the same four file names and the IDX layout (big-endian): images start with
magic 0x00000803, the count, 28, 28, then uint8 pixels row-major; labels start with
magic 0x00000801, the count, then uint8 labels. Each `.gz` is checked against the md5
its publisher lists (torchvision uses the same values) before it is decompressed.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from research.data.tfds_builders import files
from research.data.tfds_builders.base import SourceBuilder

# split -> (images file, labels file); the same names for MNIST and Fashion-MNIST.
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def parse_idx(data: bytes, *, path: str, shape: tuple[int, ...]) -> np.ndarray:
    """Parses a decompressed IDX file of uint8 values.

    Args:
      data: the decompressed bytes.
      path: where they came from, for error messages.
      shape: the expected shape after the count, e.g. (28, 28) for images, () for labels.

    Returns:
      (count, *shape) uint8 array (a read-only view of `data`).
    """
    ndim = 1 + len(shape)
    header = 4 + 4 * ndim
    # Magic: two zero bytes, type code 0x08 (unsigned byte), number of dimensions.
    if len(data) < header or data[:4] != bytes([0, 0, 8, ndim]):
        raise ValueError(
            f"{path} is not an IDX uint8 file with {ndim} dimensions: magic {data[:4].hex()}, "
            f"expected {bytes([0, 0, 8, ndim]).hex()}. {files.FIX_HINT}"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    if dims[1:] != shape or len(data) != header + int(np.prod(dims)):
        raise ValueError(
            f"{path} has dimensions {dims} and {len(data)} bytes, expected (N, *{shape}) with "
            f"{header} header bytes + N * {int(np.prod(shape))} values. {files.FIX_HINT}"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


class Mnist(SourceBuilder, skip_registration=True):
    """MNIST handwritten digits: 60,000 train + 10,000 test, 28x28x1 uint8, in file order."""

    name = "research_mnist"  # not "mnist": the TFDS catalog builder may share a cache_dir
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Original IDX files, official order, uint8 Tensor images."}

    SUBDIR = "mnist"
    IMAGE_SHAPE = (28, 28, 1)
    CLASS_NAMES = tuple(str(d) for d in range(10))
    OFFICIAL_SPLIT_SIZES = {"train": 60_000, "test": 10_000}
    # Mirrors tried in order, as torchvision does (yann.lecun.com is often unreachable).
    MIRRORS = (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    )
    MD5 = {  # of each .gz file, as published
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    DESCRIPTION = "The MNIST database of handwritten digits (LeCun, Cortes, Burges)."
    HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"
    CITATION = "Y. LeCun, C. Cortes, C.J.C. Burges, The MNIST database of handwritten digits, 1998."
    LICENSE = "CC BY-SA 3.0 (per the Keras dataset documentation)"

    def _read_splits(self, dl_manager):
        arrays = {}
        sources = []
        for name, md5 in self.MD5.items():
            if self.source_dir is not None:
                path = files.find_file(self.source_dir, [name])
                where = os.fspath(path)
                data = path.read_bytes()
                files.check_md5(data, md5, path=where)
            else:
                url, data = files.download(dl_manager, [m + name for m in self.MIRRORS], md5)
                where = url
                sources.append(url.rsplit("/", 1)[0] + "/")
            shape = self.IMAGE_SHAPE[:2] if "images" in name else ()
            arrays[name] = parse_idx(files.decompress(data, path=where), path=where, shape=shape)
        splits = {}
        for split, (images_file, labels_file) in SPLIT_FILES.items():
            images, labels = arrays[images_file], arrays[labels_file]
            if len(images) != len(labels) or labels.max() >= len(self.CLASS_NAMES):
                raise ValueError(
                    f"{split}: {len(images)} images but {len(labels)} labels, max label "
                    f"{labels.max()} (expected < {len(self.CLASS_NAMES)})"
                )
            splits[split] = (images[..., None], labels)  # (N, 28, 28) -> (N, 28, 28, 1)
        source = os.fspath(self.source_dir) if self.source_dir else " ".join(sorted(set(sources)))
        return splits, source


class FashionMnist(Mnist, skip_registration=True):
    """Fashion-MNIST (Zalando): 60,000 train + 10,000 test, 28x28x1 uint8, in file order."""

    name = "research_fashion_mnist"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Original IDX files, official order, uint8 Tensor images."}

    SUBDIR = "fashion_mnist"
    CLASS_NAMES = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )
    MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
    MD5 = {  # of each .gz file, from the upstream README
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    DESCRIPTION = "Fashion-MNIST: Zalando article images, a drop-in replacement for MNIST."
    HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"
    CITATION = (
        "H. Xiao, K. Rasul, R. Vollgraf, Fashion-MNIST: a Novel Image Dataset for "
        "Benchmarking Machine Learning Algorithms, arXiv:1708.07747, 2017."
    )
    LICENSE = "MIT, (c) 2017 Zalando SE"
