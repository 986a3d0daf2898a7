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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(
    """
    import json

    import jax
    import numpy as np

    from research import data
    from research.data import pipeline
    from research.sweep import space, vmapped
    from research.train import loop

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
    # 320 training examples: one epoch is one chunk of 5 steps, so train_group
    # reuses the chunk compiled below (the same shapes), which keeps this short.
    splits = pipeline.prepare(data.load("digits"), val_size=0.1, train_size=320)
    out = {"devices": jax.device_count()}

    def chunk(group, count=4, steps=5):
        # Per-trial losses of `steps` steps, and the state's sharding.
        members = configs[:count]
        init_keys, data_keys, train_keys = vmapped._keys(members)
        hps = vmapped.hyperparams(members, group.run.steps_per_epoch)
        states = group.init(init_keys, train_keys, hps)
        rows = vmapped._epoch_rows(data_keys, 0, len(splits.train), members[0])
        idx = np.stack([np.stack(r[:steps]) for r in rows])  # (T, steps, B)
        on = lambda x: loop._on_mesh(x, group.trials_mesh)
        states, metrics = group.chunk(
            states, on(splits.train.images), on(splits.train.labels), on(idx)
        )
        jax.block_until_ready((states, metrics))
        leaf = jax.tree_util.tree_leaves(states.params)[0]
        return {
            "loss": np.asarray(metrics["loss"]).tolist(),
            "spec": [str(a) for a in leaf.sharding.spec],
            "mesh": dict(leaf.sharding.mesh.shape),
            "shard_rows": sorted({s.data.shape[0] for s in leaf.addressable_shards}),
        }

    sharded = vmapped.build_group(configs[0], splits)
    single = vmapped.build_group(configs[0], splits, devices=jax.devices()[:1])
    out["sharded"], out["single"] = chunk(sharded), chunk(single)
    # train_group end to end: 3 trials padded to 4 on 2 devices, against the
    # first 3 of 4 on one device (4: the shapes compiled above).
    results = {}
    for name, group, count in (("sharded", sharded, 3), ("single", single, 4)):
        states, res = vmapped.train_group(configs[:count], splits, group=group, vmap=True)
        results[name] = {
            "test_loss": [r["test_loss"] for r in res],
            "train_steps": [r["steps"] for r in res],
            "trials": int(jax.tree_util.tree_leaves(states.params)[0].shape[0]),
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


def test_trial_axis_is_sharded_over_the_trials_mesh_axis(result):
    assert result["devices"] == 2
    sharded, single = result["sharded"], result["single"]
    assert sharded["spec"][0] == "trials"
    assert sharded["mesh"] == {"trials": 2, "data": 1}
    assert sharded["shard_rows"] == [2]  # 4 trials, 2 per device
    assert single["mesh"] == {"trials": 1, "data": 1}
    assert single["shard_rows"] == [4]


def test_sharded_trials_compute_what_one_device_computes(result):
    a, b = np.asarray(result["sharded"]["loss"]), np.asarray(result["single"]["loss"])
    assert a.shape == (4, 5)  # (trials, steps)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    assert len({round(x, 6) for x in a[:, -1]}) == 4  # the trials really differ


def test_train_group_pads_to_the_device_count_and_drops_the_padding(result):
    sharded, single = result["train_group"]["sharded"], result["train_group"]["single"]
    assert sharded["trials"] == 3 and single["trials"] == 4
    np.testing.assert_allclose(sharded["test_loss"], single["test_loss"][:3], atol=1e-5, rtol=1e-5)
    assert sharded["train_steps"] == single["train_steps"][:3] == [5, 5, 5]
