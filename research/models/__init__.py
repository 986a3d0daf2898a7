"""The model zoo: one file per family, one line per model in `MODELS` below.

Contract for every model (a Flax linen module):
  * Constructed as `Model(num_classes=..., **overrides)` (reconstruction models
    ignore `num_classes`), called as `model.apply(variables, x, train=...)` on
    NHWC float inputs; classifiers return logits `(N, num_classes)`,
    reconstruction models return an image of `x`'s shape.
  * Every submodule is named, so parameter paths are stable and can be matched
    by regex for freezing and transfer. The layers in network order are
    `conv*`/`dense*`-style names; see each model's docstring.
  * Named feature maps (`conv1_out`, ... after each conv block, and the penultimate features as
    "features") are `sow`n into the "features" collection for probes and
    feature-map plots: `model.apply(v, x, mutable=["features"])`. (Not
    "intermediates": that is where Flax's `capture_intermediates` writes.)
  * The final classification layer is named "head", so transfer learning can
    replace it by name.
  * BatchNorm statistics live in the "batch_stats" collection; dropout draws
    from the "dropout" rng.

To add a model: write `research/models/<family>.py` and add one `ModelSpec`
line here. The registry-parametrized tests then init it, apply it at small and
paper input sizes, check its output shape and parameter count, and take one
gradient step with it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn

from research.models import (
    airbench,
    alexnet,
    autoencoder,
    googlenet,
    lecture_cnn,
    lenet,
    mlp,
    resnet,
    simple_cnn,
    vgg,
    xception,
)
from research.models.pretrained import from_keras, from_torchvision
from research.models.summary import layer_table, summary
from research.registry import Registry


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to build a model and at which sizes it is defined.

    Attributes:
      build: the module class (or a `functools.partial` of it).
      paper_input_shape: `(H, W, C)` of the published configuration.
      paper_num_classes: classes of the published configuration.
      small_overrides: constructor overrides that make the model work on
        28x28x1 and 32x32x3 inputs (e.g. a CIFAR stem); `{}` if none are needed.
      task: "classify" (logits, cross-entropy) or "reconstruct" (an image, MSE).
    """

    build: Callable[..., nn.Module]
    paper_input_shape: tuple[int, int, int]
    paper_num_classes: int = 1000
    small_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    task: str = "classify"


MODELS: Registry[ModelSpec] = Registry(
    "model",
    {
        "mlp": ModelSpec(mlp.MLP, (28, 28, 1), 10),
        "lenet5": ModelSpec(lenet.LeNet5, (32, 32, 1), 10, small_overrides={"padding": 2}),
        "lecture_cnn": ModelSpec(lecture_cnn.LectureCNN, (28, 28, 1), 10),
        "simple_cnn": ModelSpec(simple_cnn.SimpleCNN, (8, 8, 1), 10),
        # -- more families: one line each below this marker --
        "alexnet": ModelSpec(alexnet.AlexNet, (224, 224, 3), small_overrides=alexnet.SMALL_INPUTS),
        "vgg11": ModelSpec(vgg.VGG11, (224, 224, 3), small_overrides=vgg.SMALL_INPUTS),
        "vgg16": ModelSpec(vgg.VGG16, (224, 224, 3), small_overrides=vgg.SMALL_INPUTS),
        "conv_autoencoder": ModelSpec(autoencoder.ConvAutoencoder, (28, 28, 1), task="reconstruct"),
        "googlenet": ModelSpec(
            googlenet.GoogLeNet, (224, 224, 3), small_overrides=googlenet.SMALL_INPUTS
        ),
        "resnet18": ModelSpec(resnet.ResNet18, (224, 224, 3), small_overrides=resnet.SMALL_INPUTS),
        "resnet34": ModelSpec(resnet.ResNet34, (224, 224, 3), small_overrides=resnet.SMALL_INPUTS),
        "resnet50": ModelSpec(resnet.ResNet50, (224, 224, 3), small_overrides=resnet.SMALL_INPUTS),
        "xception": ModelSpec(
            xception.Xception, (299, 299, 3), small_overrides=xception.SMALL_INPUTS
        ),
        "airbench": ModelSpec(airbench.Airbench, (32, 32, 3), 10),
    },
)


def names() -> tuple[str, ...]:
    """The registered model names."""
    return MODELS.names()


def spec(name: str) -> ModelSpec:
    """The `ModelSpec` of `name`; unknown names raise an error listing the known ones."""
    return MODELS.get(name)


def create(name: str, *, num_classes: int, **overrides: Any) -> nn.Module:
    """Builds model `name` for `num_classes` classes.

    Args:
      name: a name from `names()`.
      num_classes: output classes (ignored by reconstruction models).
      **overrides: constructor fields, e.g. `cifar_stem=True` or `dtype=jnp.bfloat16`.

    Raises:
      ValueError: unknown name, `num_classes < 1`, or an override the model does not have.
    """
    model_spec = MODELS.get(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    fields = _fields(model_spec.build)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"model {name!r} has no field(s) {unknown}; "
            f"valid overrides: {sorted(fields - {'name', 'parent'})}"
        )
    kwargs = dict(overrides)
    if "num_classes" in fields:
        kwargs["num_classes"] = num_classes
    return model_spec.build(**kwargs)


def _fields(build) -> set[str]:
    cls = getattr(build, "func", build)  # functools.partial -> class
    return {f.name for f in dataclasses.fields(cls)}


def param_count(variables_or_params: Mapping[str, Any]) -> int:
    """Number of trainable parameters: the `params` collection if present, else the tree.

    Works on real arrays and on `jax.eval_shape` results (nothing is allocated).
    """
    import jax

    tree = variables_or_params
    if isinstance(tree, Mapping) and "params" in tree:
        tree = tree["params"]
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


__all__ = [
    "MODELS",
    "ModelSpec",
    "create",
    "from_keras",
    "from_torchvision",
    "layer_table",
    "names",
    "param_count",
    "spec",
    "summary",
]
