"""`data.image_size`: one size policy for every dataset, and the builder that applies it.

The policy (`fit`): scale each image so that it covers N x N, then crop the centre
(`PIL.ImageOps.fit`, bicubic with antialiasing). The aspect ratio is kept and the
borders of the longer side are cut; a square image is only scaled. `folder:PATH`
decodes its files through it, and every other dataset's arrays go through it too
(`fit_array`, `fit_images`), so an 8x8 digit, a 28x28 MNIST digit and a photo are
resized by the same function.

`Resized` prepares a resized copy of a prepared builder (`mnist`, `fashion_mnist`,
`cifar10`) as `array_record` files, so both loaders ("device" and "stream") read it.
Its cache key is the original's name, config and version, the size and `BUILD_FORMAT`:
each size is prepared once, beside the original, and never confused with it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from research.data import records
from research.data.tfds_builders.base import SourceBuilder

# Part of the cache key: bump it when the same originals would now give different pixels.
BUILD_FORMAT = 1
_BLOCK = 1024  # original records read at a time while preparing


def note(image_size: int) -> str:
    """The line a resized dataset's notes carry."""
    return f"images scaled to cover {image_size}x{image_size} and centre-cropped"


def fit(image, image_size: int):
    """The size policy on one Pillow image: cover `image_size` x `image_size`, crop the centre."""
    from PIL import Image, ImageOps  # noqa: PLC0415 - only resizing needs Pillow

    return ImageOps.fit(image, (image_size, image_size), Image.Resampling.BICUBIC)


def fit_array(pixels: np.ndarray, image_size: int) -> np.ndarray:
    """`fit` on one uint8 `(H, W, C)` image (C = 1 or 3) -> `(image_size, image_size, C)`."""
    from PIL import Image  # noqa: PLC0415

    channels = pixels.shape[-1]
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
    return np.asarray(fit(image, image_size), np.uint8).reshape(image_size, image_size, channels)


def fit_images(images: np.ndarray, image_size: int) -> np.ndarray:
    """`fit` on every uint8 `(N, H, W, C)` image -> `(N, image_size, image_size, C)`."""
    out = np.empty((len(images), image_size, image_size, images.shape[-1]), np.uint8)
    for i, pixels in enumerate(images):
        out[i] = fit_array(pixels, image_size)
    return out


def config_name(base, image_size: int) -> str:
    """The cache key of `base` (a prepared builder) at `image_size`."""
    config = base.builder_config.name if base.builder_config else "default"
    return f"{base.name}-{config}-{base.version}-{image_size}px-f{BUILD_FORMAT}"


class Resized(SourceBuilder, skip_registration=True):
    """A prepared builder's images resized by `fit`, labels and order unchanged.

    Args:
      base: the prepared original (a `SourceBuilder`), read record by record.
      image_size: the side N of the N x N images.
      **kwargs: passed to `SourceBuilder` (`data_dir` is the cache).
    """

    name = "research_resized"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "A prepared dataset resized by data.image_size's policy."}
    HOMEPAGE = ""
    CITATION = ""
    LICENSE = "the original dataset's"

    def __init__(self, *, base, image_size: int, **kwargs):
        self.base = base
        self.image_size = image_size
        # Per-instance features: the original's classes, the new size.
        self.CLASS_NAMES = tuple(base.info.features["label"].names)
        channels = int(base.info.features["image"].shape[-1])
        self.IMAGE_SHAPE = (image_size, image_size, channels)
        self.DESCRIPTION = f"{base.name} resized to {image_size}x{image_size}"
        config = tfds.core.BuilderConfig(
            name=config_name(base, image_size), description=self.DESCRIPTION
        )
        super().__init__(source_dir=None, config=config, **kwargs)

    def reads_local_files(self) -> bool:
        return True  # never downloads

    def _read_splits(self, dl_manager):
        raise NotImplementedError  # examples are generated block by block instead

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the original is prepared
        self.info.metadata["source"] = self.base.info.metadata.get("source", "unknown")
        self.info.metadata["resized_from"] = str(self.base.data_dir)
        return {split: self._generate(split) for split in self.base.info.splits}

    def _generate(self, split: str) -> Iterator:
        reader = records.RecordReader.for_split(self.base, split)
        ids = np.arange(len(reader))
        for start in range(0, len(ids), _BLOCK):
            images, labels = reader.read(ids[start : start + _BLOCK])
            for offset, (pixels, label) in enumerate(zip(images, labels, strict=True)):
                yield (
                    start + offset,
                    {
                        "image": fit_array(pixels, self.image_size),
                        "label": int(label),
                    },
                )
