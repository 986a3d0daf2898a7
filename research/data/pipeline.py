"""From raw uint8 arrays to normalized train, validation and test splits.

The lectures' protocol: choose hyperparameters on a validation split carved
from train, report on test. Here, shared by both ways of feeding a run
(`data.loader`: "device", the whole dataset on the device, or "stream", records
read from disk, `research.data.stream`):

  * `carve` decides which records make each split: it filters classes, carves
    a deterministic validation split from train (it depends on
    `data.split_seed` only, so every seed and every optimizer of a sweep is
    judged on the same validation images), and optionally subsamples the
    training split. It needs only counts (and labels when classes are
    selected), so a streamed dataset is split without loading its images.
  * `pixel_histogram` and `mean_std` measure the per-channel mean and standard
    deviation of the training split exactly (integer counts, in any order or
    any number of pieces), and `normalize` applies them through a lookup
    table. Both loaders therefore feed bit-identical float32 images.
  * `prepare` does all of that for a dataset held in memory (the "device" path).

Which examples each step takes is `batching.py`; augmentation is
`augmentation.py`. Small datasets live on the device whole: the training step
receives indices and gathers its batch there, so no host loop touches
individual batches.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from research import data as data_lib


@dataclasses.dataclass(frozen=True)
class Split:
    """Normalized float32 images `(N, H, W, C)` and int32 labels `(N,)`, on the host."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Splits:
    """Train/validation/test splits of one dataset, ready for a run."""

    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units, measured on train
    std: tuple[float, ...]
    notes: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()  # name of (relabelled) class i; saved with the run


# ------------------------------------------------------------------ which records


@dataclasses.dataclass(frozen=True)
class Carved:
    """Which records of a dataset's raw splits make up each prepared split.

    Attributes:
      train: indices into the raw "train" split, increasing; training example i
        of the run is raw train record `train[i]`.
      val: indices into the raw split named by `val_from`, increasing.
      val_from: "train" (carved from it) or "val" (the dataset's own split).
      test: indices into the raw "test" split, increasing.
      label_map: raw label -> run label (a `classes` selection), or None: the same.
      num_classes: classes of the run.
      class_names: names of the run's classes, in label order.
      notes: what a user must know about the choice.
    """

    train: np.ndarray
    val: np.ndarray
    val_from: str
    test: np.ndarray
    label_map: np.ndarray | None
    num_classes: int
    class_names: tuple[str, ...]
    notes: tuple[str, ...]

    def map_labels(self, labels: np.ndarray) -> np.ndarray:
        """Raw labels -> the run's int32 labels."""
        labels = np.asarray(labels)
        return (labels if self.label_map is None else self.label_map[labels]).astype(np.int32)


def carve(
    *,
    counts: dict[str, int],
    labels: dict[str, np.ndarray] | None = None,
    num_classes: int,
    class_names: tuple[str, ...] = (),
    val_size: float = 0.1,
    split_seed: int = 0,
    train_size: int = 0,
    classes: tuple[int, ...] = (),
) -> Carved:
    """Chooses the records of the train, validation and test splits.

    Args:
      counts: records per raw split: "train" and "test", and "val" if the dataset
        has its own validation split (then it is the validation split, and
        `val_size` is not used).
      labels: raw labels per split; needed only when `classes` is set.
      num_classes: classes of the raw dataset.
      class_names: their names (optional).
      val_size: validation examples carved from train: a fraction in (0, 1) or
        a count >= 1. 0 leaves no validation split (validation = test is
        refused: see the lectures on choosing hyperparameters).
      split_seed: seed of the split permutation (independent of the run seed).
      train_size: keep only this many training examples after the split (0: all).
      classes: keep only these labels and renumber them 0..k-1 in this order.
    """
    notes = []
    label_map = None
    raw = {split: np.arange(count, dtype=np.int64) for split, count in counts.items()}
    if classes:
        classes = tuple(int(c) for c in classes)
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad or len(set(classes)) != len(classes):
            raise ValueError(
                f"data.classes must be distinct labels in [0, {num_classes}), got {classes}"
            )
        if labels is None:
            raise ValueError("carve: selecting data.classes needs the raw labels")
        raw = {s: np.flatnonzero(np.isin(labels[s], classes)) for s in counts}
        label_map = np.full(num_classes, -1, np.int32)
        label_map[list(classes)] = np.arange(len(classes), dtype=np.int32)
        if class_names:
            class_names = tuple(class_names[c] for c in classes)
        num_classes = len(classes)
        notes.append(f"classes {list(classes)} relabelled 0..{num_classes - 1}")

    kept = raw["train"]
    n = len(kept)
    if "val" in counts:
        val_idx, train_idx = raw["val"], kept
        val_from = "val"
        notes.append(
            f"validation split: the dataset's own ({len(val_idx)} examples); "
            "data.val_size is not used"
        )
    else:
        n_val = int(round(val_size * n)) if 0 < val_size < 1 else int(val_size)
        if n_val < 0 or n_val >= n:
            raise ValueError(
                f"data.val_size={val_size} must be a fraction in [0, 1) or a count in [0, {n}) "
                f"(the training split has {n} examples)"
            )
        order = np.random.default_rng(split_seed).permutation(n)
        # `kept` is increasing, so these stay increasing: records keep the file order.
        val_idx, train_idx = kept[np.sort(order[:n_val])], kept[np.sort(order[n_val:])]
        val_from = "train"
    if train_size:
        if not 0 < train_size <= len(train_idx):
            raise ValueError(
                f"data.train_size={train_size} must be in [1, {len(train_idx)}] "
                f"(training examples left after the validation split), or 0 for all"
            )
        # A fixed subset, nested across sizes: the first `train_size` of a seeded permutation.
        train_idx = np.sort(
            np.random.default_rng(split_seed + 1).permutation(train_idx)[:train_size]
        )
    return Carved(
        train=train_idx,
        val=val_idx,
        val_from=val_from,
        test=raw["test"],
        label_map=label_map,
        num_classes=num_classes,
        class_names=tuple(class_names),
        notes=tuple(notes),
    )


# ------------------------------------------------------------------ normalization


def pixel_histogram(images: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Per-channel counts of each pixel value: `(C, 256)` int64 of uint8 `(N, H, W, C)` images.

    Counts add: the histogram of a split is the sum of its pieces' histograms,
    whatever the order or the cut, so a streamed pass and an in-memory pass agree.
    """
    if images.dtype != np.uint8:
        raise ValueError(f"pixel_histogram needs uint8 images, got {images.dtype}")
    channels = images.shape[-1]
    offsets = np.arange(channels, dtype=np.intp) * 256
    hist = np.zeros(channels * 256, np.int64)
    for start in range(0, len(images), chunk):
        values = images[start : start + chunk].reshape(-1, channels) + offsets  # (pixels, C)
        hist += np.bincount(values.ravel(), minlength=channels * 256)
    return hist.reshape(channels, 256)


def mean_std(histogram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation, in [0, 1] pixel units, of a `pixel_histogram`.

    Computed exactly from integer sums, then rounded once to float32. The +1e-8
    keeps a constant channel from dividing by zero.
    """
    values = np.arange(256, dtype=np.int64)
    means, stds = [], []
    for counts in np.asarray(histogram, np.int64):
        n, s1, s2 = int(counts.sum()), int(counts @ values), int(counts @ values**2)
        if n == 0:
            raise ValueError("mean_std: the training split has no pixels")
        means.append(s1 / (n * 255))
        stds.append(math.sqrt(max(n * s2 - s1 * s1, 0)) / (n * 255) + 1e-8)
    return np.asarray(means, np.float32), np.asarray(stds, np.float32)


def normalize_table(mean, std) -> np.ndarray:
    """`(256, C)` float32: entry `[v, c]` is `(v / 255 - mean[c]) / std[c]` in float32."""
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return ((np.arange(256, dtype=np.float32)[:, None] / 255.0 - mean) / std).astype(np.float32)


def normalize(
    images: np.ndarray, table: np.ndarray, channels: tuple[int, ...] | None = None
) -> np.ndarray:
    """uint8 `(N, H, W, C)` -> float32 through a `normalize_table` (bit-identical to the formula).

    A table lookup per channel is about twice as fast as the arithmetic and has
    exactly its float32 results. Output channel c is taken from input channel
    `channels[c]` (None: the same channel; `(2, 1, 0)`: RGB to BGR).
    """
    out = np.empty(images.shape, np.float32)
    for c in range(images.shape[-1]):
        source = c if channels is None else channels[c]
        np.take(table[:, c], images[..., source], out=out[..., c])
    return out


@dataclasses.dataclass(frozen=True)
class Normalization:
    """How uint8 pixels become the network's input, when not measured on the training split.

    Output channel c is `(pixel / 255 - mean[c]) / std[c]` of input channel
    `channels[c]`. A transfer run from imported weights uses the source network's
    (`research.train.transfer.pretrained_normalization`).

    Attributes:
      mean, std: per output channel, in [0, 1] pixel units.
      channels: the input channel of each output channel (None: the same order).
      source: where the numbers come from, for the run's notes.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: tuple[int, ...] | None = None
    source: str = ""


def prepare(
    raw,
    *,
    val_size: float = 0.1,
    split_seed: int = 0,
    train_size: int = 0,
    classes: tuple[int, ...] = (),
    normalization: Normalization | None = None,
) -> Splits:
    """Splits and normalizes a `research.data.RawDataset` held in memory.

    Args: as `carve`; `raw` is the dataset (uint8 NHWC images, integer labels);
      `normalization` replaces the statistics of the training split (None: measure them).
    """
    splits = {
        "train": (raw.train_images, raw.train_labels),
        "test": (raw.test_images, raw.test_labels),
    }
    if raw.val_images is not None:
        splits["val"] = (raw.val_images, raw.val_labels)
    carved = carve(
        counts={s: len(labels) for s, (_, labels) in splits.items()},
        labels={s: labels for s, (_, labels) in splits.items()},
        num_classes=raw.num_classes,
        class_names=raw.class_names,
        val_size=val_size,
        split_seed=split_seed,
        train_size=train_size,
        classes=classes,
    )
    channels, notes = None, ()
    if normalization is None:
        mean, std = mean_std(pixel_histogram(raw.train_images[carved.train]))
    else:
        mean, std, channels = normalization.mean, normalization.std, normalization.channels
        notes = (f"normalized with {normalization.source}'s mean and std",)
    table = normalize_table(mean, std)

    def take(split, idx):
        images, labels = splits[split]
        return Split(normalize(images[idx], table, channels), carved.map_labels(labels[idx]))

    return Splits(
        train=take("train", carved.train),
        val=take(carved.val_from, carved.val),
        test=take("test", carved.test),
        num_classes=carved.num_classes,
        input_shape=tuple(int(d) for d in raw.train_images.shape[1:]),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        notes=(*raw.notes, *carved.notes, *notes),
        class_names=carved.class_names,
    )


def from_config(
    data_cfg, cache: dict | None = None, normalization: Normalization | None = None
) -> Splits:
    """Loads `data_cfg.name` and prepares its splits from the `config.data` fields.

    Args:
      data_cfg: a config's `data` section (name, data_dir, cache_dir, val_size,
        split_seed, train_size, classes, image_size).
      cache: optional dict; runs with the same data fields share one `Splits`.
      normalization: instead of the training split's statistics (see `prepare`).
    """
    d = data_cfg
    key = (
        d.name,
        d.data_dir,
        d.cache_dir,
        d.val_size,
        d.split_seed,
        d.train_size,
        tuple(d.classes),
        d.image_size,
        normalization,
    )
    if cache is not None and key in cache:
        return cache[key]
    raw = data_lib.load(
        d.name, data_dir=d.data_dir or None, cache_dir=d.cache_dir or None, image_size=d.image_size
    )
    splits = prepare(
        raw,
        val_size=d.val_size,
        split_seed=d.split_seed,
        train_size=d.train_size,
        classes=tuple(d.classes),
        normalization=normalization,
    )
    if cache is not None:
        cache[key] = splits
    return splits
