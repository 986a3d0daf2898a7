"""The interchangeable convolution algorithms behind `functional.conv2d`.

Every algorithm computes the same function as XLA's own convolution (to float32
rounding), forward and gradient; they differ only in speed, which depends on
the backend. `conv` runs the one `resolve_conv_algorithm` picks, in
`algorithm_choice`'s order: the call's `algorithm=`, an enclosing
`override(conv=...)` block, `RESEARCH_CONV_ALGORITHM`, then
`default_conv_algorithm()` (below).

Conv algorithms (`CONV_ALGORITHMS`), each `f(x, kernel, strides, pads,
dilations, groups) -> y` on NHWC inputs, HWIO kernels and explicit pads:

  * "xla": `lax.conv_general_dilated`; its gradient is XLA's transposed convs.
  * "im2col": the `f_h * f_w` shifted (strided, dilated) slices of the padded
    input are concatenated along channels into patches `(N, H', W', f_h f_w C)`
    and contracted with the kernel reshaped to `(f_h f_w C, C_out)` in one
    matmul. Autodiff gives the kernel gradient as one matmul too
    (`patches^T @ dy`; on CPU, for most wide layers, as `(dy^T @ patches)^T`,
    see `patch_matmul`) and the input gradient as one matmul followed by the
    sum of `f_h * f_w` shifted pads, which XLA fuses into one loop.
  * "taps": `sum_{i,j} slice_ij(x) @ K[i, j]`: `f_h * f_w` matmuls of depth
    `C`, no patch tensor. Cheaper in memory; slower for few input channels.
  * "tiled" (`conv_tiled`): im2col on tiles of `t` output columns, against the
    kernel laid out as a banded matrix, so one matmul row yields `t * C_out`
    outputs: fewer, wider patches and a wider matmul, for `(t + f_w - 1) / f_w`
    times the multiply-adds. `tile_width` picks `t` from the shapes (`t = 1`,
    plain im2col, for 128 or more output channels and wherever its cost model
    finds the extra multiply-adds dearer than the patches they save). Its
    patches are one fused loop of reshaped column blocks, where "im2col" copies
    out each slice (XLA fuses no concatenation of more than 8 operands).
  * "onednn" (`conv_onednn`, built in `onednn.py`): oneDNN's direct
    convolutions, the kernels behind PyTorch's CPU convolutions, called from
    inside the XLA program through its FFI; gradients by oneDNN's
    backward-data and backward-weights primitives. No patches at all. float32
    on CPU; other dtypes and backends, and dense convolutions of fewer than
    `ONEDNN_MIN_IN_CHANNELS` input channels (faster as "tiled"), take "tiled".
  * "trials" (`trial_conv.conv_trials`): XLA's convolution with a custom
    gradient (the kernel gradient one matmul over im2col patches) whose
    `jax.vmap` over trials holds no grouped kernel-gradient convolution and no
    batch groups, the forms XLA's GPU backend runs slowly (`program_form`).
  * grouped calls (`groups > 1`) in "im2col", "taps" and "tiled":
    `_grouped_taps`, a batched contraction per group; depthwise (one input
    channel per group) is `f_h * f_w` broadcast multiply-adds, no matmul at all.
    "onednn" runs them as oneDNN's grouped and depthwise convolutions.

Defaults per backend (`DEFAULT_CONV_ALGORITHM`): "onednn" on "cpu" with one
device, "tiled" where oneDNN did not build or with several devices
(`DEFAULT_STAND_IN`); "xla" on "gpu"/"tpu" (cuDNN/native convolutions) and
backends not listed. On CPU, XLA's own convolutions (above all their gradients
inside the scanned training loop) take a slow generic path; oneDNN's direct
convolutions build no patches at all; and for layers with few output channels
(LeNet-5's 6 and 16) "tiled" beats "im2col" because moving patches and a
matmul too narrow to vectorise cost more than the arithmetic. The measurements
behind each default and each rule here, with their commands:
docs/performance-cpu.md (`scripts/bench.py --ours-conv ...`).

Custom gradients (`patch_matmul`'s kernel gradient on CPU, "onednn", "trials")
are reverse-mode only: `jax.grad`, `jax.vjp` and `vmap` work, `jax.jvp` raises a
TypeError; for forward mode pick "xla" or "taps" (the GPU's default is "xla").
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.layers import algorithm_choice as choice
from research.layers import onednn, trial_conv
from research.layers import patches as patch_lib
from research.layers.patches import Pads, Pair
from research.registry import Registry

log = logging.getLogger(__name__)


def conv_xla(x, kernel, strides: Pair, pads: Pads, dilations: Pair, groups: int = 1):
    """XLA's convolution: the reference every other algorithm is tested against."""
    choice.record("conv", "xla")
    return patch_lib.lax_conv(x, kernel, strides, pads, dilations, groups)


def _grouped_taps(slices, kernel, groups: int):
    """`groups > 1`: per group, the taps' slices against that group's kernel slice.

    Input channel `c` belongs to group `c // (C/G)` and output channel `o` to group
    `o // (O/G)`, as in XLA's `feature_group_count`; so the HWIO kernel
    `(f_h, f_w, C/G, O)` reshapes for free to `(taps, C/G, G, O/G)`. Depthwise
    (`C/G == 1`) needs no contraction at all: each tap is a broadcast multiply, and
    XLA fuses the sum over taps into one loop (a grouped XLA convolution, and
    its gradient, takes a slow generic path on CPU).
    """
    kh, kw, cg, o = kernel.shape
    n, ho, wo, _ = slices[0].shape
    k = kernel.reshape(kh * kw, cg, groups, o // groups)
    if cg == 1:
        y = None
        for t, s in enumerate(slices):
            term = s[..., None] * k[t, 0]  # (N, H', W', G, 1) * (G, O/G)
            y = term if y is None else y + term
    else:
        patches = jnp.stack(slices, axis=3).reshape(n, ho, wo, kh * kw, groups, cg)
        y = jnp.einsum("nhwtgc,tcgo->nhwgo", patches, k)
    return y.reshape(n, ho, wo, o)


def _dot(a, b):
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _patch_matmul_rowmajor(patches, b, transpose_by_matmul: bool):
    return _dot(patches, b)


def _patch_matmul_fwd(patches, b, transpose_by_matmul):
    return _dot(patches, b), (patches, b)


def _patch_matmul_bwd(transpose_by_matmul, res, dy):
    patches, b = res
    dpatches = lax.dot_general(dy, b, (((1,), (1,)), ((), ())))
    # db = patches^T @ dy, computed as (dy^T @ patches)^T: both of the dot's operands
    # contract their row-major axes. The barriers keep XLA from folding the
    # transposes back into the dot's dimension numbers.
    if transpose_by_matmul:  # YNNPACK's packing transposes dy: see patch_matmul
        eye = jnp.eye(dy.shape[1], dtype=dy.dtype)
        dy_t = lax.dot_general(eye, dy, (((1,), (1,)), ((), ())))
    else:
        dy_t = lax.optimization_barrier(dy.T)
    db = lax.optimization_barrier(_dot(dy_t, patches)).T
    return dpatches, db


_patch_matmul_rowmajor.defvjp(_patch_matmul_fwd, _patch_matmul_bwd)


def patch_matmul(patches, b, images: int, tile: int = 1):
    """`patches (M, K) @ b (K, N)`, the one matmul of "im2col" and "tiled".

    `images`: how many images the `M` rows come from (the batch), so that the
    choice below depends on one image's shapes only, never on the batch size or
    how many devices share it. `tile`: output pixels per row ("tiled"'s `t`; its
    `N` is `t` times the layer's channels).

    On CPU, XLA hands a dot to YNNPACK only when its left operand contracts its
    last, row-major axis; autodiff's kernel gradient `patches^T @ dy` contracts
    the first axis of both and runs in Eigen instead. Where YNNPACK is faster
    (`rowmajor_kernel_gradient`), a custom gradient computes it as `(dy^T @
    patches)^T`, `dy^T` and the result copied out (`M x N` and `K x N`, small
    beside the patches). The numbers are the same sums in another order.

    With `tile > 1`, `dy` arrives as the layer's `(N, H', W', C_out)` gradient
    viewed as `(M, t C_out)`, and XLA's CPU loop for `dy^T` computes every
    element's source index through that view, far slower than for the same
    bytes from a 2-D array. There `dy^T` is `I @ dy^T`, a matmul by the identity
    that YNNPACK's packing transposes, which is faster (docs/performance-cpu.md).
    The identity costs `2 N` multiply-adds per element, so it is used up to `N =
    TILE_LANES` (128) only. It is an exact copy for finite `dy`; an infinite
    entry of `dy` makes its whole row of `dy^T` NaN through `0 * inf` (such a
    gradient's kernel gradient is not finite either way).
    """
    (m, k), n = patches.shape, b.shape[1]
    if jax.default_backend() == "cpu" and rowmajor_kernel_gradient(m // images, k, n):
        return _patch_matmul_rowmajor(patches, b, tile > 1 and n <= TILE_LANES)
    return _dot(patches, b)


def rowmajor_kernel_gradient(image_rows: int, k: int, n: int) -> bool:
    """Whether `patch_matmul` computes its kernel gradient as `(dy^T @ patches)^T`.

    `image_rows`: the patch rows of one image; `k`: the patches' depth; `n`: the
    output columns. A rule fitted to single-layer measurements against Eigen's
    `patches^T @ dy` (docs/performance-cpu.md): the row-major form wins for
    64-256 output channels over deep patches, such as the lecture CNN's conv3
    and conv4. It loses for 512 channels, for shallow patches and for a
    contraction far longer than the patches are deep, where YNNPACK has few
    output tiles to share out. ResNet-18's 32768-row layers win alone yet made
    its whole step slower, hence at most `K / ROWMAJOR_DEPTH_PER_ROW` rows per
    image.
    """
    low, high = ROWMAJOR_CHANNELS
    return k >= ROWMAJOR_DEPTH and low <= n <= high and image_rows * ROWMAJOR_DEPTH_PER_ROW <= k


ROWMAJOR_DEPTH = 512  # shallowest patches (K) for the row-major kernel gradient
ROWMAJOR_CHANNELS = (64, 256)  # output columns (N) it pays for
ROWMAJOR_DEPTH_PER_ROW = 16  # least patch depth (K) per patch row of one image


def conv_im2col(x, kernel, strides: Pair, pads: Pads, dilations: Pair, groups: int = 1):
    """Patches of all taps side by side along channels, then one matmul."""
    choice.record("conv", "im2col")
    kh, kw, c, o = kernel.shape
    slices = patch_lib.shifted_slices(x, (kh, kw), strides, pads, dilations)
    if groups != 1:
        return _grouped_taps(slices, kernel, groups)
    patches = slices[0] if len(slices) == 1 else jnp.concatenate(slices, axis=-1)
    n, ho, wo, _ = patches.shape
    # (N H' W', kh * kw * C) @ (kh * kw * C, O): the (i, j, c) order of both
    # matches HWIO's row-major layout, so the kernel reshape is free.
    y = patch_matmul(
        patches.reshape(n * ho * wo, kh * kw * c), kernel.reshape(kh * kw * c, o), images=n
    )
    return y.reshape(n, ho, wo, o)


def conv_taps(x, kernel, strides: Pair, pads: Pads, dilations: Pair, groups: int = 1):
    """One matmul of depth C per kernel tap, summed."""
    choice.record("conv", "taps")
    kh, kw = kernel.shape[:2]
    slices = patch_lib.shifted_slices(x, (kh, kw), strides, pads, dilations)
    if groups != 1:
        return _grouped_taps(slices, kernel, groups)
    y = None
    for k, s in enumerate(slices):
        term = lax.dot_general(s, kernel[k // kw, k % kw], (((3,), (0,)), ((), ())))
        y = term if y is None else y + term
    return y  # (N, H', W', O)


def tile_width(
    out_w: int,
    out_channels: int,
    kernel_w: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    image_rows: int | None = None,
) -> int:
    """Output columns per tile of "tiled": a rule on static shapes, no timing.

    1 (im2col) for 1-column kernels and for `C_out >= TILE_LANES`. Then two
    regimes, each fitted to measured steps (docs/performance-cpu.md):

      * Narrow layers (`C_out < NARROW_LANES`, LeNet-5's 6 and 16): a matmul
        row of `C_out` numbers is too narrow to vectorise, so `t` is the
        smallest with `t * C_out >= NARROW_LANES`, or a divisor of the output
        width up to twice that (no overhanging last tile): LeNet-5's C1 takes 4
        and C3 2.
      * Wider layers: tiles only where a cost model says they pay. A tile of `t`
        outputs reads `w_in = (t - 1) s + d (f_w - 1) + 1` input columns, so per
        output pixel (and kernel row and input channel) it copies `w_in / t`
        patch numbers and does `w_in * C_out` multiply-adds:

            cost(t) = w_in * (PATCH_COST / t + C_out) * (columns computed / W')

        with a copied number worth `PATCH_COST` multiply-adds; `t` is the
        cheapest up to `ceil(TILE_LANES / C_out)`. The band matrix is built from
        the kernel every step, so a `t > 1` also needs the band to be no larger
        than the patches of `BAND_IMAGES` images (`image_rows`: one image's
        output rows). The rule depends on one image's shapes only, so the batch
        size and the number of devices sharing it never change the algorithm.
        The lecture CNN's conv1 (32 channels) and conv2 (64, 5x5) take 2; 3x3
        layers with 64 channels and every layer with 128 stay im2col.
    """
    if kernel_w == 1 or out_channels >= TILE_LANES:
        return 1
    if out_channels < NARROW_LANES:
        t = min(-(-NARROW_LANES // out_channels), out_w)
        divisor = next(d for d in range(t, out_w + 1) if out_w % d == 0)
        return divisor if divisor <= 2 * t else t

    def cost(t: int) -> float:
        w_in = (t - 1) * stride + dilation * (kernel_w - 1) + 1
        return w_in * (PATCH_COST / t + out_channels) * (-(-out_w // t) * t) / out_w

    def band_fits(t: int) -> bool:
        if t == 1 or image_rows is None:
            return True
        return BAND_IMAGES * image_rows * -(-out_w // t) >= t * out_channels

    widths = range(1, min(-(-TILE_LANES // out_channels), out_w) + 1)
    return min((t for t in widths if band_fits(t)), key=lambda t: (cost(t), t))


TILE_LANES = 128  # matmul row (t * C_out) wide enough that "tiled" stops at im2col
NARROW_LANES = 24  # narrowest matmul row "tiled" makes for a narrow layer
PATCH_COST = 48  # one patch number copied, in multiply-adds (tile_width's cost model)
BAND_IMAGES = 8  # a band wider than 1 may be as large as this many images' patches


@dataclasses.dataclass(frozen=True)
class _TileGeometry:
    """Static layout of "tiled"'s patches for one input shape (all sizes in pixels)."""

    shape: tuple[int, int, int, int]  # input (N, H, W, C)
    kernel_hw: Pair
    strides: Pair
    pads: Pads
    dilations: Pair
    tile: int  # output columns per tile, t

    @property
    def out_hw(self) -> Pair:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_hw, self.strides, self.dilations
        hp, wp = self.padded_hw
        return (hp - (dh * (kh - 1) + 1)) // sh + 1, (wp - (dw * (kw - 1) + 1)) // sw + 1

    @property
    def padded_hw(self) -> Pair:
        return self.shape[1] + sum(self.pads[0]), self.shape[2] + sum(self.pads[1])

    @property
    def tiles(self) -> int:  # per output row; the last one may overhang the image
        return -(-self.out_hw[1] // self.tile)

    @property
    def step(self) -> int:  # input columns between tile starts
        return self.tile * self.strides[1]

    @property
    def window(self) -> int:  # input columns under one tile, w_in
        return (self.tile - 1) * self.strides[1] + self.dilations[1] * (self.kernel_hw[1] - 1) + 1

    @property
    def blocks(self) -> int:  # blocks of `step` columns that cover a tile's window
        return -(-self.window // self.step)

    @property
    def columns(self) -> int:  # input columns the blocks read
        return (self.tiles + self.blocks - 1) * self.step


def _tile_patches(x, geo: _TileGeometry):
    """The patches of every tile: `(N, H', tiles, f_h, w_in, C)`."""
    (n, _, _, c), (kh, _), (sh, _), (dh, _) = geo.shape, geo.kernel_hw, geo.strides, geo.dilations
    ho, step, nt = geo.out_hw[0], geo.step, geo.tiles
    (top, bottom), (left, right) = geo.pads
    extra = max(geo.columns - geo.padded_hw[1], 0)
    pad = ((0, 0, 0), (top, bottom, 0), (left, right + extra, 0), (0, 0, 0))
    x = lax.pad(x, np.array(0, x.dtype), pad)
    rows = []
    for i in range(kh):
        # The input rows under kernel row i, for every output row: (N, H', columns, C).
        r = lax.slice(
            x, (0, i * dh, 0, 0), (n, i * dh + (ho - 1) * sh + 1, geo.columns, c), (1, sh, 1, 1)
        )
        # Block b of tile j is r[:, :, (j + b) step : (j + b + 1) step]: a reshape, no copy.
        blocks = [
            r[:, :, b * step : (b + nt) * step].reshape(n, ho, nt, step, c)
            for b in range(geo.blocks)
        ]
        rows.append(jnp.concatenate(blocks, axis=3)[:, :, :, : geo.window])
    return jnp.stack(rows, axis=3)  # (N, H', tiles, f_h, w_in, C)


def conv_tiled(
    x, kernel, strides: Pair, pads: Pads, dilations: Pair, groups: int = 1, *, tile=None
):
    """im2col on tiles of `t` output columns: fewer, longer patches, one matmul.

    Output row `y` of the image is cut into tiles of `t` consecutive columns.
    A tile's patch is the `f_h x w_in x C` input block under it (`w_in = (t - 1)
    s_w + d_w (f_w - 1) + 1` columns), and the kernel becomes the banded matrix
    `B[(i, w, c), (x, o)] = K[i, (w - x s_w) / d_w, c, o]` (zero off the band),
    so `out_tile = patch @ B` gives all `t x C_out` outputs of the tile at once:

        patches (N H' ceil(W'/t), f_h w_in C) @ B (f_h w_in C, t C_out)

    Against im2col (`t = 1`) the patches hold `w_in / (t f_w)` as many numbers
    and the matmul's output rows are `t` times wider, for `w_in / f_w` times the
    multiply-adds (the zeros of the band). Convolutions with few output
    channels (LeNet-5: 6 and 16) are bound by moving patches and by a matmul
    too narrow to vectorise, not by arithmetic, so they gain; wide ones do not
    (`tile_width` picks `t = 1` there, which is im2col with B = K). The patches
    are built from `ceil(w_in / (t s_w))` reshaped column blocks per kernel
    row, which XLA fuses into one loop (im2col's `f_h f_w` slices are each
    copied out before their concatenation). Autodiff gives the rest: the
    kernel gradient is one matmul (`patches^T @ dy`) folded back through the
    band, the input gradient one matmul and the overlap-add of `f_h` times
    `ceil(w_in / (t s_w))` shifted blocks (im2col: `f_h f_w` slices).
    Grouped convolutions, and `t = 1` with a dilated kernel, take im2col's
    path.
    """
    kh, kw, c, o = kernel.shape
    sw, dw = strides[1], dilations[1]
    geo = _TileGeometry(
        tuple(x.shape), (kh, kw), tuple(strides), tuple(map(tuple, pads)), tuple(dilations), 1
    )
    ho, wo = geo.out_hw
    if tile is None:
        tile = tile_width(wo, o, kw, stride=sw, dilation=dw, image_rows=ho)
    t = min(int(tile), wo)
    if groups != 1 or (t == 1 and dw != 1):
        return conv_im2col(x, kernel, strides, pads, dilations, groups)
    choice.record("conv", "tiled")
    geo = dataclasses.replace(geo, tile=t)
    n, win, nt = x.shape[0], geo.window, geo.tiles
    patches = _tile_patches(x, geo).reshape(n * ho * nt, kh * win * c)
    if t == 1:  # im2col: the (i, j, c) order of the patches is HWIO's, so B = K
        b = kernel.reshape(kh * kw * c, o)
    else:
        band = np.zeros((kw, win, t), np.float32)  # band[j, w, x] = 1 where w = x s_w + j d_w
        for j in range(kw):
            band[j, np.arange(t) * sw + j * dw, np.arange(t)] = 1.0
        b = jnp.einsum(
            "jwx,ijco->iwcxo", band.astype(kernel.dtype), kernel, precision=lax.Precision.HIGHEST
        ).reshape(kh * win * c, t * o)
    y = patch_matmul(patches, b, images=n, tile=t)  # (N H' tiles, t C_out)
    y = y.reshape(n, ho, nt * t, o)
    return y if nt * t == wo else y[:, :, :wo]


# Dense convolutions of fewer input channels (image stems, LeNet-5) run faster as
# "tiled"'s banded matmuls than as oneDNN's direct convolutions (docs/performance-cpu.md):
# their patches are shallow, and the band fills the vector lanes.
ONEDNN_MIN_IN_CHANNELS = 8


def conv_onednn(x, kernel, strides: Pair, pads: Pads, dilations: Pair, groups: int = 1):
    """oneDNN's direct convolution (`onednn.conv`) for float32 on CPU, else "tiled".

    "tiled" also takes dense convolutions of fewer than `ONEDNN_MIN_IN_CHANNELS`
    input channels; grouped and depthwise ones all go to oneDNN (several times
    faster than the multiply-adds of `_grouped_taps`). Raises
    `onednn.OnednnUnavailable` on a CPU where the handlers could not be built
    (the default there is "tiled", see `resolve_conv_algorithm`).
    """
    shallow = groups == 1 and kernel.shape[2] < ONEDNN_MIN_IN_CHANNELS
    if onednn.supports(x, kernel) and not shallow:
        choice.record("conv", "onednn")
        return onednn.conv(x, kernel, strides, pads, dilations, groups)
    return conv_tiled(x, kernel, strides, pads, dilations, groups)


def conv_trials(x, kernel, strides: Pair, pads: Pads, dilations: Pair, groups: int = 1):
    """`trial_conv.conv_trials` (XLA's convolution, trial-friendly kernel gradient)."""
    choice.record("conv", "trials")
    return trial_conv.conv_trials(x, kernel, strides, pads, dilations, groups)


CONV_ALGORITHMS: Registry[Callable[..., jax.Array]] = Registry(
    "conv algorithm",
    {
        "xla": conv_xla,
        "im2col": conv_im2col,
        "taps": conv_taps,
        "tiled": conv_tiled,
        "onednn": conv_onednn,
        "trials": conv_trials,
    },
)
choice.register_family("conv", CONV_ALGORITHMS)  # what `resolve` and `override` accept

# Backends not listed use "xla".
DEFAULT_CONV_ALGORITHM: dict[str, str] = {"cpu": "onednn", "gpu": "xla", "tpu": "xla"}
# Where a default cannot serve, its stand-in. "onednn" cannot where it did not
# build (`onednn.status()` says why), nor with more than one device: a custom
# call has no partitioning rule, so XLA would gather its operands onto every
# device and each would convolve the whole batch (correct, but no parallelism).
DEFAULT_STAND_IN: dict[str, str] = {"onednn": "tiled"}


def default_conv_algorithm() -> str:
    """This backend's default conv algorithm, or its stand-in where that cannot serve."""
    name = DEFAULT_CONV_ALGORITHM.get(jax.default_backend(), "xla")
    if name == "onednn" and jax.device_count() > 1:
        return DEFAULT_STAND_IN[name]
    if name == "onednn" and not onednn.available():
        stand_in = DEFAULT_STAND_IN[name]
        _say_once(
            f"conv algorithm 'onednn' is unavailable ({onednn.status()[1]}); "
            f"CPU convolutions run {stand_in!r}"
        )
        return stand_in
    return name


@functools.cache
def _say_once(message: str) -> None:
    log.warning(message)


def resolve_conv_algorithm(algorithm: str | None = None) -> str:
    """The conv algorithm a call uses: keyword, else `override`, else env variable, else default."""
    return choice.resolve("conv", algorithm, default_conv_algorithm)


def conv(x, kernel, strides, pads, dilations, groups: int, algorithm: str | None = None):
    """Runs the resolved algorithm; under `algorithm_choice.recording()`, notes which one ran."""
    if groups != 1:
        kind = "conv grouped"
    elif any(d != 1 for d in dilations):
        kind = "conv dilated"
    elif kernel.shape[2] < ONEDNN_MIN_IN_CHANNELS:
        kind = "conv shallow"
    else:
        kind = "conv"
    with choice.layer_kind(kind):
        return CONV_ALGORITHMS.get(resolve_conv_algorithm(algorithm))(
            x, kernel, strides, pads, dilations, groups
        )
