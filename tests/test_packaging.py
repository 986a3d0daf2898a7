"""The package: requirements and their lock, entry points, platform fallbacks, a fresh install.

Fast: every pinned requirement is in requirements-lock.txt at its version (so adding one
without `make lock` fails here), the Makefile's GPU wheel list agrees with the lock, the lock
writer's output on a worked example, the commands' entry points, and a platform without
`fcntl` and without oneDNN. Slow (full tier): a wheel built from this checkout, installed
into a fresh virtual environment outside it, trains `digits` from another folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import tomllib

import pytest

from research import platform as research_platform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK = os.path.join(ROOT, "requirements-lock.txt")
README_DIGITS_ACCURACY = 0.9805  # README, results table: "98.05% test accuracy (359 digits)"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: str) -> dict[str, str]:
    """`{name: version}` of a requirements file's `name==version` lines (no `-r`, no marker)."""
    found = {}
    with open(path) as f:
        for line in f:
            line = line.split("#")[0].split(";")[0].strip()
            if line and not line.startswith("-"):
                name, version = line.split("==")
                found[canonical(name)] = version.strip()
    return found


def requirement_files() -> list[str]:
    """The files pyproject.toml builds the dependencies and extras from."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        dynamic = tomllib.load(f)["tool"]["setuptools"]["dynamic"]
    files = set(dynamic["dependencies"]["file"])
    for extra in dynamic["optional-dependencies"].values():
        files.update(extra["file"])
    return sorted(files)


def unlocked(requirements: dict[str, str], lock: dict[str, str]) -> list[str]:
    """The requirements the lock does not pin at their version, as `name==version` lines."""
    return [f"{n}=={v}" for n, v in sorted(requirements.items()) if lock.get(n) != v]


def test_every_requirement_is_in_the_lock_at_its_version():
    lock = pins(LOCK)
    assert len(lock) >= 150  # the package, its extras and every transitive package
    for path in requirement_files():
        missing = unlocked(pins(os.path.join(ROOT, path)), lock)
        assert not missing, f"{path} pins {missing}, which the lock lacks: run `make lock`"
    # Transitive packages the issue found floating are pinned.
    assert {"rich", "msgpack", "tensorstore", "dm-tree", "protobuf"} <= set(lock)
    # The check on a worked example: a new requirement, and a changed pin.
    assert unlocked({"jax": "0.10.2", "left-pad": "1.0"}, lock) == ["left-pad==1.0"]
    assert unlocked({"jax": "0.10.3"}, lock) == ["jax==0.10.3"]


def test_pyproject_reads_runtime_and_development_requirements_apart():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    assert project["project"]["name"] == "research-cnn"  # `research` is taken on PyPI
    extras = project["tool"]["setuptools"]["dynamic"]["optional-dependencies"]
    assert set(extras) == {"test", "dev", "bench", "databases", "notebook"}
    runtime = pins(os.path.join(ROOT, "requirements.txt"))
    assert not {"pytest", "pytest-xdist", "ruff", "torch"} & set(runtime)
    assert {"jax", "flax", "optax", "optuna", "onednn-cpu-gomp"} <= set(runtime)
    test = {}
    for path in extras["test"]["file"]:
        test.update(pins(os.path.join(ROOT, path)))
    assert {"pytest", "pytest-xdist", "torch", "psycopg2-binary", "pymysql"} <= set(test)
    notebook = pins(os.path.join(ROOT, "requirements-notebook.txt"))
    assert set(notebook) == {"jupyter", "nbclient", "ipykernel", "pandas"}
    data = project["tool"]["setuptools"]["package-data"]["research.layers"]
    assert data == ["onednn_conv.cc"] and os.path.exists(
        os.path.join(ROOT, "research", "layers", "onednn_conv.cc")
    )
    assert project["project"]["scripts"] == {
        "research-train": "research.commands:train",
        "research-sweep": "research.commands:sweep",
    }


def _make_words(name: str) -> list[str]:
    with open(os.path.join(ROOT, "Makefile")) as f:
        text = f.read().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith(f"{name} :=")]
    return line.split(":=", 1)[1].split()


def test_the_gpu_wheel_list_takes_the_locks_versions():
    lock = pins(LOCK)
    wheels = [w.split("==") for w in _make_words("ACCEL_WHEELS") + _make_words("ACCEL_SDISTS")]
    assert len(wheels) >= 20
    assert {canonical(n): v for n, v in wheels} == {
        canonical(n): lock[canonical(n)] for n, _ in wheels
    }
    with open(os.path.join(ROOT, "Makefile")) as f:
        makefile = f.read()
    assert "-c $(LOCK) -d .whl $(ACCEL_WHEELS)" in makefile  # pip gets the lock too
    assert '-c $(LOCK) -e ".[dev]"' in makefile  # make setup
    assert '-c $(LOCK) -e ".[test,notebook]"' in makefile  # make setup-test (CI's make test-all)


def _lock_script():
    spec = importlib.util.spec_from_file_location("lock", os.path.join(ROOT, "scripts", "lock.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_lock_writer_pins_what_pip_resolved():
    report = {
        "install": [
            {"metadata": {"name": "PyYAML", "version": "6.0.4"}},
            {"metadata": {"name": "torch", "version": "2.13.0+cpu"}},
            {"metadata": {"name": "research_cnn", "version": "0.1.0"}},
            {"metadata": {"name": "absl_py", "version": "2.5.1"}},
        ]
    }
    lines = _lock_script().lock_lines(report, "research-cnn")
    assert lines == ["absl-py==2.5.1", "pyyaml==6.0.4", "torch==2.13.0"]
    with open(LOCK) as f:
        body = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    names = [line.split("==")[0] for line in body]
    assert names == sorted(names)  # as the writer leaves it: nobody edited it by hand


def _run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESEARCH_CONV")}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_scripts_are_thin_wrappers_of_the_package_commands():
    assert not os.path.exists(os.path.join(ROOT, "scripts", "_checkout.py"))
    for name in ("train", "sweep"):
        with open(os.path.join(ROOT, "scripts", f"{name}.py")) as f:
            script = f.read()
        assert f"from research.commands import {name}" in script and "sys.path" not in script
        assert len(script.splitlines()) < 40
    # `python -m research.train`: a bad override is one line and exit code 2, as the script.
    proc = subprocess.run(
        [sys.executable, "-m", "research.train", "--config", "experiments/digits.py"]
        + ["--workdir", "unused", "--config.optim.no_such_field=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: bad config override --config.optim.no_such_field: the config has no such field"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "research.sweep", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "python -m research.sweep --config" in proc.stdout  # its usage text: the docstring


def test_a_platform_without_fcntl_imports_and_warns_once(tmp_path):
    # No fcntl and no msvcrt: the three modules that lock files import, and a lock warns.
    code = f"""
import sys, warnings
sys.modules["fcntl"] = None
sys.modules["msvcrt"] = None
import research.data.tfds_cache, research.sweep.storage
from research.train import outputs
from research import platform
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    outputs.lock_workdir({str(tmp_path / "run")!r})
    outputs.unlock_workdir({str(tmp_path / "run")!r})
print(type(platform.fcntl).__name__, len(caught), caught[0].category.__name__)
print(caught[0].message)
"""
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, second = proc.stdout.strip().splitlines()
    assert first == "NoLocks 1 RuntimeWarning"
    assert second.startswith("this platform has no file locks (neither fcntl nor msvcrt)")


class _FakeMsvcrt:
    """msvcrt.locking's contract: byte ranges from the current position, one holder each."""

    LK_UNLCK, LK_LOCK, LK_NBLCK = 0, 1, 2

    def __init__(self):
        self.held = {}  # (inode, offset) -> fd
        self.calls = []

    def locking(self, fd, mode, nbytes):
        where = (os.fstat(fd).st_ino, os.lseek(fd, 0, os.SEEK_CUR))
        self.calls.append((mode, where[1]))
        if mode == self.LK_UNLCK:
            del self.held[where]
        elif self.held.setdefault(where, fd) != fd:
            raise PermissionError(13, "Permission denied")


def test_windows_file_locks_refuse_a_second_holder(tmp_path):
    msvcrt = _FakeMsvcrt()
    locks = research_platform.file_locks(msvcrt_module=msvcrt)
    assert isinstance(locks, research_platform.WindowsLocks)
    path = tmp_path / ".lock"
    with open(path, "a+") as first, open(path, "a+") as second:
        first.write("process 1\n")
        first.flush()
        locks.flock(first, locks.LOCK_EX | locks.LOCK_NB)
        assert first.tell() == len("process 1\n")  # its position is kept
        with pytest.raises(BlockingIOError):
            locks.flock(second, locks.LOCK_EX | locks.LOCK_NB)
        locks.flock(first, locks.LOCK_UN)
        locks.flock(second, locks.LOCK_EX)  # free again: the blocking lock is taken
    assert [offset for _, offset in msvcrt.calls] == [0, 0, 0, 0]  # always byte 0
    assert research_platform.file_locks() is __import__("fcntl")  # here: the real module


def test_a_platform_without_onednn_says_why_once_and_runs_tiled():
    code = """
import logging, platform
platform.machine = lambda: "aarch64"
logging.basicConfig(format="%(message)s")
from research.layers import conv_algorithms, onednn
print(onednn.status())
print(conv_algorithms.resolve_conv_algorithm(), conv_algorithms.resolve_conv_algorithm())
"""
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    status, algorithms = proc.stdout.strip().splitlines()
    assert status == (
        "(False, 'the pinned oneDNN packages are for x86-64 Linux, not Linux aarch64')"
    )
    assert algorithms == "tiled tiled"
    said = [line for line in proc.stderr.splitlines() if "unavailable" in line]
    assert said == [
        "conv algorithm 'onednn' is unavailable (the pinned oneDNN packages are for x86-64 "
        "Linux, not Linux aarch64); CPU convolutions run 'tiled'"
    ]


def test_onednn_threads_per_call(monkeypatch):
    from research.layers import onednn

    monkeypatch.setenv(onednn.THREADS_ENV_VAR, "3")
    assert onednn.threads_per_call() == 3
    monkeypatch.delenv(onednn.THREADS_ENV_VAR)
    cores = len(os.sched_getaffinity(0))
    assert onednn.threads_per_call() == max(1, cores // 2)
    with open(onednn.SOURCE) as f:
        source = f.read()
    assert "constexpr int kConcurrentCalls = 2;" in source and onednn.CONCURRENT_CALLS == 2
    assert f'std::getenv("{onednn.THREADS_ENV_VAR}")' in source


@pytest.mark.slow
def test_installed_environment_is_the_locked_one():
    """Every package installed here is pinned in the lock at its version (CI's environment)."""
    import importlib.metadata

    lock = pins(LOCK)
    installer = {"pip", "setuptools", "wheel", "research", "research-cnn"}
    found = {
        canonical(d.metadata["Name"]): d.version.split("+")[0]
        for d in importlib.metadata.distributions()
    }
    wrong = {
        n: (v, lock.get(n)) for n, v in found.items() if n not in installer and lock.get(n) != v
    }
    assert not wrong, f"installed but not locked at that version (installed, lock): {wrong}"


@pytest.mark.slow
def test_a_wheel_in_a_fresh_venv_trains_digits_from_another_folder(tmp_path):
    """Build the wheel, install it (with the lock) into a new venv, train from elsewhere."""
    started = time.perf_counter()
    wheels, venv, elsewhere = tmp_path / "wheels", tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["RESEARCH_NATIVE_CACHE"] = str(tmp_path / "native")  # builds from the package data

    def run(*cmd, cwd=elsewhere, timeout=1800):
        proc = subprocess.run(
            cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert proc.returncode == 0, f"{cmd}: {proc.stdout[-1500:]}{proc.stderr[-3000:]}"
        return proc

    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), ROOT)
    (wheel,) = [str(w) for w in wheels.iterdir() if w.suffix == ".whl"]
    built = time.perf_counter()
    base = getattr(sys, "_base_executable", sys.executable)
    run(base, "-m", "venv", str(venv))
    python = str(venv / "bin" / "python")
    run(python, "-m", "pip", "install", "--quiet", "-c", LOCK, wheel)
    installed = time.perf_counter()
    assert (venv / "bin" / "research-train").exists()
    config = os.path.join(ROOT, "experiments", "digits.py")
    run(python, "-m", "research.train", "--config", config, "--workdir", "run")
    trained = time.perf_counter()
    with open(elsewhere / "run" / "results.json") as f:
        results = json.load(f)
    assert results["test_accuracy"] >= README_DIGITS_ACCURACY - 1e-9
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        assert results["conv_algorithm"]["conv"] == "onednn"  # the package data built
        assert any((tmp_path / "native").glob("onednn_conv-*.so"))
    spent = {
        "wheel": built - started,
        "venv+install": installed - built,
        "digits": trained - installed,
    }
    print("fresh install seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in spent.items()))
    shutil.rmtree(venv)  # 1+ GB: not left for the session's end


def test_the_xla_flags_table_compares_each_variant_with_ours():
    from research.bench import xla_cpu_flags

    def row(variant, **kw):
        flags = xla_cpu_flags.VARIANTS[variant].xla_flags
        base = {"variant": variant, "model": "lenet5", "batch": 128, "xla_flags": flags}
        return {**base, "load_average": [2.0, 3.0], **kw}

    rows = [
        row("ours", step_ms=10.0, best_ms=9.5),
        row("xla_use_onednn", step_ms=25.0, best_ms=24.0),
        row("xla_xnnpack", error="Unknown flags in XLA_FLAGS: --xla_cpu_use_xnnpack=true"),
    ]
    lines = xla_cpu_flags.table(rows).splitlines()
    assert lines[2] == "| lenet5 | 128 | ours |  | 10.0 | 9.5 | 1.00x | 2.0/3.0 |"
    assert lines[3] == (
        "| lenet5 | 128 | xla_use_onednn | `--xla_cpu_use_onednn=true` | 25.0 | 24.0 | 2.50x "
        "| 2.0/3.0 |"
    )
    assert "did not run: Unknown flags in XLA_FLAGS" in lines[4]
    assert {v.conv for v in xla_cpu_flags.VARIANTS.values()} == {"onednn", "xla"}
