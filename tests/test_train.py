"""Training one run: end to end on `digits`, determinism, resume, devices, faults, bad input.

Runs that need their own process (forced host devices, two processes, kill and
resume, the command line) go through `scripts/train.py` in a subprocess. The
fast tier keeps one CLI run with its outputs, one kill-and-resume, init
determinism, donation and the bad-input messages; the rest is `slow`.
Groups of trials (vmapped, diverging members, killed groups) are in test_engine.py.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from research import train
from research.config import get_base_config
from research.layers import onednn
from research.train import outputs, progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "train.py")
DIGITS = os.path.join(ROOT, "experiments", "digits.py")

# A small, fast run: 3 epochs of simple_cnn on digits (1,294 train examples, 20 steps/epoch).
FAST = [
    "--config.num_epochs=3",
    "--config.batch_size=64",
    "--config.log_every_steps=5",
    "--config.progress=False",
]


def fast_config(**changes):
    config = get_base_config()
    config.model.name = "simple_cnn"
    config.data.name = "digits"
    config.batch_size = 64
    config.num_epochs = 3
    config.log_every_steps = 5
    config.progress = False
    config.optim.name = "adam"
    config.optim.learning_rate = 1e-3
    for key, value in changes.items():
        node = config
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return config


def run_script(workdir, *args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, SCRIPT, f"--config={DIGITS}", f"--workdir={workdir}", *FAST, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        cwd=ROOT,
    )


def results(workdir) -> dict:
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


def losses(workdir) -> list[float]:
    records = outputs.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    return [r["train_loss"] for r in records if "train_loss" in r]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted single-process CLI run that the other runs are compared against."""
    workdir = tmp_path_factory.mktemp("reference")
    proc = run_script(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


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


def test_sigkill_then_resume_matches_uninterrupted(reference_run, tmp_path):
    args = [sys.executable, SCRIPT, f"--config={DIGITS}", f"--workdir={tmp_path}", *FAST]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt_dir = tmp_path / "checkpoints"
    deadline = time.time() + 240
    # Kill as soon as the first epoch's checkpoint exists: mid-run, before the end.
    while time.time() < deadline and proc.poll() is None:
        if ckpt_dir.exists() and any(p.name.isdigit() for p in ckpt_dir.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "results.json").exists()
    resumed = run_script(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    res = results(tmp_path)
    assert res["params_sha256"] == results(reference_run)["params_sha256"]
    assert res["resumed_from_step"] > 0
    assert losses(tmp_path) == losses(reference_run)


@pytest.mark.slow
def test_sigterm_writes_checkpoint_then_resume_matches(reference_run, tmp_path):
    args = [sys.executable, SCRIPT, f"--config={DIGITS}", f"--workdir={tmp_path}", *FAST]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err.decode()[-2000:]
    assert "checkpoint written" in err.decode()
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[-1] < 60
    resumed = run_script(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert results(tmp_path)["params_sha256"] == results(reference_run)["params_sha256"]


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


@pytest.mark.slow
def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    import dataclasses

    from research import data
    from research.data import pipeline

    config = fast_config()
    splits = pipeline.prepare(data.load("digits"), val_size=0.1)
    # Poison one training image with a NaN. Choose one that epoch 1 drops (the 14 examples
    # past 20 full batches) and epoch 2 uses, so epoch 1 ends with a good checkpoint.
    data_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)[1]
    n = len(splits.train)
    epoch1, epoch2 = (
        pipeline.epoch_batches(jax.random.fold_in(data_key, e), n, 64)[0] for e in (0, 1)
    )
    poisoned = next(i for i in range(n) if i not in epoch1 and i in epoch2)
    expected_step = 20 + 1 + next(s for s, batch in enumerate(epoch2) if poisoned in batch)
    images = splits.train.images.copy()
    images[poisoned, 0, 0, 0] = np.nan
    splits = dataclasses.replace(splits, train=pipeline.Split(images, splits.train.labels))

    with pytest.raises(train.TrainingDiverged) as err:
        train.train_and_evaluate(config, str(tmp_path), splits=splits)
    message = str(err.value)
    assert f"loss became non-finite at step {expected_step} (epoch 2)" in message
    assert "Last good checkpoint: step 20" in message
    assert "optim.learning_rate" in message
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [20]
    # results.json records the divergence: the step, no metrics, valid JSON (no bare NaN).
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text
    res = json.loads(text)
    assert res["status"] == "diverged" and res["diverged_step"] == expected_step
    assert "test_accuracy" not in res and res["steps"] == expected_step - 1


@pytest.mark.slow
def test_damaged_newest_checkpoint_is_set_aside_and_written_again(tmp_path, caplog):
    config = fast_config(num_epochs=2, keep_checkpoints=3)
    first = train.train_and_evaluate(config, str(tmp_path))
    ckpts = tmp_path / "checkpoints"
    steps = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    assert steps == [20, 40]
    # Damage every data file of the newest checkpoint.
    damaged = 0
    for root, _, files in os.walk(ckpts / "40"):
        for name in files:
            path = os.path.join(root, name)
            if os.path.getsize(path) > 64 and "state" in root:
                with open(path, "r+b") as f:
                    f.seek(16)
                    f.write(b"\x00garbage\xff" * 4)
                damaged += 1
    assert damaged
    os.remove(tmp_path / "results.json")
    with caplog.at_level(logging.WARNING, "research.train.checkpoint"):
        again = train.train_and_evaluate(config, str(tmp_path))
    (warned,) = [r.getMessage() for r in caplog.records]  # once: no RuntimeWarning too
    assert warned.startswith(f"checkpoint {ckpts}/40 is damaged or incomplete (")
    # It restored step 20, retrained the second epoch (the same parameters) and wrote
    # step 40 again; the damaged copy is kept aside for inspection.
    assert again["params_sha256"] == first["params_sha256"]
    assert again["resumed_from_step"] == 20
    assert sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) == [20, 40]
    assert os.listdir(tmp_path / "checkpoints.damaged") == ["40-0"]
    # A second resume finds the good step 40: nothing is retrained.
    os.remove(tmp_path / "results.json")
    third = train.train_and_evaluate(config, str(tmp_path))
    assert third["resumed_from_step"] == 40
    assert third["params_sha256"] == first["params_sha256"]


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


def test_a_finished_run_started_again_keeps_its_record(tmp_path, caplog):
    config = fast_config(num_epochs=1)
    first = train.train_and_evaluate(config, str(tmp_path))
    path = tmp_path / "results.json"
    before, metrics_before = path.read_bytes(), (tmp_path / "metrics.jsonl").read_bytes()
    assert first["resumed_from_step"] == 0 and first["compile_seconds"] > 0
    with caplog.at_level(logging.WARNING, logger="research.train.loop"):
        (again,) = train.engine.train(
            train.build_run(config), [train.Member(config, str(tmp_path))]
        )
    # One line says so; results.json (its timings too) and the metrics are untouched.
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path} holds a finished run: its results.json is kept as it is "
        "(train in a new workdir to run again)"
    ]
    assert path.read_bytes() == before
    assert (tmp_path / "metrics.jsonl").read_bytes() == metrics_before
    assert again.results == json.loads(before)
    assert again.results["wall_seconds"] == first["wall_seconds"]
    assert again.results["resumed_from_step"] == 0
    # The state given back is the finished run's: its last checkpoint.
    assert train.tree_sha256(again.state.params) == first["params_sha256"]


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


def test_resume_with_different_config_is_refused(reference_run):
    proc = run_script(reference_run, "--config.optim.learning_rate=0.5")
    assert proc.returncode == 2
    assert "different config" in proc.stderr and "optim.learning_rate" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


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


def _mount_tmpfs(path, size_kb: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
        capture_output=True,
    )
    return proc.returncode == 0


@pytest.mark.slow
def test_full_disk_is_one_line_keeps_the_checkpoint_and_resumes_bit_identically(
    reference_run, tmp_path
):
    disk = tmp_path / "disk"
    # A small disk: room for the config, the metrics and one or two checkpoints of
    # simple_cnn (~0.7 MB each), not for the whole run.
    if not _mount_tmpfs(disk, 1600):
        pytest.skip("cannot mount a tmpfs here (needs root): the full-disk case is untested")
    try:
        workdir = disk / "run"
        proc = run_script(workdir)
        assert proc.returncode == 74, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert str(disk) in proc.stderr and "No space left on device" in proc.stderr
        # No temporary files left behind; an earlier checkpoint is intact.
        leftovers = [p for p in workdir.rglob("*") if "tmp" in p.name]
        assert leftovers == []
        kept = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
        assert kept and max(kept) < 60
        # Room again: the same command resumes and ends bit-identical to the reference.
        saved = tmp_path / "saved"
        subprocess.run(["cp", "-a", str(workdir), str(saved)], check=True)
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
    resumed = run_script(saved)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert results(saved)["params_sha256"] == results(reference_run)["params_sha256"]


def _one_chunk(run, programs, states, steps: int = 2):
    images, labels = run.splits.train.images, run.splits.train.labels
    idx = np.arange(64 * steps, dtype=np.int32).reshape(1, steps, 64) % len(labels)
    on = functools.partial(train.engine.on_mesh, mesh=programs.mesh)
    return programs.chunk(states, on(np.ones(1, bool)), on(images), on(labels), on(idx))


def _init(run, programs, config):
    init_keys, _, train_keys = train.engine.trial_keys([config])
    return programs.init(init_keys, train_keys, train.engine.hyperparams([config], 20))


def test_train_chunk_is_pure_and_donates_its_state():
    """A pure function of (state, batch): the same inputs give the same outputs; the
    input state's buffers are donated (reused for the output), not copied."""
    config = fast_config()
    run = train.build_run(config)
    programs = train.engine.build_programs(run)
    state = _init(run, programs, config)
    copy = jax.tree_util.tree_map(lambda a: a.copy(), state)
    s1, alive, m1 = _one_chunk(run, programs, state)
    assert all(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(state.params))
    assert not any(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(copy.params))
    s2, _, m2 = _one_chunk(run, programs, copy)
    assert train.tree_sha256(s1.params) == train.tree_sha256(s2.params)
    np.testing.assert_array_equal(m1["loss"], m2["loss"])
    assert m1["loss"].shape == (1, 2)  # (trials, steps)
    assert int(s1.step[0]) == 2 and bool(alive[0])


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_parameters():
    config = fast_config(compute_dtype="bfloat16")
    run = train.build_run(config)
    programs = train.engine.build_programs(run)
    state, _, metrics = _one_chunk(run, programs, _init(run, programs, config), steps=10)
    dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(state.params)}
    assert dtypes == {jax.numpy.dtype("float32")}
    losses = np.asarray(metrics["loss"][0])
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    # The forward pass really runs in bfloat16.
    params = jax.tree_util.tree_map(lambda x: x[0], state.params)
    out = run.model.apply({"params": params}, run.splits.train.images[:2])
    assert out.dtype == jax.numpy.bfloat16


def test_a_run_written_before_a_new_config_field_still_resumes(tmp_path):
    """config.json of an older version lacks fields added since: at their defaults, the
    run is the same run; set to something else, it is refused, naming the field."""
    config = fast_config()
    outputs.prepare_workdir(config, str(tmp_path))
    path = tmp_path / "config.json"
    older = json.loads(path.read_text())
    del older["loss"], older["data"]["loader"]  # as written before these fields existed
    path.write_text(json.dumps(older))
    outputs.prepare_workdir(config, str(tmp_path))  # defaults: accepted
    path.write_text(json.dumps(older))
    with pytest.raises(ValueError, match=r"fields differ: data.loader"):
        outputs.prepare_workdir(fast_config(**{"data.loader": "stream"}), str(tmp_path))


def test_lost_write_tasks_of_a_full_disk_are_not_logged():
    """asyncio reports each of orbax's failed write tasks when it is collected, with a
    traceback; after a full disk the one-line OSError is all a user sees."""
    from research.train import checkpoint

    drop = checkpoint._DropLostWrites()

    def record(err):
        return logging.LogRecord(
            "asyncio", logging.ERROR, "base_events.py", 1771,
            "Task exception was never retrieved", None, (type(err), err, None),
        )  # fmt: skip

    full = ValueError("RESOURCE_EXHAUSTED: Failed to write 1976 bytes [os_error_code='28']")
    assert drop.filter(record(full)) is False
    assert drop.filter(record(OSError(28, "No space left on device"))) is False
    assert drop.filter(record(ValueError("a bug, not the disk"))) is True
    plain = logging.LogRecord("asyncio", logging.ERROR, "x", 1, "no exception", None, None)
    assert drop.filter(plain) is True
