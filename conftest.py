"""Repo-level pytest configuration for the project's own tests (not the plugin)."""

import os
from pathlib import Path

# Keep the project's tests light on this 2-core machine: one intra-op thread per process.
os.environ.setdefault("OMP_NUM_THREADS", "1")

_OWN_TESTS = Path(__file__).parent / "tests"


def pytest_ignore_collect(collection_path, config):
    """`pytest --partattn` at the repo root is the attention gate on fixtures/, not our test suite
    (which also needs the `test` extra); run `pytest` for that."""
    if config.getoption("partattn", default=False) and _OWN_TESTS in (collection_path, *collection_path.parents):
        return True
    return None
