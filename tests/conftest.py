"""Test-session settings and fixtures shared by every test module.

Two tiers (README, "Development"):
  * `make test`: `pytest -m "not slow"`, the fast tier (under 5 minutes on 2 cores).
  * `make test-all`: everything, including tests marked `slow` and those that need
    the optional frameworks of `requirements-test.txt` (torch, torchvision, keras).

Real datasets come from `data_root`: $RESEARCH_DATA_DIR, else `../shared/data`
beside the repository. Where neither exists, a test that needs them is skipped
with one line saying how to get them, unless the network can reach the original
files (the loaders download them then). Under `CI=true` nothing is skipped for
missing data or missing optional packages: those fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from tests.helpers.requirements import in_ci

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR_ENV = "RESEARCH_DATA_DIR"  # the same name as research.data.tfds_cache.DATA_DIR_ENV
DATA_HELP = (
    "set RESEARCH_DATA_DIR to a folder laid out like shared/data (mnist/, fashion_mnist/, "
    "cifar10/cifar-10-batches-bin/), or run where the original files can be downloaded"
)


def pytest_configure(config):
    # Scripts and `python -m` run as subprocesses import `research` from this checkout, as
    # pytest itself does (`pythonpath = ["."]`), not whichever copy the venv has installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p
    )
    # Scripts run as subprocesses (tests/train/, tests/sweep/) keep their
    # compiled programs in one cache for this session, not in the user's
    # ~/.cache: a rerun or resume of the same run then loads instead of compiling.
    cache = os.environ.get("RESEARCH_COMPILATION_CACHE")
    if not cache:
        cache = os.environ["RESEARCH_COMPILATION_CACHE"] = tempfile.mkdtemp(
            prefix="research-test-xla-"
        )
        config._research_cache = cache  # ours to remove when the session ends
    # The pytest process itself shares the same cache: the same program built by
    # two tests (two `make_steps` closures of one model, say) compiles once.
    import jax

    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_unconfigure(config):
    cache = getattr(config, "_research_cache", None)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)


def find_data_root() -> Path:
    """$RESEARCH_DATA_DIR, else ../shared/data relative to the repo root."""
    return Path(os.environ.get(DATA_DIR_ENV) or REPO_ROOT.parent / "shared" / "data")


def _network_reaches(host: str = "ossci-datasets.s3.amazonaws.com", port: int = 443) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def data_root() -> Path | None:
    """The dataset folder; None where the loaders will download instead; else a skip."""
    root = find_data_root()
    if (root / "mnist").is_dir():
        return root
    if in_ci():
        # Fail, not skip: a CI without the data folder must not pass as green skips.
        pytest.fail(f"no dataset folder at {root} under CI=true: {DATA_HELP}")
    if _network_reaches():
        return None
    pytest.skip(f"no dataset folder at {root} and no network: {DATA_HELP}")
