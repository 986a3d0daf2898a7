"""results.json's conv_algorithm and pool_algorithm say what ran, fallbacks included."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from research.config import get_base_config
from research.layers import Conv2D, MaxPool2D
from research.layers import algorithm_choice as AC
from research.layers import pool_algorithms as PA
from research.train import assemble, engine


class TwoPools(nn.Module):
    """A 2x2 stride-2 pool (non-overlapping) and a 3x3 stride-2 pool (overlapping)."""

    @nn.compact
    def __call__(self, x):
        x = Conv2D(8, 3, padding="SAME", name="conv1")(x)  # 1 input channel: shallow
        x = MaxPool2D(2, name="pool1")(x)
        x = Conv2D(8, 3, padding="SAME", name="conv2")(x)
        return MaxPool2D(3, stride=2, name="pool2")(x)


def traced(model, shape, **override):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    with AC.override(**override), AC.recording() as ran:
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    return ran


def test_overlapping_pools_are_recorded_as_reduce_window():
    ran = traced(TwoPools(), (1, 16, 16, 1), conv="xla", pool="reshape")
    assert ran["pool"] == {
        "max_pool non-overlapping": {"reshape"},
        "max_pool overlapping or padded": {"reduce_window"},
    }
    assert AC.summarize(ran["pool"], "reshape") == {
        "max_pool non-overlapping": "reshape",
        "max_pool overlapping or padded": "reduce_window",
    }
    # One algorithm for every conv: the field stays a plain string.
    assert ran["conv"] == {"conv shallow": {"xla"}, "conv": {"xla"}}
    assert AC.summarize(ran["conv"], "xla") == "xla"
    ran = traced(TwoPools(), (1, 16, 16, 1), conv="xla", pool="reduce_window")
    assert AC.summarize(ran["pool"], "reduce_window") == "reduce_window"
    # No pool traced: the chosen algorithm stands.
    assert AC.summarize({}, "reshape") == "reshape"


def test_a_fallback_inside_one_kind_lists_both():
    # Two algorithms ran: a dict, even with one kind of layer.
    assert AC.summarize({"conv": {"tiled", "im2col"}}, "tiled") == {"conv": "im2col+tiled"}
    assert AC.summarize({"conv": {"tiled", "im2col"}, "conv grouped": {"im2col"}}, "x") == {
        "conv": "im2col+tiled",
        "conv grouped": "im2col",
    }


def test_nothing_is_recorded_outside_a_block():
    x = jnp.ones((1, 4, 4, 1))
    PA.max_pool(x, (2, 2), (2, 2), ((0, 0), (0, 0)), algorithm="reshape")  # no error, no record
    with AC.recording() as ran:
        pass
    assert ran == {"conv": {}, "pool": {}}


@pytest.mark.parametrize(
    ("model", "image_size", "pool"),
    [("alexnet", 64, "reduce_window"), ("lenet5", 32, "reshape")],
)
def test_programs_record_what_the_model_runs(model, image_size, pool, monkeypatch):
    monkeypatch.setenv(AC.POOL_ENV_VAR, "reshape")
    config = get_base_config()
    config.model.name = model
    config.data.image_size = image_size
    run = assemble.build_run(config)
    programs = engine.build_programs(run, "sequential")
    # AlexNet's max pools are 3x3 stride 2: "reshape" does not apply, reduce_window ran.
    assert programs.algorithms["pool"] == pool
