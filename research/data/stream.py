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
    pass and cached beside the records (`stream_splits.open_splits`).
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
  * A background thread (`prefetch.Prefetch`) stacks each chunk, puts it on
    the devices and keeps `prefetch` chunks ready, so a step does not wait on
    the host.

Evaluation (`eval_chunks`) reads the validation and test splits in order with
the padded, masked batches of `batching.eval_batches`.

What the engine calls:

    splits = stream_splits.open_splits(config.data)      # StreamSplits; reads no image
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

import dataclasses
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np
from absl import flags
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from research.data import augmentation, batching, stream_splits
from research.data.prefetch import Prefetch
from research.logs import root_logging_kept

with root_logging_kept():  # grain imports orbax, which logs through absl on import
    import grain

STATE_VERSION = 1  # of `TrainStream.state`'s record


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

    def __init__(self, split: stream_splits.RecordSplit, augment_seed: tuple[int, ...] | None):
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
        split: stream_splits.RecordSplit,
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
        split: stream_splits.RecordSplit,
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
    split: stream_splits.RecordSplit,
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
