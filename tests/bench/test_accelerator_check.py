"""scripts/accelerator_check.py: its data pieces, and the --smoke table on CPU (slow tier)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "accelerator_check.py")


def _script():
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    spec = importlib.util.spec_from_file_location("accelerator_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_data_pieces_stay_under_the_device_limit_and_merge_back(tmp_path):
    check = _script()
    source = tmp_path / "shared"
    files = {rel for paths in check.DATA_PIECES.values() for rel in paths}
    files = {f for f in files if f != "mnist"} | {"mnist/train-images-idx3-ubyte.gz"}
    for i, rel in enumerate(sorted(files)):
        path = source / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes([i]) * (i + 1))
    check.pack_data(str(source), str(tmp_path / "pieces"))
    assert sorted(os.listdir(tmp_path / "pieces")) == ["1", "2", "3"]
    merged = check.data_root(str(tmp_path / "pieces"))
    for rel in files:
        assert (tmp_path / "pieces" / "merged" / rel).read_bytes() == (source / rel).read_bytes()
    assert check.data_root(str(source)) == str(source)  # an unsplit folder is used as it is
    # The real files: each piece (CIFAR-10 batches are ~23 MB each) well under 64 MiB.
    real = os.path.join(ROOT, "..", "shared", "data", "cifar10", "cifar-10-batches-bin")
    if os.path.isdir(real):
        for piece, paths in check.DATA_PIECES.items():
            cifar = [p for p in paths if p.startswith("cifar10/")]
            size = sum(os.path.getsize(os.path.join(real, os.path.basename(p))) for p in cifar)
            assert size < 50 * 2**20, piece
    assert merged.endswith("merged")


def _make_list(name: str) -> list[str]:
    """The words of Makefile variable `name` (`NAME := ...`, with continuation lines)."""
    with open(os.path.join(ROOT, "Makefile")) as f:
        text = f.read().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith(f"{name} :=")]
    return line.split(":=", 1)[1].split()


def test_every_requirement_reaches_the_gpu_machine_at_its_pinned_version():
    wheels = dict(
        w.lower().split("==") for w in _make_list("ACCEL_WHEELS") + _make_list("ACCEL_SDISTS")
    )
    image = {w.lower() for w in _make_list("ACCEL_IMAGE")}
    pins = {}
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        lines = f.read().splitlines()
    for line in lines:
        line = line.split("#")[0].split(";")[0].strip()  # no comment, no environment marker
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    lint_only = {"ruff"}
    skipped = set(_make_list("ACCEL_SKIP"))
    assert skipped == {"onednn-cpu-gomp", "onednn-devel-cpu-gomp"} and skipped <= set(pins)
    missing = sorted(set(pins) - set(wheels) - image - lint_only - skipped)
    assert not missing, f"requirements.txt names {missing}: add to ACCEL_WHEELS or ACCEL_IMAGE"
    assert {n: v for n, v in wheels.items() if n in pins} == {
        n: pins[n] for n in wheels if n in pins
    }
    assert "optuna" in wheels  # research.sweep imports it; the first GPU run lacked it


@pytest.mark.parametrize(
    "flags, deterministic, expected",
    [
        ("", True, "--xla_gpu_deterministic_ops=true"),
        ("--xla_gpu_deterministic_ops=true", False, "--xla_gpu_deterministic_ops=false"),
        (
            "--xla_force_host_platform_device_count=2 --xla_gpu_deterministic_ops",
            False,
            "--xla_force_host_platform_device_count=2 --xla_gpu_deterministic_ops=false",
        ),
        (
            "--xla_gpu_deterministic_ops=false --xla_gpu_autotune_level=4",
            True,
            "--xla_gpu_autotune_level=4 --xla_gpu_deterministic_ops=true",
        ),
    ],
)
def test_deterministic_option_sets_the_one_xla_flag(flags, deterministic, expected):
    assert _script().with_deterministic_flag(flags, deterministic) == expected


def test_determinism_row_is_skipped_when_the_check_runs_without_deterministic_ops():
    check = _script()
    ctx = check.Context(False, "", "", 1, "", (2,), 0.0, deterministic=False)
    row = check._determinism(ctx)
    assert (row.verdict, row.result) == ("skip", "skipped: --deterministic off")


@pytest.mark.slow
def test_smoke_prints_the_full_table_and_writes_its_json(tmp_path, data_root):
    env = dict(os.environ)
    # Reuse the prepared TFDS files of this machine instead of preparing them again.
    env.setdefault("RESEARCH_CACHE_DIR", os.path.expanduser("~/.cache/research/tfds"))
    cmd = [sys.executable, SCRIPT, "--smoke", "--out", str(tmp_path / "accel")]
    if data_root is not None:
        cmd += ["--data-dir", str(data_root)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "accel" / "table.md").read_text()
    record = json.loads((tmp_path / "accel" / "results.json").read_text())
    assert table in proc.stdout
    assert record["mode"] == "smoke" and record["backend"] == "cpu"
    assert record["versions"]["jax"] and record["git_commit"] and record["device_kind"]
    assert list(record["parts"]) == ["tests", "lenet", "trials", "speedrun", "resnet50", "pool"]
    rows = {p: v["rows"] for p, v in record["parts"].items()}
    for part, part_rows in rows.items():
        assert part_rows and all(r["verdict"] != "error" for r in part_rows), (part, part_rows)
    tests = {r["measure"].split(" (")[0]: r for r in rows["tests"]}
    assert tests["conv/pool algorithms = XLA's, fwd + grad"]["verdict"] == "pass"
    assert (
        rows["tests"][1]["data"]["params_sha256"][0] == rows["tests"][1]["data"]["params_sha256"][1]
    )
    assert rows["tests"][2]["data"]["param_dtypes"] == ["float32"]
    assert set(rows["tests"][2]["data"]["contractions"]) == {"bfloat16"}
    assert rows["lenet"][0]["data"]["runs"][0]["test_accuracy"] > 0.5
    assert [r["data"]["trials"] for r in rows["trials"]] == [1, 4]
    profiles = (tmp_path / "accel" / "profile_trials.md").read_text()
    assert profiles.count("## N = ") == 2 and "| event | ms per call |" in profiles
    assert rows["resnet50"][-1]["data"]["images_per_second"] > 0
    pools = [r["data"]["pool"] for r in rows["pool"]]
    # The speedrun with the backend's default pool (CPU: reshape) is the speedrun part's.
    assert pools == ["reduce_window", "reshape", "reduce_window"]
    assert rows["pool"][2]["data"]["ran"] == "reduce_window"
    assert all(r["data"]["vmap_trial_steps_per_s"] > 0 for r in rows["pool"][:2])
    speed = rows["speedrun"]
    assert len(speed[0]["data"]["accuracies"]) == 1 and speed[0]["data"]["mean"] > 0.1
    assert speed[2]["verdict"] == "skip"  # airbench94 needs a CUDA GPU
    for part in record["parts"]:
        assert f"| {part} |" in table
