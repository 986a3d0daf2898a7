"""From raw uint8 arrays to device-resident, normalized splits and batch indices.

The lectures' protocol: choose hyperparameters on a validation split carved
from train, report on test. Here:

  * `prepare` filters classes, carves a deterministic validation split from
    train (it depends on `data.split_seed` only, so every seed and every
    optimizer of a sweep is judged on the same validation images), optionally
    subsamples the training split, and normalizes with per-channel mean and
    standard deviation measured on the training split.
  * `epoch_batches` gives the batch indices of one epoch, shuffled from that
    epoch's key, with a stated remainder policy ("drop" or "keep").
  * `augment` is the CIFAR recipe (random crop after 4-pixel zero padding, and a
    horizontal flip with probability 1/2), in JAX, so it runs on the device
    inside the jitted step.

Small datasets live on the device whole: the training step receives indices
and gathers its batch there, so no host loop touches individual batches.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


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


def prepare(
    raw,
    *,
    val_size: float = 0.1,
    split_seed: int = 0,
    train_size: int = 0,
    classes: tuple[int, ...] = (),
) -> Splits:
    """Splits and normalizes a `research.data.RawDataset`.

    Args:
      raw: the dataset (uint8 NHWC images, integer labels).
      val_size: validation examples carved from train: a fraction in (0, 1) or
        a count >= 1. 0 leaves no validation split (validation = test is
        refused: see the lectures on choosing hyperparameters).
      split_seed: seed of the split permutation (independent of the run seed).
      train_size: keep only this many training examples after the split (0: all).
      classes: keep only these labels and renumber them 0..k-1 in this order.
    """
    train_x, train_y = raw.train_images, np.asarray(raw.train_labels, np.int32)
    test_x, test_y = raw.test_images, np.asarray(raw.test_labels, np.int32)
    num_classes = raw.num_classes
    notes = list(raw.notes)
    if classes:
        classes = tuple(int(c) for c in classes)
        bad = [c for c in classes if not 0 <= c < raw.num_classes]
        if bad or len(set(classes)) != len(classes):
            raise ValueError(
                f"data.classes must be distinct labels in [0, {raw.num_classes}), got {classes}"
            )
        train_x, train_y = _select_classes(train_x, train_y, classes)
        test_x, test_y = _select_classes(test_x, test_y, classes)
        num_classes = len(classes)
        notes.append(f"classes {list(classes)} relabelled 0..{num_classes - 1}")

    n = len(train_y)
    n_val = int(round(val_size * n)) if 0 < val_size < 1 else int(val_size)
    if n_val < 0 or n_val >= n:
        raise ValueError(
            f"data.val_size={val_size} must be a fraction in [0, 1) or a count in [0, {n}) "
            f"(the training split has {n} examples)"
        )
    order = np.random.default_rng(split_seed).permutation(n)
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
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

    pixels = train_x[train_idx].astype(np.float32) / 255.0
    mean = pixels.mean(axis=(0, 1, 2))
    std = pixels.std(axis=(0, 1, 2)) + 1e-8
    del pixels

    def norm(x):
        return ((x.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)

    return Splits(
        train=Split(norm(train_x[train_idx]), train_y[train_idx]),
        val=Split(norm(train_x[val_idx]), train_y[val_idx]),
        test=Split(norm(test_x), test_y),
        num_classes=num_classes,
        input_shape=tuple(int(d) for d in train_x.shape[1:]),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        notes=tuple(notes),
    )


def from_config(data_cfg, cache: dict | None = None) -> Splits:
    """Loads `data_cfg.name` and prepares its splits from the `config.data` fields.

    Args:
      data_cfg: a config's `data` section (name, data_dir, cache_dir, val_size,
        split_seed, train_size, classes).
      cache: optional dict; runs with the same data fields share one `Splits`.
    """
    from research import data as data_lib  # the sources; imported here to keep this module light

    d = data_cfg
    key = (
        d.name,
        d.data_dir,
        d.cache_dir,
        d.val_size,
        d.split_seed,
        d.train_size,
        tuple(d.classes),
    )
    if cache is not None and key in cache:
        return cache[key]
    raw = data_lib.load(d.name, data_dir=d.data_dir or None, cache_dir=d.cache_dir or None)
    splits = prepare(
        raw,
        val_size=d.val_size,
        split_seed=d.split_seed,
        train_size=d.train_size,
        classes=tuple(d.classes),
    )
    if cache is not None:
        cache[key] = splits
    return splits


def _select_classes(x, y, classes):
    keep = np.isin(y, classes)
    remap = np.full(max(int(y.max()) + 1, max(classes) + 1), -1, np.int32)
    remap[list(classes)] = np.arange(len(classes), dtype=np.int32)
    return x[keep], remap[y[keep]]


def steps_per_epoch(n: int, batch_size: int, remainder: str = "drop") -> int:
    """Optimizer steps in one epoch of `n` examples."""
    if remainder == "drop":
        return n // batch_size
    if remainder == "keep":
        return -(-n // batch_size)
    raise ValueError(f"data.remainder must be 'drop' or 'keep', got {remainder!r}")


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


def augment(key: jax.Array, images: jax.Array, *, pad: int = 4) -> jax.Array:
    """Random crop after `pad`-pixel zero padding, then a random horizontal flip.

    Args:
      key: randomness for this batch.
      images: `(N, H, W, C)` normalized images (zero = the training mean).
      pad: pixels of zero padding on each side before cropping back to `H x W`.
    """
    n, h, w, _ = images.shape
    crop_key, flip_key = jax.random.split(key)
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, image.shape[-1]))

    cropped = jax.vmap(crop)(padded, offsets)
    flip = jax.random.bernoulli(flip_key, 0.5, (n, 1, 1, 1))
    return jnp.where(flip, cropped[:, :, ::-1, :], cropped)
