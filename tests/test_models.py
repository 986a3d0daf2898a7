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
}

SMALL_SHAPES = [(28, 28, 1), (32, 32, 3)]


def _init(name, input_shape, num_classes=10, *, batch=2, **extra):
    spec = models.spec(name)
    model = models.create(name, num_classes=num_classes, **{**spec.small_overrides, **extra})
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, *input_shape)), jnp.float32)
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
    out = model.apply(variables, x, train=False)
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
    before, grads = jax.value_and_grad(loss_fn)(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    for _ in range(3):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    after = loss_fn(params)
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
    from research.models.alexnet import AdaptiveAvgPool2D

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
