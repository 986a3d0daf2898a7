"""The model families one by one: shapes against their references, blocks, BatchNorm.

LeNet and the lecture CNN, the autoencoder, GoogLeNet, ResNet (its blocks and
squeeze-and-excitation), Xception and MobileNet. What every registered model must
pass is in test_models.py; scanned blocks in test_scan.py.
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.layers import Conv2D
from research.models import mobilenet, resnet, se_resnet
from tests.helpers.fast_tier import fast_jit
from tests.helpers.models import RNGS
from tests.helpers.models import param_paths as _param_paths
from tests.helpers.models import traced as _traced

# =========================================================================== families


def test_lecture_cnn_layer_shapes_match_the_lecture():
    # conv1 'same' keeps 28x28; each 5x5 'valid' conv takes 4 pixels; each pool halves.
    rows = models.layer_table(models.create("lecture_cnn", num_classes=10), (28, 28, 1))
    shapes = {r["path"]: r["output_shape"] for r in rows}
    assert shapes["conv1"] == (1, 28, 28, 32)
    assert shapes["pool1"] == (1, 14, 14, 32)
    assert shapes["conv4"] == (1, 2, 2, 64)
    assert shapes["pool2"] == (1, 1, 1, 64)
    assert shapes["head"] == (1, 10)
    assert [r["path"] for r in rows][:3] == ["conv1", "pool1", "conv2"]  # network order


def test_features_are_sown_for_probes():
    model = models.create("lenet5", num_classes=10, padding=2)
    x = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)
    _, state = jax.eval_shape(lambda x: model.init_with_output(RNGS, x, mutable=True), x)
    assert state["features"]["conv1_out"][0].shape == (2, 28, 28, 6)
    assert state["features"]["features"][0].shape == (2, 84)


def test_autoencoder_codes_adaptive_pooling_and_vgg_variants():
    # Autoencoder: codes for probes, decoding back without being told the shape, any H x W.
    model = models.create("conv_autoencoder", num_classes=10)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 28, 28, 1)), jnp.float32)

    def run(x):  # one compiled program
        variables = model.init(RNGS, x)
        z = model.apply(variables, x, method=model.encode)
        images = model.apply(variables, z, method=model.decode)  # shape read off the params
        return z, images, model.apply(variables, x, mutable=["features"])

    z, images, (out, state) = fast_jit(run)(x)
    assert z.shape == (2, 32)
    np.testing.assert_allclose(images, out, atol=1e-6)
    assert bool(jnp.all((out >= 0) & (out <= 1)))
    assert state["features"]["features"][0].shape == (2, 32)
    assert state["features"]["encoder"]["conv2_out"][0].shape == (2, 7, 7, 64)
    odd = jax.ShapeDtypeStruct((1, 30, 26, 2), jnp.float32)  # encoded at 8x7, cropped back
    odd_model = models.create("conv_autoencoder", num_classes=10, latent_dim=4)
    run = lambda x: odd_model.apply(odd_model.init(jax.random.key(0), x), x)
    assert jax.eval_shape(run, odd).shape == odd.shape

    # AdaptiveAvgPool2D has PyTorch's bins [floor(i*n/m), ceil((i+1)*n/m)): overlapping
    # when m does not divide n, repeated pixels when m > n.
    from research.layers import AdaptiveAvgPool2D

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3, 4)).astype(np.float32)
    bins = lambda n, m: [(i * n // m, -(-(i + 1) * n // m)) for i in range(m)]
    expected = np.stack(
        [
            np.stack([x[:, a:b, c:d].mean(axis=(1, 2)) for c, d in bins(3, 6)], axis=1)
            for a, b in bins(5, 3)
        ],
        axis=1,
    )  # (2, 3, 6, 4)
    pool = AdaptiveAvgPool2D((3, 6))
    np.testing.assert_allclose(fast_jit(pool.apply)({}, x), expected, rtol=1e-5, atol=1e-6)
    square = x[:, :, :1].repeat(5, axis=2)  # (2, 5, 5, 4): already the output size
    assert np.array_equal(AdaptiveAvgPool2D(5).apply({}, square), square)
    # AlexNet's classifier sees 6x6x256 at any large input: at 256x256 conv5 gives 7x7.
    rows = models.layer_table(models.create("alexnet", num_classes=10), (256, 256, 3))
    assert {r["path"]: r["output_shape"] for r in rows}["avgpool"] == (1, 6, 6, 256)

    # The unregistered VGG sizes match torchvision's docs too (configurations "B" and "E").
    from research.models import vgg

    for build, count in ((vgg.VGG13, 133_047_848), (vgg.VGG19, 143_667_240)):
        x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
        shapes = jax.eval_shape(build().init, jax.random.key(0), x)
        assert models.param_count(shapes) == count


def test_googlenet_resnet_xception_shapes_follow_their_references():
    # Shapes traced with jax.eval_shape (nothing computed) against the shape comments of
    # torchvision's googlenet.py / resnet.py and Keras's Xception summary.
    from research.models.googlenet import _ceil_mode_padding

    def shapes(name, input_shape, depth=1, **overrides):
        model = models.create(name, num_classes=1000, **overrides)
        return {
            r["path"]: r["output_shape"]
            for r in models.layer_table(model, input_shape, depth=depth)
        }

    # GoogLeNet: PyTorch ceil_mode pools, out = ceil((n - f) / s) + 1: 112 -> 56 -> 28 -> 14 -> 7.
    assert _ceil_mode_padding((112, 7), 3, 2) == ((0, 1), (0, 0))  # 56 and 3 windows
    assert _ceil_mode_padding((14,), 2, 2) == ((0, 0),)
    g = shapes("googlenet", (224, 224, 3))
    assert [g[k][1] for k in ("conv1", "pool1", "pool2", "pool3", "pool4")] == [112, 56, 28, 14, 7]
    assert g["inception3a"] == (1, 28, 28, 256) and g["inception4e"] == (1, 14, 14, 832)
    assert g["inception5b"] == (1, 7, 7, 1024) and g["head"] == (1, 1000)
    # torchvision's "5x5" branch is a 3x3; the paper's 5x5 adds 16 * ch5x5red * ch5x5 per block.
    paper = models.create("googlenet", num_classes=1000, branch3_kernel_size=5)
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    count = models.param_count(jax.eval_shape(lambda x: paper.init(jax.random.key(0), x), x))
    reductions = [(16, 32), (32, 96), (16, 48), (24, 64), (24, 64), (32, 64), (32, 128)]
    reductions += [(32, 128), (48, 128)]
    assert count == 6_624_904 + 16 * sum(r * c for r, c in reductions) == 7_005_832

    # ResNet-50 v1.5: in a downsampling bottleneck the stride is on the 3x3 conv (conv2).
    r = shapes("resnet50", (224, 224, 3), depth=2)
    assert r["stage1_block1/conv1"] == (1, 56, 56, 64)  # after the 7x7/2 stem and 3x3/2 pool
    assert r["stage2_block1/conv1"] == (1, 56, 56, 128)
    assert r["stage2_block1/conv2"] == (1, 28, 28, 128)
    assert r["stage2_block1/proj_conv"] == (1, 28, 28, 512)
    assert r["stage4_block3/conv3"] == (1, 7, 7, 2048)
    assert shapes("resnet18", (32, 32, 3), cifar_stem=True)["stage4_block2"] == (1, 4, 4, 512)

    # Xception at 299x299: VALID entry convs, then SAME 3x3/2 pools: 149, 147, 74, 37, 19, 10.
    xc = shapes("xception", (299, 299, 3))
    sizes = [xc[k][1] for k in ("block1_conv1", "block1_conv2", "block2", "block3", "block4")]
    assert sizes == [149, 147, 74, 37, 19]
    assert xc["block12"] == (1, 19, 19, 728) and xc["block13"] == (1, 10, 10, 1024)
    assert xc["block14_sepconv2"] == (1, 10, 10, 2048)
    # Keras's 22,910,480 total = 22,855,952 trainable + 54,528 BN moving means and variances.
    xception = models.create("xception", num_classes=1000)
    x = jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: xception.init(jax.random.key(0), x), x)
    assert models.param_count(variables["batch_stats"]) == 54_528

    # Feature maps are sown per block, and the pooled penultimate features as "features".
    model = models.create("resnet18", num_classes=10, cifar_stem=True)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    _, state = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x, mutable=True), x
    )
    features = {k: v[0].shape for k, v in state["features"].items()}
    assert features["stem_out"] == (2, 32, 32, 64)
    assert features["stage3_block1_out"] == (2, 8, 8, 256)
    assert features["features"] == (2, 512)


def _batch_norms(model, input_shape):
    """`(path, epsilon, momentum)` of each BatchNorm layer `model` calls, in call order (traced)."""
    found = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, nn.BatchNorm):
            found.append(("/".join(module.path), module.epsilon, module.momentum))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        _traced(model, input_shape)
    return found


def test_xception_bn_momentum_reaches_every_batch_norm():
    # Every BatchNorm layer, the residual ones included, takes the field's momentum
    # (Flax's convention, as Keras's: the weight of the old running average).
    kw = dict(num_classes=3, small_input=True, middle_blocks=1, width_multiplier=0.0625)
    for momentum in (0.99, 0.9):
        norms = _batch_norms(models.create("xception", bn_momentum=momentum, **kw), (28, 28, 1))
        # block1: 2; blocks 2-4: 3 each; middle: 3; exit block: 3; block 7's sepconvs: 2
        assert len(norms) == 2 + 3 * 3 + 3 + 3 + 2
        assert {(eps, m) for _, eps, m in norms} == {(1e-3, momentum)}
        assert "block2/residual_bn" in [path for path, _, _ in norms]
    with pytest.raises(ValueError, match=r"bn_momentum must be in \[0, 1\), got 1.5"):
        _traced(models.create("xception", bn_momentum=1.5, **kw), (28, 28, 1))


# =========================================================================== ResNet blocks


def test_resnet_parameter_paths_do_not_change():
    # Checkpoints, freezing regexes and transfer match these paths: pinned at 224x224x3.
    expected = {
        "resnet18": {
            "stem_conv/kernel": (7, 7, 3, 64),
            "stem_bn/scale": (64,),
            "stage1_block2/conv2/kernel": (3, 3, 64, 64),
            "stage2_block1/proj_conv/kernel": (1, 1, 64, 128),
            "stage2_block1/proj_bn/bias": (128,),
            "stage4_block2/bn2/scale": (512,),
            "head/kernel": (512, 1000),
        },
        "resnet34": {
            "stage3_block6/conv1/kernel": (3, 3, 256, 256),
            "stage4_block3/bn1/bias": (512,),
        },
        "resnet50": {
            "stage1_block1/conv3/kernel": (1, 1, 64, 256),
            "stage1_block1/proj_conv/kernel": (1, 1, 64, 256),
            "stage3_block6/bn3/scale": (1024,),
            "stage4_block1/conv2/kernel": (3, 3, 512, 512),
            "head/kernel": (2048, 1000),
        },
    }
    leaves = {"resnet18": 62, "resnet34": 110, "resnet50": 161}
    for name, pinned in expected.items():
        paths = _param_paths(models.create(name, num_classes=1000), (224, 224, 3))
        assert {p: paths.get(p) for p in pinned} == pinned, name
        assert len(paths) == leaves[name], name


class _WideBlock(nn.Module):
    """A made-up block: one 3x3 conv to `2 * features` channels, + the shared shortcut."""

    expansion: ClassVar[int] = 2

    features: int
    stride: int = 1
    zero_init_residual: bool = False
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, *, train=False):
        out = self.features * self.expansion
        y = Conv2D(out, 3, stride=self.stride, padding=1, use_bias=False, name="conv")(x)
        y = resnet.norm(train, self.dtype, self.zero_init_residual, name="bn")(y)
        return nn.relu(y + resnet.shortcut(self, x, out, train))


def test_resnet_takes_any_block_that_declares_its_expansion():
    build = partial(resnet.ResNet, stage_sizes=(1, 2), block=_WideBlock, width=8, cifar_stem=True)
    assert _traced(build(num_classes=5), (16, 16, 3), batch=2)[0].shape == (2, 5)
    shapes = _param_paths(build(num_classes=5), (16, 16, 3))
    assert shapes["stage1_block1/conv/kernel"] == (3, 3, 8, 16)
    assert shapes["stage1_block1/proj_conv/kernel"] == (1, 1, 8, 16)  # 8 -> 8 * 2 channels
    assert shapes["stage2_block1/proj_conv/kernel"] == (1, 1, 16, 32)  # stride 2, 16 -> 32
    assert "stage2_block2/proj_conv/kernel" not in shapes  # identity
    assert shapes["head/kernel"] == (32, 5)  # width * 2 * expansion features

    class NoExpansion(nn.Module):
        features: int

    with pytest.raises(ValueError, match="ClassVar\\[int\\] expansion >= 1.*NoExpansion"):
        _traced(partial(resnet.ResNet, stage_sizes=(1,), block=NoExpansion)(), (16, 16, 3))


def test_se_gate_rescales_the_residual_branch_before_the_addition():
    # With the expand layer at zero the gate is sigmoid(0) = 1/2 for every channel, so
    # SEBasicBlock(x) = ReLU(y / 2 + x), y the residual branch: exactly a BasicBlock with
    # the same weights whose bn2 scale and bias are halved. (A gate after the addition
    # would give ReLU(y + x) / 2.)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 6, 6, 32)), jnp.float32)
    se_block, block = se_resnet.SEBasicBlock(32), resnet.BasicBlock(32)
    variables = fast_jit(se_block.init)(jax.random.key(4), x)
    params = dict(variables["params"])
    se = params.pop("se")
    assert jax.tree.map(jnp.shape, se) == {
        "reduce": {"kernel": (32, 2), "bias": (2,)},  # r = 16: 32 // 16 = 2 units
        "expand": {"kernel": (2, 32), "bias": (32,)},
    }
    params["se"] = {**se, "expand": jax.tree.map(jnp.zeros_like, se["expand"])}
    gated = fast_jit(se_block.apply)({**variables, "params": params}, x)
    del params["se"]
    halved = {**params, "bn2": jax.tree.map(lambda a: a / 2, params["bn2"])}
    apply = fast_jit(block.apply)
    np.testing.assert_allclose(
        gated, apply({**variables, "params": halved}, x), rtol=1e-6, atol=1e-6
    )
    # And not the gate after the addition: ReLU(y + x) / 2 differs.
    after = apply({**variables, "params": params}, x) / 2
    assert float(jnp.max(jnp.abs(after - gated))) > 0.1


def test_se_resnet18_is_resnet18_plus_one_gate_per_block():
    se = _param_paths(models.create("se_resnet18", num_classes=1000), (224, 224, 3))
    plain = _param_paths(models.create("resnet18", num_classes=1000), (224, 224, 3))
    gates = {p: s for p, s in se.items() if p not in plain}
    assert {p: s for p, s in se.items() if p in plain} == plain
    assert len(gates) == 8 * 4  # 8 blocks, reduce/expand kernel and bias each
    assert gates["stage1_block1/se/reduce/kernel"] == (64, 4)
    assert gates["stage4_block2/se/expand/kernel"] == (32, 512)
    assert sum(int(np.prod(s)) for s in gates.values()) == 89_080


# =========================================================================== MobileNet


def test_mobilenet_layers_follow_keras():
    model = models.create("mobilenet_v1", num_classes=1000)
    paths = _param_paths(model, (224, 224, 3))
    assert paths["conv1/kernel"] == (3, 3, 3, 32) and "conv1/bias" not in paths
    assert paths["conv_dw_1/depthwise/kernel"] == (3, 3, 1, 32)
    assert paths["conv_pw_1/kernel"] == (1, 1, 32, 64)
    assert paths["conv_dw_13/depthwise/kernel"] == (3, 3, 1, 1024)
    assert paths["conv_pw_13_bn/scale"] == (1024,)
    assert paths["head/kernel"] == (1, 1, 1024, 1000) and paths["head/bias"] == (1000,)
    assert len(paths) == 3 + 13 * 6 + 2  # conv1 + BN scale, bias; 13 x (2 convs, 2 BNs); head
    # Keras's total: 4,253,864 = 4,231,976 trainable + 21,888 BN moving means and variances.
    _, variables = _traced(model, (224, 224, 3))
    assert models.param_count(variables["batch_stats"]) == 21_888

    # Shapes: conv1 "same" /2, then the strided blocks pad bottom/right by one pixel and
    # convolve VALID. At 200x200 that differs from SAME on the odd 25x25 map of block 6:
    # floor((25 + 1 - 3) / 2) + 1 = 12 (SAME: ceil(25 / 2) = 13), and 12 -> 6 at block 12.
    def shapes(size):
        rows = models.layer_table(model, (size, size, 3))
        return {r["path"]: r["output_shape"][1:] for r in rows}

    at224, at200 = shapes(224), shapes(200)
    assert at224["conv1"] == (112, 112, 32) and at224["conv_dw_2"] == (56, 56, 64)
    assert at224["conv_pw_2"] == (56, 56, 128) and at224["conv_pw_13"] == (7, 7, 1024)
    assert at224["head"] == (1, 1, 1000)
    assert [at200[f"conv_pw_{i}"][0] for i in (1, 2, 4, 5, 6, 12)] == [100, 50, 25, 25, 12, 6]

    # BatchNorm is Keras's (epsilon 1e-3, momentum 0.99) in all 27 layers.
    norms = _batch_norms(model, (32, 32, 3))
    assert [(eps, m) for _, eps, m in norms] == [(1e-3, 0.99)] * 27
    assert norms[0][0] == "conv1_bn" and norms[-1][0] == "conv_pw_13_bn"


def test_mobilenet_activations_are_relu6():
    model = models.create("mobilenet_v1", num_classes=10, **mobilenet.STAND_IN)
    x = jnp.asarray(100.0 * np.random.default_rng(5).normal(size=(2, 32, 32, 3)), jnp.float32)
    _, state = fast_jit(lambda x: model.init_with_output(RNGS, x, mutable=True))(x)
    for key in ("conv1_out", "block1_out", "block2_out", "block3_out"):
        feature = state["features"][key][0]
        assert float(feature.min()) == 0.0 and float(feature.max()) <= 6.0, key
    assert float(state["features"]["conv1_out"][0].max()) == 6.0  # clipped, not just ReLU
