"""Claiming a trial, so that processes sharing a sweep never run one trial twice.

A claim is a lock file created with `os.open(O_CREAT | O_EXCL)`, which is
atomic on local file systems and NFSv3+: of several processes creating the same
file, exactly one succeeds. The file holds `{"pid", "host", "time"}`. A lock
whose process is dead on this host (a killed sweep) is stale and is taken
over; a lock held by another host is always respected (its liveness cannot be
checked from here). Takeovers are serialized by a second O_EXCL file, so two
processes that both see the same stale lock cannot both take it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time


def _owner() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}


def _read(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(owner: dict | None) -> bool:
    """A lock of a dead process on this host. Unreadable (half-written) locks are not stale."""
    if owner is None or owner.get("host") != socket.gethostname():
        return False
    return not _alive(int(owner.get("pid", -1)))


def _create(path: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(_owner(), f)
    return True


def try_claim(path: str) -> bool:
    """Creates the lock file `path`; True if this process now holds it.

    A stale lock (its process is dead, on this host) is replaced.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if _create(path):
        return True
    owner = _read(path)
    if not _stale(owner):
        return False
    guard = path + ".takeover"
    if not _create(guard):
        if _stale(_read(guard)):  # a taker died mid-takeover (a window of microseconds)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(guard)
        return False
    try:
        if _read(path) == owner:  # still the same stale lock: nobody took it meanwhile
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return _create(path)
    finally:
        os.unlink(guard)


def release(path: str) -> None:
    """Removes a lock this process holds (and nothing else)."""
    owner = _read(path)
    if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        os.unlink(path)


@contextlib.contextmanager
def held(path: str, *, poll_seconds: float = 0.05, timeout_seconds: float = 600.0):
    """Blocks until `path` is claimed, then holds it for the `with` block."""
    deadline = time.monotonic() + timeout_seconds
    while not try_claim(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"lock {path} is held by {_read(path)}; remove it if stale")
        time.sleep(poll_seconds)
    try:
        yield
    finally:
        release(path)
