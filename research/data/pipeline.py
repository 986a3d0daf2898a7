"""From raw uint8 arrays to normalized splits, batch indices and augmentation.

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
  * `epoch_batches` gives the batch indices of one epoch, shuffled from that
    epoch's key, with a stated remainder policy ("drop" or "keep");
    `plan_chunks` cuts a run's epochs into the chunks of steps the training
    loop runs in one compiled call, and `eval_batches` gives the padded,
    masked batches of an evaluation.
  * `augment` is the CIFAR recipe (random crop after 4-pixel zero padding, and a
    horizontal flip with probability 1/2), in JAX, so it runs on the device
    inside the jitted step; `augment_host` is the same recipe in numpy for the
    streaming loader's worker processes (`data.augment_on = "host"`).
    `AUGMENTATIONS` names the on-device policies `data.augment_policy` chooses
    from (`crop_flip`, the recipe above, and `airbench`'s alternating flip with
    a reflect-padded translation); `TTA` names the test-time augmentations of
    `eval_tta` (the views an evaluation averages the logits over).

Small datasets live on the device whole: the training step receives indices
and gathers its batch there, so no host loop touches individual batches.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from research.registry import Registry


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


# ------------------------------------------------------------------ batches and chunks


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


# ------------------------------------------------------------------ augmentation


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


def augment_host(
    images: np.ndarray,
    *,
    seed: tuple[int, ...],
    step: int,
    columns: np.ndarray,
    batch_size: int,
    pad: int = 4,
) -> np.ndarray:
    """`augment`'s recipe in numpy, for rows `columns` of step `step`'s global batch.

    The draws are made for the whole global batch of `batch_size` from
    `default_rng([*seed, step])` and each row takes its own, so a row's crop and
    flip depend on the run's seed, the step and the row's place in the batch
    only: not on the worker, the host, or how the batch was cut. (Different
    draws from `augment`'s, so "host" and "device" augmentation are equally
    distributed but not equal.)

    Args:
      images: `(b, H, W, C)` normalized images, rows `columns` of the global batch.
      seed: the run's augmentation seed (integers).
      step: the global step.
      columns: `(b,)` positions of these rows in the global batch.
      batch_size: size of the global batch.
      pad: zero padding before cropping back to `H x W`.
    """
    rng = np.random.default_rng([*seed, step])
    offsets = rng.integers(0, 2 * pad + 1, (batch_size, 2))[columns]  # (b, 2)
    flips = (rng.random(batch_size) < 0.5)[columns]  # (b,)
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ys = offsets[:, :1] + np.arange(h)  # (b, H)
    xs = offsets[:, 1:] + np.arange(w)  # (b, W)
    xs = np.where(flips[:, None], xs[:, ::-1], xs)
    return padded[np.arange(b)[:, None, None], ys[:, :, None], xs[:, None, :]]


# ------------------------------------------------------------------ augmentation policies


@dataclasses.dataclass(frozen=True)
class AugmentPolicy:
    """An on-device training augmentation, chosen by `data.augment_policy`.

    Attributes:
      fn: `fn(key, images, *, epoch, rows, run_key) -> images`: `key` is this
        step's augmentation key, `images` the `(B, H, W, C)` batch, `epoch` the
        0-based epoch (int32 scalar), `rows` the `(B,)` indices of the examples in
        the training split (None when the policy does not need them), and
        `run_key` a key fixed for the whole run (for draws that must stay the
        same from epoch to epoch).
      needs_rows: the policy needs `rows`, which only the device loader has.
    """

    fn: Callable[..., jax.Array]
    needs_rows: bool = False


def _crop_flip(key, images, *, epoch, rows, run_key):
    del epoch, rows, run_key
    return augment(key, images)


def translate(images: jax.Array, offsets: jax.Array, pad: int) -> jax.Array:
    """Each image shifted by its `offsets[i] - pad` pixels (rows, columns), reflect-padded.

    Args:
      images: `(N, H, W, C)`.
      offsets: `(N, 2)` int32 in `[0, 2 pad]`: the crop's top-left corner in the
        image padded by `pad` pixels on each side (`pad`: no shift).
      pad: the largest shift.
    """
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def alternating_flip(images: jax.Array, *, epoch, rows, run_key) -> jax.Array:
    """airbench's alternating flip: example i is mirrored in epoch e iff `b_i XOR (e odd)`.

    `b_i` is a coin drawn once per run and example (`fold_in(run_key, i)`), so each
    image is seen mirrored in every other epoch instead of in a random half of them.
    """
    base = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(run_key, i)))(rows)
    flip = base ^ (epoch % 2 == 1)
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def _airbench(key, images, *, epoch, rows, run_key, pad: int = 2):
    images = alternating_flip(images, epoch=epoch, rows=rows, run_key=run_key)
    offsets = jax.random.randint(key, (images.shape[0], 2), 0, 2 * pad + 1)
    return translate(images, offsets, pad)


# data.augment_policy -> policy. "crop_flip" is `augment` (zero pad 4, random crop,
# random flip); "airbench" is airbench94's (Jordan 2024): the alternating flip, then a
# random translation by up to 2 pixels each way, uniform over the 5 x 5 shifts, with
# reflect padding (airbench pads the pre-flipped images once and crops each epoch: the
# same distribution).
AUGMENTATIONS: Registry[AugmentPolicy] = Registry(
    "augmentation policy",
    {
        "crop_flip": AugmentPolicy(_crop_flip),
        "airbench": AugmentPolicy(_airbench, needs_rows=True),
    },
)


# ------------------------------------------------------------------ test-time augmentation


def _identity_views(images):
    return [(1.0, images)]


def _flip_views(images):
    return [(0.5, images), (0.5, images[:, :, ::-1, :])]


def _flip_translate_views(images):
    """airbench's tta_level=2: half the weight on the image and its mirror, the other half
    on both of them shifted by one pixel up-left and down-right (reflect padding)."""
    n = images.shape[0]
    views = [(0.5 * w, v) for w, v in _flip_views(images)]
    for offset in (0, 2):  # the crop's corner in the 1-pixel padded image: (-1, -1) and (+1, +1)
        shifted = translate(images, jnp.full((n, 2), offset, jnp.int32), 1)
        views += [(0.5 * w / 2, v) for w, v in _flip_views(shifted)]
    return views


# eval_tta -> views(images) -> [(weight, view)]; an evaluation's logits are
# sum(weight * model(view)). Weights sum to 1. "none" is the plain evaluation.
TTA: Registry[Callable[[jax.Array], list]] = Registry(
    "test-time augmentation",
    {"none": _identity_views, "flip": _flip_views, "flip_translate": _flip_translate_views},
)
