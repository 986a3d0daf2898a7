"""The Python API (research/api.py): load_config, fit, restore and predict, run_sweep."""

import json
import os

import numpy as np
import pytest

import research
from research import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    config = research.load_config(os.path.join(ROOT, "experiments", "digits.py"))
    config.num_epochs = 3
    config.progress = False
    workdir = str(tmp_path_factory.mktemp("api") / "digits")
    return config, workdir, research.fit(config, workdir)


def test_fit_returns_the_results_record_and_the_history(digits_run):
    config, workdir, result = digits_run
    with open(os.path.join(workdir, "results.json")) as f:
        record = json.load(f)
    assert result.record == record
    assert result.status == "done"
    assert result.test_accuracy == record["test_accuracy"] > 0.8
    assert result.params_sha256 == record["params_sha256"]
    assert result["steps"] == result.steps == 60  # 3 epochs x 20 steps of 64 on 1294 images
    assert [row["step"] for row in result.history if "val_accuracy" in row] == [20, 40, 60]
    assert result.history[-1]["val_accuracy"] == record["val_accuracy"]


def test_restore_predicts_the_test_split_as_the_run_evaluated_it(digits_run):
    _, workdir, result = digits_run
    restored = research.restore(workdir)
    assert restored.step == 60
    raw = data.load("digits")
    logits = restored.predict(raw.test_images)
    assert logits.shape == (len(raw.test_labels), 10)
    accuracy = float(np.mean(np.argmax(logits, -1) == raw.test_labels))
    assert accuracy == pytest.approx(result.test_accuracy, abs=1e-12)


def test_bad_arguments_are_named(tmp_path, digits_run):
    with pytest.raises(ValueError, match=r"which='worst': must be 'latest' or 'best'"):
        research.restore(digits_run[1], which="worst")
    with pytest.raises(FileNotFoundError, match="holds no run"):
        research.restore(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"config 'nope.py': no file nope.py"):
        research.load_config("nope.py")
    restored = research.restore(digits_run[1])
    with pytest.raises(ValueError, match=r"images: expected uint8 \(N, H, W, C\)"):
        restored.predict(np.zeros((2, 8, 8, 1), np.float32))


def test_load_config_takes_a_variant():
    config = research.load_config(os.path.join(ROOT, "experiments", "compare_optimizers.py:digits"))
    assert config.data.name == "digits"
    assert "sweep" in config


@pytest.mark.slow  # 12-20 s: the full tier (the fast tier stays under 5 minutes)
def test_the_readmes_python_block_runs_as_written(tmp_path):
    """The block under README's `## Python` is the one this test runs (in a scratch
    folder whose `experiments/` is the repository's)."""
    import re
    import subprocess
    import sys

    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    os.symlink(os.path.join(ROOT, "experiments"), tmp_path / "experiments")
    script = block + "\nprint('RESULT', result.test_accuracy, logits.shape, len(curves))\n"
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))
    _, accuracy, shape = line.split(" ", 2)
    assert float(accuracy) > 0.95
    assert shape.startswith("(359, 10)")  # digits' 359 test images, 10 classes
    with open(tmp_path / "runs" / "digits-lr3e-3" / "results.json") as f:
        assert json.load(f)["learning_rate"] == 3e-3
