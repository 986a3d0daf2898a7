"""Callbacks and early stopping (research/train/callbacks.py, loop.py), and the
TensorBoard hparams record of a run (research/train/outputs.py)."""

import glob
import json
import os
import struct

import pytest

import research
from research import config as config_lib
from research.train.callbacks import EarlyStopping
from research.train.checkpoint import read, tree_sha256
from research.train.loop import build_run, train
from research.train.programs import Member

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def digits_config(**early_stopping):
    """The quick start at lr 0.01: its val_loss stops improving at epoch 5 of 20-step epochs."""
    config = research.load_config(os.path.join(ROOT, "experiments", "digits.py"))
    config.num_epochs = 8
    config.progress = False
    config.optim.learning_rate = 0.01
    config.early_stopping.update(early_stopping)
    return config


def val_rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [row for row in map(json.loads, f) if "val_loss" in row]


def first_non_improving_epoch(losses):
    """Patience 1, min_delta 0, by hand: the first epoch whose val_loss is not below all before."""
    for k in range(1, len(losses)):
        if losses[k] >= min(losses[:k]):
            return k + 1
    return None


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    config = digits_config(metric="val_loss", patience=1)
    workdir = str(tmp_path_factory.mktemp("callbacks") / "es")
    seen = []
    return config, workdir, research.fit(config, workdir, callbacks=[seen.append]), seen


def test_early_stopping_stops_where_the_rule_says_and_finishes_the_run(stopped_run):
    _, workdir, result, seen = stopped_run
    rows = val_rows(workdir)
    epoch = first_non_improving_epoch([row["val_loss"] for row in rows])
    assert epoch == 5  # this run's val_loss: 0.510, 0.137, 0.109, 0.0295, then 0.0354
    assert result.status == "done"
    stopped = result.record["stopped_early"]
    assert stopped["epoch"] == epoch and stopped["step"] == 20 * epoch == result.steps
    assert stopped["reason"].startswith(
        "early_stopping: val_loss did not improve by more than 0 for 1 epochs (best 0.0295"
    )
    assert "at epoch 4)" in stopped["reason"]
    # Finished properly: tested, last validation recorded, last state checkpointed.
    assert result.test_accuracy > 0.9 and result.test_loss > 0
    assert result.val_loss == rows[-1]["val_loss"]
    assert [row["step"] for row in rows] == [20, 40, 60, 80, 100]
    latest = read(workdir)
    assert latest.step == 100
    assert tree_sha256(latest.state["params"]) == result.params_sha256
    # The user's callback saw each epoch's metrics, as metrics.jsonl has them.
    assert [m["epoch"] for m in seen] == [1, 2, 3, 4, 5]
    assert [m["val_loss"] for m in seen] == [row["val_loss"] for row in rows]
    assert {"step", "trial", "val_accuracy", "train_loss", "train_accuracy"} <= set(seen[0])
    assert seen[0]["trial"] == 0 and seen[-1]["step"] == 100


def test_a_callback_stops_a_run_with_its_reason(tmp_path):
    config = digits_config()
    config.num_epochs = 4
    config.checkpoint_every_epochs = 0  # the stop still leaves a checkpoint

    class StopAtTwo:
        def on_epoch(self, metrics):
            return "enough" if metrics["epoch"] == 2 else None

    calls = []

    def count(metrics):
        calls.append(metrics["epoch"])  # a plain function; None: go on

    result = research.fit(config, str(tmp_path / "cb"), callbacks=[count, StopAtTwo()])
    assert result.record["stopped_early"] == {"epoch": 2, "step": 40, "reason": "enough"}
    assert result.status == "done" and result.steps == 40 and calls == [1, 2]
    assert result.test_accuracy > 0.5
    restored = read(str(tmp_path / "cb"))
    assert restored.step == 40
    assert tree_sha256(restored.state["params"]) == result.params_sha256

    result = research.fit(config, str(tmp_path / "true"), callbacks=[lambda m: True])
    assert result.record["stopped_early"] == {
        "epoch": 1,
        "step": 20,
        "reason": "<lambda> asked to stop",
    }

    with pytest.raises(TypeError, match=r"callbacks\[0\]=3: expected an object with on_epoch"):
        research.fit(config, str(tmp_path / "bad"), callbacks=[3])


def test_a_run_without_early_stopping_has_no_stopped_early(tmp_path):
    config = digits_config()
    config.num_epochs = 2
    result = research.fit(config, str(tmp_path / "plain"))
    assert result.steps == 40 and "stopped_early" not in result.record


@pytest.mark.slow  # in the full tier: keeps the fast tier under 5 minutes
def test_each_trial_of_a_vmapped_group_stops_on_its_own(tmp_path, stopped_run):
    config, _, single, _ = stopped_run
    slow = config.copy_and_resolve_references()
    slow.optim.learning_rate = 0.001
    members = [Member(config, str(tmp_path / "fast")), Member(slow, str(tmp_path / "slow"))]
    fast_out, slow_out = train(build_run(config), members, parallel="vmap")
    assert fast_out.results["parallel"] == "vmap"
    assert fast_out.results["stopped_early"] == single.record["stopped_early"]
    assert fast_out.results["steps"] == 100 and fast_out.results["test_accuracy"] > 0.9
    losses = [row["val_loss"] for row in val_rows(str(tmp_path / "slow"))]
    epoch = first_non_improving_epoch(losses)
    if epoch is None:  # it improved at every epoch: it trained to the end
        assert "stopped_early" not in slow_out.results
        assert slow_out.results["steps"] == 20 * config.num_epochs
    else:
        assert slow_out.results["stopped_early"]["epoch"] == epoch
    assert len(losses) == (epoch or config.num_epochs)
    assert slow_out.results["steps"] != fast_out.results["steps"]


def test_early_stopping_counts_patience_and_min_delta():
    stopper = EarlyStopping("val_accuracy", patience=2, min_delta=0.02)
    answers = [
        stopper.on_epoch({"epoch": e, "val_accuracy": v})
        for e, v in enumerate([0.5, 0.6, 0.605, 0.61], start=1)
    ]
    # 0.6 improves on 0.5 by 0.1 > 0.02; 0.605 and 0.61 by 0.005 and 0.01: two epochs.
    assert answers[:3] == [None, None, None]
    assert answers[3] == (
        "early_stopping: val_accuracy did not improve by more than 0.02 for 2 epochs "
        "(best 0.6 at epoch 2)"
    )
    assert stopper.state() == {"best": 0.6, "best_epoch": 2, "wait": 2}
    again = EarlyStopping("val_loss", patience=1)
    assert again.on_epoch({"epoch": 1, "val_loss": 0.3}) is None
    assert again.on_epoch({"epoch": 2, "val_loss": 0.3}).startswith("early_stopping: val_loss")


@pytest.mark.parametrize(
    "field, value, message",
    [
        (
            "early_stopping.metric",
            "val_acc",
            "config.early_stopping.metric='val_acc' is invalid: must be '' (off), "
            "'val_accuracy' or 'val_loss'",
        ),
        (
            "early_stopping.patience",
            0,
            "config.early_stopping.patience=0 is invalid: must be an integer >= 1",
        ),
        (
            "early_stopping.min_delta",
            -0.1,
            "config.early_stopping.min_delta=-0.1 is invalid: must be a number >= 0",
        ),
        (
            "checkpoint_best",
            "accuracy",
            "config.checkpoint_best='accuracy' is invalid: must be '' (off), "
            "'val_accuracy' or 'val_loss'",
        ),
    ],
)
def test_bad_fields_are_named(field, value, message):
    config = config_lib.get_base_config()
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(ValueError) as err:
        config_lib.validate(config)
    assert str(err.value) == message


def test_tracking_a_metric_needs_a_validation_split():
    config = config_lib.get_base_config()
    config.data.val_size = 0
    config.early_stopping.metric = "val_loss"
    with pytest.raises(ValueError, match=r"early_stopping.metric='val_loss' is invalid: needs a"):
        config_lib.validate(config)


def events(workdir):
    """Every Event of the run's TensorBoard files (tensorboardX's own protobuf classes)."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        i = 0
        while i < len(data):  # TFRecord: length, its CRC, the event, its CRC
            (length,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12 : i + 12 + length])
            out.append(event)
            i += 12 + length + 4
    return out


def test_tensorboard_hparams_hold_the_config_and_the_final_metrics(stopped_run):
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    _, workdir, result, _ = stopped_run
    values = [(e.step, v) for e in events(workdir) for v in e.summary.value]
    start = [
        v for _, v in values if v.tag == "_hparams_/session_start_info"
    ]  # the plugin's record of this run's hyperparameters
    assert len(start) == 1 and start[0].metadata.plugin_data.plugin_name == "hparams"
    plugin = HParamsPluginData.FromString(start[0].metadata.plugin_data.content)
    hparams = plugin.session_start_info.hparams
    assert hparams["optim.learning_rate"].number_value == 0.01
    assert hparams["model.name"].string_value == "simple_cnn"
    assert hparams["early_stopping.metric"].string_value == "val_loss"
    assert hparams["deterministic"].bool_value is True
    assert hparams["data.classes"].string_value == "[]"
    finals = {v.tag: (step, v.simple_value) for step, v in values if v.tag.startswith("hparams/")}
    assert finals["hparams/test_accuracy"] == (100, pytest.approx(result.test_accuracy))
    assert finals["hparams/val_loss"] == (100, pytest.approx(result.val_loss))
    experiment = [v for _, v in values if v.tag == "_hparams_/experiment"]
    assert len(experiment) == 1


def test_a_resumed_run_stops_where_an_uninterrupted_one_does(tmp_path):
    """Patience 2: val_loss is best at epoch 4 and worse at 5 and 6, so the run stops at 6.
    Killed at the end of epoch 6 (before its checkpoint), it resumes from epoch 5's, whose
    record keeps the count of epochs without improvement (1): it stops at 6 again, where a
    fresh count would take epoch 6 for a new best and train on."""
    config = digits_config(metric="val_loss", patience=2)
    whole = research.fit(config, str(tmp_path / "whole"))
    assert whole.record["stopped_early"]["epoch"] == 6
    assert "(best 0.0295" in whole.record["stopped_early"]["reason"]

    def crash(metrics):
        if metrics["epoch"] == 6:
            raise KeyboardInterrupt

    workdir = str(tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        research.fit(config, workdir, callbacks=[crash])
    saved = read(workdir)
    assert saved.step == 100
    assert saved.record["early_stopping"] == {
        "best": pytest.approx(0.0295, abs=1e-4),
        "best_epoch": 4,
        "wait": 1,
    }
    again = research.fit(config, workdir)
    assert again.record["resumed_from_step"] == 100
    assert again.record["stopped_early"] == whole.record["stopped_early"]
    assert again.params_sha256 == whole.params_sha256
