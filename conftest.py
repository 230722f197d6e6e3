"""Repo-level pytest configuration for the project's own tests (not the plugin)."""

import os
from pathlib import Path

import pytest

# Keep the project's tests light on this 2-core machine: one intra-op thread per process.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Nothing is ever downloaded from a model hub in these tests: a Hugging Face repo id resolves from the
# hub cache a test builds, or fails in one line (model/hub.py reads this when it resolves, not at import).
os.environ["HF_HUB_OFFLINE"] = "1"

_OWN_TESTS = Path(__file__).parent / "tests"


def pytest_ignore_collect(collection_path, config):
    """`pytest --partattn` at the repo root is the attention gate on fixtures/, not our test suite
    (which also needs the `test` extra); run `pytest` for that."""
    if config.getoption("partattn", default=False) and _OWN_TESTS in (collection_path, *collection_path.parents):
        return True
    return None


@pytest.fixture(autouse=True)
def _pytester_runs_are_their_own_session(request):
    """A pytester run is a pytest session of its own, not a pytest-xdist worker: when this suite runs
    under ``pytest -n N``, hide the outer worker's variables from it (and from its subprocesses); when
    it runs in a GitHub Actions job, the inner gates must not append to that job's summary."""
    if "pytester" not in request.fixturenames:
        yield
        return
    mp = pytest.MonkeyPatch()
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID", "GITHUB_STEP_SUMMARY"):
        mp.delenv(name, raising=False)
    yield
    mp.undo()
