"""The best-validation checkpoint (config.checkpoint_best; research/train/checkpoint.py):
kept by orbax's preservation policy beside the latest ones, checksum-verified on
`read(..., best=True)` and `research.restore(workdir, which="best")`, and resumable."""

import json
import logging
import os
import shutil

import numpy as np
import pytest

import research
from research.train.checkpoint import read, tree_sha256

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def digits_config(**fields):
    """The quick start at lr 0.01, stopped by early stopping on val_loss (patience 1):
    val_loss falls for 4 epochs, then rises at epoch 5 (step 100), where it stops."""
    config = research.load_config(os.path.join(ROOT, "experiments", "digits.py"))
    config.num_epochs = 8
    config.progress = False
    config.optim.learning_rate = 0.01
    config.early_stopping.metric = "val_loss"
    config.early_stopping.patience = 1
    for key, value in fields.items():
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value
    return config


def val_losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {row["step"]: row["val_loss"] for row in map(json.loads, f) if "val_loss" in row}


def flat(tree):
    return {k: np.asarray(v) for k, v in research.train.outputs.flatten(tree).items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("best")
    best = str(base / "best")
    result = research.fit(digits_config(checkpoint_best="val_loss", keep_checkpoints=1), best)
    # The same training without a best checkpoint, every epoch's checkpoint kept.
    every = str(base / "every")
    reference = research.fit(digits_config(keep_checkpoints=10), every)
    return best, result, every, reference


def test_the_best_epoch_is_kept_beside_the_latest(runs):
    best, result, every, reference = runs
    assert result.params_sha256 == reference.params_sha256  # the option changes no number
    losses = val_losses(best)
    best_step = min(losses, key=losses.get)
    assert best_step == 80 and result.steps == 100  # the last epoch (5) was not the best
    # keep_checkpoints=1: the latest step, and the best one that orbax's BestN preserved.
    assert sorted(os.listdir(os.path.join(best, "checkpoints"))) == ["100", "80"]
    assert sorted(os.listdir(os.path.join(every, "checkpoints"))) == ["100", "20", "40", "60", "80"]

    restored = read(best, best=True)
    assert restored.step == best_step and restored.record["best_metric"] == "val_loss"
    # Its parameters are those saved at that epoch by the run that kept every epoch.
    saved = flat(read_step(every, best_step)["params"])
    for key, value in flat(restored.state["params"]).items():
        np.testing.assert_array_equal(value, saved[key])
    latest = read(best)
    assert latest.step == 100
    assert tree_sha256(latest.state["params"]) == result.params_sha256
    assert tree_sha256(restored.state["params"]) != result.params_sha256


def read_step(workdir, step):
    """Checkpoint `step` of `workdir`, read by moving the newer ones aside for a moment."""
    tmp = os.path.join(workdir, "checkpoints.later")
    os.makedirs(tmp)
    directory = os.path.join(workdir, "checkpoints")
    newer = [s for s in os.listdir(directory) if int(s) > step]
    for s in newer:
        os.replace(os.path.join(directory, s), os.path.join(tmp, s))
    try:
        restored = read(workdir)
        assert restored.step == step
        return restored.state
    finally:
        for s in newer:
            os.replace(os.path.join(tmp, s), os.path.join(directory, s))
        os.rmdir(tmp)


def test_restore_best_and_latest_give_their_own_models(runs):
    best, result, _, _ = runs
    from research import data

    raw = data.load("digits")
    latest = research.restore(best)
    top = research.restore(best, which="best")
    assert (latest.step, top.step) == (100, 80)
    accuracy = np.mean(np.argmax(latest.predict(raw.test_images), -1) == raw.test_labels)
    assert accuracy == pytest.approx(result.test_accuracy, abs=1e-12)
    assert not np.array_equal(top.predict(raw.test_images), latest.predict(raw.test_images))


def test_a_damaged_best_checkpoint_is_set_aside_for_the_next_best(runs, tmp_path, caplog):
    workdir = str(tmp_path / "copy")
    shutil.copytree(runs[0], workdir)
    # Change the checksum the best step's record holds: its state no longer verifies.
    record_dir = os.path.join(workdir, "checkpoints", "80", "record")
    (name,) = [n for n in os.listdir(record_dir) if n not in ("commit_success.txt",)]
    path = os.path.join(record_dir, name)
    with open(path) as f:
        record = json.load(f)
    record["state_sha256"] = "0" * 64
    with open(path, "w") as f:
        json.dump(record, f)
    with caplog.at_level(logging.WARNING):
        restored = read(workdir, best=True)
    assert restored.step == 100  # the only other step, now the best one left
    assert "checksum mismatch" in caplog.text and "80 is damaged" in caplog.text
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints.damaged"))) == ["80-0"]


def test_a_run_without_a_best_checkpoint_says_so(runs):
    _, _, every, _ = runs
    with pytest.raises(FileNotFoundError, match=r"no best checkpoint in .*checkpoint_best="):
        research.restore(every, which="best")


def test_an_interrupted_run_resumes_to_the_same_best_and_stop(runs, tmp_path):
    best, result, _, _ = runs
    workdir = str(tmp_path / "resumed")
    config = digits_config(checkpoint_best="val_loss", keep_checkpoints=1)

    def crash(metrics):  # a kill at the end of epoch 3, before its checkpoint
        if metrics["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        research.fit(config, workdir, callbacks=[crash])
    # Epoch 2 is both the latest and the best so far: the only step kept.
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["40"]
    again = research.fit(config, workdir)
    assert again.record["resumed_from_step"] == 40
    assert again.record["stopped_early"] == result.record["stopped_early"]
    assert again.params_sha256 == result.params_sha256
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["100", "80"]
    assert (
        read(workdir, best=True).record["state_sha256"]
        == (read(best, best=True).record["state_sha256"])
    )
