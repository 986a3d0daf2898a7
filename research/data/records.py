"""Random access to the prepared `array_record` files of the project's TFDS builders.

Every builder writes the same two features (`tfds_builders/base.py`): `image`, the
raw uint8 pixels of a fixed shape, and `label`, an int64. `decode_examples` turns
serialized records into arrays with one protobuf parse per record and one bulk copy
of the pixels; `RecordReader` reads any records of a split by index.

Why not `builder.as_data_source()` or `grain.sources.ArrayRecordDataSource` record by
record: on the 2-core development machine a CIFAR-10 record cost about 75 us read one
at a time, 32 us in a batch of 128 through the generic data source, and 23 us in a
batch read straight from the shard's reader: the per-record overhead users report in
grain issue #1164. `RecordReader.read` asks each shard for a whole batch at once and
skips the thread pool the generic data source starts on every call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from tensorflow_datasets.proto import tf_example_pb2

# Random access: no read-ahead (the array_record data sources set the same).
_READER_OPTIONS = "readahead_buffer_size:0"
_READER_BUFFER_BYTES = 32768


def decode_examples(
    records: Sequence[bytes], image_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Serialized examples -> (images uint8 `(N, *image_shape)`, labels int64 `(N,)`)."""
    examples = [tf_example_pb2.Example.FromString(r).features.feature for r in records]
    images = np.frombuffer(
        b"".join(e["image"].bytes_list.value[0] for e in examples), np.uint8
    ).reshape(-1, *image_shape)
    labels = np.fromiter((e["label"].int64_list.value[0] for e in examples), np.int64, len(records))
    return images, labels


_CHECK_BLOCK = 4096  # records read at a time by `RecordReader.check`


class DamagedFile(ValueError):
    """A prepared file that fails to read: truncated, or a chunk failing its checksum."""

    def __init__(self, path: str, detail: str):
        super().__init__(f"prepared file {path} is damaged ({detail})")
        self.path = path


class RecordReader:
    """Reads the examples of one prepared split by record index.

    Picklable: it holds file names and opens the files on first use in each
    process, so grain's worker processes each open their own readers.

    Args:
      paths: the split's `array_record` shard files, in order.
      shard_lengths: records in each shard.
      image_shape: `(H, W, C)` of one image.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        shard_lengths: Sequence[int],
        image_shape: tuple[int, ...],
    ):
        if len(paths) != len(shard_lengths):
            raise ValueError(f"{len(paths)} shard files but {len(shard_lengths)} shard lengths")
        self.paths = tuple(os.fspath(p) for p in paths)
        self.image_shape = tuple(int(d) for d in image_shape)
        self._starts = np.concatenate([[0], np.cumsum(shard_lengths)]).astype(np.int64)
        self._readers: list | None = None

    @classmethod
    def for_split(cls, builder, split: str) -> RecordReader:
        """The reader of `split` of a prepared TFDS builder (the project's feature layout)."""
        info = builder.info.splits[split]
        return cls(
            [os.fspath(p) for p in info.filepaths],
            info.shard_lengths,
            builder.info.features["image"].shape,
        )

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getstate__(self):
        return {**self.__dict__, "_readers": None}  # open files do not travel

    def read_raw(self, ids: Sequence[int] | np.ndarray) -> list[bytes]:
        """The serialized records `ids` (any order, repeats allowed), in that order."""
        ids = np.asarray(ids, np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"record ids outside [0, {len(self)}): {ids.min()}..{ids.max()}")
        if self._readers is None:
            from array_record.python import array_record_module  # noqa: PLC0415 - per process

            self._readers = [
                array_record_module.ArrayRecordReader(
                    p, options=_READER_OPTIONS, file_reader_buffer_size=_READER_BUFFER_BYTES
                )
                for p in self.paths
            ]
        shard = np.searchsorted(self._starts, ids, side="right") - 1
        out: list[bytes] = [b""] * len(ids)
        for s in np.unique(shard):
            where = np.flatnonzero(shard == s)
            # One batched read per shard: the per-record overhead is the cost.
            records = self._readers[s].read((ids[where] - self._starts[s]).tolist())
            for i, record in zip(where.tolist(), records, strict=True):
                out[i] = record
        return out

    def check(self, lengths: Sequence[int] | None = None) -> None:
        """Reads every record of every shard once: Riegeli checks each chunk's hash.

        Raises:
          DamagedFile: a shard that does not open, holds another number of records
            than its `lengths` entry, or fails its checksum; the message names it.
        """
        from array_record.python import array_record_module  # noqa: PLC0415 - per process

        lengths = lengths if lengths is not None else np.diff(self._starts).tolist()
        for path, length in zip(self.paths, lengths, strict=True):
            try:
                reader = array_record_module.ArrayRecordReader(
                    path, options=_READER_OPTIONS, file_reader_buffer_size=_READER_BUFFER_BYTES
                )
                try:
                    count = reader.num_records()
                    if count != length:
                        raise DamagedFile(path, f"{count} records where {length} were written")
                    for start in range(0, count, _CHECK_BLOCK):
                        reader.read(list(range(start, min(start + _CHECK_BLOCK, count))))
                finally:
                    reader.close()
            except (RuntimeError, ValueError, OSError) as err:
                if isinstance(err, DamagedFile):
                    raise
                detail = " ".join(str(err).split())[:160] or f"{type(err).__name__}, no detail"
                raise DamagedFile(path, detail) from None

    def read(self, ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images uint8 `(len(ids), H, W, C)` and raw labels int64 of records `ids`."""
        return decode_examples(self.read_raw(ids), self.image_shape)


def check_layout(builder, split: str, images: np.ndarray, labels: np.ndarray, first: int) -> None:
    """Raises unless record `first` decoded here equals TFDS's own decoding of it.

    A change of the record layout then fails loudly instead of scrambling pixels.
    """
    reference = builder.as_data_source(split)[int(first)]
    if not (np.array_equal(reference["image"], images[0]) and reference["label"] == labels[0]):
        raise RuntimeError(
            f"the fast record reader disagrees with TFDS on {builder.name} {split}[{first}]; "
            "the TFDS record layout changed: update research.data.records.decode_examples"
        )
