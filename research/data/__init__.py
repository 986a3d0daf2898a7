"""Datasets: sources (embedded, TFDS without TensorFlow, TFDS catalog) and the pipeline.

    from research import data
    ds = data.load("mnist")            # a RawDataset of host numpy arrays
    ds.train_images.shape              # (60000, 28, 28, 1) uint8, NHWC
    data.names()                       # ('cifar10', 'digits', 'fashion_mnist', 'mnist')

`DATASETS` contract: each entry is a loader `f(*, data_dir, cache_dir) -> RawDataset`.
`data_dir` is a folder laid out like shared/data (default $RESEARCH_DATA_DIR, else the
files are downloaded from their canonical URLs); `cache_dir` holds the prepared TFDS
files (default $RESEARCH_CACHE_DIR, else ~/.cache/research/tfds). A new dataset is one
TFDS builder in `tfds_builders/` plus one line here. Besides the table, `load` accepts
"tfds:NAME" for any TFDS catalog dataset, which needs TensorFlow.
"""

from __future__ import annotations

import functools
import os

from research.data import sources
from research.data.sources import RawDataset
from research.data.tfds_builders import Cifar10, FashionMnist, Mnist
from research.registry import Registry, UnknownNameError

DATASETS = Registry(
    "dataset",
    {
        "cifar10": functools.partial(sources.load_prepared, "cifar10", Cifar10),
        "digits": sources.load_digits,
        "fashion_mnist": functools.partial(sources.load_prepared, "fashion_mnist", FashionMnist),
        "mnist": functools.partial(sources.load_prepared, "mnist", Mnist),
    },
)


def names() -> tuple[str, ...]:
    """The registered dataset names (the TFDS catalog's "tfds:NAME" is accepted as well)."""
    return DATASETS.names()


def load(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> RawDataset:
    """Loads a whole dataset into host memory.

    Args:
      name: a name from `names()`, or "tfds:NAME" for a TFDS catalog dataset.
      data_dir: folder laid out like shared/data with the original files; None or "":
        $RESEARCH_DATA_DIR, else download them (checksums are verified either way).
      cache_dir: where prepared TFDS files are kept and reused; None or "":
        $RESEARCH_CACHE_DIR, else ~/.cache/research/tfds.

    Returns:
      A `RawDataset`; read its `notes` (e.g. a partial test split) and `source`.

    Raises:
      UnknownNameError: `name` is not registered; the message lists the known names.
      FileNotFoundError: the data folder or one of its files is missing.
      ValueError: a file does not have its published checksum.
      ImportError: "tfds:NAME" without TensorFlow installed.
    """
    if isinstance(name, str) and name.startswith(sources.CATALOG_PREFIX):
        return sources.load_catalog(name, data_dir=data_dir, cache_dir=cache_dir)
    try:
        loader = DATASETS.get(name)
    except UnknownNameError as e:
        raise UnknownNameError(f"{e}; or 'tfds:NAME' for a TFDS catalog dataset") from None
    return loader(data_dir=data_dir, cache_dir=cache_dir)


__all__ = ["DATASETS", "RawDataset", "load", "names"]
