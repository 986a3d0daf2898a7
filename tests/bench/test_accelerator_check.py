"""scripts/accelerator_check.py and research/bench/accel/: its data pieces, its worker
processes, the goals table, and the --smoke table on CPU (slow tier)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from research.bench.accel import common, data, report, worker

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
    check = data
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
    assert common.with_deterministic_flag(flags, deterministic) == expected


def test_determinism_row_is_skipped_when_the_check_runs_without_deterministic_ops():
    from research.bench.accel import checks

    ctx = common.Context(False, "", "", 1, "", (2,), 0.0, deterministic=False)
    row = checks._determinism(ctx)
    assert (row.verdict, row.result) == ("skip", "skipped: --deterministic off")


def test_a_worker_starts_without_the_checks_determinism_flags():
    flags = (
        "--xla_force_host_platform_device_count=2 --xla_gpu_deterministic_ops=true "
        "--xla_gpu_exclude_nondeterministic_ops --xla_gpu_load_autotune_results_from=/a.txt "
        "--xla_gpu_dump_autotune_results_to=/b.txt --xla_gpu_autotune_level=4"
    )
    assert worker.clean_xla_flags(flags) == (
        "--xla_force_host_platform_device_count=2 --xla_gpu_autotune_level=4"
    )


def test_a_failing_worker_raises_naming_its_job_and_its_error():
    spec = worker.job("no_such_experiment", "full", {"deterministic": True}, [0])
    with pytest.raises(RuntimeError) as err:
        worker.run_job(spec, env={}, timeout=120)
    message = str(err.value)
    assert message.startswith("worker no_such_experiment:full deterministic=True")
    assert "no_such_experiment.py" in message  # the worker's own traceback, its last lines


def test_the_speedrun_part_reuses_the_determinism_parts_runs():
    from research.bench.accel import determinism, speedrun

    ctx = common.Context(False, "", "", 10, "", (2,), 0.0)
    assert determinism.first_seeds(ctx, "off") == list(range(10))  # the 10-seed accuracy
    assert determinism.first_seeds(ctx, "ops") == [0, 1, 2]
    assert determinism.first_seeds(ctx, "pinned") == [0, 1]
    runs = [
        {"test_accuracy": acc, "wall_seconds": s, "params_sha256": f"{i}", "steps": 476}
        for i, (acc, s) in enumerate([(0.94, 30.0), (0.942, 2.0), (0.944, 2.2), (0.946, 2.1)])
    ]
    ctx.memo["off"] = {"runs": runs, "record": {"determinism": None}}
    fast = speedrun._ours(ctx, False, 4)  # no worker: the determinism part's first process
    assert fast["from_determinism_part"] and fast["median_after_first"] == 2.1
    assert fast["mean"] == pytest.approx(0.943) and fast["seconds"][0] == 30.0


def test_the_device_calls_hold_every_part_once():
    assert report.PARTS == (
        "tests", "lenet", "trials", "resnet50", "pool", "determinism", "speedrun", "optimizers"
    )  # fmt: skip
    assert set(report.PART_FUNCTIONS) == set(report.PARTS)
    groups = [report.PART_GROUPS[k] for k in ("1", "2", "3")]
    assert sorted(p for g in groups for p in g) == sorted(report.PARTS)
    # The determinism part before the speedrun part, which reuses its runs.
    assert report.PART_GROUPS["2"] == ("determinism", "speedrun")


def _record(mode="full", **parts):
    rows = {
        name: {"rows": [{"verdict": "info", "data": d} for d in ds]} for name, ds in parts.items()
    }
    return {
        "mode": mode,
        "device_kind": "NVIDIA H100 80GB HBM3",
        "git_commit": "abcdef0123456789",
        "xla_flags": "--xla_gpu_deterministic_ops=true",
        "date": "2026-12-06 20:00 UTC",
        "parts": rows,
    }


def _goal_rows(text: str) -> dict[str, list[str]]:
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")]
    return {r[0][2:]: [c.rstrip(" |") for c in r[1:]] for r in rows[1:]}  # after the header


def test_goals_table_judges_each_goal_of_issue_25_from_the_records():
    one = _record(
        trials=[
            {"model": "LeNet-5", "trials": 16, "ratio_to_one_trial": 13.0},
            {"model": "LeNet-5", "trials": 64, "ratio_to_one_trial": 21.5},
        ],
        resnet50=[{"batch": 256, "images_per_second": 5100.0}, {"best_batch": 256,
                  "images_per_second": 5100.0}],
        lenet=[{"runs": [{"epochs": 2, "test_accuracy": 0.985, "wall_seconds": 2.0},
                         {"epochs": 3, "test_accuracy": 0.991, "wall_seconds": 2.6}]}],
    )  # fmt: skip
    off = {"deterministic": False}
    two = _record(
        speedrun=[
            {"mean": 0.9405, "accuracies": [0.94, 0.941], "median_after_first": 1.5},
            {"median_after_first": 1.5, "seconds": [9.0, 1.5]},
            {"median_after_first": 1.8, "ratio_to_autotuned": 1.2},
            {"median_seconds": 1.9, "accuracies": [0.94], "seconds": [1.9]},
        ],
        determinism=[
            {"mode": "off", "fields": off, "equal": False, "ratio_to_off": 1.0,
             "lenet_ratio_to_off": 1.0},
            {"mode": "ops", "fields": {"deterministic": True}, "equal": True,
             "ratio_to_off": 3.2, "lenet_ratio_to_off": 2.5},
            {"mode": "pinned", "fields": {"deterministic": True}, "equal": True,
             "ratio_to_off": 1.1, "lenet_ratio_to_off": 1.3},
        ],
    )  # fmt: skip
    text = report.goals_table([one, two])
    assert "NVIDIA H100 80GB HBM3, commit abcdef012345" in text
    goals = _goal_rows(text)
    assert len(goals) == len(report.GOALS)
    assert goals["1. 16 LeNet-5 trials vmapped >= 12x one trial"] == ["13.00x", "yes"]
    assert goals["1. 64 LeNet-5 trials vmapped >= 40x one trial"] == ["21.50x", "no"]
    assert goals["1. 16 airbench trials (batch 1024) >= 12x one trial"] == ["not measured", ""]
    assert goals["2. deterministic=True: two processes bit-identical"] == [
        "ops: equal; pinned: equal", "yes"
    ]  # fmt: skip
    assert goals["2. deterministic cost on the speedrun <= 1.25x"] == [
        "ops: 3.20x; pinned: 1.10x",
        "yes",
    ]
    assert goals["2. deterministic cost on a LeNet-5 step <= 1.25x"][1] == "no"
    assert goals["3. speedrun (autotuned) <= 0.85x airbench94's seconds"] == ["0.79x", "yes"]
    assert goals["3. speedrun >= 94.0% mean test accuracy over 10 seeds"] == [
        "94.05% over 2",
        "yes",
    ]
    assert goals["3. speedrun deterministic within 1.25x of autotuned"] == ["1.20x", "yes"]
    assert goals["4. optimizer study in <= 10 minutes, compile included"] == ["not measured", ""]
    # An H100: the 5,000 img/s goal (an H200's is 6,000).
    assert goals["5. ResNet-50 bf16 >= 6,000 img/s (H200) / 5,000 (H100)"] == ["5,100 img/s", "yes"]
    assert goals["5. LeNet-5 to 99% on MNIST < 3 s, deterministic"] == ["2.60 s", "yes"]
    # A part without runs measured nothing.
    smoke = _goal_rows(report.goals_table([_record("smoke", lenet=[{"runs": []}])]))
    assert smoke["5. LeNet-5 to 99% on MNIST < 3 s, deterministic"] == ["not measured", ""]


def test_report_merges_the_two_calls_into_one_goals_table(tmp_path, capsys):
    check = _script()
    first, second = tmp_path / "1", tmp_path / "2"
    lenet16 = {"model": "LeNet-5", "trials": 16, "ratio_to_one_trial": 3.0}
    for folder, record in (
        (first, _record("smoke", trials=[lenet16])),
        (second, _record("smoke", optimizers=[{"seconds": 42.0, "returncode": 0}])),
    ):
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(record))
    assert check.main(["--report", str(first), str(second)]) == 0
    goals = _goal_rows((second / "goals.md").read_text())
    assert goals["1. 16 LeNet-5 trials vmapped >= 12x one trial"] == ["3.00x", "n/a (smoke)"]
    assert goals["4. optimizer study in <= 10 minutes, compile included"] == [
        "42 s (exit 0)",
        "n/a (smoke)",
    ]
    assert check.main(["--report", str(tmp_path / "none")]) == 74
    assert "error: --report" in capsys.readouterr().err


def test_bad_parts_are_refused_with_one_line_and_exit_2(capsys):
    check = _script()
    assert check.main(["--parts", "tests,warp"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --parts warp: choose from {','.join(report.PARTS)}"
    )
    assert check.main(["--part", "1", "--parts", "tests"]) == 2
    assert "give one of them" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_prints_the_full_table_and_writes_its_json(tmp_path, data_root):
    env = dict(os.environ)
    # Reuse the prepared TFDS files of this machine instead of preparing them again.
    env.setdefault("RESEARCH_CACHE_DIR", os.path.expanduser("~/.cache/research/tfds"))
    cmd = [sys.executable, SCRIPT, "--smoke", "--out", str(tmp_path / "accel")]
    if data_root is not None:
        cmd += ["--data-dir", str(data_root)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "accel" / "table.md").read_text()
    record = json.loads((tmp_path / "accel" / "results.json").read_text())
    assert table in proc.stdout
    assert record["mode"] == "smoke" and record["backend"] == "cpu"
    assert record["versions"]["jax"] and record["git_commit"] and record["device_kind"]
    assert list(record["parts"]) == list(report.PARTS)
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
    trials = [(r["data"]["model"], r["data"]["trials"]) for r in rows["trials"]]
    assert trials == [("LeNet-5", 1), ("LeNet-5", 4), ("airbench", 1), ("airbench", 4)]
    assert rows["trials"][1]["data"]["sequential_trial_steps_per_s"] is None  # N = 1's is used
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
    assert speed[2]["data"]["deterministic"] is True and speed[2]["data"]["ratio_to_autotuned"] > 0
    assert speed[0]["data"]["from_determinism_part"] and speed[2]["data"]["from_determinism_part"]
    assert speed[3]["verdict"] == "skip"  # airbench94 needs a CUDA GPU
    modes = {r["data"]["mode"]: r["data"] for r in rows["determinism"]}
    assert list(modes) == ["off", "ops", "pinned"]
    for mode in modes.values():  # CPU programs are deterministic: every mode's two processes agree
        assert mode["equal"] and mode["lenet_ms_per_step"] > 0
    assert rows["optimizers"][0]["verdict"] in ("n/a (smoke)", "skip")
    goals = (tmp_path / "accel" / "goals.md").read_text()
    # Measured in smoke: determinism (3 goals), speedrun accuracy and deterministic time,
    # ResNet, LeNet-5; not: N = 16 and 64, airbench94 (CUDA), the study (its own call).
    assert goals.count("n/a (smoke)") >= 7 and "| goal (issue 25) | measured | met? |" in goals
    for part in record["parts"]:
        assert f"| {part} |" in table
