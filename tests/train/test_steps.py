"""The compiled training chunk: a pure function of its inputs that donates its state."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from research import train
from tests.helpers.training import fast_config


def _one_chunk(run, programs, states, steps: int = 2):
    images, labels = run.splits.train.images, run.splits.train.labels
    idx = np.arange(64 * steps, dtype=np.int32).reshape(1, steps, 64) % len(labels)
    on = functools.partial(train.engine.on_mesh, mesh=programs.mesh)
    return programs.chunk(states, on(np.ones(1, bool)), on(images), on(labels), on(idx))


def _init(run, programs, config):
    init_keys, _, train_keys = train.engine.trial_keys([config])
    return programs.init(init_keys, train_keys, train.engine.hyperparams([config], 20))


def test_train_chunk_is_pure_and_donates_its_state():
    """A pure function of (state, batch): the same inputs give the same outputs; the
    input state's buffers are donated (reused for the output), not copied."""
    config = fast_config()
    run = train.build_run(config)
    programs = train.engine.build_programs(run)
    state = _init(run, programs, config)
    copy = jax.tree_util.tree_map(lambda a: a.copy(), state)
    s1, alive, m1 = _one_chunk(run, programs, state)
    assert all(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(state.params))
    assert not any(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(copy.params))
    s2, _, m2 = _one_chunk(run, programs, copy)
    assert train.tree_sha256(s1.params) == train.tree_sha256(s2.params)
    np.testing.assert_array_equal(m1["loss"], m2["loss"])
    assert m1["loss"].shape == (1, 2)  # (trials, steps)
    assert int(s1.step[0]) == 2 and bool(alive[0])


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_parameters():
    config = fast_config(compute_dtype="bfloat16")
    run = train.build_run(config)
    programs = train.engine.build_programs(run)
    state, _, metrics = _one_chunk(run, programs, _init(run, programs, config), steps=10)
    dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(state.params)}
    assert dtypes == {jax.numpy.dtype("float32")}
    losses = np.asarray(metrics["loss"][0])
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    # The forward pass really runs in bfloat16.
    params = jax.tree_util.tree_map(lambda x: x[0], state.params)
    out = run.model.apply({"params": params}, run.splits.train.images[:2])
    assert out.dtype == jax.numpy.bfloat16
