"""Fixtures of the layer tests."""

from __future__ import annotations

import jax
import pytest


@pytest.fixture
def fast_prng_compiles():
    """Parameter init here uses the non-partitionable threefry. With jax 0.10's default
    (partitionable) threefry, XLA:CPU takes 3-5 s of CPU to compile each random draw of a
    multi-dimensional shape (a conv kernel), versus ~0.3 s without; the draws are just as
    random and nothing here depends on their values."""
    with jax.threefry_partitionable(False):
        yield
