"""Test-session settings shared by every test module."""

from __future__ import annotations

import os
import tempfile


def pytest_configure(config):
    # Scripts run as subprocesses (tests/test_train.py, test_sweep.py) keep their
    # compiled programs in one cache for this session, not in the user's
    # ~/.cache: a rerun or resume of the same run then loads instead of compiling.
    os.environ.setdefault(
        "RESEARCH_COMPILATION_CACHE", tempfile.mkdtemp(prefix="research-test-xla-")
    )
