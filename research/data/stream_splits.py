"""The splits of a streamed run as records: which records each split holds, normalized how.

`open_splits` is `pipeline.prepare` for a dataset prepared as `array_record`
files (`research.data.open_records`): the same `pipeline.carve` and the same
normalization, with counts from the files' metadata instead of arrays in
memory. Example i of a split is one record, read when a batch needs it
(`RecordSplit.read`). The statistics are exact integer counts over the training
split, measured in one streamed pass; when `data.classes` is set, the labels
are read in one pass too. Both are cached beside the records
(`research_stream/`) and reused by every later run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable

import numpy as np

from research import data as data_lib
from research.data import pipeline, records

log = logging.getLogger(__name__)

_CACHE_FOLDER = "research_stream"  # beside the records: labels and statistics, computed once
_PASS_BLOCK = 1024  # records per read in the one-off passes (labels, statistics)


@dataclasses.dataclass(frozen=True, eq=False)
class RecordSplit:
    """One prepared split as records: example i is record `records[i]` of `reader`.

    Picklable, so grain's worker processes receive it whole.

    Attributes:
      reader: random access to the raw split's records.
      records: int64 record ids, increasing.
      label_map: raw label -> run label (a classes selection), or None.
      table: the `pipeline.normalize_table` of the run.
      channels: the input channel of each output channel (`pipeline.normalize`).
    """

    reader: records.RecordReader
    records: np.ndarray
    label_map: np.ndarray | None
    table: np.ndarray
    channels: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalized float32 images `(b, H, W, C)` and int32 labels of examples `rows`."""
        images, labels = self.reader.read(self.records[rows])
        labels = labels if self.label_map is None else self.label_map[labels]
        return pipeline.normalize(images, self.table, self.channels), labels.astype(np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class StreamSplits:
    """Train/validation/test of one dataset as records: `pipeline.Splits` without the arrays."""

    name: str
    train: RecordSplit
    val: RecordSplit
    test: RecordSplit
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]  # per channel, [0, 1] pixel units, exact over the training split
    std: tuple[float, ...]
    notes: tuple[str, ...]
    class_names: tuple[str, ...]
    source: str

    @property
    def fingerprint(self) -> str:
        """SHA-256 of what the run trains on: the dataset's source and its training records."""
        digest = hashlib.sha256(f"{self.name}\n{self.source}\n".encode())
        digest.update(np.ascontiguousarray(self.train.records, np.int64).tobytes())
        return digest.hexdigest()


def open_splits(
    data_cfg, prepared=None, normalization: pipeline.Normalization | None = None
) -> StreamSplits:
    """The splits of `data_cfg` (a config's `data` section) as records; loads no images.

    The first call for a dataset makes one pass over its training records to
    count pixel values (the normalization statistics), and, when `data.classes`
    is set, one pass over every split's labels; both are cached beside the
    records (`research_stream/`) and reused by every later run.

    Args:
      data_cfg: name, data_dir, cache_dir, image_size, val_size, split_seed,
        train_size, classes.
      prepared: the opened dataset (`research.data.open_records`), if already open.
      normalization: instead of the training split's statistics (`pipeline.prepare`).
    """
    d = data_cfg
    if prepared is None:
        prepared = data_lib.open_records(
            d.name,
            data_dir=d.data_dir or None,
            cache_dir=d.cache_dir or None,
            image_size=d.image_size,
        )
    carved = carve(prepared, d)
    train_reader = prepared.reader("train")
    channels, notes = None, ()
    if normalization is None:
        histogram = _cached(
            prepared,
            f"histogram-{hashlib.sha256(carved.train.tobytes()).hexdigest()[:20]}",
            lambda: _histogram(train_reader, carved.train),
        )
        mean, std = pipeline.mean_std(histogram)
    else:
        mean, std, channels = normalization.mean, normalization.std, normalization.channels
        notes = (f"normalized with {normalization.source}'s mean and std",)
    table = pipeline.normalize_table(mean, std)
    images, labels = train_reader.read(carved.train[:1])
    records.check_layout(prepared.builder, "train", images, labels, carved.train[0])

    def split(name, ids):
        return RecordSplit(prepared.reader(name), ids, carved.label_map, table, channels)

    return StreamSplits(
        name=prepared.name,
        train=split("train", carved.train),
        val=split(carved.val_from, carved.val),
        test=split("test", carved.test),
        num_classes=carved.num_classes,
        input_shape=prepared.image_shape,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        notes=(*prepared.notes, *carved.notes, *notes),
        class_names=carved.class_names,
        source=prepared.source,
    )


def carve(prepared, data_cfg) -> pipeline.Carved:
    """`pipeline.carve` for a prepared dataset: counts from its metadata, labels if needed."""
    d = data_cfg
    counts = prepared.split_sizes
    labels = None
    if d.classes:
        labels = {
            s: _cached(prepared, f"labels-{s}", lambda s=s: _labels(prepared.reader(s)))
            for s in counts
        }
    return pipeline.carve(
        counts=counts,
        labels=labels,
        num_classes=len(prepared.class_names),
        class_names=prepared.class_names,
        val_size=d.val_size,
        split_seed=d.split_seed,
        train_size=d.train_size,
        classes=tuple(d.classes),
    )


def _histogram(reader: records.RecordReader, ids: np.ndarray) -> np.ndarray:
    total = None
    for start in range(0, len(ids), _PASS_BLOCK):
        images, _ = reader.read(ids[start : start + _PASS_BLOCK])
        hist = pipeline.pixel_histogram(images)
        total = hist if total is None else total + hist
    return total


def _labels(reader: records.RecordReader) -> np.ndarray:
    ids = np.arange(len(reader))
    return np.concatenate(
        [reader.read(ids[s : s + _PASS_BLOCK])[1] for s in range(0, len(ids), _PASS_BLOCK)]
    )


def _cached(prepared, name: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """`compute()`, kept as `<records folder>/research_stream/<name>.npy` and reused."""
    folder = os.path.join(os.fspath(prepared.builder.data_dir), _CACHE_FOLDER)
    path = os.path.join(folder, f"{name}.npy")
    if os.path.exists(path):
        return np.load(path)
    value = compute()
    try:
        os.makedirs(folder, exist_ok=True)
        partial = f"{path}.{os.getpid()}.tmp.npy"  # written whole, then renamed into place
        np.save(partial, value)
        os.replace(partial, path)
    except OSError as err:  # a read-only cache: compute again next time
        log.warning("could not cache %s (%s); it will be computed again next run", path, err)
    return value
