"""A convolutional autoencoder: the lecture's encoder -> latent code -> decoder, trained on MSE.

The encoder compresses an image to a `latent_dim` vector; the decoder
reconstructs the image from it; the loss is the distance between input and
reconstruction (the registry marks it `task="reconstruct"`). `encode` gives
the latent codes for linear probes, `decode` turns codes back into images.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.layers import Conv2D, Dense, Flatten


class Encoder(nn.Module):
    """Stride-2 3x3 'SAME' convolutions (`conv1`, ...) with ReLU, then a linear `latent` layer.

    Each convolution halves H and W (rounding up): `(N, H, W, C) -> (N, latent_dim)`.
    """

    widths: Sequence[int]
    latent_dim: int
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"the encoder expects (N, H, W, C) images, got shape {x.shape}")
        for i, width in enumerate(self.widths, start=1):
            x = Conv2D(width, 3, stride=2, padding="SAME", dtype=self.dtype, name=f"conv{i}")(x)
            x = nn.relu(x)
            self.sow("features", f"conv{i}_out", x)
        x = Flatten(name="flatten")(x)  # (N, H/4 * W/4 * 64) with the default widths
        return Dense(self.latent_dim, dtype=self.dtype, name="latent")(x)


class Decoder(nn.Module):
    """The encoder mirrored: `dense1` to a small map, then (2x nearest upsampling, 3x3 conv) blocks.

    `dense1` maps the code to a `(ceil(H / f), ceil(W / f), widths[-1])` map
    with `f = 2 ** len(widths)`; each block doubles H and W and convolves to the
    previous encoder width, the last one to the image's C channels; a sigmoid
    gives pixels in [0, 1], cropped to `(H, W)`.
    """

    widths: Sequence[int]  # the encoder's widths, in encoder order
    output: str = "sigmoid"  # "sigmoid": pixels in [0, 1]; "linear": unbounded
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, z: jax.Array, image_shape: Sequence[int] | None = None) -> jax.Array:
        factor = 2 ** len(self.widths)
        h, w, c = self._image_shape(factor) if image_shape is None else tuple(image_shape)
        grid = (-(-h // factor), -(-w // factor), self.widths[-1])
        # DenseGeneral: a Dense whose kernel is (latent_dim, *grid), so the map's shape
        # is readable from the parameters (see `_image_shape`).
        x = nn.DenseGeneral(grid, dtype=self.dtype, name="dense1")(z)  # (N, *grid)
        x = nn.relu(x)
        self.sow("features", "dense1_out", x)
        outs = (*reversed(self.widths[:-1]), c)
        for i, features in enumerate(outs, start=1):
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest-neighbour, 2x
            x = Conv2D(features, 3, padding="SAME", dtype=self.dtype, name=f"conv{i}")(x)
            if i < len(outs):
                x = nn.relu(x)
                self.sow("features", f"conv{i}_out", x)
        x = x[:, :h, :w, :]  # (N, H, W, C)
        return nn.sigmoid(x) if self.output == "sigmoid" else x

    def _image_shape(self, factor: int) -> tuple[int, int, int]:
        params = self.variables.get("params", {})
        last = f"conv{len(self.widths)}"
        if "dense1" not in params or last not in params:
            raise ValueError(
                "decode(z) reads the image shape off the decoder's parameters, and there are "
                "none yet: pass image_shape=(H, W, C) when initializing through decode"
            )
        grid_h, grid_w = params["dense1"]["kernel"].shape[1:3]
        return grid_h * factor, grid_w * factor, params[last]["kernel"].shape[-1]


class ConvAutoencoder(nn.Module):
    """A two-block convolutional autoencoder with a `latent_dim` code; output in [0, 1].

    With the default `widths=(32, 64)`, at 28x28x1 and `latent_dim=32`:

        encoder/conv1 32@3x3 s2 -> 14x14x32, encoder/conv2 64@3x3 s2 -> 7x7x64,
        encoder/latent 3136 -> 32,
        decoder/dense1 32 -> 7x7x64, upsample 14x14, decoder/conv1 32@3x3,
        upsample 28x28, decoder/conv2 1@3x3, sigmoid

    with 241,441 parameters. Any H and W work: the encoder rounds up
    (`ceil(H / 4)`) and the decoder crops back to `(H, W)`; for H, W divisible
    by 4 nothing is cropped. With `output="sigmoid"` (the default) inputs are
    expected in [0, 1] (the sigmoid output cannot reach values outside it). The
    training pipeline standardizes pixels (per-channel mean 0, std 1: MNIST's
    range is about [-0.4, 2.8]), so trained runs use `output="linear"`, an
    unbounded last convolution; the loss is then the MSE in standardized units
    (pixel-unit MSE = loss * std**2).

    `model.apply(v, x)` returns the reconstruction, of `x`'s shape;
    `model.apply(v, x, method=model.encode)` the codes `(N, latent_dim)`;
    `model.apply(v, z, method=model.decode)` images of the shape the model was
    initialized on. The code is also sown as "features", and each conv block's
    output as `encoder/conv{i}_out` / `decoder/conv{i}_out`.

    There is no `num_classes`: `models.create` passes it only to models that have it.

    Attributes:
      latent_dim: size of the code.
      widths: kernels of the encoder's stride-2 convolutions; the decoder mirrors them.
      output: "sigmoid" (pixels in [0, 1]) or "linear" (for standardized inputs).
    """

    latent_dim: int = 32
    widths: Sequence[int] = (32, 64)
    output: str = "sigmoid"
    dtype: jnp.dtype | None = None

    def setup(self):
        if self.latent_dim < 1 or not self.widths or min(self.widths) < 1:
            raise ValueError(
                f"latent_dim and every width must be >= 1 (and widths non-empty), got "
                f"latent_dim={self.latent_dim!r}, widths={self.widths!r}"
            )
        if self.output not in ("sigmoid", "linear"):
            raise ValueError(f"output must be 'sigmoid' or 'linear', got {self.output!r}")
        self.encoder = Encoder(tuple(self.widths), self.latent_dim, dtype=self.dtype)
        self.decoder = Decoder(tuple(self.widths), output=self.output, dtype=self.dtype)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        z = self.encode(x)
        self.sow("features", "features", z)
        return self.decode(z, x.shape[1:])

    def encode(self, x: jax.Array) -> jax.Array:
        """Images `(N, H, W, C)` -> codes `(N, latent_dim)`."""
        return self.encoder(x)

    def decode(self, z: jax.Array, image_shape: Sequence[int] | None = None) -> jax.Array:
        """Codes `(N, latent_dim)` -> images `(N, H, W, C)` in [0, 1].

        Args:
          z: latent codes.
          image_shape: `(H, W, C)`; None reads it off the decoder's parameters
            (exact for H, W divisible by `2 ** len(widths)`, else rounded up).
        """
        return self.decoder(z, image_shape)
