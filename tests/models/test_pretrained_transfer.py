"""Imported weights in use: a run imported by the script loads through transfer, with the
source's preprocessing; the ImageNet variants of compare_freezing; the preprocessing tables.

Equality with torchvision and Keras, conversion errors and weight files: test_pretrained.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.models import pretrained
from research.models.pretrained import files, keras_zoo, torchvision_zoo
from research.models.pretrained.preprocessing import (
    check_compatible,
    normalize,
    preprocessing_for,
)
from tests.helpers.pretrained import ROOT, SCRIPT
from tests.helpers.pretrained import assert_same_tree as _assert_same_tree
from tests.helpers.pretrained import keras as _keras
from tests.helpers.pretrained import restored as _restored
from tests.helpers.pretrained import torchvision as _torchvision
from tests.helpers.pretrained import torchvision_model as _torchvision_model
from tests.helpers.requirements import requires

# --------------------------------------------------------------------------- import -> transfer


def _experiment():
    spec = importlib.util.spec_from_file_location(
        "compare_freezing", os.path.join(ROOT, "experiments", "compare_freezing.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def imported_resnet18(tmp_path_factory):
    """A random ResNet-18 saved as .pth and imported by the script, where the imagenet_resnet18
    variant of compare_freezing looks for it (relative to `root`)."""
    torch = requires("torch")
    root = tmp_path_factory.mktemp("pretrained")
    source = _torchvision_model("resnet18", seed=3)
    pth = root / "resnet18-random.pth"
    torch.save(source.state_dict(), pth)
    out = root / _experiment().IMAGENET_PRETRAINED["resnet18"]
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--source", "torchvision", "--model", "resnet18"]
        + ["--out", str(out), "--weights-file", str(pth)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    return root, out, pth, source


@pytest.mark.slow
def test_imported_run_loads_through_transfer(imported_resnet18):
    from research.train import transfer

    _, out, pth, source = imported_resnet18
    want = pretrained.from_torchvision("resnet18", source.state_dict())
    # The transfer study's model: CIFAR-10's 10 classes at 32x32, the published stem.
    model = models.create("resnet18", num_classes=10)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    fresh = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    params, stats, report = transfer.load_pretrained(
        str(out), fresh["params"], fresh["batch_stats"]
    )
    assert report.replaced == ["params/head/bias", "params/head/kernel"]
    assert len(report.loaded) == 100  # 60 params + 40 BatchNorm statistics
    loaded = {"params": params, "batch_stats": stats}
    for collection in ("params", "batch_stats"):
        flat_got = dict(jax.tree_util.tree_leaves_with_path(loaded[collection]))
        flat_want = dict(jax.tree_util.tree_leaves_with_path(want[collection]))
        for path, value in flat_want.items():
            if "head" in jax.tree_util.keystr(path):
                continue
            np.testing.assert_array_equal(np.asarray(flat_got[path]), value)

    # The checkpoint is an ordinary one: it restores with its checksum verified.
    _assert_same_tree(_restored(out), want)

    with open(out / "results.json") as f:
        results = json.load(f)
    assert results["params"] == 11_689_512 and results["model"] == "resnet18"
    with open(out / "pretrained.json") as f:
        record = json.load(f)
    assert record["weights_sha256"] == files.sha256_file(str(pth))
    assert record["source"] == "torchvision" and record["is_published_file"] is False
    assert record["weights"] == "local file"
    assert record["published_weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert preprocessing_for(str(out)) == record["preprocessing"]
    assert record["preprocessing"]["mean"] == [0.485, 0.456, 0.406]


@pytest.mark.slow
def test_a_transfer_run_uses_the_sources_preprocessing_or_says_why_not(imported_resnet18, tmp_path):
    """loop.prepare_data: RGB data normalized with ImageNet's mean/std (not its own), and
    1-channel data refused in one line before anything is trained."""
    from research.config import get_base_config
    from research.train import loop
    from tests.helpers.images import write_image_folder

    _, out, _, _ = imported_resnet18
    written = write_image_folder(tmp_path / "photos", per_class=6)
    config = get_base_config()
    config.data.name = f"folder:{tmp_path / 'photos'}"
    config.data.cache_dir = str(tmp_path / "cache")
    config.data.val_size = 0
    config.transfer.pretrained = str(out)
    splits, _ = loop.prepare_data(config)
    assert splits.mean == pytest.approx((0.485, 0.456, 0.406))
    assert splits.std == pytest.approx((0.229, 0.224, 0.225))
    assert any("normalized with the pretrained network" in n for n in splits.notes)
    assert any("the source network was trained on 224x224" in n for n in splits.notes)
    # Every pixel went through (v / 255 - mean) / std with ImageNet's numbers.
    values = np.concatenate([v.reshape(-1, 3) for v in written.values()]).astype(np.float32)
    expect = (values / 255.0 - np.float32([0.485, 0.456, 0.406])) / np.float32(
        [0.229, 0.224, 0.225]
    )
    got = np.concatenate([splits.train.images.reshape(-1, 3), splits.test.images.reshape(-1, 3)])
    assert sorted(map(tuple, np.round(got, 4))) == sorted(map(tuple, np.round(expect, 4)))

    config.data.name = "digits"
    with pytest.raises(ValueError, match=r"takes 3-channel RGB images but the data has 1 channel"):
        loop.prepare_data(config)


@pytest.mark.slow
def test_imagenet_transfer_variant_uses_the_imported_run(imported_resnet18, monkeypatch):
    from research.sweep import space

    root, out, _, _ = imported_resnet18
    monkeypatch.chdir(root)  # the variant names the folder relative to the repo root
    trials = space.expand(_experiment().get_config("imagenet_resnet18"))  # validates each
    assert len(trials) == 8 * 3 * 3  # strategies x target sizes x seeds
    sources = {t.config.transfer.pretrained for t in trials}
    assert sources == {"", "runs/pretrained/resnet18_torchvision"}
    assert {t.config.data.name for t in trials} == {"cifar10"}
    assert {t.config.transfer.n for t in trials} == {0, 1, 5, 10}
    notes = check_compatible(preprocessing_for(str(out)), (32, 32, 3))
    assert notes == [
        "the data is 32x32, the source network was trained on 224x224 crops: it runs at "
        "32x32 (no resizing), so its features see objects at ~0.14x the scale they were "
        "trained on"
    ]


@pytest.mark.parametrize("model", ["resnet18", "vgg16"])
def test_imagenet_variants_expand_and_validate(model, tmp_path, monkeypatch):
    from research.sweep import space

    experiment = _experiment()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="transfer.pretrained.*no checkpoints"):
        space.expand(experiment.get_config(f"imagenet_{model}"))  # not imported yet
    (tmp_path / experiment.IMAGENET_PRETRAINED[model] / "checkpoints").mkdir(parents=True)
    trials = space.expand(experiment.get_config(f"imagenet_{model}"))
    assert len(trials) == 8 * 3 * 3
    assert {t.config.model.name for t in trials} == {model}
    assert dict(trials[0].config.model.overrides) == {}  # the published stem: the weights fit
    freeze_n = {t.config.transfer.n for t in trials if t.config.transfer.strategy != "scratch"}
    assert freeze_n == {0, *experiment.IMAGENET_FREEZE_N[model]}


# --------------------------------------------------------------------------- preprocessing


def test_check_compatible_refuses_other_channel_counts_in_one_line():
    pre = torchvision_zoo.MODELS.get("resnet18").preprocessing.as_dict()
    with pytest.raises(ValueError) as err:
        check_compatible(pre, (28, 28, 1))
    assert str(err.value) == (
        "the pretrained network takes 3-channel RGB images but the data has 1 channel "
        "(28x28x1): use 3-channel data (e.g. cifar10, not mnist) or train from scratch"
    )
    assert check_compatible(pre, (224, 224, 3)) == []
    caffe = keras_zoo.MODELS.get("vgg16").preprocessing.as_dict()
    assert check_compatible(caffe, (224, 224, 3)) == [
        "channels reversed RGB -> BGR, as the source network expects"
    ]


def test_normalize_worked_example_and_missing_record(tmp_path):
    pre = {"mean": [0.5, 0.25, 0.0], "std": [0.5, 0.25, 1.0], "channel_order": "BGR"}
    pixels = np.array([[[[255, 0, 51]]]], np.uint8)  # one RGB pixel: 1.0, 0.0, 0.2
    # BGR: (0.2, 0.0, 1.0) -> ((0.2 - 0.5) / 0.5, (0.0 - 0.25) / 0.25, (1 - 0) / 1)
    np.testing.assert_allclose(normalize(pixels, pre)[0, 0, 0], [-0.6, -1.0, 1.0], rtol=1e-6)
    assert preprocessing_for(str(tmp_path)) is None  # one of our own runs: no record
    (tmp_path / "pretrained.json").write_text("{}")
    with pytest.raises(ValueError, match="no 'preprocessing' entry"):
        preprocessing_for(str(tmp_path))


def test_torchvision_table_matches_torchvision_weights():
    tv = _torchvision()
    for name in torchvision_zoo.MODELS:
        entry = torchvision_zoo.MODELS.get(name)
        weights = tv.get_model_weights(name)
        assert entry.weights == f"{weights.__name__}.{weights.DEFAULT.name}", name
        assert entry.url == weights.DEFAULT.url
        transform = weights.DEFAULT.transforms()
        pre = entry.preprocessing
        assert list(pre.input_size) == transform.crop_size * 2
        assert [pre.resize_size] == transform.resize_size
        if name == "googlenet":  # transform_input=True folds ImageNet's into (x - 0.5) / 0.5
            assert (pre.mean, pre.std) == ((0.5,) * 3, (0.5,) * 3)
        else:
            assert (list(pre.mean), list(pre.std)) == (transform.mean, transform.std)


@pytest.mark.parametrize(
    ("name", "module"),
    [("xception", "xception"), ("vgg16", "vgg16"), ("mobilenet_v1", "mobilenet")],
)
def test_keras_table_matches_keras_preprocess_input(name, module):
    keras = _keras()
    pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    theirs = getattr(keras.applications, module).preprocess_input(pixels.astype(np.float32))
    pre = keras_zoo.MODELS.get(name).preprocessing.as_dict()
    np.testing.assert_allclose(normalize(pixels, pre), np.asarray(theirs), atol=1e-4)


def test_torchvision_import_works_without_its_c_extension():
    torch = requires("torch")

    tv = _torchvision()
    logits = tv.resnet18(num_classes=3).eval()(torch.zeros(1, 3, 32, 32))
    assert tuple(logits.shape) == (1, 3)
