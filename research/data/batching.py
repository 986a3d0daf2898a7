"""Which examples each step takes: an epoch's batches, a run's chunks of steps, evaluation batches.

Shared by both ways of feeding a run (`data.loader`): the "device" path gathers
these rows on the device, the "stream" path (`research.data.stream`) reads
exactly these records from disk.

  * `steps_per_epoch` and `total_steps` count a run's optimizer steps.
  * `epoch_batches` gives the batch indices of one epoch, shuffled from that
    epoch's key, with a stated remainder policy ("drop" or "keep").
  * `plan_chunks` cuts a run's epochs into the chunks of steps the training
    loop runs in one compiled call (`ChunkPlan`).
  * `eval_batches` gives the padded, masked batches of an evaluation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import jax
import numpy as np


def steps_per_epoch(n: int, batch_size: int, remainder: str = "drop") -> int:
    """Optimizer steps in one epoch of `n` examples."""
    if remainder == "drop":
        return n // batch_size
    if remainder == "keep":
        return -(-n // batch_size)
    raise ValueError(f"data.remainder must be 'drop' or 'keep', got {remainder!r}")


def total_steps(steps_per_epoch: int, num_epochs: int, last_epoch_fraction: float = 1.0) -> int:
    """Optimizer steps of a run: `num_epochs` epochs, the last one cut to `last_epoch_fraction`.

    The cut epoch keeps `ceil(fraction * steps_per_epoch)` steps, so 10 epochs of 48 steps
    with fraction 0.9 give 9 * 48 + 44 = 476 = ceil(9.9 * 48) steps (airbench's count).
    """
    if not 0 < last_epoch_fraction <= 1:
        raise ValueError(
            f"last_epoch_fraction={last_epoch_fraction!r} must be in (0, 1] (1: whole epochs)"
        )
    if last_epoch_fraction == 1:
        return steps_per_epoch * num_epochs
    last = math.ceil(steps_per_epoch * last_epoch_fraction - 1e-9)  # 0.9 * 48 = 43.2 -> 44
    return steps_per_epoch * (num_epochs - 1) + max(last, 1)


def epoch_batches(key: jax.Array, n: int, batch_size: int, remainder: str = "drop") -> list:
    """The batches of one epoch as index arrays, shuffled by `key`.

    Returns a list with one `(full_batches, batch_size)` int32 array of full
    batches, followed by a `(1, n % batch_size)` array for the last partial
    batch when `remainder == "keep"`. "drop" discards the last `n % batch_size`
    examples of the permutation (different ones every epoch).
    """
    full = n // batch_size
    if full == 0 and remainder == "drop":
        raise ValueError(f"batch_size={batch_size} is larger than the training split ({n})")
    perm = np.asarray(jax.random.permutation(key, n), np.int32)
    out = [perm[: full * batch_size].reshape(full, batch_size)]
    if remainder == "keep" and n % batch_size:
        out.append(perm[full * batch_size :].reshape(1, -1))
    elif remainder not in ("drop", "keep"):
        raise ValueError(f"data.remainder must be 'drop' or 'keep', got {remainder!r}")
    return out


@dataclasses.dataclass(frozen=True)
class ChunkPlan:
    """One chunk of training steps: what the loop runs in one compiled call.

    Attributes:
      epoch: the epoch (0-based) the chunk belongs to.
      step: the global step of its first row (steps taken before it).
      position: the index of its first row within the epoch.
      rows: `(S, B)` int32 example indices into the training split, one row per step.
      epoch_end: whether the chunk finishes its epoch.
    """

    epoch: int
    step: int
    position: int
    rows: np.ndarray
    epoch_end: bool


def plan_chunks(
    data_key: jax.Array,
    *,
    n: int,
    batch_size: int,
    remainder: str,
    chunk: int,
    num_epochs: int,
    start_step: int = 0,
    last_epoch_fraction: float = 1.0,
) -> Iterator[ChunkPlan]:
    """The run's steps from `start_step` on, cut into chunks, in order.

    Epoch `e`'s order is `epoch_batches(fold_in(data_key, e), ...)`. Chunks end at
    multiples of `chunk` steps within the epoch, at the epoch's end, and before
    the kept remainder batch (a different shape runs alone), so a run resumed at
    any step cuts the rest of the epoch exactly where the first run did. The last
    epoch stops after `total_steps(...)` (its chunk then counts as the epoch's end).
    """
    spe = steps_per_epoch(n, batch_size, remainder)
    stop = total_steps(spe, num_epochs, last_epoch_fraction)
    step = start_step
    for epoch in range(start_step // spe, num_epochs):
        batches = epoch_batches(jax.random.fold_in(data_key, epoch), n, batch_size, remainder)
        rows = [row for block in batches for row in block]  # per-step index rows
        rows = rows[: stop - epoch * spe]  # the last epoch may be cut short
        position = step - epoch * spe
        while position < len(rows):
            end = min((position // chunk + 1) * chunk, len(rows))
            sizes = [len(r) for r in rows[position:end]]
            if len(set(sizes)) > 1:  # the kept remainder batch runs alone
                end = position + next(i for i, s in enumerate(sizes) if s != sizes[0])
            yield ChunkPlan(epoch, step, position, np.stack(rows[position:end]), end == len(rows))
            step += end - position
            position = end


def eval_batches(n: int, batch_size: int, n_dev: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices `(K, Be)` and float32 mask `(K, Be)` covering `n` examples once, in order.

    `Be` is `batch_size` (at most `n`) rounded up to a multiple of `n_dev`; the last
    batch is padded with copies of example `n - 1`, masked out with 0.
    """
    batch_size = -(-min(batch_size, n) // n_dev) * n_dev  # a multiple of the device count
    batches = -(-n // batch_size)
    idx = np.arange(batches * batch_size, dtype=np.int32)
    mask = (idx < n).astype(np.float32)
    idx = np.minimum(idx, n - 1)
    return idx.reshape(batches, batch_size), mask.reshape(batches, batch_size)
