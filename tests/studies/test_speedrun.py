"""airbench94's recipe (experiments/cifar10_speedrun.py) and the pieces it added to the library.

Each piece is checked against airbench94.py's own formula (its schedule, its TTA
weights, its lookahead, its whitening), then one short run of the narrow variant
goes through the engine on real CIFAR-10 images.
"""

from __future__ import annotations

import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import config as config_lib
from research import optim
from research.data import augmentation, batching
from research.models import airbench
from research.optim import freeze, schedules
from research.optim.lookahead import Lookahead
from research.train import engine, loop
from research.train.steps import loss_and_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _experiment():
    path = os.path.join(ROOT, "experiments", "cifar10_speedrun.py")
    spec = importlib.util.spec_from_file_location("cifar10_speedrun", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- steps of a run with a cut last epoch --------------------------------------------------


def test_total_steps_counts_like_airbench():
    assert batching.total_steps(48, 10, 0.9) == 476 == math.ceil(48 * 9.9)  # 50,000 images
    assert batching.total_steps(9, 10, 0.9) == 90 == math.ceil(9 * 9.9)  # 10,000 images
    assert batching.total_steps(48, 10) == 480
    assert batching.total_steps(10, 3, 0.3) == 23  # 0.3 * 10 is 3.0000000000000004
    with pytest.raises(ValueError, match="last_epoch_fraction=0 must be in"):
        batching.total_steps(48, 10, 0)


def test_plan_chunks_stops_in_the_last_epoch_and_marks_its_end():
    plans = list(
        batching.plan_chunks(
            jax.random.PRNGKey(0),
            n=100,
            batch_size=10,
            remainder="drop",
            chunk=4,
            num_epochs=3,
            last_epoch_fraction=0.55,
        )
    )
    assert sum(len(p.rows) for p in plans) == 26  # 2 x 10 + ceil(5.5)
    assert [(p.epoch, p.step, len(p.rows), p.epoch_end) for p in plans[-2:]] == [
        (2, 20, 4, False),
        (2, 24, 2, True),
    ]
    whole = list(
        batching.plan_chunks(
            jax.random.PRNGKey(0), n=100, batch_size=10, remainder="drop", chunk=4, num_epochs=3
        )
    )
    np.testing.assert_array_equal(plans[-1].rows, whole[-2].rows[:2])  # same order, cut


# --- schedule, optimizer groups, lookahead, loss -------------------------------------------


def test_warmup_linear_is_airbench_get_lr():
    total = 476
    warmup = int(total * 0.23)

    def get_lr(step):  # airbench94.py, verbatim arithmetic
        if step < warmup:
            frac = step / warmup
            return 0.2 * (1 - frac) + 1.0 * frac
        frac = (step - warmup) / (total - warmup)
        return 1.0 * (1 - frac) + 0.07 * frac

    sched = schedules.warmup_linear(
        1.5, warmup_steps=warmup, total_steps=total, start_factor=0.2, end_factor=0.07
    )
    steps = np.arange(total)
    np.testing.assert_allclose(sched(steps), [1.5 * get_lr(t) for t in steps], rtol=1e-6)
    # The experiment's warmup_epochs rounds to airbench's int(0.23 T) at 48 and 9 steps/epoch.
    for spe in (48, 9):
        assert round(0.23 * 9.9 * spe) == int(batching.total_steps(spe, 10, 0.9) * 0.23)


def test_grad_scale_scales_the_gradient_not_the_weight_decay_and_freeze_after_stops():
    """PyTorch, group lr 64ε and weight_decay λ/64 (airbench's BatchNorm biases):
    Δθ = -64ε (g + λθ/64) = -ε (64 g + λθ), which "grad_scale:64" gives."""
    params = {"norm": {"bias": jnp.array([1.0, -2.0])}, "whiten": {"bias": jnp.array([0.5])}}
    grads = {"norm": {"bias": jnp.array([0.25, 0.5])}, "whiten": {"bias": jnp.array([1.0])}}
    lr, lam = 0.1, 0.01
    tx = optax.chain(optim.add_l2(lam, mask=None), optim.create("sgd", learning_rate=lr))
    rules = [("norm/bias", "grad_scale:64"), ("whiten/bias", "freeze_after:1"), (".*", "train")]
    tx, decisions = freeze.freeze(tx, params, rules, steps_per_epoch=2)
    assert [d.rule for d in decisions] == ["grad_scale:64", "freeze_after:1"]
    state = tx.init(params)
    updates = []
    for _ in range(3):
        u, state = tx.update(grads, state, params)
        updates.append(u)
    np.testing.assert_allclose(
        updates[0]["norm"]["bias"],
        -lr * (64 * grads["norm"]["bias"] + lam * params["norm"]["bias"]),
    )
    assert [float(u["whiten"]["bias"][0]) for u in updates] == pytest.approx([-0.1005, -0.1005, 0])
    with pytest.raises(ValueError, match="must be 'train', 'freeze', 'scale:F', 'grad_scale:F'"):
        freeze.label_params(params, [(".*", "grad_scale:-1")])


def test_lookahead_sync_follows_airbench():
    """every 2 steps: slow <- slow + (1 - d_t)(fast - slow), fast <- slow; at T fast <- slow."""
    la = Lookahead(every=2, decay=0.5, power=1.0, total_steps=5)
    slow = {"w": jnp.array(0.0)}
    fast, slow2 = la.sync(1, {"w": jnp.array(4.0)}, slow)
    assert (float(fast["w"]), float(slow2["w"])) == (4.0, 0.0)  # not due: unchanged
    fast, slow2 = la.sync(2, {"w": jnp.array(4.0)}, slow)  # d = 0.5 * 2/5 = 0.2
    assert float(slow2["w"]) == pytest.approx(0.8 * 4.0) and float(fast["w"]) == float(slow2["w"])
    fast, slow3 = la.sync(5, {"w": jnp.array(10.0)}, slow2)  # last step, not due: fast <- slow
    assert float(fast["w"]) == float(slow3["w"]) == pytest.approx(3.2)
    with pytest.raises(ValueError, match="lookahead_decay=1.5"):
        Lookahead(every=5, decay=1.5, power=3.0, total_steps=10)


def test_label_smoothing_is_pytorch_formula():
    logits = jnp.array([[2.0, -1.0, 0.5], [0.0, 0.3, -0.2]])
    labels = jnp.array([0, 2])
    loss, metrics = loss_and_metrics(logits, None, labels, "classify", label_smoothing=0.2)
    logp = np.asarray(jax.nn.log_softmax(logits))
    nll = -logp[np.arange(2), labels]
    want = 0.8 * nll + 0.2 * (-logp.mean(axis=1))  # torch: (1-α) NLL + α mean_k(-log p_k)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    np.testing.assert_array_equal(metrics["accuracy"], [1.0, 0.0])


# --- augmentation and test-time augmentation ----------------------------------------------


def test_airbench_augmentation_alternates_the_flip_and_translates_with_reflection():
    images = jnp.asarray(np.random.default_rng(0).normal(size=(64, 8, 8, 1)), jnp.float32)
    rows = jnp.arange(64)
    run_key = jax.random.PRNGKey(3)
    flips = []
    for epoch in (0, 1, 2):
        out = augmentation.alternating_flip(images, epoch=epoch, rows=rows, run_key=run_key)
        flipped = np.all(np.asarray(out) == np.asarray(images)[:, :, ::-1], axis=(1, 2, 3))
        assert np.all(flipped | np.all(np.asarray(out) == np.asarray(images), axis=(1, 2, 3)))
        flips.append(flipped)
    assert np.all(flips[0] != flips[1]) and np.all(flips[0] == flips[2])  # every other epoch
    assert 16 < flips[0].sum() < 48  # a coin per image
    offsets = jnp.array([[0, 4], [2, 2], [4, 1]] + [[2, 2]] * 61, jnp.int32)
    shifted = np.asarray(augmentation.translate(images, offsets, 2))
    padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    for i, (dy, dx) in enumerate(np.asarray(offsets[:3])):
        np.testing.assert_array_equal(shifted[i], padded[i, dy : dy + 8, dx : dx + 8])
    out = augmentation.AUGMENTATIONS.get("airbench").fn(
        jax.random.PRNGKey(1), images, epoch=0, rows=rows, run_key=run_key
    )
    assert out.shape == images.shape and augmentation.AUGMENTATIONS.get("airbench").needs_rows


def test_flip_translate_tta_is_airbench_tta_level_2():
    images = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 6, 3)), jnp.float32)
    views = augmentation.TTA.get("flip_translate")(images)
    assert [w for w, _ in views] == [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    padded = np.pad(np.asarray(images), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(views[2][1], padded[:, 0:6, 0:6])  # airbench [0:32, 0:32]
    np.testing.assert_array_equal(views[3][1], padded[:, 0:6, 0:6][:, :, ::-1])
    np.testing.assert_array_equal(views[4][1], padded[:, 2:8, 2:8])  # [2:34, 2:34]
    assert sum(w for w, _ in augmentation.TTA.get("flip")(images)) == 1


# --- the network ---------------------------------------------------------------------------


def test_whitening_kernel_whitens_patches_and_dirac_init_is_identity():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(3, 3))
    images = (rng.normal(size=(200, 9, 9, 3)) @ mix).astype(np.float32)  # correlated channels
    kernel = airbench.whitening_kernel(images, eps=1e-6)
    assert kernel.shape == (2, 2, 3, 24)
    np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])
    patches = np.concatenate(
        [images[:, i : i + 8, j : j + 8] for i in range(2) for j in range(2)], axis=-1
    ).reshape(-1, 12)
    out = patches @ kernel[..., :12].reshape(12, 12)
    np.testing.assert_allclose(out.T @ out / len(out), np.eye(12), atol=2e-3)
    k = np.asarray(airbench.dirac_init(jax.random.PRNGKey(0), (3, 3, 4, 6)))
    for o in range(4):
        expected = np.zeros((3, 3, 4))
        expected[1, 1, o] = 1
        np.testing.assert_array_equal(k[..., o], expected)
    assert np.all(np.abs(k[..., 4:]) <= 1 / 6) and np.any(k[..., 4:] != 0)  # 1/sqrt(3*3*4)


def test_data_init_sets_the_whitening_kernel_and_keeps_the_rest():
    model = airbench.Airbench(widths=(8, 8, 8), whiten_images=50)
    images = np.random.default_rng(0).normal(size=(80, 32, 32, 3)).astype(np.float32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), images[:1])
    out = model.data_init(variables, images)
    np.testing.assert_array_equal(
        out["params"]["whiten"]["kernel"], airbench.whitening_kernel(images[:50])
    )
    np.testing.assert_array_equal(
        out["params"]["head"]["kernel"], variables["params"]["head"]["kernel"]
    )
    with pytest.raises(ValueError, match="another channel count"):
        model.data_init(variables, images[..., :1])


# --- the experiment ------------------------------------------------------------------------


def test_recipe_values_and_variants_validate():
    exp = _experiment()
    full = exp.get_config()
    config_lib.validate(full)
    assert full.optim.learning_rate == pytest.approx(11.5 / (1024 * (1 + 1 / 0.15)) * 1024)
    assert full.optim.weight_decay == pytest.approx(0.0153 * 1024 / 11.5 / 1024)
    for variant in exp.VARIANTS:
        config_lib.validate(exp.get_config(variant))
    with pytest.raises(ValueError, match="cifar10_speedrun.py:nope: unknown variant"):
        exp.get_config("nope")
    bad = exp.get_config("smoke")
    bad.data.loader = "stream"
    with pytest.raises(ValueError, match="data.augment_policy='airbench'.*needs data.loader"):
        config_lib.validate(bad)
    bad = exp.get_config("smoke")
    bad.eval_tta = "mirror"
    with pytest.raises(ValueError, match="config.eval_tta='mirror' is invalid"):
        config_lib.validate(bad)


@pytest.mark.slow  # in the full tier: keeps the fast tier under 5 minutes
def test_smoke_run_one_epoch_on_cifar10(data_root):
    """The narrow variant through the engine: whitening set from the data and frozen, 8 steps."""
    config = _experiment().get_config("smoke")
    config.model.overrides.widths = (8, 16, 16)  # narrower still: a fast-tier test
    config.data.data_dir = str(data_root or "")
    run = loop.build_run(config)
    (outcome,) = engine.train(run, [engine.Member(config, None)])
    r = outcome.results
    assert r["status"] == "done" and r["steps"] == 8 and r["test_examples"] == 1000
    assert r["test_accuracy"] > 0.13  # chance is 0.10; 8 steps of the recipe
    kernel = airbench.whitening_kernel(run.splits.train.images[:500])
    np.testing.assert_allclose(outcome.state.params["whiten"]["kernel"], kernel, rtol=1e-6)
