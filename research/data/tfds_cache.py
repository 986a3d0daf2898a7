"""The prepared datasets: TFDS builders' `array_record` files, prepared once into a cache.

The project's TFDS builders (`research.data.tfds_builders`: mnist, fashion_mnist,
cifar10, a folder of images, any of them resized) read the original files and
need no TensorFlow. The files come from `data_dir`, else $RESEARCH_DATA_DIR (a
folder laid out like shared/data), else their canonical URLs. Prepared
`array_record` files are cached in `cache_dir`, else $RESEARCH_CACHE_DIR, else
~/.cache/research/tfds, and reused by every later load.

  * `prepare` (and `_prepare_once` under it): one process prepares a builder,
    parallel ones wait on a lock and reuse its files; a prepared folder whose
    files do not read back whole (`_intact`) is prepared again.
  * `open_prepared`, `open_folder`, `open_resized`: a `PreparedDataset`, what
    both loaders read: the "device" loader whole (`sources.to_raw`), the
    "stream" loader by record index (`research.data.stream`). Nothing is read
    to open one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import json
import logging
import os
import shutil
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from research.data import records
from research.data.tfds_builders import SourceBuilder, files, resize
from research.data.tfds_builders import folder as folder_lib
from research.platform import fcntl

DATA_DIR_ENV = "RESEARCH_DATA_DIR"  # a folder laid out like shared/data
CACHE_DIR_ENV = "RESEARCH_CACHE_DIR"  # where prepared TFDS files are kept
DEFAULT_CACHE_DIR = "~/.cache/research/tfds"

log = logging.getLogger(__name__)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str | None:
    """`data_dir`, else $RESEARCH_DATA_DIR, else None (download). Empty strings are unset."""
    return os.fspath(data_dir) if data_dir else os.environ.get(DATA_DIR_ENV) or None


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> str:
    """`cache_dir`, else $RESEARCH_CACHE_DIR, else ~/.cache/research/tfds."""
    chosen = os.fspath(cache_dir) if cache_dir else os.environ.get(CACHE_DIR_ENV)
    return os.path.expanduser(chosen or DEFAULT_CACHE_DIR)


def prepare(
    builder_cls: type[SourceBuilder],
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> SourceBuilder:
    """Returns a prepared builder, preparing it into the cache first if needed.

    The original files (from `resolve_data_dir(data_dir)`, or downloaded if that is None)
    are read only when the cache has no prepared copy of this builder and config.
    """
    source_dir = resolve_data_dir(data_dir)
    config = builder_cls.config_for(source_dir)
    make = functools.partial(
        builder_cls, source_dir=source_dir, data_dir=resolve_cache_dir(cache_dir), config=config
    )
    builder = make()

    def check_source():
        if source_dir is not None and not os.path.isdir(source_dir):
            origin = "data_dir argument" if data_dir else f"${DATA_DIR_ENV}"
            raise FileNotFoundError(
                f"data folder {source_dir} (from the {origin}) does not exist; expected a "
                f"folder laid out like shared/data with {builder_cls.SUBDIR}/ in it. "
                f"{files.FIX_HINT}"
            )
        return builder

    if _prepare_once(builder.data_path, check_source):
        return make()  # prepared by another process while we waited: a new builder reads its info
    return builder


def _prepare_once(data_path, make_builder, lock_path=None) -> bool:
    """Prepares `make_builder()` into `data_path` unless it is there; True if it already was.

    The test TFDS itself uses to reuse a dataset: the version folder appears, complete,
    by a rename at the end of preparing (a failed build removes its temporary folder).
    Parallel trials on a fresh cache: one process prepares, the others wait on a lock
    and reuse it (without the lock, the later ones fail renaming onto the finished
    folder). A prepared folder whose files are damaged (`_intact`) is removed and
    prepared again, with one warning naming the file.
    """
    data_path = epath.Path(data_path)
    if data_path.exists() and _intact(data_path):
        return True
    lock_path = lock_path or f"{data_path}.lock"
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if data_path.exists():
            if _intact(data_path, warn=True):  # prepared, or rebuilt, while we waited
                return True
            shutil.rmtree(data_path)
        make_builder().download_and_prepare(
            file_format="array_record",
            # try_download_gcs=False: never look for a copy on TFDS's servers.
            download_config=tfds.download.DownloadConfig(try_download_gcs=False),
        )
        _write_checked(data_path)
    return False


CHECKED_FILE = ".checked.json"  # in a prepared folder: its files' sizes and times when read whole


def _stats(data_path: epath.Path) -> dict[str, list[int]]:
    found = sorted(glob.glob(os.path.join(os.fspath(data_path), "*.array_record-*")))
    return {os.path.basename(p): [os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in found}


def _write_checked(data_path: epath.Path) -> None:
    path = os.path.join(os.fspath(data_path), CHECKED_FILE)
    with contextlib.suppress(OSError), open(path, "w") as f:  # read-only: checked next time
        json.dump(_stats(data_path), f)


def _intact(data_path: epath.Path, *, warn: bool = False) -> bool:
    """Whether a prepared folder's record files read back whole.

    Every record is read once (Riegeli checks each chunk's hash; a truncated file
    holds fewer records than its split says), then again only when a file's size or
    modification time changes: `CHECKED_FILE` keeps them. With `warn`, a damaged file
    is named in one warning line saying that it is rebuilt.
    """
    try:
        with open(os.path.join(os.fspath(data_path), CHECKED_FILE)) as f:
            if json.load(f) == _stats(data_path):
                return True
    except (OSError, ValueError):
        pass
    try:
        info = tfds.builder_from_directory(os.fspath(data_path)).info
        for split in info.splits.values():
            paths = [os.fspath(p) for p in split.filepaths]
            reader = records.RecordReader(paths, split.shard_lengths, (1,))
            reader.check()
    except records.DamagedFile as err:
        if warn:
            log.warning("%s; rebuilding it from the original files", err)
        return False
    except Exception as err:  # noqa: BLE001 - unreadable metadata: prepare it again
        if warn:
            detail = " ".join(str(err).split())[:160]
            log.warning("prepared folder %s is damaged (%s); rebuilding it", data_path, detail)
        return False
    _write_checked(data_path)
    return True


@dataclasses.dataclass(frozen=True)
class PreparedDataset:
    """A dataset prepared as `array_record` files: what both loaders read.

    The "device" loader reads it whole (`sources.to_raw`); the "stream" loader
    (`research.data.stream`) reads records by index. Nothing is read to make one.

    Attributes:
      name: the name it was opened by, e.g. "cifar10" or "folder:/data/photos".
      builder: the prepared TFDS builder (its splits: "train", "test", maybe "val").
      notes: honest remarks a user must know, e.g. a partial or carved split.
      source: where the data came from.
    """

    name: str
    builder: Any
    notes: tuple[str, ...]
    source: str

    @property
    def split_sizes(self) -> dict[str, int]:
        """Records per split, from the builder's metadata."""
        return {name: int(s.num_examples) for name, s in self.builder.info.splits.items()}

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.builder.info.features["label"].names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.builder.info.features["image"].shape)

    def reader(self, split: str) -> records.RecordReader:
        """Random access to `split`'s records."""
        return records.RecordReader.for_split(self.builder, split)


def open_prepared(
    name: str,
    builder_cls: type[SourceBuilder],
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> PreparedDataset:
    """Opens one of the project's TFDS builders, preparing it first if needed (`prepare`)."""
    builder = prepare(builder_cls, data_dir=data_dir, cache_dir=cache_dir)
    notes = []
    for split in ("train", "test"):
        count = builder.info.splits[split].num_examples
        official = builder_cls.OFFICIAL_SPLIT_SIZES[split]
        if count < official:
            notes.append(
                f"{name} {split} split is partial: {count:,} of {official:,} official "
                f"{split} images (the first ones, in official order; shared/data copy). "
                "Say which split you report on, or hold out part of train"
            )
    source = builder.info.metadata.get("source", "unknown")
    where = f"{source} (prepared in {builder.data_dir})"
    return PreparedDataset(name, builder, tuple(notes), where)


def open_folder(
    name: str, *, cache_dir: str | os.PathLike | None = None, image_size: int = 0
) -> PreparedDataset:
    """Opens `folder:PATH`, building it into the cache unless an unchanged build is there.

    The folder is listed on every call (names, sizes, modification times: no image is
    opened); the cache key is its path, that fingerprint and `image_size`
    (`tfds_builders/folder.py`), so a changed folder is built anew and an unchanged
    one is reused.

    Raises:
      FileNotFoundError / ValueError: one line naming the folder or the bad image.
    """
    scanned = folder_lib.scan(name.removeprefix(folder_lib.PREFIX))
    check_image_size(image_size)
    cache = resolve_cache_dir(cache_dir)
    key = folder_lib.config_name(scanned, image_size)
    data_path = epath.Path(cache) / folder_lib.Folder.name / key / str(folder_lib.Folder.VERSION)
    try:
        _prepare_once(
            data_path,
            lambda: folder_lib.Folder(folder=scanned, image_size=image_size, data_dir=cache),
            lock_path=os.fspath(data_path.parent.parent / f"{key}.lock"),
        )
    except BaseException:
        # TFDS removed its temporary folder; remove the empty one it was made in, so a
        # failed build leaves nothing but the lock file.
        with contextlib.suppress(OSError):
            data_path.parent.rmdir()
        raise
    builder = tfds.builder_from_directory(os.fspath(data_path))
    notes = tuple(builder.info.metadata.get("notes", ()))
    return PreparedDataset(name, builder, notes, f"{scanned.root} (prepared in {data_path})")


# ------------------------------------------------------------------- data.image_size


def check_image_size(image_size: int) -> None:
    """Refuses a negative `data.image_size` in one line."""
    if image_size < 0:
        raise ValueError(f"data.image_size={image_size} must be 0 (keep one size) or a size >= 1")


def open_resized(
    prepared: PreparedDataset, image_size: int, *, cache_dir: str | os.PathLike | None = None
) -> PreparedDataset:
    """A prepared dataset resized to `image_size` x `image_size` (`tfds_builders/resize.py`).

    Prepared once into the cache under a key naming the original and the size
    (`resize.config_name`), then reused; the original's prepared files are kept.
    """
    check_image_size(image_size)
    base = prepared.builder
    cache = resolve_cache_dir(cache_dir)
    key = resize.config_name(base, image_size)
    data_path = epath.Path(cache) / resize.Resized.name / key / str(resize.Resized.VERSION)
    _prepare_once(
        data_path,
        lambda: resize.Resized(base=base, image_size=image_size, data_dir=cache),
        lock_path=os.fspath(data_path.parent.parent / f"{key}.lock"),
    )
    builder = tfds.builder_from_directory(os.fspath(data_path))
    notes = (*prepared.notes, resize.note(image_size))
    return PreparedDataset(prepared.name, builder, notes, f"{prepared.source}, {data_path}")
