"""A throwaway MySQL (MariaDB) server for the sweep-storage tests: one per test process.

`database_url()` starts the server on first use (`mariadb-install-db` and `mariadbd`
from this machine's MariaDB or MySQL, on a Unix socket in a temporary folder, no
TCP port, no grant tables), creates a fresh database for the caller, and returns
its SQLAlchemy URL. The server is stopped and its folder removed when the process
exits. Without the PyMySQL driver (requirements-test.txt) the calling test is
skipped, or fails under CI=true, as for any test package; without a server on the
machine (Debian: `apt-get install mariadb-server`) it is skipped, with one line.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from tests.helpers.requirements import requires

_server: tuple[str] | str | None = None  # (the socket's path,), or why there is none
_names = itertools.count()

# The first name found on PATH or in /usr/sbin (where Debian puts the server).
INSTALL = ("mariadb-install-db", "mysql_install_db")
SERVER = ("mariadbd", "mysqld")
START_SECONDS = 60  # how long the server may take to accept connections


def _find(names: tuple[str, ...]) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin"
    return next((found for n in names if (found := shutil.which(n, path=path))), None)


def _start() -> tuple[str] | str:
    install, server = _find(INSTALL), _find(SERVER)
    if not (install and server):
        return "MySQL tests need a MariaDB or MySQL server (mariadb-install-db, mariadbd)"
    pymysql = requires("pymysql")
    folder = tempfile.mkdtemp(prefix="research-mysql-")
    data, socket = os.path.join(folder, "data"), os.path.join(folder, "mysqld.sock")
    user = ["--user=root"] if os.geteuid() == 0 else []  # the server refuses root otherwise
    setup = [
        install,
        "--no-defaults",
        f"--datadir={data}",
        "--auth-root-authentication-method=normal",
    ]
    proc = subprocess.run([*setup, *user], capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        return f"could not set up MySQL ({proc.stderr.strip()[-200:]})"
    options = [f"--datadir={data}", f"--socket={socket}", "--skip-networking"]
    options += ["--skip-grant-tables", f"--log-error={folder}/log", f"--pid-file={folder}/pid"]
    daemon = subprocess.Popen(
        [server, "--no-defaults", *options, *user],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def stop():
        daemon.terminate()
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        shutil.rmtree(folder, ignore_errors=True)

    atexit.register(stop)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            return f"MySQL exited at start (exit {daemon.returncode}; log: {folder}/log)"
        try:
            pymysql.connect(unix_socket=socket, user="root").close()
            return (socket,)
        except pymysql.err.OperationalError:
            time.sleep(0.2)
    return f"MySQL did not accept connections within {START_SECONDS} s"


def database_url() -> str:
    """A new, empty database's URL on this process's server (or the test is skipped)."""
    global _server
    pymysql = requires("pymysql")
    if _server is None:
        _server = _start()
    if isinstance(_server, str):
        pytest.skip(_server)
    (socket,) = _server
    name = f"sweep_{os.getpid()}_{next(_names)}"
    with pymysql.connect(unix_socket=socket, user="root") as connection:
        connection.cursor().execute(f"CREATE DATABASE {name}")
    return f"mysql+pymysql://root@localhost/{name}?unix_socket={socket}"
