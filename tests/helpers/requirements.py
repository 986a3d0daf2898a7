"""Optional packages and CI: skip where something is missing, fail under `CI=true`."""

from __future__ import annotations

import importlib
import os

import pytest


def in_ci() -> bool:
    """True under CI (`CI=true`): missing data or optional packages fail instead of skipping."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def requires(module: str):
    """`import module`, or skip (fail under CI=true) with one line naming what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        message = f"{module} is not installed ({err}); `make setup-test` installs it"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
