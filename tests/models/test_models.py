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
The families one by one (shapes, blocks, BatchNorm) are in test_families.py,
scanned blocks in test_scan.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import models
from research.models import mobilenet
from research.optim.freeze import param_path
from tests.helpers.fast_tier import fast_jit
from tests.helpers.models import RNGS
from tests.helpers.models import param_paths as _param_paths
from tests.helpers.models import traced as _traced

SMALL_SHAPES = [(28, 28, 1), (32, 32, 3)]
STAND_IN_SHAPE = (28, 28, 1)  # the fast tier's one input size


def _init(name, input_shape, num_classes=10, *, batch=2, **extra):
    spec = models.spec(name)
    model = models.create(name, num_classes=num_classes, **{**spec.small_overrides, **extra})
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, *input_shape)), jnp.float32)
    # Plain init: a jitted initialiser (hundreds of random draws) compiles more slowly than
    # it dispatches (GoogLeNet: 88 s); apply and grad below are jitted instead.
    variables = model.init(RNGS, x)
    return spec, model, variables, x


def _stand_in(name, num_classes=10):
    """The registry's stand-in of `name`: its small overrides, then its stand-in overrides."""
    spec = models.spec(name)
    return models.create(name, num_classes=num_classes, **{**spec.small_overrides, **spec.stand_in})


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
