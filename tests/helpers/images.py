"""Image folders written for the `folder:PATH` dataset tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_image_folder(
    root: Path,
    *,
    classes=("cat", "dog", "eel"),
    per_class=40,
    size=(8, 8),
    mode="RGB",
    split="train",
    suffix=".png",
    seed=0,
) -> dict:
    """Writes random images to root/<split>/<class>/NNN<suffix> (a `folder:PATH` dataset).

    `per_class` is a count or one count per class; `size` is (width, height).
    Returns {relative path: uint8 pixels as written}, the reference for lossless formats.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    counts = per_class if isinstance(per_class, (tuple, list)) else [per_class] * len(classes)
    channels = {"RGB": (3,), "L": ()}[mode]
    written = {}
    for name, count in zip(classes, counts, strict=True):
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size[1], size[0], *channels), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}{suffix}")
            written[f"{split}/{name}/{i:03d}{suffix}"] = pixels
    return written
