"""The model zoo, parametrized over the registry: a new model is tested by its registry entry.

Each `ModelSpec` in `research.models.MODELS` carries what its tests need: the
trainable-parameter count at the paper's configuration and its source, the
overrides for 28x28x1 / 32x32x3 inputs, and those of a small stand-in.

Fast tier (`make test`):
  * every model at its paper configuration, through `jax.eval_shape` (nothing is
    compiled): output shape and parameter count;
  * every model's stand-in (few blocks, narrow widths, every block type), compiled:
    a forward pass in evaluation mode and one gradient step in training mode.
Full tier (`make test-all`, `@pytest.mark.slow`): every model with its real
`small_overrides`, at 28x28x1 and 32x32x3, and several Adam steps.
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.tree_util import tree_leaves_with_path

from research import models
from research.layers import Conv2D
from research.models import mobilenet, resnet, se_resnet
from research.optim.freeze import param_path
from tests.fast_tier import fast_jit

SMALL_SHAPES = [(28, 28, 1), (32, 32, 3)]
STAND_IN_SHAPE = (28, 28, 1)  # the fast tier's one input size
RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}


def _init(name, input_shape, num_classes=10, *, batch=2, **extra):
    spec = models.spec(name)
    model = models.create(name, num_classes=num_classes, **{**spec.small_overrides, **extra})
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, *input_shape)), jnp.float32)
    # Plain init: a jitted initialiser (hundreds of random draws) compiles more slowly than
    # it dispatches (GoogLeNet: 88 s); apply and grad below are jitted instead.
    variables = model.init(RNGS, x)
    return spec, model, variables, x


def _traced(model, input_shape, batch=1):
    """`(output, variables)` of `model.init_with_output` as shapes: traced, not compiled."""
    x = jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init_with_output(RNGS, x), x)


def _stand_in(name, num_classes=10):
    """The registry's stand-in of `name`: its small overrides, then its stand-in overrides."""
    spec = models.spec(name)
    return models.create(name, num_classes=num_classes, **{**spec.small_overrides, **spec.stand_in})


def _param_paths(model, input_shape) -> dict[str, tuple[int, ...]]:
    """`"stage1_block1/conv1/kernel" -> shape` for every trainable parameter (traced)."""
    params = _traced(model, input_shape)[1]["params"]
    return {param_path(p): leaf.shape for p, leaf in jax.tree_util.tree_leaves_with_path(params)}


def _loss(spec, model, state, x, labels):
    """Training-mode loss of `params` (dropout with a fixed key, batch statistics)."""

    def loss_fn(params):
        out, _ = model.apply(
            {"params": params, **state},
            x,
            train=True,
            rngs={"dropout": jax.random.key(2)},
            mutable=["batch_stats"],
        )
        if spec.task == "reconstruct":
            return jnp.mean((out - x) ** 2)
        return optax.softmax_cross_entropy_with_integer_labels(out, labels).mean()

    return loss_fn


# =========================================================================== registry


def test_every_model_declares_its_parameter_count_and_source():
    for name in models.names():
        spec = models.spec(name)
        assert isinstance(spec.trainable_params, int) and spec.trainable_params > 0, name
        assert spec.params_source.strip(), f"{name}: params_source is empty"
        assert spec.task in ("classify", "reconstruct"), name
    # The sources as cited (the formula ones carry their arithmetic).
    assert models.spec("resnet50").params_source == (
        "torchvision resnet50 docs, 224x224x3, 1000 classes"
    )
    assert models.spec("mobilenet_v1").params_source == "Keras Applications MobileNet"
    assert models.spec("mlp").params_source.startswith(models.BY_FORMULA)
    assert models.spec("se_resnet18").params_source.startswith(models.BY_FORMULA)


def test_unknown_model_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown model 'lenet'") as err:
        models.create("lenet", num_classes=10)
    for name in models.names():
        assert name in str(err.value)


def test_unknown_override_is_named():
    with pytest.raises(ValueError, match="no field.*'widht'"):
        models.create("lenet5", num_classes=10, widht=3)


# =========================================================================== fast tier


@pytest.mark.parametrize("name", models.names())
def test_paper_configuration_output_shape_and_parameter_count(name):
    spec = models.spec(name)
    model = models.create(name, num_classes=spec.paper_num_classes)
    out, variables = _traced(model, spec.paper_input_shape, batch=2)
    classify = spec.task == "classify"
    expected = (2, spec.paper_num_classes) if classify else (2, *spec.paper_input_shape)
    assert out.shape == expected and out.dtype == jnp.float32
    assert models.param_count(variables) == spec.trainable_params, spec.params_source


@pytest.mark.parametrize("name", models.names())
def test_stand_in_forward_and_one_gradient_step(name):
    spec, model = models.spec(name), _stand_in(name)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, *STAND_IN_SHAPE)), jnp.float32)
    labels = jnp.arange(8) % 10
    lr = 1e-2

    def run(x):
        variables = model.init(RNGS, x)
        params = variables["params"]
        loss = _loss(spec, model, {k: v for k, v in variables.items() if k != "params"}, x, labels)
        out = model.apply(variables, x, train=False)  # running BN statistics, no dropout
        before, grads = jax.value_and_grad(loss)(params)  # batch statistics, dropout
        after = loss(jax.tree.map(lambda p, g: p - lr * g, params, grads))
        return variables, out, before, grads, after

    # One program (init, evaluation forward, gradient, step): one compile per model.
    variables, out, before, grads, after = fast_jit(run)(x)
    assert out.shape == (x.shape if spec.task == "reconstruct" else (8, 10))
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    # Every parameter gets a finite and nonzero gradient (each layer is wired into the
    # loss), and one gradient-descent step lowers the loss.
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        where = f"{name}: {param_path(path)}"
        assert bool(jnp.all(jnp.isfinite(g))), where
        assert float(jnp.max(jnp.abs(g))) > 0, where
    assert float(after) < float(before), (float(before), float(after))
    # The summary's rows add up to the parameter count.
    rows = models.summary(model, STAND_IN_SHAPE).splitlines()
    assert rows[-1] == f"Total trainable params: {models.param_count(variables):,}"


def test_stand_ins_keep_every_block_type():
    def paths(name):
        return set(_param_paths(_stand_in(name), STAND_IN_SHAPE))

    r18, r50 = paths("resnet18"), paths("resnet50")
    assert "stage1_block1/conv2/kernel" in r18 and "stage1_block1/proj_conv/kernel" not in r18
    assert "stage2_block1/proj_conv/kernel" in r18  # identity and projection shortcuts
    assert {"stage1_block2/conv3/kernel", "stage2_block1/proj_conv/kernel"} <= r50
    assert "stage2_block1/se/expand/kernel" in paths("se_resnet18")
    assert "block5/sepconv3/depthwise/depthwise/kernel" in paths("xception")  # middle flow
    assert {"inception3a/branch4_proj/conv/kernel", "inception5a/branch1/conv/kernel"} <= paths(
        "googlenet"
    )
    mobile = paths("mobilenet_v1")  # stride 1, stride 2, stride 1
    assert {f"conv_dw_{i}/depthwise/kernel" for i in (1, 2, 3)} <= mobile
    assert {"block1_conv1/kernel", "block2_conv2/kernel"} <= paths("vgg16")


# =========================================================================== full tier


@pytest.mark.slow
@pytest.mark.parametrize("input_shape", SMALL_SHAPES, ids=["28x28x1", "32x32x3"])
@pytest.mark.parametrize("name", models.names())
def test_small_inputs_init_apply_shape(name, input_shape):
    spec, model, variables, x = _init(name, input_shape, num_classes=7)
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    expected = x.shape if spec.task == "reconstruct" else (x.shape[0], 7)
    assert out.shape == expected
    assert out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    # The summary's rows add up to the parameter count.
    rows = models.summary(model, input_shape).splitlines()
    assert rows[-1] == f"Total trainable params: {models.param_count(variables):,}"


@pytest.mark.slow
@pytest.mark.parametrize("name", models.names())
def test_gradient_step_lowers_loss_on_fixed_batch(name):
    spec, model, variables, x = _init(name, (28, 28, 1), num_classes=10, batch=8)
    labels = jnp.arange(8) % 10
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}

    tx = optax.adam(1e-3)
    opt_state = tx.init(params)
    # Compiled once: op-by-op dispatch of a deep model's backward pass costs far more.
    value_and_grad = jax.jit(jax.value_and_grad(_loss(spec, model, state, x, labels)))
    before, grads = value_and_grad(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    for _ in range(3):
        loss, grads = value_and_grad(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    after, _ = value_and_grad(params)
    assert float(after) < float(before)


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


# =========================================================================== check_input


def test_check_input_names_the_smallest_square_input():
    mobile = models.create("mobilenet_v1", num_classes=10)
    with pytest.raises(ValueError) as err:
        models.check_input("mobilenet_v1", mobile, (8, 8, 1))
    # 31 -> 16 -> 8 -> 4 -> 2 -> 1; 30 -> 15 -> 7 -> 3 -> 1, and block 12's 3x3 window
    # does not fit the padded 1 + 1 pixels.
    assert str(err.value).startswith(
        "model 'mobilenet_v1' cannot take input (8, 8, 1): its smallest input is 31x31; fix: "
    )
    assert "larger than the padded input" in str(err.value.__cause__)
    models.check_input("mobilenet_v1", mobile, (31, 31, 3))  # accepted: no error
    with pytest.raises(ValueError, match="smallest input is 31x31"):
        models.check_input("mobilenet_v1", mobile, (30, 30, 3))
    # LeNet-5 at the paper's padding 0: 16 -> 12 -> 6 -> 2 -> 1; 15 -> 11 -> 5 -> 1, no pool.
    lenet = models.create("lenet5", num_classes=10)
    with pytest.raises(ValueError, match=r"^model 'lenet5' cannot take input \(8, 64, 1\): "):
        models.check_input("lenet5", lenet, (8, 64, 1))
    with pytest.raises(ValueError, match="its smallest input is 16x16; fix: "):
        models.check_input("lenet5", lenet, (15, 15, 1))
    models.check_input("lenet5", lenet, (16, 16, 1))
    models.check_input("lenet5", lenet, np.array([16, 16, 1]))  # NumPy ints are ints
    # The small overrides are what make 28x28 work.
    models.check_input(
        "mobilenet_v1",
        models.create("mobilenet_v1", num_classes=10, **mobilenet.SMALL_INPUTS),
        (28, 28, 1),
    )


def test_check_input_reports_other_errors_and_bad_shapes():
    model = models.create("resnet18", num_classes=10, width=0)
    with pytest.raises(ValueError) as err:
        models.check_input("resnet18", model, (32, 32, 3))
    # Not about the input (no size works): the model's own words, not "cannot take input".
    assert str(err.value) == "width must be an int >= 1, got 0 (building model 'resnet18')"
    with pytest.raises(ValueError, match=r"input_shape must be \(H, W, C\).*\(28, 28\)"):
        models.check_input("lenet5", models.create("lenet5", num_classes=10), (28, 28))


# =========================================================================== scanned blocks


def test_scan_groups_name_the_runs_of_identical_blocks():
    def groups(name, **overrides):
        return models.scan_groups(models.create(name, num_classes=10, **overrides))

    # Stage 1 of a BasicBlock ResNet keeps the stem's width: all its blocks are alike;
    # elsewhere a stage's first block strides (or widens) and the rest are alike.
    assert groups("resnet34") == {
        "stage1_blocks1to3": ("stage1_block1", "stage1_block2", "stage1_block3"),
        "stage2_blocks2to4": ("stage2_block2", "stage2_block3", "stage2_block4"),
        "stage3_blocks2to6": tuple(f"stage3_block{j}" for j in range(2, 7)),
        "stage4_blocks2to3": ("stage4_block2", "stage4_block3"),
    }
    assert list(groups("resnet50")) == [  # Bottleneck: stage 1's first block projects
        "stage1_blocks2to3",
        "stage2_blocks2to4",
        "stage3_blocks2to6",
        "stage4_blocks2to3",
    ]
    assert groups("resnet18") == {"stage1_blocks1to2": ("stage1_block1", "stage1_block2")}
    assert groups("xception") == {"blocks5to12": tuple(f"block{k}" for k in range(5, 13))}
    assert groups("xception", middle_blocks=1) == {}  # a run of one is not scanned
    assert groups("googlenet") == {}  # no scan_groups: no two blocks alike


def test_scan_blocks_stacks_parameters_and_keeps_the_default_layout():
    # The default is unchanged (pinned paths above); scan_blocks=True stacks each group's
    # blocks on a leading axis under the group's name, as `stack_blocks` does.
    def traced(scan_blocks):
        model = models.create("resnet34", num_classes=1000, scan_blocks=scan_blocks)
        return model, _traced(model, (224, 224, 3))[1]

    model, default = traced(False)
    assert models.create("resnet34", num_classes=1000).scan_blocks is False
    _, scanned = traced(True)
    groups = models.scan_groups(model)
    for collection in ("params", "batch_stats"):
        stacked = jax.eval_shape(lambda t: models.stack_blocks(t, groups), default[collection])
        assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(jnp.shape, scanned[collection])
    params = {param_path(p): leaf.shape for p, leaf in tree_leaves_with_path(scanned["params"])}
    assert params["stage3_blocks2to6/conv1/kernel"] == (5, 3, 3, 256, 256)
    assert params["stage2_block1/proj_conv/kernel"] == (1, 1, 64, 128)  # not in a group
    assert not any(p.startswith("stage3_block4/") for p in params)
    # The same network: the same parameter count.
    assert models.param_count(scanned) == models.param_count(default) == 21_797_672
    with pytest.raises(ValueError, match="scan_blocks must be True or False, got 1"):
        _traced(models.create("xception", num_classes=3, scan_blocks=1), (71, 71, 3))


def test_stack_and_unstack_blocks_round_trip_exactly():
    rng = np.random.default_rng(0)
    normal = lambda size: rng.normal(size=size).astype(np.float32)  # noqa: E731

    def block(c):
        return {
            "conv": {"kernel": normal((3, 3, c, c))},
            "bn": {"scale": normal(c)},
        }

    tree = {
        "stem": {"kernel": normal((3,))},
        "b1": block(4),
        "b2": block(4),
        "b3": block(4),
    }
    tree["head"] = {"kernel": normal((4, 2))}
    groups = {"blocks2to3": ("b2", "b3")}
    stacked = models.stack_blocks(tree, groups)
    assert list(stacked) == ["stem", "b1", "blocks2to3", "head"]  # where b2 stood
    np.testing.assert_array_equal(
        stacked["blocks2to3"]["conv"]["kernel"][1], tree["b3"]["conv"]["kernel"]
    )
    assert stacked["blocks2to3"]["bn"]["scale"].shape == (2, 4)
    back = models.unstack_blocks(stacked, groups)
    assert list(back) == list(tree)
    for (path, a), (_, b) in zip(
        tree_leaves_with_path(tree), tree_leaves_with_path(back), strict=True
    ):
        np.testing.assert_array_equal(a, b, err_msg=param_path(path))
    # A tree without the group (another collection, e.g. no BatchNorm there) is unchanged.
    assert models.stack_blocks({"stem": tree["stem"]}, groups) == {"stem": tree["stem"]}
    with pytest.raises(ValueError, match=r"group 'blocks2to3' lacks \['b3'\]"):
        models.stack_blocks({"b2": tree["b2"]}, groups)
    with pytest.raises(ValueError, match="'blocks2to3' .* have different shapes"):
        models.stack_blocks({"b2": tree["b2"], "b3": block(5)}, groups)
    with pytest.raises(
        ValueError, match=r"'blocks2to3' has 2 blocks \['b2', 'b3'\] but leading axes \[3\]"
    ):
        models.unstack_blocks({"blocks2to3": {"k": np.zeros((3, 2))}}, groups)


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("resnet34", {"stage_sizes": (3, 2), "width": 8}),
        pytest.param("resnet50", {"stage_sizes": (3, 1), "width": 4}, marks=pytest.mark.slow),
        pytest.param(
            "xception", {"middle_blocks": 3, "width_multiplier": 0.0625}, marks=pytest.mark.slow
        ),
    ],
)
def test_scanned_model_computes_the_default_models_function(name, overrides):
    # Given the default model's variables, stacked, the scanned model gives the same
    # logits, BatchNorm statistics, sown features and gradients (to float32 rounding: the
    # scan's loop is compiled apart from the blocks around it).
    kw = {**models.spec(name).small_overrides, **overrides}
    default = models.create(name, num_classes=10, **kw)
    scanned = models.create(name, num_classes=10, scan_blocks=True, **kw)
    groups = models.scan_groups(scanned)
    assert groups, name
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 16, 16, 3)), jnp.float32)
    labels = jnp.arange(4)

    def run(model, variables):
        def loss(params):
            out, state = model.apply(
                {**variables, "params": params},
                x,
                train=True,
                mutable=["batch_stats", "features"],
            )
            return optax.softmax_cross_entropy_with_integer_labels(out, labels).mean(), (out, state)

        (_, (out, state)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        return out, state, grads

    def both(x):
        variables = default.init(RNGS, x)
        del variables["features"]  # sown by init; apply sows afresh
        stacked = {c: models.stack_blocks(t, groups) for c, t in variables.items()}
        return run(default, variables), run(scanned, stacked)

    (out, state, grads), (s_out, s_state, s_grads) = fast_jit(both)(x)
    np.testing.assert_allclose(s_out, out, rtol=1e-5, atol=1e-5)
    assert sorted(s_state["features"]) == sorted(state["features"])  # per-block names kept
    for k, (value,) in state["features"].items():
        np.testing.assert_allclose(s_state["features"][k][0], value, rtol=1e-4, atol=1e-5)
    for got, want in (
        (models.unstack_blocks(s_state["batch_stats"], groups), state["batch_stats"]),
        (models.unstack_blocks(s_grads, groups), grads),
    ):
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
