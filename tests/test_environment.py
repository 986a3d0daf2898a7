"""research.environment: the determinism modes' flags, the autotune file's life cycle,
and what results.json is told about them."""

import hashlib
import os

import pytest

from research import config as base
from research import environment


def _config(**fields):
    c = base.get_base_config()
    for name, value in fields.items():
        setattr(c, name, value)
    return c


def test_ops_mode_switches_autotuning_off_with_deterministic_ops():
    flags = environment.determinism_flags(_config(determinism="ops"), gpu="NVIDIA H100 80GB HBM3")
    assert flags == ("--xla_gpu_deterministic_ops=true",)


def test_no_flags_when_determinism_is_off():
    assert environment.determinism_flags(_config(deterministic=False), gpu="NVIDIA H100") == ()


def test_pinned_mode_on_cpu_sets_the_flag_and_makes_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv(environment.AUTOTUNE_ENV_VAR, str(tmp_path))
    flags = environment.determinism_flags(_config(determinism="pinned"), gpu=None)
    assert flags == ("--xla_gpu_exclude_nondeterministic_ops=true",)
    assert list(tmp_path.iterdir()) == []


def test_pinned_mode_dumps_once_then_every_later_process_loads(tmp_path, monkeypatch):
    monkeypatch.setenv(environment.AUTOTUNE_ENV_VAR, str(tmp_path))
    c = _config(determinism="pinned")
    first = environment.determinism_flags(c, gpu="NVIDIA H200")
    assert first[0] == "--xla_gpu_exclude_nondeterministic_ops=true"
    name, path = first[1].split("=", 1)
    assert name == "--xla_gpu_dump_autotune_results_to"
    assert os.path.dirname(path) == str(tmp_path)
    # XLA writes the file while compiling; a later process finds it and loads it.
    with open(path, "w") as f:
        f.write("version: 3\n")
    later = environment.determinism_flags(c, gpu="NVIDIA H200")
    assert later[1] == f"--xla_gpu_load_autotune_results_from={path}"


def test_autotune_file_is_keyed_by_gpu_and_program(tmp_path, monkeypatch):
    monkeypatch.setenv(environment.AUTOTUNE_ENV_VAR, str(tmp_path))
    c = _config()
    h100 = environment.autotune_file(c, "NVIDIA H100")
    assert environment.autotune_file(c, "NVIDIA H100") == h100  # stable
    assert environment.autotune_file(c, "NVIDIA H200") != h100
    c.batch_size = 256
    assert environment.autotune_file(c, "NVIDIA H100") != h100
    assert os.path.basename(h100).startswith(c.model.name)


def test_an_unknown_mode_names_the_field_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"config.determinism='fast'.*valid: ops, pinned"):
        environment.determinism_flags(_config(determinism="fast"), gpu=None)
    with pytest.raises(ValueError, match=r"config.determinism='fast'.*'pinned' or 'ops'"):
        base.validate(_config(determinism="fast"))


def test_the_record_names_the_flags_and_hashes_the_autotune_file(tmp_path, monkeypatch):
    path = tmp_path / "lenet5-0123.textproto"
    path.write_text("version: 3\n")
    monkeypatch.setitem(environment._state, "determinism", "pinned")
    monkeypatch.setitem(
        environment._state,
        "flags",
        [
            "--xla_gpu_exclude_nondeterministic_ops=true",
            f"--xla_gpu_load_autotune_results_from={path}",
        ],
    )
    record = environment.determinism_record()
    assert record["determinism"] == "pinned"
    assert record["autotune_file"] == str(path)
    assert record["autotune_sha256"] == hashlib.sha256(b"version: 3\n").hexdigest()
    assert record["determinism_flags"][0] == "--xla_gpu_exclude_nondeterministic_ops=true"


def test_setup_environment_keeps_the_callers_flags_and_adds_ours_once(monkeypatch, tmp_path):
    import jax

    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    monkeypatch.setenv(environment.CACHE_ENV_VAR, "off")
    before = jax.config.jax_compilation_cache_dir
    done = environment.setup_environment(_config(determinism="ops"))
    environment.setup_environment(_config(determinism="ops"))
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=1",
        "--xla_gpu_deterministic_ops=true",
    ]
    assert done["determinism"] == "ops"
    assert jax.config.jax_compilation_cache_dir == before  # cache "off": jax left alone
