"""Fixtures of the data tests."""

from __future__ import annotations

import pytest

from research.data import tfds_cache


@pytest.fixture
def no_env(monkeypatch):
    """Each test sets the env variables it wants; none leak in from the shell."""
    monkeypatch.delenv(tfds_cache.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(tfds_cache.CACHE_DIR_ENV, raising=False)
