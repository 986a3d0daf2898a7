"""Squeeze-and-excitation (Hu, Shen and Sun, 2018, "Squeeze-and-Excitation Networks").

A channel attention gate: each feature map is rescaled by a weight in (0, 1)
computed from the whole image's channel means,

    s = mean_{h,w} x[:, h, w, :]                    squeeze      (N, C)
    z = ReLU(s @ W1 + b1)                           reduce       (N, C/r)
    e = sigmoid(z @ W2 + b2)                        expand       (N, C)
    y[:, h, w, c] = x[:, h, w, c] * e[:, c]         excite       (N, H, W, C)

with reduction ratio r (16 in the paper). Parameters:
`C * C/r + C/r + C/r * C + C`, e.g. 8,464 for C = 256 and r = 16.

`squeeze_excite` is the pure function (the layer contract of `functional.py`:
NHWC or HWC input, output in the input's dtype, bad shapes raise ValueError
before XLA runs); `SqueezeExcite` owns the parameters and calls it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers.functional import as_nhwc
from research.layers.modules import Dtype, Initializer, cast

__all__ = ["SqueezeExcite", "reduced_channels", "squeeze_excite"]


def reduced_channels(channels: int, reduction: int) -> int:
    """Width of the bottleneck, `C // r`, at least 1 (narrow test models have C < r)."""
    if not isinstance(reduction, int) or reduction < 1:
        raise ValueError(f"reduction must be an int >= 1, got {reduction!r}")
    return max(1, channels // reduction)


def squeeze_excite(
    x: jax.Array, w1: jax.Array, b1: jax.Array, w2: jax.Array, b2: jax.Array
) -> jax.Array:
    """Rescales each channel of `x` by its excitation (see the module docstring).

    Args:
      x: `(N, H, W, C)` or `(H, W, C)`.
      w1: `(C, R)` kernel of the reduce layer; b1: `(R,)` its bias.
      w2: `(R, C)` kernel of the expand layer; b2: `(C,)` its bias.

    Returns:
      `x`'s shape and dtype: `x * e`, with `e = sigmoid(ReLU(mean(x) @ w1 + b1) @ w2 + b2)`.
    """
    x, squeeze = as_nhwc(x, "squeeze_excite")
    c = x.shape[-1]
    w1, b1, w2, b2 = (jnp.asarray(a) for a in (w1, b1, w2, b2))
    r = w1.shape[-1] if w1.ndim == 2 else "R"
    for name, arg, want in (
        ("w1", w1, (c, r)),
        ("b1", b1, (r,)),
        ("w2", w2, (r, c)),
        ("b2", b2, (c,)),
    ):
        if arg.shape != want:
            raise ValueError(
                f"squeeze_excite: {name} must have shape {want} for input channels {c}, "
                f"got {arg.shape} (input shape {tuple(x.shape)})"
            )
    w1, b1, w2, b2 = (a.astype(x.dtype) for a in (w1, b1, w2, b2))
    s = jnp.mean(x, axis=(1, 2))  # (N, C)
    z = jax.nn.relu(s @ w1 + b1)  # (N, R)
    e = jax.nn.sigmoid(z @ w2 + b2)  # (N, C)
    y = x * e[:, None, None, :]
    return y[0] if squeeze else y


class SqueezeExcite(nn.Module):
    """A squeeze-and-excitation gate (Hu et al. 2018) on an NHWC feature map.

    Parameters (`reduce/kernel (C, R)`, `reduce/bias (R,)`, `expand/kernel (R, C)`,
    `expand/bias (C,)`, with `R = reduced_channels(C, reduction)`) are named like
    two Dense layers', so freezing regexes and the L2 mask (`kernel` = weight) treat
    them as such.

    Attributes:
      reduction: the paper's r; the bottleneck has `max(1, C // r)` units.
      kernel_init, bias_init: initializers of the two kernels and biases (Flax
        Dense's defaults: LeCun normal and zeros).
      dtype: compute dtype; parameters are stored in `param_dtype`.
    """

    reduction: int = 16
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        r = reduced_channels(c, self.reduction)

        def dense(fan_in: int, fan_out: int):
            def init(key):
                k1, k2 = jax.random.split(key)
                return {
                    "kernel": self.kernel_init(k1, (fan_in, fan_out), self.param_dtype),
                    "bias": self.bias_init(k2, (fan_out,), self.param_dtype),
                }

            return init

        reduce = self.param("reduce", dense(c, r))
        expand = self.param("expand", dense(r, c))
        x = cast(x, self.dtype)
        return squeeze_excite(x, reduce["kernel"], reduce["bias"], expand["kernel"], expand["bias"])
