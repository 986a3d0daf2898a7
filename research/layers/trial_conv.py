"""Conv algorithm "trials": a convolution whose vmapped gradient has no batch groups.

The sweep trains N trials at once with `jax.vmap` over a trial axis of parameters
and data (`research.train.engine`, "vmap"). JAX's batching rule for a
convolution whose input and kernel are both batched folds the trials into the
channel axis as feature groups (`feature_group_count = N`): one grouped
convolution, cheap on every backend. But the kernel gradient that autodiff
derives for XLA's convolution is itself a convolution, of the input with the
output gradient, and its vmapped form folds the trials into the *batch* axis
with `batch_group_count = N`. XLA's GPU backend has no cuDNN call for batch
groups and rewrites such a convolution into a far costlier one (the first GPU
run: 16 vmapped LeNet-5 trials cost 12x one trial's step, issue 25).

`conv_trials` computes the same function as `lax.conv_general_dilated` with a
custom VJP:

  * forward: XLA's convolution (vmapped: feature groups);
  * input gradient: the transpose of that convolution (`jax.linear_transpose`),
    again a convolution that vmap turns into feature groups;
  * kernel gradient: one matmul over the im2col patches of the input,
    `dK[t, c, o] = sum_{n, y, x} P[n, y, x, t, c] dY[n, y, x, o]` (`t` a kernel
    tap), which vmap turns into one batched matmul over the trial axis,
    `einsum('Tnpk,Tnpo->Tko')`; grouped convolutions add the group as a second
    batch axis. The patches are `f_h f_w` times the input (like "im2col"'s).

So a vmapped program built with it holds no convolution with
`batch_group_count > 1` (`research.layers.program_form` lists them; the fast
tier pins it). The numbers are the same sums as XLA's gradient in another
order: float rounding, not bits. Reverse-mode only, like the other custom
gradients of `conv_algorithms` and `pool_algorithms` (`jax.jvp` through it
raises a TypeError).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from research.layers import patches as patch_lib
from research.layers.patches import Pads, Pair


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_trials(x, kernel, strides, pads, dilations, groups):
    return patch_lib.lax_conv(x, kernel, strides, pads, dilations, groups)


def _conv_trials_fwd(x, kernel, strides, pads, dilations, groups):
    return patch_lib.lax_conv(x, kernel, strides, pads, dilations, groups), (x, kernel)


def kernel_gradient(x, dy, kernel_shape, strides: Pair, pads: Pads, dilations: Pair, groups: int):
    """`dL/dK` of a convolution from its input `x` and output gradient `dy`: one matmul.

    Args:
      x: the input, `(N, H, W, C)`.
      dy: the output gradient, `(N, H', W', O)`.
      kernel_shape: the HWIO kernel's shape `(f_h, f_w, C / groups, O)`.

    Returns:
      `(f_h, f_w, C / groups, O)`, in `dy`'s dtype.
    """
    kh, kw, cg, o = kernel_shape
    n, ho, wo, _ = dy.shape
    taps = kh * kw
    # (N, H', W', taps, C): tap t = (i, j) row-major, HWIO's order.
    p = jnp.stack(patch_lib.shifted_slices(x, (kh, kw), strides, pads, dilations), axis=3)
    if groups == 1:
        dk = jnp.einsum("nhwtc,nhwo->tco", p, dy)  # (taps, C, O)
        return dk.reshape(kh, kw, cg, o)
    # Input channel c is in group c // (C/G), output channel o in o // (O/G) (XLA's rule).
    p = p.reshape(n, ho, wo, taps, groups, cg)
    g = dy.reshape(n, ho, wo, groups, o // groups)
    dk = jnp.einsum("nhwtgc,nhwgo->tcgo", p, g)  # (taps, C/G, G, O/G)
    return dk.reshape(kh, kw, cg, o)


def _conv_trials_bwd(strides, pads, dilations, groups, res, dy):
    x, kernel = res
    (dx,) = jax.linear_transpose(
        lambda x_: patch_lib.lax_conv(x_, kernel, strides, pads, dilations, groups), x
    )(dy)
    dk = kernel_gradient(x, dy, kernel.shape, strides, pads, dilations, groups)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_conv_trials.defvjp(_conv_trials_fwd, _conv_trials_bwd)


def conv_trials(x, kernel, strides: Pair, pads: Pads, dilations: Pair, groups: int = 1):
    """XLA's convolution with the gradient described in the module docstring.

    NHWC input, HWIO kernel, explicit `pads` `((top, bottom), (left, right))`:
    the contract of every `conv_algorithms.CONV_ALGORITHMS` entry.
    """
    return _conv_trials(
        x,
        kernel,
        tuple(int(s) for s in strides),
        tuple((int(a), int(b)) for a, b in pads),
        tuple(int(d) for d in dilations),
        int(groups),
    )
