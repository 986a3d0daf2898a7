"""Freezing rules, named transfer strategies and pretrained loading (research.optim.freeze,
research.train.transfer): frozen arrays must come out of training bit-identical."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from research import models, optim, train
from research.optim import freeze
from tests.helpers.training import fast_config


@functools.cache
def lenet_params():
    """LeNet-5's initial parameters (one jitted init for the whole module; arrays are immutable)."""
    model = models.create("lenet5", num_classes=10, padding=2)
    return jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]


def test_first_match_wins_and_every_decision_is_reported():
    rules = [("conv1/", "freeze"), ("conv", "scale:0.5"), (".*", "train")]
    labels, decisions = freeze.label_params(lenet_params(), rules)
    assert labels["conv1"]["kernel"] == "freeze"  # matched both conv1/ and conv: first wins
    assert labels["conv2"]["kernel"] == "scale:0.5"
    assert labels["head"]["bias"] == "train"
    by_path = {d.path: (d.rule, d.pattern) for d in decisions}
    assert by_path["conv1/bias"] == ("freeze", "conv1/")
    assert by_path["dense1/kernel"] == ("train", ".*")
    assert len(decisions) == 10  # 5 layers x (kernel, bias)


def test_uncovered_parameters_are_an_error_listing_them():
    with pytest.raises(ValueError, match=r"no rule for 6 parameter.*dense1/bias.*catch-all"):
        freeze.label_params(lenet_params(), [("conv", "freeze")])


@pytest.mark.parametrize(
    "rules,match",
    [([("(", "freeze")], "not a valid regex"), ([(".*", "thaw")], "'train', 'freeze', 'scale:F'")],
)
def test_bad_rules(rules, match):
    with pytest.raises(ValueError, match=match):
        freeze.label_params(lenet_params(), rules)


def test_conv_layers_in_network_order():
    model = models.create("lecture_cnn", num_classes=10)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    assert freeze.conv_layer_paths(shapes["params"]) == ["conv1", "conv2", "conv3", "conv4"]


@pytest.mark.parametrize(
    "strategy,n,frozen,scaled",
    [
        ("scratch", 0, set(), set()),
        ("finetune", 0, set(), set()),
        ("linear_probe", 0, {"conv1", "conv2", "dense1", "dense2"}, set()),
        ("freeze_first_n", 1, {"conv1"}, set()),
        ("freeze_first_n", 2, {"conv1", "conv2"}, set()),
        ("finetune_lower_lr", 0, set(), {"conv1", "conv2", "dense1", "dense2"}),
    ],
)
def test_strategy_rules(strategy, n, frozen, scaled):
    params = lenet_params()
    rules = freeze.strategy_rules(strategy, params, n=n, backbone_scale=0.1)
    _, decisions = freeze.label_params(params, rules)
    layers = {d.path.split("/")[0]: d.rule for d in decisions}
    assert {k for k, r in layers.items() if r == "freeze"} == frozen
    assert {k for k, r in layers.items() if r == "scale:0.1"} == scaled
    assert layers["head"] == "train"


def test_freeze_first_n_too_many_names_the_field():
    with pytest.raises(ValueError, match=r"transfer.n=3 must be in \[0, 2\].*conv1, conv2"):
        freeze.strategy_rules("freeze_first_n", lenet_params(), n=3)


def test_frozen_update_is_exactly_zero_with_adam_weight_decay_and_momentum():
    params = lenet_params()
    cfg = fast_config(**{"optim.name": "adam", "optim.weight_decay": 0.1}).optim
    tx = optim.from_config(cfg, steps_per_epoch=10, num_epochs=1)
    tx, _ = freeze.freeze(tx, params, [("conv1/", "freeze"), (".*", "train")])
    state = tx.init(params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    p = params
    for _ in range(5):
        updates, state = tx.update(grads, state, p)
        assert not np.any(np.asarray(updates["conv1"]["kernel"]))
        assert np.all(np.asarray(updates["conv2"]["kernel"]) != 0)
        p = optax.apply_updates(p, updates)
    np.testing.assert_array_equal(p["conv1"]["kernel"], params["conv1"]["kernel"])


def test_scaled_group_moves_at_the_fraction_of_the_rate():
    params = lenet_params()
    tx = optim.create("sgd", learning_rate=0.1)
    tx, _ = freeze.freeze(tx, params, [("head/", "train"), (".*", "scale:0.25")])
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["head"]["kernel"], -0.1)
    np.testing.assert_allclose(updates["conv1"]["kernel"], -0.025)


def _restore(workdir):
    manager = ocp.CheckpointManager(str(workdir / "checkpoints"))
    step = manager.latest_step()
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return state["state"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """simple_cnn with BatchNorm, pretrained on digits 0-4 (5 classes)."""
    workdir = tmp_path_factory.mktemp("pretrained")
    config = fast_config(
        **{"data.classes": (0, 1, 2, 3, 4), "num_epochs": 2, "model.overrides.batch_norm": True}
    )
    train.train_and_evaluate(config, str(workdir))
    return workdir


STRATEGY_CASES = [
    ("linear_probe", 0, ["conv1", "bn1", "conv2", "bn2", "dense1"]),
    # The fast tier keeps one strategy; every strategy runs in the full tier.
    pytest.param("freeze_first_n", 1, ["conv1"], marks=pytest.mark.slow),
    pytest.param("freeze_first_n", 2, ["conv1", "conv2"], marks=pytest.mark.slow),
    pytest.param("finetune", 0, [], marks=pytest.mark.slow),
    pytest.param("finetune_lower_lr", 0, [], marks=pytest.mark.slow),
]


@pytest.mark.parametrize("strategy,n,frozen_layers", STRATEGY_CASES)
def test_frozen_arrays_bit_identical_after_training(
    pretrained, tmp_path, strategy, n, frozen_layers
):
    # Target: digits 5-9 (similar task, 5 classes). Adam with weight decay on.
    config = fast_config(
        **{
            "data.classes": (5, 6, 7, 8, 9),
            "num_epochs": 1,
            "model.overrides.batch_norm": True,
            "transfer.pretrained": str(pretrained),
            "transfer.strategy": strategy,
            "transfer.n": n,
            "optim.weight_decay": 1e-2,
        }
    )
    train.train_and_evaluate(config, str(tmp_path))
    before, after = _restore(pretrained), _restore(tmp_path)
    report = json.loads((tmp_path / "transfer.json").read_text())
    # conv1, conv2 kernels; bn1, bn2 scale+bias; dense1, head kernel+bias; 4 statistics.
    assert len(report["loaded"]) == 10 + 4
    frozen_paths = {p.split("/")[0] for p in report["frozen"]}
    assert frozen_paths == set(frozen_layers)
    for layer in before["params"]:
        for name, old in before["params"][layer].items():
            new = after["params"][layer][name]
            if layer in frozen_layers:
                np.testing.assert_array_equal(new, old, err_msg=f"{layer}/{name} moved")
            else:
                assert not np.array_equal(new, old), f"{layer}/{name} did not train"
    # Frozen BatchNorm layers normalise with running averages, which stay unchanged.
    for bn in ("bn1", "bn2"):
        for stat in ("mean", "var"):
            old, new = before["batch_stats"][bn][stat], after["batch_stats"][bn][stat]
            if bn in frozen_layers:
                np.testing.assert_array_equal(new, old)
            else:
                assert not np.array_equal(new, old)


def test_batch_norm_update_policy_moves_frozen_statistics(pretrained, tmp_path):
    config = fast_config(
        **{
            "data.classes": (5, 6, 7, 8, 9),
            "num_epochs": 1,
            "model.overrides.batch_norm": True,
            "transfer.pretrained": str(pretrained),
            "transfer.strategy": "linear_probe",
            "transfer.batch_norm": "update",
        }
    )
    train.train_and_evaluate(config, str(tmp_path))
    before, after = _restore(pretrained), _restore(tmp_path)
    np.testing.assert_array_equal(after["params"]["bn1"]["scale"], before["params"]["bn1"]["scale"])
    assert not np.array_equal(
        after["batch_stats"]["bn1"]["mean"], before["batch_stats"]["bn1"]["mean"]
    )


def test_head_replaced_when_classes_differ(pretrained):
    model = models.create("simple_cnn", num_classes=10, batch_norm=True)
    variables = jax.jit(model.init)(jax.random.PRNGKey(3), jnp.zeros((1, 8, 8, 1)))
    params, _, report = train.transfer.load_pretrained(
        str(pretrained), variables["params"], variables["batch_stats"]
    )
    assert report.replaced == ["params/head/bias", "params/head/kernel"]
    assert "params/conv1/kernel" in report.loaded
    np.testing.assert_array_equal(params["head"]["kernel"], variables["params"]["head"]["kernel"])
    assert params["head"]["kernel"].shape == (128, 10)


def test_mismatched_shape_names_path_and_both_shapes(pretrained):
    model = models.create("simple_cnn", num_classes=5, widths=(16, 64), batch_norm=True)
    variables = jax.jit(model.init)(jax.random.PRNGKey(3), jnp.zeros((1, 8, 8, 1)))
    # Paths are visited in sorted order, so bn1 (before conv1) is the first mismatch.
    with pytest.raises(ValueError, match=r"'bn1/bias' has shape \(32,\) .* has shape \(16,\)"):
        train.transfer.load_pretrained(
            str(pretrained), variables["params"], variables["batch_stats"]
        )


def test_reset_head_keeps_fresh_head_when_shapes_match(pretrained):
    model = models.create("simple_cnn", num_classes=5, batch_norm=True)
    variables = jax.jit(model.init)(jax.random.PRNGKey(3), jnp.zeros((1, 8, 8, 1)))
    args = (str(pretrained), variables["params"], variables["batch_stats"])
    kept, _, report = train.transfer.load_pretrained(*args)
    assert report.replaced == []  # same shape: the source head is loaded by default
    assert not np.array_equal(kept["head"]["kernel"], variables["params"]["head"]["kernel"])
    reset, _, report = train.transfer.load_pretrained(*args, reset_head=True)
    assert report.replaced == ["params/head/bias", "params/head/kernel"]
    np.testing.assert_array_equal(reset["head"]["kernel"], variables["params"]["head"]["kernel"])
    np.testing.assert_array_equal(reset["conv1"]["kernel"], kept["conv1"]["kernel"])


@pytest.mark.parametrize("rule", ["scale:1.2.3", "scale:", "scale:-1", "scale:inf", "thaw"])
def test_a_bad_rule_is_one_friendly_line_naming_the_field(rule):
    with pytest.raises(ValueError) as err:
        freeze.label_params(lenet_params(), [(".*", rule)])
    assert str(err.value) == (
        f"transfer.rules: rule {rule!r} must be 'train', 'freeze', 'scale:F', "
        f"'grad_scale:F' (F > 0) or 'freeze_after:E' (E >= 0)"
    )
