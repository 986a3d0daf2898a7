"""The vmapped trial axis sharded over devices: same numbers, "trials" in the sharding.

Runs in a subprocess with two forced host CPU devices
(`--xla_force_host_platform_device_count=2`), since the device count is fixed
when JAX starts. The same trials run vmapped on one device and sharded over
both must agree to float32 rounding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent(
    """
    import json

    import jax
    import numpy as np

    from research import data
    from research.data import batching, pipeline
    from research.sweep import space
    from research.train import engine, loop

    config = space.get_sweep_config()
    config.model.name = "simple_cnn"
    config.data.name = "digits"
    config.batch_size = 64
    config.num_epochs = 1
    config.log_every_steps = 5
    config.progress = False
    config.optim.name = "momentum"
    config.sweep.axes = {"optim": {"learning_rate": (0.05, 0.1)}, "seed": (0, 1)}
    configs = [t.config for t in space.expand(config)]  # 4 trials
    # 320 training examples: one epoch is one chunk of 5 steps, so engine.train
    # reuses the chunk compiled below (the same shapes), which keeps this short.
    splits = pipeline.prepare(data.load("digits"), val_size=0.1, train_size=320)
    run = loop.build_run(configs[0], splits=splits)
    out = {"devices": jax.device_count()}

    def chunk(programs, count=4, steps=5):
        # Per-trial losses of `steps` steps, and the state's sharding.
        members = configs[:count]
        init_keys, data_keys, train_keys = engine.trial_keys(members)
        hps = engine.hyperparams(members, run.steps_per_epoch)
        states = programs.init(init_keys, train_keys, hps)
        plans = [
            next(batching.plan_chunks(
                k, n=len(splits.train), batch_size=64, remainder="drop", chunk=steps, num_epochs=1
            ))
            for k in data_keys
        ]
        idx = np.stack([p.rows for p in plans])  # (T, steps, B)
        on = lambda x: engine.on_mesh(x, programs.mesh)
        states, alive, metrics = programs.chunk(
            states, on(np.ones(count, bool)), on(splits.train.images), on(splits.train.labels),
            on(idx),
        )
        jax.block_until_ready((states, metrics))
        leaf = jax.tree_util.tree_leaves(states.params)[0]
        return {
            "loss": np.asarray(metrics["loss"]).tolist(),
            "spec": [str(a) for a in leaf.sharding.spec],
            "mesh": dict(leaf.sharding.mesh.shape),
            "shard_rows": sorted({s.data.shape[0] for s in leaf.addressable_shards}),
        }

    sharded = engine.build_programs(run, "vmap")
    single = engine.build_programs(run, "vmap", devices=jax.devices()[:1])
    out["sharded"], out["single"] = chunk(sharded), chunk(single)
    # engine.train end to end: 3 trials padded to 4 on 2 devices, against the
    # first 3 of 4 on one device (4: the shapes compiled above).
    results = {}
    for name, programs, count in (("sharded", sharded, 3), ("single", single, 4)):
        members = [engine.Member(c) for c in configs[:count]]
        outcomes = engine.train(run, members, programs=programs)
        results[name] = {
            "test_loss": [o.results["test_loss"] for o in outcomes],
            "train_steps": [o.results["steps"] for o in outcomes],
            "trials": len(outcomes),
        }
    out["train_group"] = results
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def result():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.mark.slow
def test_trial_axis_is_sharded_over_the_trials_mesh_axis(result):
    assert result["devices"] == 2
    sharded, single = result["sharded"], result["single"]
    assert sharded["spec"][0] == "trials"
    assert sharded["mesh"] == {"trials": 2, "data": 1}
    assert sharded["shard_rows"] == [2]  # 4 trials, 2 per device
    assert single["mesh"] == {"trials": 1, "data": 1}
    assert single["shard_rows"] == [4]


@pytest.mark.slow
def test_sharded_trials_compute_what_one_device_computes(result):
    a, b = np.asarray(result["sharded"]["loss"]), np.asarray(result["single"]["loss"])
    assert a.shape == (4, 5)  # (trials, steps)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    assert len({round(x, 6) for x in a[:, -1]}) == 4  # the trials really differ


@pytest.mark.slow
def test_a_group_pads_to_the_device_count_and_drops_the_padding(result):
    sharded, single = result["train_group"]["sharded"], result["train_group"]["single"]
    assert sharded["trials"] == 3 and single["trials"] == 4
    np.testing.assert_allclose(sharded["test_loss"], single["test_loss"][:3], atol=1e-5, rtol=1e-5)
    assert sharded["train_steps"] == single["train_steps"][:3] == [5, 5, 5]
