"""Streaming: each chunk of steps read from the prepared array_record files while the device trains.

`data.loader = "device"` keeps a dataset's normalized splits on the device and
each step gathers its batch by index (`pipeline.py`). That stops at the first
dataset larger than device memory. `data.loader = "stream"` keeps the same
plan and moves the gather to the host:

  * The same batches. The training loop's index rows (`batching.plan_chunks`:
    epoch e shuffled by `fold_in(data_key, e)`, chunks cut where the device
    path cuts them) say which examples each step uses; the stream reads exactly
    those records by random access (`records.RecordReader`), normalizes them
    with the same statistics and the same lookup table (`pipeline.normalize`),
    so a step sees bit-identical float32 images on either path. The statistics
    are exact integer counts over the training split, measured in one streamed
    pass and cached beside the records (`open_splits`).
  * Exact resume by construction. A chunk's content depends on (data_key,
    step) alone, so a run restarted at step t reads what an uninterrupted run
    read from step t on. `TrainStream.state(step)` is a small JSON record that
    the engine saves in the same orbax checkpoint as the training state, and
    `check_state` refuses a checkpoint written for other data or another plan.
  * Each host reads its own share. With P processes, the global batch of every
    step is split over the mesh's devices ("data" axis); a process reads only
    the columns its own devices hold (rows `[p*B/P, (p+1)*B/P)` of each batch
    on the usual device order) and the global array is assembled with
    `jax.make_array_from_single_device_arrays`. Together the processes read
    every example of a batch once. (A kept remainder batch whose size the
    device count does not divide is read whole by every process, replicated.)
  * Reading, decoding, normalizing and (`data.augment_on = "host"`) the CIFAR
    augmentation run in grain: a `MapDataset` of steps whose map reads one
    step's records in one batched call per shard, in `read_threads` threads,
    in `workers` worker processes when workers > 0 (`mp_prefetch`). One
    pipeline per epoch, since the engine's permutation of epoch e is known in
    the training process only: with workers > 0 their processes start again
    with each epoch (about 2.4 s on the loaded 2-core machine; none with the
    default workers = 0).
  * A background thread stacks each chunk, puts it on the devices and keeps
    `prefetch` chunks ready, so a step does not wait on the host.

Evaluation (`eval_chunks`) reads the validation and test splits in order with
the padded, masked batches of `batching.eval_batches`.

What the engine calls:

    splits = stream.open_splits(config.data)             # StreamSplits; reads no image
    train = stream.TrainStream(splits.train, data_key=data_key, batch_size=B,
                               remainder=..., chunk=..., num_epochs=E, mesh=mesh,
                               workers=..., read_threads=..., prefetch=...,
                               augment_seed=None,        # or seed_of(data_key): host augment
                               dataset_fingerprint=splits.fingerprint)
    train.check_state(saved_state, step)                 # after restoring a checkpoint
    with train.chunks(start_step) as chunks:
        for chunk in chunks:                             # StreamChunk: plan + global arrays
            state, metrics = train_step_chunk(state, chunk.images, chunk.labels)
            checkpoint: save train.state(chunk.step + chunk.steps) beside the state
    for images, labels, mask in stream.eval_chunks(splits.val, batch_size=..., mesh=mesh):
        totals += evaluate(params, images, labels, mask)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np
from absl import flags
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from research.data import augmentation, batching, pipeline, records
from research.logs import root_logging_kept

with root_logging_kept():  # grain imports orbax, which logs through absl on import
    import grain

log = logging.getLogger(__name__)

STATE_VERSION = 1  # of `TrainStream.state`'s record
_CACHE_FOLDER = "research_stream"  # beside the records: labels and statistics, computed once
_PASS_BLOCK = 1024  # records per read in the one-off passes (labels, statistics)


# ------------------------------------------------------------------ the splits as records


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
    from research import data as data_lib  # the sources import this package's modules

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


# ------------------------------------------------------------------ device or stream


def device_memory_budget(fraction: float) -> tuple[int, str]:
    """Bytes the "device" path may use, and what they are a fraction of.

    An accelerator's own limit (`memory_stats()["bytes_limit"]`); on the CPU
    backend, which reports none, the host's RAM (or its cgroup limit, if lower).
    """
    device = jax.local_devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory statistics
        stats = {}
    if "bytes_limit" in stats:
        total, what = int(stats["bytes_limit"]), f"{device.device_kind} memory"
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        try:
            with open("/sys/fs/cgroup/memory.max") as f:
                limit = f.read().strip()
            total = min(total, int(limit)) if limit.isdigit() else total
        except OSError:
            pass
        what = "host RAM (CPU backend)"
    return int(total * fraction), f"{fraction:g} of {total / 2**30:.1f} GiB {what}"


def choose_loader(data_cfg) -> tuple[str, str]:
    """`data.loader` resolved to "device" or "stream", and the reason (for results.json).

    "auto" compares the bytes of the prepared float32 train and validation splits
    (what the device path holds during training) with `data.device_fraction` of
    device memory. Both paths give the same numbers, so the choice is about speed
    and memory only. Opening the dataset may prepare it; no image is loaded.
    """
    from research import data as data_lib

    d = data_cfg
    if d.loader in ("device", "stream"):
        return d.loader, f"data.loader={d.loader!r}"
    if d.loader != "auto":
        raise ValueError(
            f"config.data.loader={d.loader!r} is invalid: 'device', 'stream' or 'auto'"
        )
    try:
        prepared = data_lib.open_records(
            d.name,
            data_dir=d.data_dir or None,
            cache_dir=d.cache_dir or None,
            image_size=d.image_size,
        )
    except ValueError as err:
        if "not stored as array_record" not in str(err):
            raise
        return "device", f"auto: {d.name} is not stored as array_record files (only device)"
    carved = carve(prepared, d)
    examples = len(carved.train) + len(carved.val)
    need = examples * (math.prod(prepared.image_shape) * 4 + 4)  # float32 pixels + int32 label
    budget, what = device_memory_budget(d.device_fraction)
    choice = "device" if need <= budget else "stream"
    sign = "<=" if choice == "device" else ">"
    return choice, (
        f"auto: train+val splits {need / 2**20:,.0f} MiB (float32, {examples:,} examples) "
        f"{sign} {budget / 2**20:,.0f} MiB ({what}, data.device_fraction)"
    )


# ------------------------------------------------------------------ reading chunks


@dataclasses.dataclass(frozen=True)
class StreamChunk:
    """A chunk of training steps with its batches on the devices.

    Attributes:
      plan: which steps and examples (`batching.ChunkPlan`: epoch, step, position,
        rows, epoch_end).
      images: `(S, B, H, W, C)` float32 global array, sharded on the B axis.
      labels: `(S, B)` int32 global array, sharded the same way.
    """

    plan: batching.ChunkPlan
    images: jax.Array
    labels: jax.Array

    @property
    def step(self) -> int:
        return self.plan.step

    @property
    def steps(self) -> int:
        return len(self.plan.rows)


class _Load:
    """grain map: one step's records -> normalized (and host-augmented) arrays."""

    def __init__(self, split: RecordSplit, augment_seed: tuple[int, ...] | None):
        self.split = split
        self.augment_seed = augment_seed

    def __call__(self, element):
        step, rows, columns, batch_size = element
        images, labels = self.split.read(rows)
        if self.augment_seed is not None:
            images = augmentation.augment_host(
                images, seed=self.augment_seed, step=step, columns=columns, batch_size=batch_size
            )
        return images, labels


class _Reader:
    """What train and evaluation streams share: grain pipelines, sharding, device transfer."""

    def __init__(
        self,
        split: RecordSplit,
        *,
        mesh: Mesh,
        workers: int = 0,
        read_threads: int = 2,
        prefetch: int = 2,
        augment_seed: tuple[int, ...] | None = None,
    ):
        if workers < 0 or read_threads < 0 or prefetch < 1:
            raise ValueError(
                f"workers={workers} and read_threads={read_threads} must be >= 0, "
                f"prefetch={prefetch} >= 1"
            )
        self.split = split
        self.mesh = mesh
        self.workers = workers
        self.read_threads = read_threads
        self.prefetch = prefetch
        self.augment_seed = augment_seed
        self.read_log: list[np.ndarray] | None = None  # tests: record every row read here

    def sharding(self, batch_size: int) -> NamedSharding:
        """Chunks `(S, B, ...)` are split over the devices on B (replicated if B won't divide)."""
        spec = P(None, "data") if batch_size % self.mesh.devices.size == 0 else P()
        return NamedSharding(self.mesh, spec)

    def columns(self, batch_size: int) -> np.ndarray:
        """Positions in the global batch that this process's devices hold, increasing."""
        index = self.sharding(batch_size).addressable_devices_indices_map((1, batch_size))
        cols = set()
        for where in index.values():
            cols.update(range(*where[1].indices(batch_size)))
        return np.asarray(sorted(cols), np.int64)

    def to_devices(self, local: np.ndarray, batch_size: int, columns: np.ndarray) -> jax.Array:
        """This process's columns `(S, b, ...)` -> the global `(S, B, ...)` array."""
        shape = (local.shape[0], batch_size, *local.shape[2:])
        sharding = self.sharding(batch_size)
        pieces = []
        for device, where in sharding.addressable_devices_indices_map(shape).items():
            start, stop, _ = where[1].indices(batch_size)
            lo, hi = np.searchsorted(columns, [start, stop])
            pieces.append(jax.device_put(local[:, lo:hi], device))
        return jax.make_array_from_single_device_arrays(shape, sharding, pieces)

    def iterate(self, elements: list) -> Iterator:
        """grain over `elements` (step, rows, columns, B), in order: (images, labels) each."""
        dataset = grain.MapDataset.source(elements).map(_Load(self.split, self.augment_seed))
        threads = self.read_threads
        options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2 * threads, 1))
        dataset = dataset.to_iter_dataset(options)
        if self.workers:
            # grain's worker start reads absl flags; outside an absl app (tests, notebooks,
            # scripts with argparse) they were never parsed: their defaults are meant.
            if not flags.FLAGS.is_parsed():
                flags.FLAGS.mark_as_parsed()
            dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers))
        return iter(dataset)

    def chunks(self, groups: Iterable[list[tuple[int, np.ndarray]]]) -> Iterator:
        """For each group (one grain pipeline) of (first step, rows (S, B)) -> (images, labels).

        Yields global arrays `(S, B, H, W, C)` and `(S, B)`, one per (step, rows).
        """
        for group in groups:
            elements, shapes = [], []
            for first, rows in group:
                batch = rows.shape[1]
                cols = self.columns(batch)
                shapes.append((len(rows), batch, cols))
                for s, row in enumerate(rows):
                    elements.append((first + s, np.asarray(row)[cols], cols, batch))
                if self.read_log is not None:
                    self.read_log.append(np.asarray(rows)[:, cols])
            it = self.iterate(elements)
            try:
                for steps, batch, cols in shapes:
                    parts = [next(it) for _ in range(steps)]
                    images = np.stack([p[0] for p in parts])  # (S, b, H, W, C)
                    labels = np.stack([p[1] for p in parts])  # (S, b)
                    yield self.to_devices(images, batch, cols), self.to_devices(labels, batch, cols)
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()


class TrainStream:
    """The training batches of a run, chunk by chunk, read ahead onto the devices.

    Args:
      split: the training split (`StreamSplits.train`).
      data_key: the run's data key; epoch e is shuffled by `fold_in(data_key, e)`.
      batch_size: the global batch size.
      remainder: "drop" or "keep" (`batching.epoch_batches`).
      chunk: steps per chunk (the loop's logging interval, or an epoch).
      num_epochs: epochs of the run.
      last_epoch_fraction: share of the last epoch trained (`batching.total_steps`).
      mesh: the device mesh (one axis, "data").
      workers: grain worker processes (0: read in this process's threads).
      read_threads: threads reading in each process.
      prefetch: chunks kept ready on the devices.
      augment_seed: host augmentation's seed (`seed_of`), or None: no host augmentation.
    """

    def __init__(
        self,
        split: RecordSplit,
        *,
        data_key: jax.Array,
        batch_size: int,
        remainder: str,
        chunk: int,
        num_epochs: int,
        mesh: Mesh,
        last_epoch_fraction: float = 1.0,
        workers: int = 0,
        read_threads: int = 2,
        prefetch: int = 2,
        augment_seed: tuple[int, ...] | None = None,
        dataset_fingerprint: str = "",
    ):
        self.split = split
        self.data_key = data_key
        self.batch_size = batch_size
        self.remainder = remainder
        self.chunk = chunk
        self.num_epochs = num_epochs
        self.last_epoch_fraction = last_epoch_fraction
        self.steps_per_epoch = batching.steps_per_epoch(len(split), batch_size, remainder)
        self.dataset_fingerprint = dataset_fingerprint
        self.reader = _Reader(
            split,
            mesh=mesh,
            workers=workers,
            read_threads=read_threads,
            prefetch=prefetch,
            augment_seed=augment_seed,
        )

    def plans(self, start_step: int = 0) -> Iterator[batching.ChunkPlan]:
        """The chunk plans from `start_step` on: the device path's, exactly."""
        return batching.plan_chunks(
            self.data_key,
            n=len(self.split),
            batch_size=self.batch_size,
            remainder=self.remainder,
            chunk=self.chunk,
            num_epochs=self.num_epochs,
            start_step=start_step,
            last_epoch_fraction=self.last_epoch_fraction,
        )

    def chunks(self, start_step: int = 0) -> Prefetch:
        """The chunks from `start_step` on, read in the background; close it when done.

        One grain pipeline per epoch (its worker processes start with the epoch).
        """

        def produce(stop: threading.Event) -> Iterator[StreamChunk]:
            epochs = _group_by_epoch(self.plans(start_step))
            for epoch_plans in epochs:
                group = [(p.step, p.rows) for p in epoch_plans]
                arrays = self.reader.chunks([group])
                for plan, (images, labels) in zip(epoch_plans, arrays, strict=True):
                    yield StreamChunk(plan, images, labels)
                    if stop.is_set():
                        return

        return Prefetch(produce, self.reader.prefetch)

    def state(self, step: int) -> dict[str, Any]:
        """A JSON record of where the stream stands before `step`, for the checkpoint."""
        return {
            "loader": "stream",
            "version": STATE_VERSION,
            "dataset": self.dataset_fingerprint,
            "train_examples": len(self.split),
            "data_key": list(seed_of(self.data_key)),
            "batch_size": self.batch_size,
            "remainder": self.remainder,
            "host_augment": self.reader.augment_seed is not None,
            "step": int(step),
            "epoch": int(step) // self.steps_per_epoch,
            "position": int(step) % self.steps_per_epoch,
            "process_count": jax.process_count(),
        }

    def check_state(self, saved: dict[str, Any], step: int) -> None:
        """Raises ValueError unless `saved` was written by this same stream at `step`.

        The process count may differ: a batch's rows are global, so a run may be
        resumed on another number of hosts and still read the same batches.
        """
        expected = self.state(step)
        differ = [k for k in expected if k != "process_count" and saved.get(k) != expected[k]]
        if differ:
            details = ", ".join(f"{k}: saved {saved.get(k)!r}, now {expected[k]!r}" for k in differ)
            raise ValueError(
                f"the checkpoint's data stream does not match this run ({details}); "
                "resume with the same data config, or start a new workdir"
            )


def eval_chunks(
    split: RecordSplit,
    *,
    batch_size: int,
    mesh: Mesh,
    chunk: int = 8,
    read_threads: int = 2,
    prefetch: int = 2,
) -> Prefetch:
    """The whole split in order, as (images, labels, mask) global arrays `(K, Be, ...)`.

    The batches of `batching.eval_batches` (padded with the last example, masked
    with 0), `chunk` of them at a time. Read in this process's threads: no
    worker processes to start for a pass that has no augmentation.
    """
    n_dev = mesh.devices.size
    idx, mask = batching.eval_batches(len(split), batch_size, n_dev)
    reader = _Reader(split, mesh=mesh, read_threads=read_threads, prefetch=prefetch)
    starts = range(0, len(idx), chunk)
    replicated = NamedSharding(mesh, P())

    def produce(stop: threading.Event):
        group = [(-1, idx[s : s + chunk]) for s in starts]
        for s, (images, labels) in zip(starts, reader.chunks([group]), strict=True):
            block = mask[s : s + chunk]
            yield (
                images,
                labels,
                jax.make_array_from_callback(
                    block.shape, replicated, lambda i, block=block: block[i]
                ),
            )
            if stop.is_set():
                return

    return Prefetch(produce, prefetch)


def _group_by_epoch(plans: Iterator[batching.ChunkPlan]) -> Iterator[list[batching.ChunkPlan]]:
    group: list[batching.ChunkPlan] = []
    for plan in plans:
        group.append(plan)
        if plan.epoch_end:
            yield group
            group = []
    if group:
        yield group


def seed_of(data_key: jax.Array) -> tuple[int, ...]:
    """The words of a run's data key: host augmentation's seed, and the state's record."""
    if jax.dtypes.issubdtype(data_key.dtype, jax.dtypes.prng_key):
        data_key = jax.random.key_data(data_key)
    return tuple(int(k) for k in np.asarray(data_key).ravel())


# ------------------------------------------------------------------ background thread


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


class Prefetch:
    """Runs `produce(stop_event)` in a background thread, at most `depth` items ahead.

    Iterate it; an error in the thread is raised at the item where it happened.
    `close()` (or leaving a `with` block) stops the thread and the grain workers.
    """

    def __init__(self, produce: Callable[[threading.Event], Iterator], depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(produce,), daemon=True)
        self._thread.start()

    def _run(self, produce) -> None:
        items = produce(self._stop)
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            self._put(_Failure(err))
        finally:
            items.close()  # closes the grain iterators (worker processes) it holds

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise item.error
        return item

    def close(self) -> None:
        self._stop.set()
        self._done = True
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.1)
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
