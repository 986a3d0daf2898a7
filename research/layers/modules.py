"""Flax linen modules on top of `research.layers.functional`.

Each module only owns its parameters and calls a pure function; the arithmetic
lives in `functional.py`. Parameters are named `kernel` and `bias` (as in Flax
and Keras), so regexes over parameter paths (freezing, transfer, L2 masks) see
the same names everywhere.

`dtype` is the compute dtype (e.g. `jnp.bfloat16` on accelerators): inputs and
parameters are cast to it for the arithmetic, while `param_dtype` (float32)
is what is stored and optimized.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers import functional as F

Initializer = Callable[..., jax.Array]
Dtype = Any

# Re-exported so models import every layer from one place.
Dense = nn.Dense
Dropout = nn.Dropout
BatchNorm = nn.BatchNorm


def cast(x, dtype):
    """`x` in the computation dtype `dtype`; None leaves it as it is (the layer contract).

    A module casts its input and parameters with it (`Conv2D` does), so `dtype=bfloat16`
    computes in bfloat16 while the parameters stay float32 (`param_dtype`).
    """
    return x if dtype is None else jnp.asarray(x, dtype)


class Conv2D(nn.Module):
    """A convolution layer: `features` kernels of `kernel_size`, via `functional.conv2d`.

    Attributes:
      features: number of kernels (output channels).
      kernel_size: int or `(f_h, f_w)`.
      stride, padding, dilation, groups: as in `functional.conv2d`. Padding
        defaults to "VALID", as in the lectures and Keras.
      use_bias: add a learned bias per output channel.
    """

    features: int
    kernel_size: F.IntOrPair
    stride: F.IntOrPair = 1
    padding: F.Padding = "VALID"
    dilation: F.IntOrPair = 1
    groups: int = 1
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = F.pair(self.kernel_size, "kernel_size", minimum=1, shape=x.shape)
        if x.shape[-1] % self.groups:
            raise ValueError(
                f"input channels {x.shape[-1]} are not divisible by groups={self.groups} "
                f"(input shape {x.shape}, layer {self.name})"
            )
        kernel = self.param(
            "kernel",
            self.kernel_init,
            (kh, kw, x.shape[-1] // self.groups, self.features),
            self.param_dtype,
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x = cast(x, self.dtype)
        return F.conv2d(
            x,
            cast(kernel, x.dtype),
            None if bias is None else cast(bias, x.dtype),
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
        )


class DepthwiseConv2D(nn.Module):
    """One (or `depth_multiplier`) kernel per input channel: `groups = C_in`.

    The kernel has shape `(f_h, f_w, 1, C_in * depth_multiplier)`, so output
    channel `c * m + k` sees input channel `c` only.
    """

    kernel_size: F.IntOrPair
    depth_multiplier: int = 1
    stride: F.IntOrPair = 1
    padding: F.Padding = "VALID"
    dilation: F.IntOrPair = 1
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c_in = x.shape[-1]
        return Conv2D(
            features=c_in * self.depth_multiplier,
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=c_in,
            use_bias=self.use_bias,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="depthwise",
        )(x)


class SeparableConv2D(nn.Module):
    """Depthwise-separable convolution (Xception, Keras's SeparableConv2D).

    A depthwise `kernel_size` convolution (no bias) followed by a pointwise 1x1
    convolution to `features` channels (with bias if `use_bias`). Parameters:
    `f_h * f_w * C_in * m + C_in * m * features (+ features)`.
    """

    features: int
    kernel_size: F.IntOrPair
    depth_multiplier: int = 1
    stride: F.IntOrPair = 1
    padding: F.Padding = "VALID"
    dilation: F.IntOrPair = 1
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        common = dict(
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        x = DepthwiseConv2D(
            kernel_size=self.kernel_size,
            depth_multiplier=self.depth_multiplier,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            use_bias=False,
            name="depthwise",
            **common,
        )(x)
        return Conv2D(
            features=self.features,
            kernel_size=1,
            use_bias=self.use_bias,
            name="pointwise",
            **common,
        )(x)


class MaxPool2D(nn.Module):
    """Max pooling; no parameters. `stride` defaults to `window`."""

    window: F.IntOrPair
    stride: F.IntOrPair | None = None
    padding: F.Padding = "VALID"

    def __call__(self, x: jax.Array) -> jax.Array:
        return F.max_pool(x, self.window, stride=self.stride, padding=self.padding)


class AvgPool2D(nn.Module):
    """Average pooling; no parameters. `stride` defaults to `window`."""

    window: F.IntOrPair
    stride: F.IntOrPair | None = None
    padding: F.Padding = "VALID"
    count_include_pad: bool = False

    def __call__(self, x: jax.Array) -> jax.Array:
        return F.avg_pool(
            x,
            self.window,
            stride=self.stride,
            padding=self.padding,
            count_include_pad=self.count_include_pad,
        )


class AdaptiveAvgPool2D(nn.Module):
    """Average pooling to a fixed `output_size` (PyTorch's `AdaptiveAvgPool2d`); no parameters.

    AlexNet and VGG use it to give their classifier a fixed input size whatever
    the image size.
    """

    output_size: F.IntOrPair

    def __call__(self, x: jax.Array) -> jax.Array:
        return F.adaptive_avg_pool(x, self.output_size)


class GlobalAvgPool(nn.Module):
    """Mean over the spatial axes: `(N, H, W, C) -> (N, C)`."""

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"GlobalAvgPool expects (N, H, W, C), got shape {x.shape}")
        return jnp.mean(x, axis=(1, 2))


class Flatten(nn.Module):
    """`(N, ...) -> (N, prod(...))`, in row-major (H, W, C) order as Keras's Flatten."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return x.reshape((x.shape[0], -1))  # (N, H * W * C)
