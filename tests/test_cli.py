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


def test_setup_environment_points_jax_at_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(cli.CACHE_ENV_VAR, str(tmp_path))
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # restored afterwards
    before = jax.config.jax_compilation_cache_dir
    try:
        cli.setup_environment(config.get_base_config())
        assert jax.config.jax_compilation_cache_dir == str(tmp_path)
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
