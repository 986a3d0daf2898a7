"""Fixtures of the training tests."""

from __future__ import annotations

import fcntl
import os

import pytest

from tests.helpers.training import run_script


def _train(workdir):
    proc = run_script(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """One uninterrupted single-process CLI run that the other runs are compared against.

    test_train.py and test_checkpoint.py share it: one run per session, also under
    pytest-xdist, where the first worker to ask trains it (under a file lock in the
    session's shared temporary folder) and the others wait and reuse it.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        workdir = tmp_path_factory.mktemp("reference")
        _train(workdir)
        return workdir
    shared = tmp_path_factory.getbasetemp().parent
    workdir = shared / "reference-run"
    with open(shared / "reference-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not workdir.exists():
            _train(workdir)
        elif not (workdir / "results.json").exists():
            pytest.fail(f"the reference run in {workdir} failed in another worker")
    return workdir
