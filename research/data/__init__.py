"""Datasets: sources (embedded, TFDS without TensorFlow, TFDS catalog) and the pipeline.

    from research import data
    ds = data.load("mnist")            # a RawDataset of host numpy arrays
    ds.train_images.shape              # (60000, 28, 28, 1) uint8, NHWC
    data.names()                       # ('cifar10', 'digits', 'fashion_mnist', 'mnist')

`DATASETS` contract: each entry is a loader `f(*, data_dir, cache_dir) -> RawDataset`.
`data_dir` is a folder laid out like shared/data (default $RESEARCH_DATA_DIR, else the
files are downloaded from their canonical URLs); `cache_dir` holds the prepared TFDS
files (default $RESEARCH_CACHE_DIR, else ~/.cache/research/tfds). A new dataset is one
TFDS builder in `tfds_builders/` plus one line in `BUILDERS`. Besides the table, `load`
accepts "folder:PATH" for a folder of the user's own images (`tfds_builders/folder.py`)
and "tfds:NAME" for any TFDS catalog dataset, which needs TensorFlow.

`image_size=N` (config `data.image_size`) resizes any of them to N x N by one policy
(`tfds_builders/resize.py`: cover N x N, crop the centre): the builders' datasets are
prepared once per size beside the originals; digits and "tfds:NAME" are resized in
memory; "folder:PATH" decodes its files at that size.

`open_records(name)` opens a dataset prepared as `array_record` files (the builders'
datasets and "folder:PATH") without reading it: what the streaming loader reads
(`research.data.stream`).
"""

from __future__ import annotations

import functools
import os

from research.data import sources, tfds_cache
from research.data.sources import RawDataset
from research.data.tfds_builders import Cifar10, FashionMnist, Mnist
from research.data.tfds_builders.folder import PREFIX as FOLDER_PREFIX
from research.data.tfds_cache import PreparedDataset
from research.registry import Registry, UnknownNameError

# The datasets prepared as array_record files by the project's TFDS builders.
BUILDERS = {"cifar10": Cifar10, "fashion_mnist": FashionMnist, "mnist": Mnist}

DATASETS = Registry(
    "dataset",
    {
        "digits": sources.load_digits,
        **{n: functools.partial(sources.load_prepared, n, b) for n, b in BUILDERS.items()},
    },
)


def names() -> tuple[str, ...]:
    """The registered dataset names ("folder:PATH" and "tfds:NAME" are accepted as well)."""
    return DATASETS.names()


def load(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    image_size: int = 0,
) -> RawDataset:
    """Loads a whole dataset into host memory.

    Args:
      name: a name from `names()`, "folder:PATH" for a folder of images, or
        "tfds:NAME" for a TFDS catalog dataset.
      data_dir: folder laid out like shared/data with the original files; None or "":
        $RESEARCH_DATA_DIR, else download them (checksums are verified either way).
      cache_dir: where prepared TFDS files are kept and reused; None or "":
        $RESEARCH_CACHE_DIR, else ~/.cache/research/tfds.
      image_size: 0 keeps the images' size (a folder's must be one common size); N scales
        them to cover N x N and crops the centre (`tfds_builders/resize.py`).

    Returns:
      A `RawDataset`; read its `notes` (e.g. a partial test split) and `source`.

    Raises:
      UnknownNameError: `name` is not registered; the message lists the known names.
      FileNotFoundError: the data folder or one of its files is missing.
      ValueError: a file does not have its published checksum.
      ImportError: "tfds:NAME" without TensorFlow installed.
    """
    folder = isinstance(name, str) and name.startswith(FOLDER_PREFIX)
    if folder or (image_size and name in BUILDERS):  # prepared at that size, then read whole
        opened = open_records(name, data_dir=data_dir, cache_dir=cache_dir, image_size=image_size)
        return sources.to_raw(opened)
    tfds_cache.check_image_size(image_size)
    if isinstance(name, str) and name.startswith(sources.CATALOG_PREFIX):
        raw = sources.load_catalog(name, data_dir=data_dir, cache_dir=cache_dir)
    else:
        try:
            loader = DATASETS.get(name)
        except UnknownNameError as e:
            raise UnknownNameError(f"{e}; or 'tfds:NAME' for a TFDS catalog dataset") from None
        raw = loader(data_dir=data_dir, cache_dir=cache_dir)
    return sources.resize_raw(raw, image_size) if image_size else raw


def open_records(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    image_size: int = 0,
) -> PreparedDataset:
    """Opens a dataset prepared as `array_record` files, preparing it if needed; reads nothing.

    Args: as `load`.

    Raises:
      ValueError: `name` has no array_record files (digits is embedded; "tfds:NAME"
        is read through tf.data); the message lists the names that do.
    """
    if isinstance(name, str) and name.startswith(FOLDER_PREFIX):
        return tfds_cache.open_folder(name, cache_dir=cache_dir, image_size=image_size)
    tfds_cache.check_image_size(image_size)
    if name not in BUILDERS:
        raise ValueError(
            f"data.name={name!r} is not stored as array_record files, which streaming reads: "
            f"use one of {', '.join(sorted(BUILDERS))} or folder:PATH, or data.loader='device'"
        )
    prepared = tfds_cache.open_prepared(
        name, BUILDERS[name], data_dir=data_dir, cache_dir=cache_dir
    )
    if image_size:
        return tfds_cache.open_resized(prepared, image_size, cache_dir=cache_dir)
    return prepared


__all__ = ["BUILDERS", "DATASETS", "PreparedDataset", "RawDataset", "load", "names", "open_records"]
