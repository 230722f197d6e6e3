"""The plugin in real subprocesses: nothing heavy is imported without --partattn, and
pytest-xdist (-n 2) gives the same outcomes as a serial run, one model load per worker."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from plugin_support import FAILING_SEPARATION, IMAGE, RUN_COUNTER, args, make_project

from partattn_checks.items import ITEM_CHECKS

pytest_plugins = ("pytester",)
HEAVY = ("torch", "diffusers", "transformers", "matplotlib")

RECORD_MODULES = f"""
import json, sys

def pytest_unconfigure(config):
    heavy = [m for m in {HEAVY!r} if m in sys.modules]
    with open("modules.json", "w") as fh:
        json.dump(heavy, fh)
"""


@pytest.fixture(autouse=True)
def _no_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)


def test_importing_the_plugin_is_light():
    code = (f"import sys, partattn_checks, partattn_checks.plugin, partattn_checks.items, partattn_checks.report; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_without_partattn_nothing_heavy_is_imported(pytester):
    make_project(pytester, images=(IMAGE, "np1_circle.png"))
    pytester.makeconftest(RECORD_MODULES)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs", timeout=120)
    result.assert_outcomes(skipped=2 * len(ITEM_CHECKS))
    result.stdout.fnmatch_lines(["*pass --partattn to run attention checks*"])
    assert json.loads((pytester.path / "modules.json").read_text()) == []


def _junit_outcomes(path) -> dict[tuple[str, str], str]:
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name").split("@")[0]  # --dist loadgroup appends @<group> to node ids
        kind = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        out[(case.get("classname"), name)] = kind
    return out


def test_xdist_gives_the_serial_outcomes_with_one_model_load_per_worker(pytester):
    folder = make_project(pytester, images=(IMAGE, "np1_circle.png"), thresholds=FAILING_SEPARATION)
    (folder / "np2_broken.png").write_bytes(b"not an image at all")
    pytester.makeconftest(RUN_COUNTER)
    serial = pytester.runpytest_inprocess(*args("--junitxml=serial.xml"))
    expected = _junit_outcomes(pytester.path / "serial.xml")
    assert len(expected) == 3 * len(ITEM_CHECKS)
    assert set(expected.values()) == {"passed", "failure", "skipped"}
    assert serial.ret == pytest.ExitCode.TESTS_FAILED

    parallel = pytester.runpytest_subprocess(*args("-n", "2", "--dist", "loadgroup", "--junitxml=xdist.xml"),
                                             timeout=300)
    assert _junit_outcomes(pytester.path / "xdist.xml") == expected
    # the controller printed the summary from the workers' reports and wrote the index
    parallel.stdout.fnmatch_lines(["*= partattn summary =*", "image*baseline",
                                   "fixtures/images/np1_circle.png*skip*FAIL",
                                   "fixtures/images/np2_broken.png*ERROR*",
                                   f"fixtures/images/{IMAGE}*FAIL*"])
    assert parallel.stdout.str().count("which leaves out <system-out>") == 1  # warned by the controller only
    index = (pytester.path / ".partattn-results" / "index.html").read_text()
    assert all(name in index for name in (IMAGE, "np1_circle.png", "np2_broken.png"))
    # failure text and figures travelled from the workers
    parallel.stdout.fnmatch_lines([f"partattn: part_separation failed for fixtures/images/{IMAGE}", "figures:"])
    workers = {p.name: json.loads(p.read_text()) for p in pytester.path.glob("events-gw*.json")}
    assert set(workers) == {"events-gw0.json", "events-gw1.json"}
    assert all(len(w["loads"]) <= 1 for w in workers.values())
    assert sorted(c for w in workers.values() for c in w["calls"]) == sorted([IMAGE, "np1_circle.png", "np2_broken.png"])
