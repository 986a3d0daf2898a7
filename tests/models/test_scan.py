"""Scanned blocks: runs of identical blocks as one `nn.scan`, the same function and parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.tree_util import tree_leaves_with_path

from research import models
from research.optim.freeze import param_path
from tests.helpers.fast_tier import fast_jit
from tests.helpers.models import RNGS
from tests.helpers.models import traced as _traced

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
