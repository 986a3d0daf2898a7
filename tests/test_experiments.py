"""Every experiment config and variant loads, validates and expands as its docstring says.

No training here: this catches a study whose grid names a missing field, a bad
value or a trial count that no longer matches the command in its docstring.
"""

from __future__ import annotations

import csv
import importlib.util
import os

import numpy as np
import pytest

from research import config as base_config
from research.sweep import space

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name: str):
    path = os.path.join(ROOT, "experiments", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# (experiment, variant, trials): the counts the docstrings and the README state.
SWEEPS = [
    ("compare_optimizers", "mnist", 72),
    ("compare_optimizers", "digits", 54),
    ("compare_architectures", "small", 5 * 2),  # 5 models on MNIST x 2 seeds
    ("compare_architectures", "full", 7 * 3 * 3),
    ("compare_freezing", "small", 2 * 6 * 3 * 2),  # pairs x strategies x sizes x seeds
    ("compare_freezing", "full", 2 * 8 * 3 * 3),
    ("autoencoder", "small", 3 * 2),  # latent sizes x seeds, MNIST only
    ("autoencoder", "full", 2 * 5 * 3),
    ("filters_and_features", "small", 1),
    ("filters_and_features", "full", 1),
    ("optimizers_cifar10", "full", 6 * 6 * 3),  # optimizers x learning rates x seeds
    ("optimizers_cifar10", "cpu", 6 * 2 * 2),
]


@pytest.mark.parametrize(("name", "variant", "trials"), SWEEPS, ids=lambda v: str(v))
def test_sweep_variants_expand(name, variant, trials):
    config = _load(name).get_config(variant)
    expanded = space.expand(config)  # validates every trial's config
    stages = space.stages(config)  # and every pretraining stage
    assert expanded, f"{name}:{variant} has no trials"
    if trials is not None:
        assert len(expanded) == trials
    assert len({t.id for t in expanded}) == len(expanded), "trial ids must be unique"
    for t in expanded:
        assert not t.pretrain or t.pretrain in stages


@pytest.mark.parametrize(
    "name",
    [
        "compare_optimizers",
        "compare_architectures",
        "compare_freezing",
        "autoencoder",
        "filters_and_features",
        "optimizers_cifar10",
    ],
)
def test_unknown_variant_names_the_file_and_the_choices(name):
    with pytest.raises(ValueError, match=rf"{name}\.py:nope: unknown variant"):
        _load(name).get_config("nope")


@pytest.mark.parametrize("name", ["digits", "lenet5_mnist"])
def test_training_configs_validate(name):
    config = _load(name).get_config()
    base_config.validate(config)
    assert config.model.name and config.data.name


# --------------------------------------------------------------------------- optimizers_cifar10


def test_optimizers_cifar10_grids_are_half_decades_centred_per_optimizer():
    module = _load("optimizers_cifar10")
    config = module.get_config("full")
    grids = {g["optim.name"][0]: g["optim.learning_rate"] for g in config.sweep.grids}
    assert sorted(grids) == ["adagrad", "adam", "momentum", "nesterov", "rmsprop", "sgd"]
    for name, lrs in grids.items():
        assert len(lrs) >= 6, name
        ratios = np.array(lrs[1:]) / np.array(lrs[:-1])
        np.testing.assert_allclose(ratios, 10**0.5, rtol=0.01, err_msg=name)
    assert 1.5 in grids["nesterov"]  # airbench94's rate (mean-loss form)
    assert grids["sgd"][3] == 10.0 and grids["adam"][0] == 1e-4
    # The recipe, with a validation split to choose the rate on; one program per optimizer.
    assert config.model.name == "airbench" and config.loss.label_smoothing == 0.2
    assert config.data.augment_policy == "airbench" and config.num_epochs == 10
    assert config.data.val_size == 5000 and config.deterministic
    assert config.sweep.parallel == "vmap" and config.sweep.group_size == 6 * 3
    assert config.sweep.target_accuracy == 0.94


@pytest.mark.slow
def test_optimizers_cifar10_cpu_variant_runs_and_reports_each_optimizer(tmp_path, data_root):
    """The CPU variant end to end: 24 trials, the generic summary and optimizers.md."""
    from research.sweep import runner

    config = _load("optimizers_cifar10").get_config("cpu")
    config.data.data_dir = str(data_root or "")
    done = runner.run_sweep(config, str(tmp_path))
    assert done["trials"] == 24 and len(done["ran"]) == 24 and done["parallel"] == "sequential"
    with open(tmp_path / "optimizers.csv") as f:
        table = list(csv.DictReader(f))
    grids = {g["optim.name"][0]: g["optim.learning_rate"] for g in config.sweep.grids}
    assert [r["optimizer"] for r in table] == list(grids)
    for r in table:
        assert float(r["best_learning_rate"]) in grids[r["optimizer"]]
        assert r["seeds"] == "2"
        mean, std = float(r["test_accuracy_mean"]), float(r["test_accuracy_std"])
        assert 0.0 <= mean <= 1.0 and std >= 0.0
        k, n = map(int, r["reached_target"].split("/"))
        assert n == 2 and 0 <= k <= 2
        if k:  # epochs at an epoch end within the 2 trained; seconds within the trial's time
            assert float(r["epochs_to_target_mean"]) in (1.0, 1.5, 2.0)
            assert float(r["seconds_to_target_mean"]) > 0.0
        else:
            assert r["epochs_to_target_mean"] == r["seconds_to_target_mean"] == ""
    # Better than chance (10 classes) for at least the recipe's own rule, tuned.
    nesterov = next(r for r in table if r["optimizer"] == "nesterov")
    assert float(nesterov["test_accuracy_mean"]) > 0.15
    text = (tmp_path / "optimizers.md").read_text()
    assert text.count("\n| ") == 6 and "epochs to val ≥ 0.2" in text
    assert (tmp_path / "summary.md").exists() and (tmp_path / "trials.csv").exists()
