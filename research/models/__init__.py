"""The model zoo: one file per family, one `ModelSpec` entry per model in `MODELS` below.

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
entry to `MODELS` below, with its trainable-parameter count at the paper's
configuration and where that number comes from (a cited source, or "by
formula: ..." with the arithmetic), and, for a deep network, the overrides of a
small stand-in. `tests/models/test_models.py` is parametrized over `MODELS`, so a new
entry is tested with no edit in `tests/`:

  * fast tier (`make test`): output shape and parameter count at the paper's
    configuration, through `jax.eval_shape` (nothing is compiled); on the
    stand-in at 28x28x1, compiled: a forward pass, and one gradient step that
    lowers the loss, with a finite, nonzero gradient for every parameter.
  * full tier (`make test-all`): init, apply and gradient steps with the real
    `small_overrides` at 28x28x1 and 32x32x3.

`check_input(name, model, input_shape)` says, before anything is compiled,
whether a model takes an input size, and if not the smallest square one it takes.
It also refuses an input the model shrinks to 1x1 almost at once (`COLLAPSED_SHARE`),
which it would accept but could not learn from.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers.modules import Conv2D, DepthwiseConv2D
from research.models import (
    airbench,
    alexnet,
    autoencoder,
    googlenet,
    lecture_cnn,
    lenet,
    mlp,
    mobilenet,
    resnet,
    se_resnet,
    simple_cnn,
    vgg,
    xception,
)
from research.models.scan import scan_groups, stack_blocks, unstack_blocks
from research.models.summary import layer_table, summary
from research.registry import Registry

BY_FORMULA = "by formula"  # how `params_source` starts when the count is worked out by hand


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to build a model, at which sizes it is defined, and what its tests check.

    Attributes:
      build: the module class (or a `functools.partial` of it).
      paper_input_shape: `(H, W, C)` of the published configuration.
      paper_num_classes: classes of the published configuration.
      trainable_params: trainable parameters (the "params" collection; BatchNorm
        running statistics do not count) at `paper_input_shape` and
        `paper_num_classes` with no overrides.
      params_source: where `trainable_params` comes from: a cited source
        ("torchvision resnet18 docs, ..."), or "by formula: ..." followed by the
        arithmetic, layer by layer.
      small_overrides: constructor overrides that make the model work on
        28x28x1 and 32x32x3 inputs (e.g. a CIFAR stem); `{}` if none are needed.
      stand_in: further overrides (on top of `small_overrides`) for a small
        stand-in that the fast test tier compiles and trains one step: fewer
        blocks and narrow widths that still use every block type of the family.
        `{}`: the model is its own stand-in (shallow models).
      task: "classify" (logits, cross-entropy) or "reconstruct" (an image, MSE).
    """

    build: Callable[..., nn.Module]
    paper_input_shape: tuple[int, int, int]
    _: dataclasses.KW_ONLY
    paper_num_classes: int = 1000
    trainable_params: int
    params_source: str
    small_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    stand_in: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    task: str = "classify"


MODELS: Registry[ModelSpec] = Registry(
    "model",
    {
        "mlp": ModelSpec(
            mlp.MLP,
            (28, 28, 1),
            paper_num_classes=10,
            trainable_params=784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10,
            params_source=f"{BY_FORMULA}: 784*256+256 + 256*128+128 + 128*10+10",
        ),
        # LeNet-5 with full C3 connectivity at 32x32x1: 156 + 2,416 + 48,120 + 10,164 + 850
        # (d2l.ai "Convolutional Neural Networks (LeNet)"; LeCun et al. 1998 quote ~60,000).
        "lenet5": ModelSpec(
            lenet.LeNet5,
            (32, 32, 1),
            paper_num_classes=10,
            trainable_params=61_706,
            params_source="d2l.ai LeNet, 32x32 input",
            small_overrides={"padding": 2},
        ),
        # The lecture notes' Keras model.summary() of this network at 28x28x1, 10 classes.
        "lecture_cnn": ModelSpec(
            lecture_cnn.LectureCNN,
            (28, 28, 1),
            paper_num_classes=10,
            trainable_params=538_698,
            params_source="lecture notes 003 (Keras CNN), Keras summary",
        ),
        "simple_cnn": ModelSpec(
            simple_cnn.SimpleCNN,
            (8, 8, 1),
            paper_num_classes=10,
            trainable_params=320 + 18_496 + 32_896 + 1_290,
            params_source=(
                f"{BY_FORMULA}: conv1 3*3*1*32+32, conv2 3*3*32*64+64, "
                "dense1 (2*2*64)*128+128, head 128*10+10"
            ),
        ),
        "conv_autoencoder": ModelSpec(
            autoencoder.ConvAutoencoder,
            (28, 28, 1),
            paper_num_classes=10,
            trainable_params=320 + 18_496 + 100_384 + 103_488 + 18_464 + 289,
            params_source=(
                f"{BY_FORMULA}: at 28x28x1, latent 32: encoder conv1 3*3*1*32+32 = 320 "
                "(-> 14x14x32), conv2 3*3*32*64+64 = 18,496 (-> 7x7x64), latent "
                "(7*7*64)*32+32 = 100,384; decoder dense1 32*(7*7*64)+7*7*64 = 103,488, "
                "conv1 3*3*64*32+32 = 18,464 (14x14), conv2 3*3*32*1+1 = 289 (28x28)"
            ),
            task="reconstruct",
        ),
        # -- more families: one entry each below this marker --
        # torchvision docs (AlexNet_Weights / VGG*_Weights.IMAGENET1K_V1 "num_params"), 224x224x3.
        "alexnet": ModelSpec(
            alexnet.AlexNet,
            (224, 224, 3),
            trainable_params=61_100_840,
            params_source="torchvision alexnet docs, 224x224x3, 1000 classes",
            small_overrides=alexnet.SMALL_INPUTS,
            stand_in=alexnet.STAND_IN,
        ),
        "vgg11": ModelSpec(
            vgg.VGG11,
            (224, 224, 3),
            trainable_params=132_863_336,
            params_source="torchvision vgg11 docs, 224x224x3, 1000 classes",
            small_overrides=vgg.SMALL_INPUTS,
            stand_in=vgg.STAND_IN,
        ),
        "vgg16": ModelSpec(
            vgg.VGG16,
            (224, 224, 3),
            trainable_params=138_357_544,
            params_source="torchvision vgg16 docs, 224x224x3, 1000 classes",
            small_overrides=vgg.SMALL_INPUTS,
            stand_in=vgg.STAND_IN,
        ),
        # torchvision docs (GoogLeNet_Weights / ResNet*_Weights.IMAGENET1K_V1 "num_params"),
        # 224x224x3: GoogLeNet without the auxiliary classifiers; BN scale and bias count,
        # running statistics do not (they are buffers in PyTorch, "batch_stats" here).
        "googlenet": ModelSpec(
            googlenet.GoogLeNet,
            (224, 224, 3),
            trainable_params=6_624_904,
            params_source="torchvision googlenet docs, 224x224x3, 1000 classes",
            small_overrides=googlenet.SMALL_INPUTS,
            stand_in=googlenet.STAND_IN,
        ),
        "resnet18": ModelSpec(
            resnet.ResNet18,
            (224, 224, 3),
            trainable_params=11_689_512,
            params_source="torchvision resnet18 docs, 224x224x3, 1000 classes",
            small_overrides=resnet.SMALL_INPUTS,
            stand_in=resnet.STAND_IN,
        ),
        "resnet34": ModelSpec(
            resnet.ResNet34,
            (224, 224, 3),
            trainable_params=21_797_672,
            params_source="torchvision resnet34 docs, 224x224x3, 1000 classes",
            small_overrides=resnet.SMALL_INPUTS,
            stand_in=resnet.STAND_IN,
        ),
        "resnet50": ModelSpec(
            resnet.ResNet50,
            (224, 224, 3),
            trainable_params=25_557_032,
            params_source="torchvision resnet50 docs, 224x224x3, 1000 classes",
            small_overrides=resnet.SMALL_INPUTS,
            stand_in=resnet.BOTTLENECK_STAND_IN,
        ),
        # Keras Applications Xception, model.summary() at 299x299x3, 1000 classes: total
        # 22,910,480 = trainable 22,855,952 + 54,528 BN moving means/variances (non-trainable).
        "xception": ModelSpec(
            xception.Xception,
            (299, 299, 3),
            trainable_params=22_855_952,
            params_source="Keras Applications Xception summary: trainable params",
            small_overrides=xception.SMALL_INPUTS,
            stand_in=xception.STAND_IN,
        ),
        # ResNet-18 plus one squeeze-excite gate (r = 16) per block, two blocks per stage.
        "se_resnet18": ModelSpec(
            se_resnet.SEResNet18,
            (224, 224, 3),
            trainable_params=11_689_512 + 2 * (580 + 2_184 + 8_464 + 33_312),
            params_source=(
                f"{BY_FORMULA}: resnet18's 11,689,512 (torchvision docs) + one SE gate per block, "
                "2 blocks per stage: C*(C/16) + C/16 + (C/16)*C + C = 580, 2,184, 8,464, 33,312 "
                "for C = 64, 128, 256, 512: 11,689,512 + 2 * 44,540 = 11,778,592"
            ),
            small_overrides=resnet.SMALL_INPUTS,
            stand_in=resnet.STAND_IN,
        ),
        # Keras Applications MobileNet (alpha 1, depth_multiplier 1, include_top) at
        # 224x224x3, 1000 classes: trainable 4,231,976; BN moving means/variances are
        # non-trainable there and live in "batch_stats" here.
        "mobilenet_v1": ModelSpec(
            mobilenet.MobileNetV1,
            (224, 224, 3),
            trainable_params=4_231_976,
            params_source="Keras Applications MobileNet",
            small_overrides=mobilenet.SMALL_INPUTS,
            stand_in=mobilenet.STAND_IN,
        ),
        "airbench": ModelSpec(
            airbench.Airbench,
            (32, 32, 3),
            paper_num_classes=10,
            trainable_params=1_971_640,
            # At 32x32x3: whiten 2*2*3*24+24 = 312; block1 3*3*24*64 + 3*3*64*64 + 2*64
            # (BatchNorm biases; no scales) = 50,816; block2 3*3*64*256 + 3*3*256*256 +
            # 2*256 = 737,792; block3 2*3*3*256*256 + 2*256 = 1,180,160; head 256*10
            # (no bias) = 2,560.
            params_source=(
                "by formula: 312 + 50,816 + 737,792 + 1,180,160 + 2,560 (airbench94's net)"
            ),
            stand_in={"widths": (8, 16, 16)},
        ),
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
    tree = variables_or_params
    if isinstance(tree, Mapping) and "params" in tree:
        tree = tree["params"]
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


# An input is refused when at least this share of the model's convolutions would see a
# 1x1 feature map: a kernel there sees one pixel (the rest is padding), so the network is
# a stack of dense layers on a single pixel. GoogLeNet and Xception on 8x8 digits (95%
# and 98%) trained at chance; ResNet-18 there (65%) and GoogLeNet on 28x28 (74%) learn.
COLLAPSED_SHARE = 0.9
_CONVS = (Conv2D, DepthwiseConv2D)


def _init_error(
    model: nn.Module, input_shape: tuple[int, ...], sides: list | None = None
) -> Exception | None:
    """The error `model.init` raises on a batch of one `input_shape` input, traced only.

    With `sides`, appends the (H, W) input of every convolution the trace meets.
    """
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}

    def record(call, args, kwargs, context):
        if isinstance(context.module, _CONVS) and context.method_name == "__call__" and args:
            sides.append(tuple(args[0].shape[1:3]))
        return call(*args, **kwargs)

    try:
        if sides is None:
            jax.eval_shape(lambda x: model.init(rngs, x), x)
        else:
            with nn.intercept_methods(record):
                jax.eval_shape(lambda x: model.init(rngs, x), x)
    except (ValueError, TypeError) as err:  # our layers' checks; jax.lax's shape errors
        return err
    return None


def check_input(name: str, model: nn.Module, input_shape: Sequence[int]) -> None:
    """Raises ValueError, in one line, if `model` cannot take `(H, W, C)` inputs.

    Nothing is compiled: the check is one `jax.eval_shape` of `model.init`. When
    it fails, square inputs `(s, s, C)` are traced the same way to find the
    smallest side `s` the model accepts, by bisection up to the larger of the
    input's sides and the registry's paper size (doubled while it fails, up to
    16x): every layer's output size is non-decreasing in its input size, so
    larger inputs fit wherever smaller ones do. The message names the model, the
    input shape and that smallest size, e.g. "model 'mobilenet_v1' cannot take
    input (8, 8, 1): its smallest input is 31x31"; where no size up to the limit
    works (the failure is not about size), it gives the model's own error. The
    original error is chained (`__cause__`). An input the model accepts is still
    refused when at least `COLLAPSED_SHARE` of its convolutions would see a 1x1
    feature map (it could not learn from it).

    Args:
      name: the model's name, for the message.
      model: the model as it will run (with its overrides).
      input_shape: `(H, W, C)` of one example.
    """
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1 for d in shape
    ):
        raise ValueError(f"input_shape must be (H, W, C) of ints >= 1, got {input_shape!r}")
    shape = tuple(int(d) for d in shape)
    sides: list[tuple[int, int]] = []
    error = _init_error(model, shape, sides)
    if error is None:
        collapsed = sum(1 for side in sides if side == (1, 1))
        if sides and collapsed >= COLLAPSED_SHARE * len(sides):
            raise ValueError(
                f"model {name!r} cannot learn from input {shape}: {collapsed} of its "
                f"{len(sides)} convolutions would see a 1x1 feature map (refused from "
                f"{COLLAPSED_SHARE:.0%} on); {_fixes(name, model, shape)}"
            )
        return
    channels = shape[2]
    hi = max(shape[:2], default=1)
    if name in MODELS:
        hi = max(hi, *MODELS.get(name).paper_input_shape[:2])
    for _ in range(5):
        if _init_error(model, (hi, hi, channels)) is None:
            break
        hi *= 2
    else:  # no size works: the error is not about the input (e.g. a bad setting)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{reason} (building model {name!r})") from error
    lo = 0  # invariant: side lo fails (or is 0), side hi works
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _init_error(model, (mid, mid, channels)) is None:
            hi = mid
        else:
            lo = mid
    raise ValueError(
        f"model {name!r} cannot take input {shape}: its smallest input is {hi}x{hi}; "
        f"{_fixes(name, model, shape)}"
    ) from error


def _usable(model: nn.Module, shape: tuple[int, int, int]) -> bool:
    """Whether `check_input` would accept `shape` (taken, and not collapsed to 1x1)."""
    sides: list[tuple[int, int]] = []
    if _init_error(model, shape, sides) is not None:
        return False
    return not sides or sum(1 for s in sides if s == (1, 1)) < COLLAPSED_SHARE * len(sides)


def smallest_usable_size(model: nn.Module, channels: int, limit: int = 4096) -> int | None:
    """The smallest side `s` at which `model` takes `(s, s, channels)` and can learn (traced).

    Layers' output sizes grow with their input's, so usability is monotone in `s`:
    doubling finds a usable side, bisection the smallest. None: none up to `limit`.
    """
    hi = 8
    while not _usable(model, (hi, hi, channels)):
        hi *= 2
        if hi > limit:
            return None
    lo = 0  # invariant: side lo is unusable (or 0), side hi is usable
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _usable(model, (mid, mid, channels)) else (mid, hi)
    return hi


def _override_flags(overrides: Mapping[str, Any]) -> str:
    return " ".join(f"config.model.overrides.{k}={v}" for k, v in overrides.items())


def _fixes(name: str, model: nn.Module, shape: tuple[int, int, int]) -> str:
    """What makes `shape` work: the resize (`data.image_size`) and the small-input overrides,
    as `config.FIELD=VALUE` (a flag `--config.FIELD=VALUE` on the command line, an
    assignment in Python)."""
    channels = shape[2]
    fixes = []
    size = smallest_usable_size(model, channels)
    if size is not None:
        fixes.append(f"resize the data with config.data.image_size={size} (or larger)")
    small = dict(MODELS.get(name).small_overrides) if name in MODELS else {}
    if small and any(getattr(model, k, None) != v for k, v in small.items()):
        small_model = model.clone(**small)
        if _usable(small_model, shape):
            fixes.append(f"use the model's small-input overrides {_override_flags(small)}")
        else:
            small_size = smallest_usable_size(small_model, channels)
            if small_size is not None and small_size != size:
                fixes.append(
                    f"use the model's small-input overrides {_override_flags(small)} with "
                    f"config.data.image_size={small_size}"
                )
    return "fix: " + ", or ".join(fixes) if fixes else "use larger images"


__all__ = [
    "BY_FORMULA",
    "MODELS",
    "ModelSpec",
    "check_input",
    "create",
    "layer_table",
    "names",
    "param_count",
    "scan_groups",
    "spec",
    "stack_blocks",
    "summary",
    "unstack_blocks",
]
