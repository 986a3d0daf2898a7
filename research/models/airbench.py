"""airbench94's network (K. Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU", 2024).

Ported from the public `legacy/airbench94.py` (the 3.83 s, uncompiled A100 record):

  whiten   conv 2x2 VALID, 2 * C * 2^2 filters (24 for RGB), bias -> GELU
  block1   conv1 3x3 SAME (no bias) -> max pool 2 -> norm1 -> GELU
           -> conv2 3x3 SAME (no bias) -> norm2 -> GELU                   width 64
  block2, block3: the same                                                 widths 256, 256
  max pool 3 -> flatten -> head (dense, no bias) -> x 1/9

At 32x32 the maps are 31 (whiten), 15, 7, 3, then 1 after the last pool.
Everything airbench sets, and how it is set here:

  * GELU is the exact (erf) one, PyTorch's `nn.GELU()` (Flax's default is tanh's).
  * BatchNorm: PyTorch momentum 0.4 (`batchnorm_momentum` 0.6 in Flax's convention,
    running = 0.6 running + 0.4 batch), eps 1e-12, no learned scale (airbench freezes
    the weight at 1; here it does not exist, which is the same), a learned bias. It
    normalizes in float32 even in bfloat16 runs, as airbench keeps its BatchNorms in
    float32. (PyTorch updates the running variance with the unbiased batch variance,
    Flax with the biased one: a factor n/(n-1) with n >= 9,216 values per channel.)
  * Kernels start as PyTorch's default, uniform in +-1/sqrt(fan_in), and then the
    first C_in filters of every 3x3 conv are the identity (`torch.nn.init.dirac_`):
    the second conv of each block and all of block3 start as identities. The head
    is PyTorch's default Linear init, uniform in +-1/sqrt(256).
  * The whitening layer's kernel is set from the data by `data_init` (the training
    engine calls it once, before the first step): the eigenvectors of the
    (uncentered) covariance of all 2x2 patches of the first `whiten_images`
    training images, each scaled by 1/sqrt(eigenvalue + 5e-4), and their negatives.
    The kernel is then frozen and its bias trained for 3 epochs only: both by the
    run's `transfer.rules` (experiments/cifar10_speedrun.py), not by the model.

Differences from the PyTorch network: parameters are float32 with bfloat16
compute (`compute_dtype`) where airbench holds float16 parameters; the covariance
is accumulated in float32 at full matmul precision and its eigendecomposition done
in float64 on the host (airbench: float32 `torch.linalg.eigh` on the GPU).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.layers import BatchNorm, Conv2D, Dense, MaxPool2D


def _uniform_fan_in(key, shape, dtype=jnp.float32):
    """PyTorch's default conv/linear init: uniform in +-1/sqrt(fan_in)."""
    fan_in = math.prod(shape[:-1])
    bound = 1 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def dirac_init(key, shape, dtype=jnp.float32):
    """PyTorch's default init with the first min(C_in, C_out) filters set to the identity.

    `shape` is HWIO; filter o < C_in is 1 at the centre tap of input channel o, 0 elsewhere
    (airbench's `torch.nn.init.dirac_(w[:w.size(1)])`).
    """
    kh, kw, cin, cout = shape
    kernel = _uniform_fan_in(key, shape, dtype)
    n = min(cin, cout)
    eye = jnp.zeros((kh, kw, cin, n), dtype).at[kh // 2, kw // 2, jnp.arange(n), jnp.arange(n)]
    return kernel.at[..., :n].set(eye.set(1))


@functools.partial(jax.jit, static_argnums=1)
def _patch_covariance_sum(images: jax.Array, size: int) -> jax.Array:
    """Sum over all `size x size` patches p of p p^T; p flattened in (row, column, channel)
    order, the order of an HWIO kernel's first three axes."""
    _, h, w, c = images.shape
    taps = [
        images[:, i : h - size + 1 + i, j : w - size + 1 + j, :]
        for i in range(size)
        for j in range(size)
    ]
    patches = jnp.concatenate(taps, axis=-1).reshape(-1, size * size * c)  # (patches, k*k*C)
    return jnp.dot(patches.T, patches, precision=jax.lax.Precision.HIGHEST)


def whitening_kernel(
    images: np.ndarray, size: int = 2, eps: float = 5e-4, chunk: int = 1000
) -> np.ndarray:
    """airbench's whitening filters: `(size, size, C, 2 size^2 C)` float32, HWIO.

    The eigenvectors v_i of the uncentered patch covariance (1/n) sum p p^T, largest
    eigenvalue first, scaled by 1/sqrt(lambda_i + eps), followed by their negatives
    (`init_whitening_conv` of airbench94.py).

    Args:
      images: `(N, H, W, C)` normalized training images.
      size: the patch (kernel) size.
      eps: added to each eigenvalue before the square root.
      chunk: images per accumulation step (memory only).
    """
    images = np.asarray(images, np.float32)
    n, h, w, c = images.shape
    total = np.zeros((size * size * c,) * 2, np.float64)
    for start in range(0, n, chunk):
        total += np.asarray(_patch_covariance_sum(jnp.asarray(images[start : start + chunk]), size))
    covariance = total / (n * (h - size + 1) * (w - size + 1))
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending; columns are vectors
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]  # largest first
    filters = eigenvectors / np.sqrt(eigenvalues + eps)  # (k*k*C, k*k*C): column i = filter i
    filters = np.concatenate([filters, -filters], axis=1)
    return filters.reshape(size, size, c, -1).astype(np.float32)


class ConvGroup(nn.Module):
    """conv1 -> max pool 2 -> norm1 -> GELU -> conv2 -> norm2 -> GELU (airbench's ConvGroup)."""

    features: int
    batchnorm_momentum: float = 0.6
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        conv = functools.partial(
            Conv2D, kernel_size=3, padding="SAME", use_bias=False, kernel_init=dirac_init
        )
        norm = functools.partial(
            BatchNorm,
            use_running_average=not train,
            momentum=self.batchnorm_momentum,
            epsilon=1e-12,
            use_scale=False,
            dtype=jnp.float32,
        )
        x = conv(self.features, dtype=self.dtype, name="conv1")(x)
        x = MaxPool2D(2)(x)
        x = nn.gelu(norm(name="norm1")(x), approximate=False)
        x = conv(self.features, dtype=self.dtype, name="conv2")(x)
        return nn.gelu(norm(name="norm2")(x), approximate=False)


class Airbench(nn.Module):
    """airbench94's network (see the module docstring).

    Attributes:
      num_classes: outputs of the head.
      widths: output channels of block1..block3.
      batchnorm_momentum: Flax's BatchNorm momentum (PyTorch's is 1 minus it).
      scaling_factor: the logits' multiplier.
      whiten_size: the whitening layer's kernel size.
      whiten_images: how many training images (the first ones) `data_init` measures.
      whiten_eps: added to each eigenvalue.
      dtype: compute dtype of the convolutions and the head (None: float32).
    """

    num_classes: int = 10
    widths: Sequence[int] = (64, 256, 256)
    batchnorm_momentum: float = 0.6
    scaling_factor: float = 1 / 9
    whiten_size: int = 2
    whiten_images: int = 5000
    whiten_eps: float = 5e-4
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        width = 2 * x.shape[-1] * self.whiten_size**2
        x = Conv2D(
            width, self.whiten_size, kernel_init=dirac_init, dtype=self.dtype, name="whiten"
        )(x)
        x = nn.gelu(x, approximate=False)
        for i, features in enumerate(self.widths, start=1):
            group = ConvGroup(features, self.batchnorm_momentum, self.dtype, name=f"block{i}")
            x = group(x, train=train)
            self.sow("features", f"block{i}_out", x)
        x = MaxPool2D(3)(x)
        x = x.reshape(x.shape[0], -1)  # (N, widths[-1]) at 32x32
        self.sow("features", "features", x)
        x = Dense(
            self.num_classes,
            use_bias=False,
            kernel_init=_uniform_fan_in,
            dtype=self.dtype,
            name="head",
        )(x)
        return x * self.scaling_factor

    @nn.nowrap
    def data_init(self, variables: Mapping[str, Any], train_images: np.ndarray) -> dict:
        """The variables with the whitening kernel measured on `train_images[:whiten_images]`.

        Called once by the training engine before the first step
        (`research.train.engine`); `train_images` are the normalized training split.
        """
        kernel = whitening_kernel(
            train_images[: self.whiten_images], self.whiten_size, self.whiten_eps
        )
        params = dict(variables["params"])
        if params["whiten"]["kernel"].shape != kernel.shape:
            raise ValueError(
                f"whitening kernel {kernel.shape} does not fit the layer "
                f"{params['whiten']['kernel'].shape}: train_images have another channel count"
            )
        params["whiten"] = {**params["whiten"], "kernel": kernel}
        return {**variables, "params": params}
