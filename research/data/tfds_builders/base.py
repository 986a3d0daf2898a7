"""`SourceBuilder`: the part every image-classification builder of this project shares.

A builder is told where the original files are (`source_dir`, a folder laid out like
shared/data) or, when that is None, downloads them. Subclasses only read and check
their files (`_read_splits`); this class declares the features and writes the examples.

Features (the same for every builder, so one reader handles all of them):
  image: `tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=uint8, encoding=BYTES)`, NHWC per
    example. `tfds.features.Image` would need TensorFlow to PNG-encode; BYTES stores the
    raw pixels, which is also the fastest to read back.
  label: `tfds.features.ClassLabel(names=CLASS_NAMES)`, an int64 in the record.
Records keep the files' official order (`disable_shuffling=True`): record 0 of CIFAR-10
train is the frog that every CIFAR tutorial shows first.

TFDS prints "Downloading and preparing dataset ..." and "... downloaded and prepared"
to stdout around every build; a builder that reads local files (`reads_local_files`)
logs one INFO line instead (logger `research.data.tfds_builders.base`), so preparing
from shared/data or a folder says nothing about downloading. Only these builders'
two hooks change: TFDS's global state and the caller's logging are left alone.
"""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

log = logging.getLogger(__name__)


class SourceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base class: features, example writing and the provenance record.

    Args:
      source_dir: a folder laid out like shared/data; the builder reads
        `source_dir / SUBDIR`. None: download from the canonical URLs.
      **kwargs: passed to `tfds.core.GeneratorBasedBuilder` (`data_dir` is the cache,
        `config` the builder config name).
    """

    # Builders live in a package, so TFDS would guess their metadata folder with
    # importlib_resources; naming it avoids the guess.
    pkg_dir_path = epath.Path(__file__).parent

    SUBDIR: str  # the builder's folder inside a shared/data-like data_dir
    IMAGE_SHAPE: tuple[int, int, int]  # (H, W, C) of one image
    CLASS_NAMES: tuple[str, ...]  # label i is CLASS_NAMES[i]
    DESCRIPTION: str
    HOMEPAGE: str
    CITATION: str
    LICENSE: str
    OFFICIAL_SPLIT_SIZES: dict[str, int]  # examples per split in the official release

    def __init__(self, *, source_dir: str | os.PathLike | None = None, **kwargs):
        self.source_dir = epath.Path(source_dir) / self.SUBDIR if source_dir else None
        super().__init__(**kwargs)

    def reads_local_files(self) -> bool:
        """Whether preparing reads files already on this machine (nothing is downloaded)."""
        return self.source_dir is not None

    # TFDS's two announcements (`DatasetBuilder.download_and_prepare`), kept only when
    # something is downloaded: they speak of downloading.
    def _log_download_bytes(self) -> None:
        if self.reads_local_files():
            log.info("preparing %s into %s", self.name, self.data_dir)
        else:
            super()._log_download_bytes()

    def _log_download_done(self) -> None:
        if self.reads_local_files():
            log.info("prepared %s in %s", self.name, self.data_dir)
        else:
            super()._log_download_done()

    @classmethod
    def config_for(cls, data_dir: str | os.PathLike | None) -> str | None:
        """The builder config to use with files from `data_dir` (None: download)."""
        del data_dir  # one config, whatever the source
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo is built directly instead of with `dataset_info_from_configs`, which
        # would read README/CITATIONS files from the package folder.
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(
                        shape=self.IMAGE_SHAPE,
                        dtype=np.uint8,
                        encoding=tfds.features.Encoding.BYTES,
                    ),
                    "label": tfds.features.ClassLabel(names=self.CLASS_NAMES),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            license=self.LICENSE,
            # Saved as metadata.json beside the records: where the bytes came from.
            metadata=tfds.core.MetadataDict(),
        )

    @abc.abstractmethod
    def _read_splits(self, dl_manager) -> tuple[Mapping[str, tuple[np.ndarray, np.ndarray]], str]:
        """Reads and checks the original files.

        Returns:
          ({split: (images (N, H, W, C) uint8, labels (N,))}, where they came from).
        """

    def _split_generators(self, dl_manager):
        splits, source = self._read_splits(dl_manager)
        self.info.metadata["source"] = source
        return {name: self._generate_examples(*arrays) for name, arrays in splits.items()}

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray) -> Iterator:
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield i, {"image": image, "label": int(label)}
