"""Repo-level pytest configuration for the project's own tests (not the plugin)."""

import os
from pathlib import Path

import pytest

# pytester's in-process runs drop the modules first imported during a run (sys.modules snapshot), and
# hypothesis's pytest plugin imports hypothesis at the end of every run (its terminal summary): imported
# here once, an in-process run takes ~0.5 s instead of ~2 s (tests/test_ci_recipes.py, plugin_support users).
try:
    import hypothesis.internal.observability  # noqa: F401
except ImportError:  # an older hypothesis, whose plugin does not import it
    pass

# Keep the project's tests light on this 2-core machine: one intra-op thread per process.
os.environ.setdefault("OMP_NUM_THREADS", "1")

_OWN_TESTS = Path(__file__).parent / "tests"


def pytest_configure(config):
    """For the project's own tests (not the gate, ``pytest --partattn``, which runs in the user's
    environment as it is): nothing is ever downloaded from a model hub (a Hugging Face repo id resolves
    from the hub cache a test builds, or fails in one line; model/hub.py reads the variable when it
    resolves), and in a GitHub Actions job the gates the tests start do not append to its summary page."""
    try:
        gate = config.getoption("partattn", default=False) or config.getini("partattn")
    except ValueError:  # the plugin is not loaded (-p no:partattn)
        gate = False
    if gate:
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.pop("GITHUB_STEP_SUMMARY", None)


def pytest_ignore_collect(collection_path, config):
    """`pytest --partattn` at the repo root is the attention gate on fixtures/, not our test suite
    (which also needs the `test` extra); run `pytest` for that."""
    if config.getoption("partattn", default=False) and _OWN_TESTS in (collection_path, *collection_path.parents):
        return True
    return None


@pytest.fixture(autouse=True)
def _pytester_runs_are_their_own_session(request):
    """A pytester run is a pytest session of its own, not a pytest-xdist worker: when this suite runs
    under ``pytest -n N``, hide the outer worker's variables from it (and from its subprocesses)."""
    if "pytester" not in request.fixturenames:
        yield
        return
    mp = pytest.MonkeyPatch()
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        mp.delenv(name, raising=False)
    yield
    mp.undo()
