"""Training one run: end to end on `digits`, determinism, resume, devices, faults, bad input.

Runs that need their own process (forced host devices, two processes, kill and
resume, the command line) go through `scripts/train.py` in a subprocess. The
fast tier keeps one CLI run with its outputs, init determinism and the bad-input
messages; the rest is `slow`. Groups of trials (vmapped, diverging members) are in
test_engine.py; checkpoints, kill and resume in test_checkpoint.py; the compiled
chunk (purity, donation, bfloat16) in test_steps.py. The reference run is the
fixture `reference_run` of tests/train/conftest.py.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from research import train
from research.layers import onednn
from research.train import outputs, progress
from tests.helpers.training import (
    DIGITS,
    FAST,
    ROOT,
    SCRIPT,
    fast_config,
    losses,
    results,
    run_script,
)


def test_end_to_end_outputs(reference_run):
    res = results(reference_run)
    for key in ("test_accuracy", "test_loss", "val_accuracy", "steps", "epochs", "wall_seconds"):
        assert key in res
    # What ran is recorded: path, algorithms, backend, device, versions.
    assert res["status"] == "done" and res["parallel"] == "sequential" and res["group_size"] == 1
    # The one-device CPU default, or its stand-in.
    conv = "onednn" if onednn.available() and jax.device_count() == 1 else "tiled"
    # oneDNN leaves conv1 (1 input channel) to "tiled", and the record says so.
    want = {"conv": "onednn", "conv shallow": "tiled"} if conv == "onednn" else conv
    assert res["conv_algorithm"] == want and res["pool_algorithm"] == "reshape"
    assert res["backend"] == "cpu" and res["device_kind"] == "cpu"
    assert set(res["versions"]) == {"jax", "jaxlib", "flax", "optax"}
    assert res["versions"]["jax"] == jax.__version__
    assert res["resumed_from_step"] == 0
    # digits: 1,797 images = 1,438 train + 359 test (stratified 20%); 10% of train is validation.
    assert res["test_examples"] == 359
    assert res["val_examples"] == 144 and res["train_examples"] == 1294
    assert res["steps"] == 3 * (1294 // 64) == 60
    assert res["epochs"] == 3
    assert res["test_accuracy"] > 0.85  # 3 epochs; the full quick start reaches >= 0.95
    assert res["examples_per_second"] > 0
    assert len(res["params_sha256"]) == 64
    assert res["git_commit"]
    files = os.listdir(reference_run)
    for name in ("config.json", "metrics.jsonl", "results.json", "curves.png", "checkpoints"):
        assert name in files
    assert any(
        f.startswith("events.out.tfevents") for f in os.listdir(reference_run / "tensorboard")
    )
    # One line per logged chunk (5 steps; the epoch's tail chunk is shorter) plus one per epoch.
    records = outputs.read_jsonl(reference_run / "metrics.jsonl")
    assert sum("val_accuracy" in r for r in records) == 3
    assert [r["step"] for r in records if "train_loss" in r][:6] == [5, 10, 15, 20, 25, 30]


def test_initialisation_is_deterministic_and_seeded():
    run = train.build_run(fast_config())
    programs = train.engine.build_programs(run)

    def init(seed):
        configs = [fast_config(seed=seed)]
        init_keys, _, train_keys = train.engine.trial_keys(configs)
        hps = train.engine.hyperparams(configs, run.steps_per_epoch)
        return programs.init(init_keys, train_keys, hps)

    a, b, c = init(0), init(0), init(1)
    assert train.tree_sha256(a.params) == train.tree_sha256(b.params)
    assert train.tree_sha256(a.params) != train.tree_sha256(c.params)
    np.testing.assert_array_equal(a.key, b.key)
    assert not np.array_equal(a.key, c.key)


@pytest.mark.slow
def test_same_config_and_seed_is_bit_identical(reference_run, tmp_path):
    proc = run_script(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert results(tmp_path)["params_sha256"] == results(reference_run)["params_sha256"]
    assert losses(tmp_path) == losses(reference_run)


@pytest.mark.slow
def test_another_seed_differs(reference_run, tmp_path):
    config = fast_config(seed=1)
    res = train.train_and_evaluate(config, str(tmp_path))
    assert res["params_sha256"] != results(reference_run)["params_sha256"]


@pytest.mark.slow
@pytest.mark.parametrize("devices", [2, 4])
def test_forced_host_devices_match_one_device(reference_run, tmp_path, devices):
    # eval_batch_size 100 over 144 validation and 359 test examples: the last batch of
    # each split has padded slots on 2 and on 4 devices (batches rounded up to 100 and
    # 100; 359 = 3 * 100 + 59), which evaluation must mask out exactly.
    flags = f"--xla_force_host_platform_device_count={devices}"
    proc = run_script(tmp_path, "--config.eval_batch_size=100", env={"XLA_FLAGS": flags})
    assert proc.returncode == 0, proc.stderr[-3000:]
    res, ref = results(tmp_path), results(reference_run)
    assert res["devices"] == devices
    np.testing.assert_allclose(losses(tmp_path), losses(reference_run), rtol=1e-5, atol=1e-5)
    # Every test example counted once, the padding not at all: the same mean loss. The
    # same sums run as smaller per-device dots, which XLA may give to other kernels, so
    # after 60 steps the losses differ by rounding (1.2e-5 seen); one padded example
    # counted would move them by ~1e-3 or more.
    assert res["test_loss"] == pytest.approx(ref["test_loss"], rel=1e-5, abs=5e-5)
    assert res["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-5, abs=5e-5)
    assert res["test_accuracy"] == pytest.approx(ref["test_accuracy"], abs=1e-2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_one_model(reference_run, tmp_path):
    port = _free_port()
    procs = []
    for pid in range(2):
        env = {
            **os.environ,
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(pid),
        }
        args = [sys.executable, SCRIPT, f"--config={DIGITS}", f"--workdir={tmp_path}", *FAST]
        procs.append(
            subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()[-3000:]
    res = results(tmp_path)
    assert res["processes"] == 2 and res["devices"] == 2
    np.testing.assert_allclose(losses(tmp_path), losses(reference_run), rtol=1e-5, atol=1e-5)
    # Only process 0 printed the results line.
    printed = [b"results:" in out for out, _ in outs]
    assert printed == [True, False]


BAD_INPUTS = [
    (["--config.model.name=lenet"], "config.model.name='lenet'", "lenet5"),
    (["--config.data.name=imagenet"], "config.data.name='imagenet'", "mnist"),
    (["--config.optim.name=adamw"], "config.optim.name='adamw'", "rmsprop"),
    (["--config.optim.learning_rate=-0.1"], "optim.learning_rate", "> 0"),
    (["--config.batch_size=5000"], "config.batch_size=5000", "1294"),
    (["--config.optim.learnig_rate=0.1"], "--config.optim.learnig_rate", "learning_rate"),
    (["--config.batch_size=abc"], "--config.batch_size", "int"),
    (["--config.transfer.strategy=freeze_all"], "config.transfer.strategy", "linear_probe"),
    (["--config.model.overrides.widht=3"], "'widht'", "widths"),
    (["--config.model.name=mobilenet_v1"], "model 'mobilenet_v1' cannot take input", "31x31"),
    # An empty cache dir, so the loader must read the (missing) data folder: prepared
    # data already in the default cache would be used without looking at data_dir.
    (
        [
            "--config.data.name=mnist",
            "--config.data.data_dir=/nonexistent/data",
            "--config.data.cache_dir=/tmp/research-test-empty-cache",
        ],
        "/nonexistent",
        "RESEARCH_DATA_DIR",  # the message says how to point at the data
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("args,field,valid", BAD_INPUTS, ids=lambda v: str(v)[:40])
def test_bad_input_is_one_clear_message_and_workdir_untouched(reference_run, args, field, valid):
    before = {
        p: os.path.getmtime(os.path.join(reference_run, p)) for p in os.listdir(reference_run)
    }
    res_before = (reference_run / "results.json").read_text()
    proc = run_script(reference_run, *args, env={"RESEARCH_DATA_DIR": ""})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert field in proc.stderr
    assert valid in proc.stderr
    after = {p: os.path.getmtime(os.path.join(reference_run, p)) for p in os.listdir(reference_run)}
    assert after == before
    assert (reference_run / "results.json").read_text() == res_before


def test_missing_config_file_is_one_clear_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--config=experiments/nothere.py", f"--workdir={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "experiments/nothere.py" in proc.stderr and "No such file" in proc.stderr
    assert os.listdir(tmp_path) == []


def test_bad_inputs_in_process_name_the_field():
    """The fast tier's share of the bad-input messages: build_run's checks, no process."""
    for changes, message in (
        ({"model.name": "lenet"}, r"config.model.name='lenet' is invalid: known models: .*lenet5"),
        ({"optim.learning_rate": -0.1}, r"optim.learning_rate.*> 0"),
        ({"batch_size": 5000}, r"config.batch_size=5000 is larger than the training split \(1294"),
        ({"data.remainder": "pad"}, r"config.data.remainder='pad' is invalid: must be 'drop'"),
        ({"optim.eps": -1.0}, r"optim.eps"),
        ({"transfer.strategy": "x"}, r"config.transfer.strategy='x' is invalid"),
        (
            {"model.name": "mobilenet_v1"},
            r"model 'mobilenet_v1' cannot take input \(8, 8, 1\): its smallest input is 31x31",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            train.build_run(fast_config(**changes))


def test_progress_is_plain_lines_when_output_is_not_a_terminal():
    out = io.StringIO()  # not a terminal: a log file, a pipe
    bar = progress.progress_bar(fast_config(progress=True), 300, 0, stream=out)
    assert isinstance(bar, progress.PlainProgress)
    for step in range(10, 301, 10):  # the loop: update by a chunk, then its metrics
        bar.update(10)
        bar.set_postfix({"loss": f"{1 / step:.4f}"})
    bar.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == progress.LINES
    assert lines[0] == "step 30/300 (10%) loss=0.0333"
    assert lines[-1] == "step 300/300 (100%) loss=0.0033"
    # Resumed at step 135 with 15-step chunks: a line each time a tenth is passed.
    out = io.StringIO()
    bar = progress.PlainProgress(300, 135, out)
    for _ in range(11):
        bar.update(15)
        bar.set_postfix({"loss": "0.1000"})
    bar.close()
    steps = [line.split()[1] for line in out.getvalue().splitlines()]
    assert steps == ["150/300", "180/300", "210/300", "240/300", "270/300", "300/300"]
    assert progress.progress_bar(fast_config(progress=False), 300, 0, stream=out) is None


def test_progress_is_a_tqdm_bar_on_a_terminal():
    from tqdm.auto import tqdm

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    bar = progress.progress_bar(fast_config(progress=True), 300, 30, stream=out)
    assert isinstance(bar, tqdm) and bar.n == 30 and bar.total == 300
    bar.update(10)
    assert bar.n == 40
    bar.close()
    assert out.getvalue().startswith("\r 10%|") and "| 30/300 [" in out.getvalue()


@pytest.mark.slow
def test_two_processes_on_one_workdir_second_is_refused(tmp_path):
    args = [sys.executable, SCRIPT, f"--config={DIGITS}", f"--workdir={tmp_path}", *FAST]
    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lock = tmp_path / ".lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.05)
    second = run_script(tmp_path)
    first_out, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err.decode()[-2000:]
    assert second.returncode == 2
    assert second.stderr.startswith(f"error: workdir {tmp_path} is in use by process {first.pid}")
    assert len(second.stderr.strip().splitlines()) == 1
    # The run that held the lock wrote its metrics once: 3 epochs of 5-step chunks.
    records = outputs.read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if "val_accuracy" in r] == [20, 40, 60]
    assert len(records) == len({(r["step"], "val_accuracy" in r) for r in records})
    # The lock of a finished (or killed) process does not block the next run; a finished
    # run started again says so in one line and keeps its record byte for byte.
    before = (tmp_path / "results.json").read_bytes()
    again = run_script(tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert sum("holds a finished run" in line for line in again.stderr.splitlines()) == 1
    assert (tmp_path / "results.json").read_bytes() == before
