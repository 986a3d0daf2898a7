"""Augmentation: of training batches, and the test-time views of an evaluation.

* `augment` is the CIFAR recipe (random crop after 4-pixel zero padding, and a
  horizontal flip with probability 1/2), in JAX, so it runs on the device
  inside the jitted step; `augment_host` is the same recipe in numpy for the
  streaming loader's worker processes (`data.augment_on = "host"`).
* `AUGMENTATIONS` names the on-device policies `data.augment_policy` chooses
  from (`crop_flip`, the recipe above, and `airbench`'s alternating flip with
  a reflect-padded translation).
* `TTA` names the test-time augmentations of `eval_tta` (the views an
  evaluation averages the logits over).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from research.registry import Registry


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
