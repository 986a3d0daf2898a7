"""Bad input: one line that names the field and what would be valid, exit 2.

The messages below were each wrong once (issue 21): a quote eaten, the config file
named `--config`, a setting blamed on the input size, a model accepting an input it
shrinks to one pixel.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from research import models
from tests.helpers.reliability import DIGITS, ROOT, TRAIN


def _train(*args, env=None):
    return subprocess.run(
        [sys.executable, TRAIN, "--workdir=/nonexistent/never-written", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def _one_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.slow
def test_a_bad_value_keeps_its_quotes():
    line = _one_line(_train(f"--config={DIGITS}", "--config.num_epochs='abc"))
    assert line.endswith("""invalid literal for int() with base 10: "'abc\"""")
    line = _one_line(_train(f"--config={DIGITS}", "--config.num_epochs=abc"))
    assert line.endswith("invalid literal for int() with base 10: 'abc'")


@pytest.mark.slow
@pytest.mark.parametrize("form", ["space", "equals"])
def test_a_config_variant_is_named_as_given(form):
    given = f"{DIGITS}:adam"
    args = ["--config", given] if form == "space" else [f"--config={given}"]
    assert _one_line(_train(*args)) == (
        f"error: --config={given}: {DIGITS} has no variants (its get_config() takes no "
        "argument); drop ':adam'"
    )


@pytest.mark.slow
def test_a_bad_conv_algorithm_is_not_blamed_on_the_input():
    line = _one_line(_train(f"--config={DIGITS}", env={"RESEARCH_CONV_ALGORITHM": "bogus"}))
    assert line.startswith(
        "error: environment variable RESEARCH_CONV_ALGORITHM gives unknown conv algorithm "
        "'bogus'; known: "
    )
    assert "cannot take input" not in line


@pytest.mark.parametrize(
    "name, collapsed",
    [
        pytest.param("googlenet", "54 of its 57", marks=pytest.mark.slow),  # the full tier
        ("xception", "106 of its 108"),
    ],
)
def test_a_model_that_shrinks_the_input_to_one_pixel_is_refused(name, collapsed):
    # GoogLeNet and Xception took 8x8 digits and trained at chance (Xception 0.097).
    with pytest.raises(ValueError) as refused:
        models.check_input(name, models.create(name, num_classes=10), (8, 8, 1))
    assert str(refused.value).startswith(
        f"model {name!r} cannot learn from input (8, 8, 1): {collapsed} convolutions would "
        "see a 1x1 feature map (refused from 90% on)"
    )
    # Their small-input variants, and the usual sizes, are accepted.
    small = models.create(name, num_classes=10, small_input=True)
    models.check_input(name, small, (8, 8, 1))
    models.check_input(name, models.create(name, num_classes=10), (28, 28, 1))
    models.check_input("resnet18", models.create("resnet18", num_classes=10), (8, 8, 1))
