"""Process setup shared by the scripts (research/cli.py)."""

from __future__ import annotations

import os

import jax
import pytest

from research import cli, config


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("off", None),
        ("0", None),
        ("", None),
        ("/tmp/somewhere", "/tmp/somewhere"),
        ("~/xla", os.path.expanduser("~/xla")),
    ],
)
def test_compilation_cache_dir_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv(cli.CACHE_ENV_VAR, value)
    assert cli.compilation_cache_dir() == expected


def test_compilation_cache_defaults_to_the_user_cache(monkeypatch):
    monkeypatch.delenv(cli.CACHE_ENV_VAR, raising=False)
    assert cli.compilation_cache_dir() == os.path.expanduser("~/.cache/research/xla")


# Every process-wide setting setup_environment may change; restored after the test.
JAX_SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")


@pytest.fixture
def jax_settings():
    """Restores the jax settings setup_environment changes, so nothing leaks into later tests."""
    before = {name: getattr(jax.config, name) for name in JAX_SETTINGS}
    yield
    for name, value in before.items():
        jax.config.update(name, value)


def test_setup_environment_points_jax_at_the_cache(monkeypatch, tmp_path, jax_settings):
    monkeypatch.setenv(cli.CACHE_ENV_VAR, str(tmp_path))
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # restored afterwards
    cli.setup_environment(config.get_base_config())
    assert jax.config.jax_compilation_cache_dir == str(tmp_path)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 1.0
    # Deterministic GPU ops are asked for in the flags (CPU is deterministic anyway).
    assert "--xla_gpu_deterministic_ops=true" in os.environ["XLA_FLAGS"]
    # Idempotent: a second call adds nothing.
    flags = os.environ["XLA_FLAGS"]
    cli.setup_environment(config.get_base_config())
    assert os.environ["XLA_FLAGS"] == flags
