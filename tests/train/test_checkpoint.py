"""Checkpoints: kill and resume bit-identical, damaged or full-disk checkpoints, refusals.

A run killed (SIGKILL) or stopped (SIGTERM) resumes from its last checkpoint to the
same parameters as an uninterrupted run: one run, a vmapped group of trials, a
streamed run. A damaged newest checkpoint is set aside; a full disk keeps the last
good one; a workdir holding another config is refused. Checkpoints written under
a read-only or full mount, and damaged ones named in one line: tests/reliability/.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
import types

import jax
import numpy as np
import pytest

from research import data, train
from research.data import batching, pipeline
from research.train import outputs
from tests.helpers.training import (
    DIGITS,
    FAST,
    ROOT,
    SCRIPT,
    fast_config,
    losses,
    results,
    run_script,
    sweep_args,
    sweep_results,
)


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
def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    config = fast_config()
    splits = pipeline.prepare(data.load("digits"), val_size=0.1)
    # Poison one training image with a NaN. Choose one that epoch 1 drops (the 14 examples
    # past 20 full batches) and epoch 2 uses, so epoch 1 ends with a good checkpoint.
    data_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)[1]
    n = len(splits.train)
    epoch1, epoch2 = (
        batching.epoch_batches(jax.random.fold_in(data_key, e), n, 64)[0] for e in (0, 1)
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


def test_resume_with_different_config_is_refused(reference_run):
    proc = run_script(reference_run, "--config.optim.learning_rate=0.5")
    assert proc.returncode == 2
    assert "different config" in proc.stderr and "optim.learning_rate" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


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


def test_lost_write_tasks_of_a_full_disk_are_not_logged():
    """asyncio reports each of orbax's failed write tasks when it is collected, with a
    traceback; after a full disk the one-line OSError is all a user sees."""
    from research.train import checkpoint

    drop = checkpoint._DropLostTasks()

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


@pytest.mark.slow
def test_a_killed_vmapped_group_resumes_to_the_same_parameters(tmp_path):
    reference = subprocess.run(
        sweep_args(tmp_path / "ref", "vmap"), cwd=ROOT, capture_output=True, text=True
    )
    assert reference.returncode == 0, reference.stderr[-2000:]
    workdir = tmp_path / "killed"
    proc = subprocess.Popen(
        sweep_args(workdir, "vmap"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    # Kill once every trial of the group has its first epoch's checkpoint.
    while time.monotonic() < deadline and proc.poll() is None:
        trials = workdir / "trials"
        ckpts = list(trials.glob("*/checkpoints/20")) if trials.exists() else []
        if len(ckpts) == 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the group finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert sweep_results(workdir) == {}
    resumed = subprocess.run(sweep_args(workdir, "vmap"), cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ref, got = sweep_results(tmp_path / "ref"), sweep_results(workdir)
    assert len(got) == 3 and set(got) == set(ref)
    for trial in ref:
        assert got[trial]["params_sha256"] == ref[trial]["params_sha256"]
        assert got[trial]["resumed_from_step"] >= 20 and got[trial]["parallel"] == "vmap"


@pytest.mark.slow
def test_a_streamed_run_killed_and_resumed_equals_an_uninterrupted_one(data_root, tmp_path):
    """scripts/train.py with data.loader=stream, SIGKILL after its first checkpoint, then the
    same command: the same parameters as an uninterrupted streamed run and as a device run."""
    import signal
    import subprocess
    import sys
    import time

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = [
        sys.executable,
        os.path.join(root, "scripts", "train.py"),
        f"--config={os.path.join(root, 'experiments', 'lenet5_mnist.py')}",
        "--config.data.train_size=1280",
        "--config.batch_size=64",
        "--config.num_epochs=3",
        "--config.log_every_steps=5",
        "--config.progress=False",
        "--config.optim.schedule=constant",
        "--config.checkpoint_every_epochs=1",  # the experiment itself keeps only the final one
    ]
    env = {**os.environ, "RESEARCH_DATA_DIR": str(data_root or "")}

    def run(workdir, loader, wait=True):
        command = [*args, f"--workdir={workdir}", f"--config.data.loader={loader}"]
        if not wait:
            return subprocess.Popen(command, cwd=root, env=env, stderr=subprocess.PIPE)
        proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        with open(os.path.join(workdir, "results.json")) as f:
            return json.load(f)

    streamed = run(tmp_path / "stream", "stream")
    device = run(tmp_path / "device", "device")
    assert streamed["data_loader"] == "stream" and device["data_loader"] == "device"
    assert streamed["params_sha256"] == device["params_sha256"]
    killed = tmp_path / "killed"
    proc = run(killed, "stream", wait=False)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (killed / "checkpoints" / "20").exists():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run(killed, "stream")
    assert resumed["resumed_from_step"] == 20
    assert resumed["params_sha256"] == streamed["params_sha256"]


def test_orbax_noise_hooks_are_put_back_unless_a_save_or_restore_failed(monkeypatch):
    from research.train import checkpoint

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    # The interpreter's own hook (put back at teardown): in one process with a test whose
    # save failed, the filter that failure left in place is what sys.excepthook is now.
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    asyncio_filters = list(logging.getLogger("asyncio").filters)
    with checkpoint._orbax_noise_dropped():
        assert sys.unraisablehook is not seen.append
    assert sys.unraisablehook == seen.append  # a clean save or restore leaves no trace

    with checkpoint._orbax_noise_dropped() as failed:
        failed.append(40)
    kept = sys.unraisablehook
    assert kept != seen.append  # after a failure the noise can come later: kept

    def info(obj, err):  # what Python hands the hook
        return types.SimpleNamespace(object=obj, exc_type=type(err), exc_value=err)

    namespace = {}  # a coroutine defined in orbax's code, and one that is not
    exec(
        compile("async def read(): pass", f"{os.sep}site{os.sep}orbax{os.sep}s.py", "exec"),
        namespace,
    )
    orbax_read, own = namespace["read"](), _own_coroutine()
    kept(info(orbax_read, Exception("Encountered error while reading array index")))
    kept(info(None, RuntimeError("Event loop is closed")))
    assert seen == []
    kept(info(own, Exception("a real error")))
    kept(info(None, RuntimeError("another real error")))
    assert [str(i.exc_value) for i in seen] == ["a real error", "another real error"]
    orbax_read.close(), own.close()
    logging.getLogger("asyncio").filters[:] = asyncio_filters


async def _own_coroutine():
    pass
