"""The machinery shared by the importers: fill the zoo model's variables from named source arrays.

A converter walks the variables the zoo model *expects* (their paths and shapes,
from `jax.eval_shape` of `model.init`, nothing allocated), asks the source
family for the source's name of each one and its `Layout` (how the source
stores it), and converts. Everything is checked before anything is returned:
a source array that is missing, has the wrong shape, or is left over (a
different model's file) raises one `ValueError` line naming the parameter and
both shapes.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from research import models

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a source stores one of our arrays.

    Attributes:
      name: a short description for error messages ("OIHW", "HWIO", ...).
      source_shape: our shape -> the shape the source must have.
      to_ours: (source array, our shape) -> our array.
    """

    name: str
    source_shape: Callable[[Shape], Shape]
    to_ours: Callable[[np.ndarray, Shape], np.ndarray]


def _chw_to_hwc(array: np.ndarray, ours: Shape, channels: int) -> np.ndarray:
    # torch.flatten of (C, H, W) maps feature c*H*W + h*W + w; our Flatten of
    # (H, W, C) maps h*W*C + w*C + c. Reorder the input axis, then transpose.
    out = array.shape[0]
    hw = array.shape[1] // channels
    return array.reshape(out, channels, hw).transpose(2, 1, 0).reshape(ours)


# The same array in the same layout (BatchNorm vectors, biases, Keras kernels: HWIO / (in, out)).
SAME = Layout("same", lambda s: s, lambda a, s: a)
# PyTorch Conv2d.weight (out, in / groups, kh, kw) -> our HWIO kernel.
TORCH_CONV = Layout(
    "OIHW", lambda s: (s[3], s[2], s[0], s[1]), lambda a, s: a.transpose(2, 3, 1, 0)
)
# PyTorch Linear.weight (out, in) -> our Dense kernel (in, out).
TORCH_LINEAR = Layout("(out, in)", lambda s: (s[1], s[0]), lambda a, s: a.T)
# Keras DepthwiseConv2D / SeparableConv2D depthwise kernel (kh, kw, C, m) -> ours
# (kh, kw, 1, C * m), output channel c * m + k as in our DepthwiseConv2D. The
# expected source shape assumes depth multiplier 1 (every model imported here).
KERAS_DEPTHWISE = Layout(
    "(kh, kw, C, 1)", lambda s: (s[0], s[1], s[3], 1), lambda a, s: a.reshape(s)
)
# A Keras 1x1 Conv2D used as the classifier (MobileNet's conv_preds) -> our Dense kernel.
KERAS_1X1_AS_DENSE = Layout("(1, 1, in, out)", lambda s: (1, 1, *s), lambda a, s: a.reshape(s))


def torch_linear_after_flatten(channels: int) -> Layout:
    """PyTorch Linear.weight after `torch.flatten` of a (C, H, W) map -> our (H*W*C, out) kernel."""
    return Layout(
        f"(out, {channels}*H*W) in CHW order",
        lambda s: (s[1], s[0]),
        lambda a, s: _chw_to_hwc(a, s, channels),
    )


def expected_variables(
    name: str, overrides: Mapping[str, Any], input_shape: Sequence[int] | None
) -> tuple[Any, dict[str, Shape]]:
    """The zoo model (1000 classes) and `{"params/<path>": shape, "batch_stats/<path>": shape}`."""
    model = models.create(name, num_classes=1000, **dict(overrides))
    shape = tuple(input_shape or models.spec(name).paper_input_shape)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape), jnp.float32), train=False)
    )
    expected = {}
    for collection in ("params", "batch_stats"):
        flat = traverse_util.flatten_dict(dict(abstract.get(collection, {})), sep="/")
        expected.update({f"{collection}/{k}": tuple(v.shape) for k, v in flat.items()})
    return model, expected


def _shape(array) -> Shape:
    return tuple(int(d) for d in np.shape(array))


def assemble(
    where: str,
    expected: Mapping[str, Shape],
    plan: Mapping[str, tuple[str, Layout]],
    source: Mapping[str, Any],
    *,
    ignore: str = r"$^",
) -> dict[str, dict]:
    """Converts `source` per `plan` into `{"params": ..., "batch_stats": ...}` (float32).

    Args:
      where: "<source> <model>", the start of every error message.
      expected: our variables' paths and shapes (`expected_variables`).
      plan: our path -> (the source's key for it, its `Layout`), for every path in `expected`.
      source: the source's key -> array (anything `np.asarray` reads: NumPy, torch, jax).
      ignore: a regex of source keys that are allowed to be left over (e.g. BatchNorm's
        `num_batches_tracked`, GoogLeNet's auxiliary classifiers).

    Raises:
      ValueError: one line naming the first missing, misshapen or left-over array,
        its shape and the expected one, and how many other problems there are.
    """
    problems: list[str] = []
    flat: dict[str, np.ndarray] = {}
    for ours, shape in expected.items():
        key, layout = plan[ours]
        if key not in source:
            problems.append(
                f"{where}: the weights have no {key!r}, needed for {ours} "
                f"(shape {layout.source_shape(shape)}{_layout_note(layout, shape)})"
            )
            continue
        got = _shape(source[key])
        want = layout.source_shape(shape)
        if got != want:
            problems.append(
                f"{where}: {key!r} has shape {got} but {ours} needs {want}"
                f"{_layout_note(layout, shape)}"
            )
            continue
        array = np.asarray(_to_numpy(source[key]), dtype=np.float32)
        flat[ours] = np.ascontiguousarray(layout.to_ours(array, shape))
    used = {key for key, _ in plan.values()}
    ignored = re.compile(ignore)
    for key in source:
        if key not in used and not ignored.search(key):
            problems.append(
                f"{where}: the weights have {key!r} (shape {_shape(source[key])}), which the "
                f"zoo's model has no place for; is it the same model?"
            )
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(problems[0] + more)
    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for path, array in flat.items():
        collection, rest = path.split("/", 1)
        variables[collection][rest] = array
    return {k: traverse_util.unflatten_dict(v, sep="/") for k, v in variables.items()}


def _layout_note(layout: Layout, shape: Shape) -> str:
    return "" if layout is SAME else f" as {layout.name}, {shape} in the zoo's layout"


def _to_numpy(array):
    # torch tensors: detach from autograd and leave the device; everything else as is.
    if hasattr(array, "detach") and hasattr(array, "cpu"):
        return array.detach().cpu().numpy()
    return array


def module_and_leaf(path: str) -> tuple[str, str, str]:
    """ "params/stage1_block1/conv1/kernel" -> ("params", "stage1_block1/conv1", "kernel")."""
    collection, rest = path.split("/", 1)
    module, leaf = rest.rsplit("/", 1)
    return collection, module, leaf


def is_batch_norm(module: str, expected: Mapping[str, Shape]) -> bool:
    """True when our module `module` is a BatchNorm layer (it has running statistics)."""
    return f"batch_stats/{module}/mean" in expected


def rename(path: str, rules: Sequence[tuple[str, Any]], where: str) -> str:
    """Our module path -> the source's name, by the first matching `(regex, replacement)`.

    A replacement is a string (`re.sub` syntax) or a function of the match.
    """
    for pattern, replacement in rules:
        match = re.fullmatch(pattern, path)
        if match:
            return replacement(match) if callable(replacement) else match.expand(replacement)
    raise ValueError(f"{where}: no source name for the zoo's layer {path!r}")
