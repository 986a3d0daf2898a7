"""Every experiment config and variant loads, validates and expands as its docstring says.

No training here: this catches a study whose grid names a missing field, a bad
value or a trial count that no longer matches the command in its docstring.
"""

from __future__ import annotations

import importlib.util
import os

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
