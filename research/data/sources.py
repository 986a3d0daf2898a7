"""Dataset sources: every dataset as host numpy arrays in one `RawDataset`.

Three kinds of source:
  * `digits`: scikit-learn's 1,797 real 8x8 handwritten digits, embedded (no files).
  * `mnist`, `fashion_mnist`, `cifar10`: the project's TFDS builders
    (`research.data.tfds_builders`), which read the original files and need no
    TensorFlow; prepared once as `array_record` files (`tfds_cache.py`, where
    the files come from and where they are kept) and read whole here (`to_raw`).
  * `tfds:NAME`: any TFDS catalog dataset, when TensorFlow is installed.

Splitting off validation data and normalization live in `pipeline.py`, batch
order in `batching.py`, augmentation in `augmentation.py`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import numpy as np
import tensorflow_datasets as tfds

from research.data import records, tfds_cache
from research.data.tfds_builders import SourceBuilder, resize

CATALOG_PREFIX = "tfds:"


@dataclasses.dataclass(frozen=True, eq=False)
class RawDataset:
    """A whole dataset in host memory, before any splitting or preprocessing.

    Attributes:
      name: the name it was loaded by, e.g. "mnist" or "tfds:svhn_cropped".
      train_images: (N, H, W, C) uint8, NHWC; MNIST-like data has C = 1.
      train_labels: (N,) int32 in [0, num_classes).
      test_images: (M, H, W, C) uint8.
      test_labels: (M,) int32.
      num_classes: number of classes.
      class_names: name of class i at index i.
      notes: honest remarks a user must know, e.g. a partial or carved split.
      source: where the data came from (a path or a URL).
      val_images, val_labels: the dataset's own validation split, if it has one
        (a `folder:PATH` with val/); None: validation is carved from train.

    The arrays are made read-only: one loaded dataset may be shared by several users
    (splits, trials), so in-place changes must start from a copy.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    notes: tuple[str, ...]
    source: str
    val_images: np.ndarray | None = None
    val_labels: np.ndarray | None = None

    def __post_init__(self):
        # A malformed source fails here, by name, rather than later inside a jitted step.
        for split in ("train", "test") if self.val_images is None else ("train", "val", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != np.uint8 or images.ndim != 4:
                raise ValueError(
                    f"{self.name}: {split}_images must be (N, H, W, C) uint8, "
                    f"got {images.shape} {images.dtype}"
                )
            if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
                raise ValueError(
                    f"{self.name}: {split}_labels must be ({len(images)},) int32, "
                    f"got {labels.shape} {labels.dtype}"
                )
            if len(labels) and not 0 <= labels.min() <= labels.max() < self.num_classes:
                raise ValueError(f"{self.name}: {split} labels outside [0, {self.num_classes})")
            if images.shape[1:] != self.train_images.shape[1:]:
                raise ValueError(
                    f"{self.name}: {split} images are {images.shape[1:]}, "
                    f"train images {self.train_images.shape[1:]}"
                )
        arrays = (self.train_images, self.train_labels, self.test_images, self.test_labels)
        for array in (*arrays, self.val_images, self.val_labels):
            if array is not None:
                array.flags.writeable = False  # shared by every caller: copy before changing
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes"
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.train_images.shape[1:])

    def __repr__(self) -> str:
        return (
            f"RawDataset({self.name!r}, train={self.train_images.shape}, "
            f"test={self.test_images.shape}, num_classes={self.num_classes}, "
            f"source={self.source!r}, notes={self.notes!r})"
        )


# ---------------------------------------------------------------------------- digits

DIGITS_TEST_FRACTION = 0.2  # of each class, held out as the test split
# Part of the dataset's definition: changing it changes which images are "test". The
# legacy RandomState is used on purpose: its stream is frozen across numpy versions.
DIGITS_SPLIT_SEED = 0


def load_digits(*, data_dir: str | None = None, cache_dir: str | None = None) -> RawDataset:
    """scikit-learn's 8x8 digits with a fixed stratified train/test split.

    The 1,797 images (UCI "optdigits", 0..16 counts of set pixels per 4x4 block) are
    scaled to uint8 by round(v * 255 / 16), so 16 -> 255 and 8 -> 128 (ties to even).
    There is no official test split, so one is defined here: for each class, a
    `RandomState(DIGITS_SPLIT_SEED)` permutation of its indices (classes in order 0..9,
    one generator) puts the first round(0.2 * n_class) in test: 359 test, 1,438 train,
    each kept in the original order.

    Args:
      data_dir: ignored (the data is embedded in scikit-learn).
      cache_dir: ignored.
    """
    del data_dir, cache_dir  # embedded: nothing to read or cache
    # Imported here: scikit-learn is slow to import and only this source needs it.
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]  # (N, 8, 8, 1)
    labels = digits.target.astype(np.int32)
    rng = np.random.RandomState(DIGITS_SPLIT_SEED)
    is_test = np.zeros(len(labels), bool)
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c))
        is_test[members[: round(DIGITS_TEST_FRACTION * len(members))]] = True
    return RawDataset(
        name="digits",
        train_images=images[~is_test],
        train_labels=labels[~is_test],
        test_images=images[is_test],
        test_labels=labels[is_test],
        num_classes=10,
        class_names=tuple(str(d) for d in range(10)),
        notes=(
            f"digits has no official test split: {is_test.sum()} of {len(labels)} images "
            f"({DIGITS_TEST_FRACTION:.0%} of each class, RandomState({DIGITS_SPLIT_SEED})) "
            "are held out as test, defined in research.data.sources.load_digits",
            "pixels are scikit-learn's 0..16 values scaled by round(v * 255 / 16)",
        ),
        source="sklearn.datasets.load_digits (UCI optdigits, embedded in scikit-learn)",
    )


# ----------------------------------------------------- the prepared datasets, read whole


def read_split(builder: tfds.core.DatasetBuilder, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads a whole split of a prepared builder as (images uint8 (N, *shape), labels int32).

    One bulk read of the raw records, then a protobuf parse that takes the image bytes
    directly (`records.decode_examples`): about 3x faster than TFDS's per-record numpy
    decoding (MNIST train: 1.2 s against 3.5 s on 2 cores). The first record is checked
    against TFDS's own decoder, so a change of the record layout fails loudly instead
    of scrambling pixels.
    """
    reader = records.RecordReader.for_split(builder, split)
    images, labels = reader.read(np.arange(len(reader)))
    if len(labels):
        records.check_layout(builder, split, images[:1], labels[:1], 0)
    return images, labels.astype(np.int32)


def to_raw(prepared: tfds_cache.PreparedDataset) -> RawDataset:
    """Reads every split of a prepared dataset into memory."""
    arrays = {split: read_split(prepared.builder, split) for split in prepared.split_sizes}
    val_images, val_labels = arrays.get("val", (None, None))
    class_names = prepared.class_names
    return RawDataset(
        name=prepared.name,
        train_images=arrays["train"][0],
        train_labels=arrays["train"][1],
        test_images=arrays["test"][0],
        test_labels=arrays["test"][1],
        num_classes=len(class_names),
        class_names=class_names,
        notes=prepared.notes,
        source=prepared.source,
        val_images=val_images,
        val_labels=val_labels,
    )


def load_prepared(
    name: str,
    builder_cls: type[SourceBuilder],
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> RawDataset:
    """Loads one of the project's TFDS builders as a `RawDataset` (see `tfds_cache.prepare`)."""
    return to_raw(
        tfds_cache.open_prepared(name, builder_cls, data_dir=data_dir, cache_dir=cache_dir)
    )


# ------------------------------------------------------------------- data.image_size


def resize_raw(raw: RawDataset, image_size: int) -> RawDataset:
    """A dataset held in memory resized to `image_size` x `image_size` (`resize.fit_images`).

    For the datasets that have no prepared files of their own (digits, "tfds:NAME"):
    nothing is cached on disk; `pipeline.from_config`'s cache keys on the size.
    """
    tfds_cache.check_image_size(image_size)

    def fit(images):
        return None if images is None else resize.fit_images(images, image_size)

    return dataclasses.replace(
        raw,
        train_images=fit(raw.train_images),
        test_images=fit(raw.test_images),
        val_images=fit(raw.val_images),
        notes=(*raw.notes, resize.note(image_size)),
    )


# ---------------------------------------------------------------------- TFDS catalog


def tensorflow_available() -> bool:
    """Whether TensorFlow can be imported (checked without importing it)."""
    return importlib.util.find_spec("tensorflow") is not None


def load_catalog(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> RawDataset:
    """Loads a TFDS catalog dataset (`tfds:NAME`) through `tf.data`; needs TensorFlow.

    The dataset must have "train" and "test" splits and supervised keys (image, label)
    with uint8 images of a fixed shape.

    Args:
      name: "tfds:NAME" where NAME is a TFDS catalog name, optionally "NAME/config:version".
      data_dir: TFDS's manual_dir, for catalog datasets that need manually downloaded files.
      cache_dir: TFDS data_dir where the prepared dataset is kept.
    """
    catalog_name = name.removeprefix(CATALOG_PREFIX)
    if not tensorflow_available():
        raise ImportError(
            f"{name!r} is a TFDS catalog dataset, and the TFDS catalog reads data through "
            "TensorFlow, which is not installed: `pip install tensorflow` (or tensorflow-cpu). "
            "digits, mnist, fashion_mnist and cifar10 work without it."
        )
    builder = tfds.builder(catalog_name, data_dir=tfds_cache.resolve_cache_dir(cache_dir))
    manual_dir = tfds_cache.resolve_data_dir(data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    info = builder.info
    missing = {"train", "test"} - set(info.splits)
    if missing or not info.supervised_keys:
        raise ValueError(
            f"{name}: need 'train' and 'test' splits and supervised keys, got splits "
            f"{sorted(info.splits)} and supervised_keys={info.supervised_keys}"
        )
    arrays = tfds.as_numpy(
        builder.as_dataset(split=["train", "test"], batch_size=-1, as_supervised=True)
    )
    (train_images, train_labels), (test_images, test_labels) = arrays
    if train_images.dtype != np.uint8 or train_images.ndim != 4:
        raise ValueError(
            f"{name}: images must be fixed-shape uint8 (N, H, W, C), got "
            f"{train_images.shape} {train_images.dtype}"
        )
    label_feature = info.features[info.supervised_keys[1]]
    if not isinstance(label_feature, tfds.features.ClassLabel):
        raise ValueError(f"{name}: the label must be a ClassLabel, got {label_feature!r}")
    class_names = tuple(label_feature.names)
    return RawDataset(
        name=name,
        train_images=train_images,
        train_labels=train_labels.astype(np.int32),
        test_images=test_images,
        test_labels=test_labels.astype(np.int32),
        num_classes=len(class_names),
        class_names=class_names,
        notes=(f"TFDS catalog dataset {builder.info.full_name}",),
        source=f"{info.homepage or 'TFDS catalog'} (prepared in {builder.data_dir})",
    )
