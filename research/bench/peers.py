"""The benchmarked zoo models, written once as a layer list that each peer framework builds.

`scripts/bench.py` times "ours" on the zoo's own model (`research.models.create`);
the peers (plain Flax, PyTorch, Keras) cannot run a Flax module, so each builds
the same network from `BENCH_MODELS[name].layers`, a framework-neutral list:

    Conv(features, kernel, padding)   stride 1; padding in pixels on each side
    Relu()
    MaxPool(window)                   stride = window
    Flatten()                         row-major (H, W, C), as the zoo's Flatten
    Dense(features)
    Dropout(rate)

The list is a second description of a zoo model, so it is checked against the
zoo: `check_param_count` compares each peer's parameter count with
`research.models.param_count` of the zoo model and raises on any difference
(a wrong width or kernel size shows up there; the layers without parameters,
activations and pools, are what the list states).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

INPUT_SHAPE = (28, 28, 1)  # (H, W, C) of one example, as MNIST
NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Conv:
    features: int
    kernel: int
    padding: int = 0  # pixels of zeros on each side


@dataclasses.dataclass(frozen=True)
class Relu:
    pass


@dataclasses.dataclass(frozen=True)
class MaxPool:
    window: int  # stride = window


@dataclasses.dataclass(frozen=True)
class Flatten:
    pass


@dataclasses.dataclass(frozen=True)
class Dense:
    features: int


@dataclasses.dataclass(frozen=True)
class Dropout:
    rate: float


Layer = Conv | Relu | MaxPool | Flatten | Dense | Dropout


@dataclasses.dataclass(frozen=True)
class BenchModel:
    """A zoo model at the benchmark's input, and the same network as a layer list.

    Attributes:
      overrides: constructor overrides of `research.models.create` (e.g. LeNet-5's
        `padding=2` for 28x28 inputs).
      layers: the network for the peer frameworks; the last Dense is the head.
    """

    overrides: Mapping[str, Any]
    layers: tuple[Layer, ...]


BENCH_MODELS: dict[str, BenchModel] = {
    "lenet5": BenchModel(
        {"padding": 2},
        (
            Conv(6, 5, padding=2),
            Relu(),
            MaxPool(2),
            Conv(16, 5),
            Relu(),
            MaxPool(2),
            Flatten(),
            Dense(120),
            Relu(),
            Dense(84),
            Relu(),
            Dense(NUM_CLASSES),
        ),
    ),  # fmt: skip
    "lecture_cnn": BenchModel(
        {},
        (
            Conv(32, 5, padding=2),
            Relu(),
            MaxPool(2),  # Keras padding="same" at 5x5
            Conv(64, 5),
            Relu(),
            Conv(128, 5),
            Relu(),
            Conv(64, 5),
            Relu(),
            MaxPool(2),
            Flatten(),
            Dense(1024),
            Relu(),
            Dropout(0.1),
            Dense(NUM_CLASSES),
        ),
    ),  # fmt: skip
}


def zoo_model(name: str):
    """The zoo's own model of benchmark `name` ("ours")."""
    from research import models  # lazy: this module stays framework-free (see the peers)

    return models.create(name, num_classes=NUM_CLASSES, **BENCH_MODELS[name].overrides)


def zoo_param_count(name: str) -> int:
    """Trainable parameters of the zoo model at `INPUT_SHAPE` (shapes only, nothing allocated)."""
    # lazy: this module stays framework-free; each builder loads only its framework
    import jax
    import jax.numpy as jnp

    from research import models

    model = zoo_model(name)
    x = jax.ShapeDtypeStruct((1, *INPUT_SHAPE), jnp.float32)
    return models.param_count(jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x))


def check_param_count(name: str, framework: str, count: int) -> None:
    """Raises `ValueError` unless a peer's parameter count equals the zoo model's."""
    want = zoo_param_count(name)
    if count != want:
        raise ValueError(
            f"{framework} {name} has {count:,} parameters, the zoo's {name} {want:,}: "
            f"research/bench/peers.py BENCH_MODELS[{name!r}] no longer describes the zoo model"
        )


def _shapes(layers, input_shape=INPUT_SHAPE):
    """(layer, input (H, W, C) or (features,)) pairs: what each builder needs to size layers."""
    shape = tuple(input_shape)
    for layer in layers:
        yield layer, shape
        if isinstance(layer, Conv):
            grow = 2 * layer.padding - layer.kernel + 1  # stride 1: n + 2p - f + 1
            shape = (shape[0] + grow, shape[1] + grow, layer.features)
        elif isinstance(layer, MaxPool):
            h, w, c = shape
            shape = (h // layer.window, w // layer.window, c)
        elif isinstance(layer, Flatten):
            shape = (shape[0] * shape[1] * shape[2],)
        elif isinstance(layer, Dense):
            shape = (layer.features,)


def torch_model(name: str):
    """`torch.nn.Sequential` of benchmark `name` (NCHW inputs)."""
    from torch import nn  # optional (requirements-bench.txt)

    modules = []
    for layer, shape in _shapes(BENCH_MODELS[name].layers):
        if isinstance(layer, Conv):
            modules.append(nn.Conv2d(shape[2], layer.features, layer.kernel, padding=layer.padding))
        elif isinstance(layer, Relu):
            modules.append(nn.ReLU())
        elif isinstance(layer, MaxPool):
            modules.append(nn.MaxPool2d(layer.window))
        elif isinstance(layer, Flatten):
            modules.append(nn.Flatten())  # (C, H, W) order: the same sizes and cost
        elif isinstance(layer, Dense):
            modules.append(nn.Linear(shape[0], layer.features))
        elif isinstance(layer, Dropout):
            modules.append(nn.Dropout(layer.rate))
    return nn.Sequential(*modules)


def keras_model(name: str):
    """`keras.Sequential` of benchmark `name` (NHWC inputs; needs KERAS_BACKEND set)."""
    # optional (requirements-bench.txt)
    import keras
    from keras import layers as kl

    modules = []
    for layer, _ in _shapes(BENCH_MODELS[name].layers):
        if isinstance(layer, Conv):
            if layer.padding:
                modules.append(kl.ZeroPadding2D(layer.padding))
            modules.append(kl.Conv2D(layer.features, layer.kernel))
        elif isinstance(layer, Relu):
            modules.append(kl.ReLU())
        elif isinstance(layer, MaxPool):
            modules.append(kl.MaxPooling2D(layer.window))
        elif isinstance(layer, Flatten):
            modules.append(kl.Flatten())
        elif isinstance(layer, Dense):
            modules.append(kl.Dense(layer.features))
        elif isinstance(layer, Dropout):
            modules.append(kl.Dropout(layer.rate))
    return keras.Sequential([keras.Input(INPUT_SHAPE), *modules])


def flax_plain_model(name: str):
    """The network with `flax.linen`'s own layers (`nn.Conv`, `nn.max_pool`), not the zoo's."""
    import flax.linen as nn  # lazy: not in the PyTorch and Keras workers

    layers = BENCH_MODELS[name].layers

    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            for layer in layers:
                if isinstance(layer, Conv):
                    x = nn.Conv(layer.features, (layer.kernel,) * 2, padding=layer.padding)(x)
                elif isinstance(layer, Relu):
                    x = nn.relu(x)
                elif isinstance(layer, MaxPool):
                    x = nn.max_pool(x, (layer.window,) * 2, strides=(layer.window,) * 2)
                elif isinstance(layer, Flatten):
                    x = x.reshape((x.shape[0], -1))  # (N, H * W * C)
                elif isinstance(layer, Dense):
                    x = nn.Dense(layer.features)(x)
                elif isinstance(layer, Dropout):
                    x = nn.Dropout(layer.rate, deterministic=not train)(x)
            return x

    return Plain()
