"""The model zoo, parametrized over the registry: a new model is tested by its registry line.

Every registered model must appear in exactly one of `PUBLISHED` (a parameter
count from a cited source, checked at the paper's configuration) or `BY_FORMULA`
(a count worked out by hand in this file).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import models

# name -> (trainable parameters at the paper's input size and classes, source)
PUBLISHED = {
    # The lecture notes' Keras model.summary() of this network at 28x28x1, 10 classes.
    "lecture_cnn": (538_698, "lecture notes 003 (Keras CNN), Keras summary"),
    # LeNet-5 with full C3 connectivity at 32x32x1: 156 + 2,416 + 48,120 + 10,164 + 850
    # (d2l.ai "Convolutional Neural Networks (LeNet)"; LeCun et al. 1998 quote ~60,000).
    "lenet5": (61_706, "d2l.ai LeNet, 32x32 input"),
    # torchvision docs (AlexNet_Weights / VGG*_Weights.IMAGENET1K_V1 "num_params"), 224x224x3.
    "alexnet": (61_100_840, "torchvision alexnet docs, 224x224x3, 1000 classes"),
    "vgg11": (132_863_336, "torchvision vgg11 docs, 224x224x3, 1000 classes"),
    "vgg16": (138_357_544, "torchvision vgg16 docs, 224x224x3, 1000 classes"),
    # torchvision docs (GoogLeNet_Weights / ResNet*_Weights.IMAGENET1K_V1 "num_params"),
    # 224x224x3: GoogLeNet without the auxiliary classifiers; BN scale and bias count,
    # running statistics do not (they are buffers in PyTorch, "batch_stats" here).
    "googlenet": (6_624_904, "torchvision googlenet docs, 224x224x3, 1000 classes"),
    "resnet18": (11_689_512, "torchvision resnet18 docs, 224x224x3, 1000 classes"),
    "resnet34": (21_797_672, "torchvision resnet34 docs, 224x224x3, 1000 classes"),
    "resnet50": (25_557_032, "torchvision resnet50 docs, 224x224x3, 1000 classes"),
    # Keras Applications Xception, model.summary() at 299x299x3, 1000 classes: total
    # 22,910,480 = trainable 22,855,952 + 54,528 BN moving means/variances (non-trainable).
    "xception": (22_855_952, "Keras Applications Xception summary: trainable params"),
}

# name -> (input shape, classes, count computed by hand below)
BY_FORMULA = {
    # 784*256+256 + 256*128+128 + 128*10+10
    "mlp": ((28, 28, 1), 10, 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10),
    # At 28x28x1, latent 32: encoder conv1 3*3*1*32+32 = 320 (-> 14x14x32),
    # conv2 3*3*32*64+64 = 18,496 (-> 7x7x64), latent (7*7*64)*32+32 = 100,384;
    # decoder dense1 32*(7*7*64)+7*7*64 = 103,488, conv1 3*3*64*32+32 = 18,464 (14x14),
    # conv2 3*3*32*1+1 = 289 (28x28).
    "conv_autoencoder": ((28, 28, 1), 10, 320 + 18_496 + 100_384 + 103_488 + 18_464 + 289),
    # conv1 3*3*1*32+32, conv2 3*3*32*64+64, dense1 (2*2*64)*128+128, head 128*10+10
    "simple_cnn": ((8, 8, 1), 10, 320 + 18_496 + 32_896 + 1_290),
    # At 32x32x3: whiten 2*2*3*24+24 = 312; block1 3*3*24*64 + 3*3*64*64 + 2*64 (BatchNorm
    # biases; no scales) = 50,816; block2 3*3*64*256 + 3*3*256*256 + 2*256 = 737,792;
    # block3 2*3*3*256*256 + 2*256 = 1,180,160; head 256*10 (no bias) = 2,560.
    "airbench": ((32, 32, 3), 10, 312 + 50_816 + 737_792 + 1_180_160 + 2_560),
}

SMALL_SHAPES = [(28, 28, 1), (32, 32, 3)]


def _init(name, input_shape, num_classes=10, *, batch=2, **extra):
    spec = models.spec(name)
    model = models.create(name, num_classes=num_classes, **{**spec.small_overrides, **extra})
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, *input_shape)), jnp.float32)
    # Plain init: a jitted initialiser (hundreds of random draws) compiles more slowly than
    # it dispatches (GoogLeNet: 88 s); apply and grad below are jitted instead.
    variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)
    return spec, model, variables, x


def test_every_model_has_a_checked_parameter_count():
    declared = set(PUBLISHED) | set(BY_FORMULA)
    assert set(models.names()) == declared, "add the new model to PUBLISHED or BY_FORMULA"
    assert not set(PUBLISHED) & set(BY_FORMULA)


def test_unknown_model_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown model 'lenet'") as err:
        models.create("lenet", num_classes=10)
    for name in models.names():
        assert name in str(err.value)


def test_unknown_override_is_named():
    with pytest.raises(ValueError, match="no field.*'widht'"):
        models.create("lenet5", num_classes=10, widht=3)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_published(name):
    count, source = PUBLISHED[name]
    spec = models.spec(name)
    model = models.create(name, num_classes=spec.paper_num_classes)
    x = jax.ShapeDtypeStruct((1, *spec.paper_input_shape), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    assert models.param_count(shapes) == count, source


@pytest.mark.parametrize("name", sorted(BY_FORMULA))
def test_parameter_count_matches_formula(name):
    input_shape, classes, count = BY_FORMULA[name]
    model = models.create(name, num_classes=classes)
    shapes = jax.eval_shape(
        lambda x: model.init(jax.random.key(0), x),
        jax.ShapeDtypeStruct((1, *input_shape), jnp.float32),
    )
    assert models.param_count(shapes) == count


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


@pytest.mark.parametrize("name", models.names())
def test_gradient_step_lowers_loss_on_fixed_batch(name):
    spec, model, variables, x = _init(name, (28, 28, 1), num_classes=10, batch=8)
    labels = jnp.arange(8) % 10
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}

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

    tx = optax.adam(1e-3)
    opt_state = tx.init(params)
    # Compiled once: op-by-op dispatch of a deep model's backward pass costs far more.
    value_and_grad = jax.jit(jax.value_and_grad(loss_fn))
    before, grads = value_and_grad(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    for _ in range(3):
        loss, grads = value_and_grad(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    after, _ = value_and_grad(params)
    assert float(after) < float(before)


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
    _, model, variables, x = _init("lenet5", (28, 28, 1))
    _, state = model.apply(variables, x, mutable=["features"])
    assert state["features"]["conv1_out"][0].shape == (2, 28, 28, 6)
    assert state["features"]["features"][0].shape == (2, 84)


def test_autoencoder_codes_adaptive_pooling_and_vgg_variants():
    # Autoencoder: codes for probes, decoding back without being told the shape, any H x W.
    _, model, variables, x = _init("conv_autoencoder", (28, 28, 1))  # ops compiled above
    z = model.apply(variables, x, method=model.encode)
    assert z.shape == (2, 32)
    images = model.apply(variables, z, method=model.decode)  # shape read off the parameters
    np.testing.assert_allclose(images, model.apply(variables, x), atol=1e-6)
    out, state = model.apply(variables, x, mutable=["features"])
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
    np.testing.assert_allclose(pool.apply({}, x), expected, rtol=1e-5, atol=1e-6)
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


def test_xception_bn_momentum_sets_the_running_average_update():
    # One training step from the initial statistics (mean 0): the new running
    # mean is (1 - momentum) * batch mean, for the field's value, in every BN layer.
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1)) + 3.0
    kw = dict(num_classes=3, small_input=True, middle_blocks=0, width_multiplier=0.0625)
    means = {}
    for momentum in (0.99, 0.9):
        model = models.create("xception", bn_momentum=momentum, **kw)
        variables = model.init(jax.random.key(1), x)
        _, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
        means[momentum] = np.asarray(updated["batch_stats"]["block1_conv1_bn"]["mean"])
    np.testing.assert_allclose(means[0.9], means[0.99] * 10.0, rtol=1e-4)
    assert np.abs(means[0.9]).max() > 0
    with pytest.raises(ValueError, match=r"bn_momentum must be in \[0, 1\), got 1.5"):
        models.create("xception", bn_momentum=1.5, **kw).init(jax.random.key(1), x)
