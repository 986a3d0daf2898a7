"""The caller's logging and warnings are theirs: what the library does so that they stay so.

absl's `logging.log` gives a process whose root logger has no handler one
(`logging.basicConfig()`) on its first record. orbax logs through absl from its
import on (and grain imports orbax), so merely importing them would make the
caller's own `logging.basicConfig(...)` a no-op. `root_logging_kept()` wraps those
imports and the library's calls into them, and puts the root logger's handlers back.

Packages imported on first use add warnings filters at import (torch, pulled in by
tensorboardX where it is installed; scipy; flax). `caller_state_kept()` wraps each
call of the Python API (`research/api.py`), so that what they add is dropped when the
call returns, and the caller's filters and root handlers are as they were.
"""

from __future__ import annotations

import contextlib
import logging
import warnings


@contextlib.contextmanager
def root_logging_kept():
    """Runs the block, then restores the root logger's handlers as they were before it."""
    handlers = list(logging.root.handlers)
    try:
        yield
    finally:
        logging.root.handlers[:] = handlers


@contextlib.contextmanager
def caller_state_kept():
    """Runs the block, then restores the warnings filters and the root logger's handlers."""
    with warnings.catch_warnings(), root_logging_kept():
        yield
