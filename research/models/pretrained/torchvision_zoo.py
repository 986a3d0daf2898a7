"""torchvision's ImageNet classifiers -> the zoo: names, layouts and published weights.

For every zoo layer the table below gives torchvision's module name; the leaf
names and layouts are the same for every model:

  ours                     torchvision                layout
  conv  kernel (HWIO)      Conv2d.weight (OIHW)       transposed
  dense kernel (in, out)   Linear.weight (out, in)    transposed; the first dense
                                                      layer after a flatten also
                                                      reorders (C, H, W) -> (H, W, C)
  bias                     .bias
  BatchNorm scale, bias    .weight, .bias             (params)
  BatchNorm mean, var      .running_mean, .running_var (batch_stats)

`num_batches_tracked` (a counter) and GoogLeNet's auxiliary classifiers
(`aux1`, `aux2`, present in the published file, used only in training) are
not imported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from research.models.pretrained import convert
from research.models.pretrained.preprocessing import Preprocessing, torchvision_default
from research.registry import Registry

_LEAF = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean"}
_LEAF["var"] = "running_var"
_IGNORE = r"(^|\.)num_batches_tracked$"
_URL = "https://download.pytorch.org/models/"


@dataclasses.dataclass(frozen=True)
class TorchvisionModel:
    """One zoo model as torchvision publishes it.

    Attributes:
      names: our module paths -> torchvision's module names (for every module).
      weights: the torchvision weights enum member of the published default weights.
      url: where torchvision downloads them from (its `weights.url`).
      preprocessing: the input those weights expect.
      flatten: `(dense layer, conv layer)`: the dense layer that follows torch.flatten
        of the conv layer's (C, H, W) output (AlexNet, VGG), or None.
      ignore: regex of state_dict keys that are not imported.
    """

    names: Callable[[Sequence[str]], dict[str, str]]
    weights: str
    url: str
    preprocessing: Preprocessing
    flatten: Callable[[Sequence[str]], tuple[str, str]] | None = None
    ignore: str = _IGNORE


def _by_rules(rules) -> Callable[[Sequence[str]], dict[str, str]]:
    def names(modules: Sequence[str]) -> dict[str, str]:
        return {m: convert.rename(m, rules, "torchvision") for m in modules}

    return names


def _alexnet_names(modules: Sequence[str]) -> dict[str, str]:
    table = {"conv1": "features.0", "conv2": "features.3", "conv3": "features.6"}
    table |= {"conv4": "features.8", "conv5": "features.10"}
    table |= {"dense1": "classifier.1", "dense2": "classifier.4", "head": "classifier.6"}
    return {m: table.get(m, m) for m in modules}


def _vgg_convs(modules: Sequence[str]) -> list[tuple[int, int]]:
    blocks = []
    for m in modules:
        if m.startswith("block"):
            i, j = m.removeprefix("block").split("_conv")
            blocks.append((int(i), int(j)))
    return sorted(blocks)


def _vgg_names(modules: Sequence[str]) -> dict[str, str]:
    # torchvision's `features` is one Sequential: conv, ReLU per conv, a max pool per block.
    table = {"dense1": "classifier.0", "dense2": "classifier.3", "head": "classifier.6"}
    index, previous_block = 0, None
    for i, j in _vgg_convs(modules):
        if previous_block is not None and i != previous_block:
            index += 1  # the max pool that ends the previous block
        table[f"block{i}_conv{j}"] = f"features.{index}"
        index += 2
        previous_block = i
    return {m: table.get(m, m) for m in modules}


def _vgg_flatten(modules: Sequence[str]) -> tuple[str, str]:
    i, j = _vgg_convs(modules)[-1]
    return "dense1", f"block{i}_conv{j}"


_GOOGLENET_BRANCH = {
    "branch1": "branch1",
    "branch2_reduce": "branch2.0",
    "branch2_conv": "branch2.1",
    "branch3_reduce": "branch3.0",
    "branch3_conv": "branch3.1",
    "branch4_proj": "branch4.1",  # branch4.0 is the max pool
}

_GOOGLENET = [
    (r"(conv[123])/(conv|bn)", r"\1.\2"),
    (
        r"(inception\d[a-e])/(\w+)/(conv|bn)",
        lambda m: f"{m[1]}.{_GOOGLENET_BRANCH[m[2]]}.{m[3]}",
    ),
    (r"head", "fc"),
]

_RESNET = [
    (r"stem_conv", "conv1"),
    (r"stem_bn", "bn1"),
    (r"stage(\d)_block(\d+)/proj_conv", lambda m: f"layer{m[1]}.{int(m[2]) - 1}.downsample.0"),
    (r"stage(\d)_block(\d+)/proj_bn", lambda m: f"layer{m[1]}.{int(m[2]) - 1}.downsample.1"),
    (r"stage(\d)_block(\d+)/(conv\d|bn\d)", lambda m: f"layer{m[1]}.{int(m[2]) - 1}.{m[3]}"),
    (r"head", "fc"),
]

_RESNET_PRE = torchvision_default()

MODELS: Registry[TorchvisionModel] = Registry(
    "torchvision model",
    {
        "alexnet": TorchvisionModel(
            _alexnet_names,
            "AlexNet_Weights.IMAGENET1K_V1",
            _URL + "alexnet-owt-7be5be79.pth",
            torchvision_default(),
            flatten=lambda modules: ("dense1", "conv5"),
        ),
        "vgg11": TorchvisionModel(
            _vgg_names,
            "VGG11_Weights.IMAGENET1K_V1",
            _URL + "vgg11-8a719046.pth",
            torchvision_default(),
            flatten=_vgg_flatten,
        ),
        "vgg16": TorchvisionModel(
            _vgg_names,
            "VGG16_Weights.IMAGENET1K_V1",
            _URL + "vgg16-397923af.pth",
            torchvision_default(),
            flatten=_vgg_flatten,
        ),
        "googlenet": TorchvisionModel(
            _by_rules(_GOOGLENET),
            "GoogLeNet_Weights.IMAGENET1K_V1",
            _URL + "googlenet-1378be20.pth",
            # torchvision builds the published GoogLeNet with transform_input=True: it maps
            # ImageNet-normalized input back to (x - 0.5) / 0.5 (the normalization of the
            # original TensorFlow weights) before conv1. Normalizing with 0.5 / 0.5 here
            # gives the zoo's network exactly that input.
            dataclasses.replace(
                torchvision_default(),
                mean=(0.5, 0.5, 0.5),
                std=(0.5, 0.5, 0.5),
                note="torchvision's transform_input=True: the network sees (x - 0.5) / 0.5",
            ),
            ignore=_IGNORE + r"|^aux[12]\.",
        ),
        "resnet18": TorchvisionModel(
            _by_rules(_RESNET),
            "ResNet18_Weights.IMAGENET1K_V1",
            _URL + "resnet18-f37072fd.pth",
            _RESNET_PRE,
        ),
        "resnet34": TorchvisionModel(
            _by_rules(_RESNET),
            "ResNet34_Weights.IMAGENET1K_V1",
            _URL + "resnet34-b627a593.pth",
            _RESNET_PRE,
        ),
        "resnet50": TorchvisionModel(
            _by_rules(_RESNET),
            "ResNet50_Weights.IMAGENET1K_V2",
            _URL + "resnet50-11ad3fa6.pth",
            torchvision_default(resize_size=232),
        ),
    },
)


def from_torchvision(
    name: str,
    state_dict: Mapping[str, Any],
    *,
    overrides: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
) -> dict[str, Any]:
    """torchvision weights -> variables of `research.models.create(name, num_classes=1000)`.

    Args:
      name: a zoo name: alexnet, vgg11, vgg16, googlenet, resnet18, resnet34, resnet50.
      state_dict: torchvision's parameter names -> arrays (torch tensors or NumPy),
        e.g. `torchvision.models.resnet18(weights=...).state_dict()`.
      overrides: constructor overrides of the zoo model (default: none, the published
        architecture).
      input_shape: `(H, W, C)` at which to trace the model for its shapes (default: the
        paper's); matters only for models whose parameters depend on it.

    Returns:
      `{"params": ..., "batch_stats": ...}` (float32 NumPy arrays), applied as
      `model.apply(variables, x_nhwc, train=False)`.

    Raises:
      ValueError: an unsupported name, or a weight that is missing, misshapen or left
        over (one line naming it and both shapes).
    """
    source = MODELS.get(name)
    where = f"torchvision {name}"
    _, expected = convert.expected_variables(name, overrides or {}, input_shape)
    modules = sorted({convert.module_and_leaf(p)[1] for p in expected})
    names = source.names(modules)
    flatten_dense, channels = None, 0
    if source.flatten is not None:
        flatten_dense, conv = source.flatten(modules)
        channels = expected[f"params/{conv}/kernel"][-1]
    plan = {}
    for path, shape in expected.items():
        _, module, leaf = convert.module_and_leaf(path)
        if leaf == "kernel" and len(shape) == 4:
            layout = convert.TORCH_CONV
        elif leaf == "kernel" and module == flatten_dense:
            layout = convert.torch_linear_after_flatten(channels)
        elif leaf == "kernel":
            layout = convert.TORCH_LINEAR
        else:
            layout = convert.SAME
        plan[path] = (f"{names[module]}.{_LEAF[leaf]}", layout)
    return convert.assemble(where, expected, plan, state_dict, ignore=source.ignore)
