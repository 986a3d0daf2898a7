"""A throwaway PostgreSQL server for the sweep-storage tests: one per test process.

`database_url()` starts the server on first use (initdb + pg_ctl from this machine's
PostgreSQL, on a Unix socket in a temporary folder, as the `postgres` user when
the tests run as root, whom initdb refuses), creates a fresh database for the
caller, and returns its SQLAlchemy URL. The server is stopped and its folder
removed when the process exits. Without the psycopg2 driver (requirements-test.txt)
the calling test is skipped, or fails under CI=true, as for any test package;
without a PostgreSQL server on the machine it is skipped, with one line.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import socket
import subprocess
import tempfile

import pytest

from tests.helpers.requirements import requires

_server: tuple[str, int] | str | None = None  # (socket folder, port), or why there is none
_names = itertools.count()


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _start() -> tuple[str, int] | str:
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        return "PostgreSQL tests need the server's initdb and pg_ctl on PATH"
    folder = tempfile.mkdtemp(prefix="research-pg-")
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    with socket.socket() as s:  # a free port: the socket's name includes it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = os.path.join(folder, "data")
    options = f"-k {folder} -p {port} -c listen_addresses='' -c fsync=off"
    steps = [
        ["initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        ["pg_ctl", "-D", data, "-o", options, "-l", os.path.join(folder, "log"), "-w", "start"],
    ]
    for cmd in steps:
        proc = subprocess.run(_as_postgres(cmd), capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            return f"could not start PostgreSQL ({cmd[0]}: {proc.stderr.strip()[-200:]})"

    def stop():
        cmd = ["pg_ctl", "-D", data, "-m", "immediate", "stop"]
        subprocess.run(_as_postgres(cmd), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)

    atexit.register(stop)
    return folder, port


def database_url() -> str:
    """A new, empty database's URL on this process's server (or the test is skipped)."""
    global _server
    requires("psycopg2")
    if _server is None:
        _server = _start()
    if isinstance(_server, str):
        pytest.skip(_server)
    folder, port = _server
    name = f"sweep_{os.getpid()}_{next(_names)}"
    cmd = ["createdb", "-h", folder, "-p", str(port), "-U", "postgres", name]
    subprocess.run(_as_postgres(cmd), check=True, capture_output=True)
    return f"postgresql+psycopg2://postgres@/{name}?host={folder}&port={port}"
