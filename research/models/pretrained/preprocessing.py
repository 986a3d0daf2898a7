"""What a pretrained network expects of its input, and how a transfer run meets it.

Policy of a transfer run from imported weights (`transfer.pretrained=DIR` where
`DIR/pretrained.json` exists; `preprocessing_for(DIR)` reads it):

  * **Mean and std.** Pixels in [0, 1] are normalized with the *source's* mean
    and std (`normalize`), not with the target data's own statistics: the
    pretrained first layer was fitted to inputs normalized that way, and a
    different normalization shifts every feature it computes. For CIFAR-10 the
    two hardly differ (CIFAR mean 0.49, 0.48, 0.45 / std 0.25, 0.24, 0.26 against
    ImageNet's 0.485, 0.456, 0.406 / 0.229, 0.224, 0.225), for MNIST they would.
  * **Channel order.** RGB data is reversed to BGR for a source that was trained
    on BGR (Keras's VGG16, "caffe" preprocessing); mean and std are stated in the
    network's channel order.
  * **Channels.** Data with another channel count than the network (e.g.
    1-channel MNIST into an RGB network) cannot be used: `check_compatible` raises
    `ValueError` with one line saying so.
  * **Input size.** Not changed: the network runs at the target data's size (every
    imported model ends in a global or adaptive pooling, so any size large enough
    for its downsampling works). When the size differs from the source's,
    `check_compatible` returns a note saying so and by how much, because
    pretrained features are tuned to the scale of the source's objects (a 32x32
    CIFAR-10 image is ~1/7 of ImageNet's 224x224 crop). Resizing the data is a
    data-pipeline option, not something a transfer run does behind the config's back.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

RECORD_FILE = "pretrained.json"  # written by scripts/import_weights.py into the run folder

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, [0, 1] pixel units (torchvision's transforms)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """The input a pretrained network was trained on; see the module docstring for the policy.

    Attributes:
      input_size: `(H, W)` of the training crops (and of the published evaluation).
      resize_size: the shorter side images are resized to before the center crop in
        the source's evaluation (0: resized straight to `input_size`).
      mean, std: per input channel, in [0, 1] pixel units and in `channel_order`:
        the network sees `(pixel - mean) / std`.
      channel_order: "RGB" or "BGR".
      note: where the numbers come from, when they are not the source's plain defaults.
    """

    input_size: tuple[int, int]
    resize_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: str = "RGB"
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "channels": len(self.mean),
            "pixel_range": [0.0, 1.0],
        }


def torchvision_default(resize_size: int = 256, note: str = "") -> Preprocessing:
    """torchvision's `ImageClassification` transform: 224 crop, ImageNet mean/std, RGB."""
    return Preprocessing((224, 224), resize_size, IMAGENET_MEAN, IMAGENET_STD, "RGB", note)


def keras_tf_mode(size: int) -> Preprocessing:
    """Keras `preprocess_input(mode="tf")`: `x / 127.5 - 1`, i.e. mean 0.5, std 0.5 in [0, 1]."""
    return Preprocessing(
        (size, size), 0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "RGB", "Keras mode 'tf': x/127.5 - 1"
    )


def keras_caffe_mode(size: int) -> Preprocessing:
    """Keras `preprocess_input(mode="caffe")`: RGB -> BGR, minus the ImageNet mean in 0..255."""
    bgr_mean = (103.939, 116.779, 123.68)  # of 0..255 pixels, B, G, R
    return Preprocessing(
        (size, size),
        0,
        tuple(m / 255.0 for m in bgr_mean),
        (1 / 255.0,) * 3,  # no scaling in 0..255 units is a std of 1/255 in [0, 1] units
        "BGR",
        "Keras mode 'caffe': BGR, minus the ImageNet mean of 0..255 pixels, not scaled",
    )


def preprocessing_for(workdir: str) -> dict[str, Any] | None:
    """The preprocessing recorded in `workdir/pretrained.json`, or None for one of our own runs.

    Raises:
      ValueError: the record exists but has no usable "preprocessing" entry.
    """
    path = os.path.join(workdir, RECORD_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        record = json.load(f)
    pre = record.get("preprocessing") if isinstance(record, dict) else None
    needed = {"input_size", "mean", "std", "channel_order"}
    if not isinstance(pre, dict) or not needed <= set(pre):
        raise ValueError(
            f"{path}: no 'preprocessing' entry with {sorted(needed)}; re-run "
            f"scripts/import_weights.py to write it"
        )
    return pre


def check_compatible(preprocessing: dict[str, Any], input_shape: Sequence[int]) -> list[str]:
    """Whether data of `input_shape` `(H, W, C)` can go into the pretrained network.

    Returns:
      Notes for the run's log (empty when the data matches the source exactly),
      e.g. the input-size policy when the sizes differ.

    Raises:
      ValueError: one line, when the data cannot be used (another channel count).
    """
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (H, W, C), got {tuple(input_shape)}")
    h, w, c = (int(d) for d in input_shape)
    channels = len(preprocessing["mean"])
    order = preprocessing["channel_order"]
    if c != channels:
        raise ValueError(
            f"the pretrained network takes {channels}-channel {order} images but the data has "
            f"{c} channel{'s' if c != 1 else ''} ({h}x{w}x{c}): use {channels}-channel data "
            f"(e.g. cifar10, not mnist) or train from scratch"
        )
    notes = []
    if order == "BGR":
        notes.append("channels reversed RGB -> BGR, as the source network expects")
    sh, sw = preprocessing["input_size"]
    if (h, w) != (sh, sw):
        notes.append(
            f"the data is {h}x{w}, the source network was trained on {sh}x{sw} crops: it runs "
            f"at {h}x{w} (no resizing), so its features see objects at ~{h / sh:.2g}x the "
            f"scale they were trained on"
        )
    return notes


def normalization(preprocessing: dict[str, Any], source: str = "the pretrained network"):
    """The data pipeline's `Normalization` for a recorded preprocessing (see the policy)."""
    from research.data import pipeline  # heavy (TFDS): importing weights needs no dataset

    channels = len(preprocessing["mean"])
    order = tuple(reversed(range(channels))) if preprocessing["channel_order"] == "BGR" else None
    return pipeline.Normalization(
        mean=tuple(float(m) for m in preprocessing["mean"]),
        std=tuple(float(s) for s in preprocessing["std"]),
        channels=order,
        source=source,
    )


def normalize(pixels: np.ndarray, preprocessing: dict[str, Any]) -> np.ndarray:
    """uint8 `(N, H, W, C)` RGB pixels -> what the pretrained network expects (float32).

    The data pipeline's own normalization (`pipeline.normalize`), as a transfer run uses it.
    """
    from research.data import pipeline  # heavy (TFDS): importing weights needs no dataset

    n = normalization(preprocessing)
    return pipeline.normalize(
        np.asarray(pixels), pipeline.normalize_table(n.mean, n.std), n.channels
    )
