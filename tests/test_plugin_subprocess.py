"""The plugin in real subprocesses: nothing heavy is imported without --partattn, and
pytest-xdist (-n 2) gives the same outcomes as a serial run, one model load per worker."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from plugin_support import FAILING_SEPARATION, IMAGE, RUN_COUNTER, args, make_project

from partattn_checks.gate import scheduling
from partattn_checks.gate.items import ITEM_CHECKS
from partattn_checks.gate.scheduling import KEEPS_FILES_TOGETHER, SPLITS_FILES

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
    imports = (
        "from partattn_checks.gate import plugin, items, state, options, report",
        "from partattn_checks.runs import session, sidecar",
        "from partattn_checks.capture import runspec",
    )
    heavy = (*HEAVY, "numpy", "safetensors", "PIL")  # numpy alone costs ~0.2 s at every pytest start
    code = f"import sys; {'; '.join(imports)}; print([m for m in {heavy!r} if m in sys.modules])"
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
        kind = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        out[(case.get("classname"), case.get("name"))] = kind
    return out


IMAGES = (IMAGE, "np1_circle.png", "np3_three_shapes.png")


@pytest.fixture(scope="module")
def serial_outcomes() -> dict:
    """The serial run's outcomes, kept by the first test of this module that runs (in each xdist worker)
    for the others: the same project gives the same outcomes in any folder, so one serial run serves
    every --dist mode's comparison (each ran its own, 13 s apiece)."""
    return {}


def _serial_then(pytester, serial_outcomes: dict, *xdist_args: str):
    """Run the gate serially (in process; once per module), then under xdist with ``xdist_args``; both
    see a broken image."""
    folder = make_project(pytester, images=IMAGES, thresholds=FAILING_SEPARATION)
    (folder / "np2_broken.png").write_bytes(b"not an image at all")
    pytester.makeconftest(RUN_COUNTER)
    if "junit" not in serial_outcomes:
        serial = pytester.runpytest_inprocess(*args("--junitxml=serial.xml", steps=1))
        assert serial.ret == pytest.ExitCode.TESTS_FAILED
        serial_outcomes["junit"] = _junit_outcomes(pytester.path / "serial.xml")
    expected = dict(serial_outcomes["junit"])
    assert len(expected) == 4 * len(ITEM_CHECKS) + 1  # and the fixture-set item, not judged: no baselines
    assert expected[("fixtures.images", "fixture-set")] == "skipped"
    assert set(expected.values()) == {"passed", "failure", "skipped"}
    parallel = pytester.runpytest_subprocess(*args(*xdist_args, "--junitxml=xdist.xml", steps=1), timeout=300)
    workers = {p.name: json.loads(p.read_text()) for p in pytester.path.glob("events-gw*.json")}
    assert set(workers) == {"events-gw0.json", "events-gw1.json"}
    return expected, parallel, workers


#: One --dist of each scheduling path end to end (partattn's loadfile when none is given; the
#: image-keeping scheduler replacing a splitting mode, plain and by xdist group; xdist's own
#: scheduler where it keeps files together). test_every_dist_mode_gets_its_plan covers every mode.
@pytest.mark.parametrize("dist", [None, "loadgroup", "worksteal", "loadscope"])
def test_each_image_runs_once_under_xdist_whatever_the_dist_mode(pytester, serial_outcomes, dist):
    xdist_args = ("-n", "2") if dist is None else ("-n", "2", "--dist", dist)
    expected, parallel, workers = _serial_then(pytester, serial_outcomes, *xdist_args)
    assert _junit_outcomes(pytester.path / "xdist.xml") == expected
    runs = sorted(c for w in workers.values() for c in w["calls"])
    assert runs == sorted([*IMAGES, "np2_broken.png"])  # one denoising run per image, in all
    assert all(len(w["loads"]) <= 1 for w in workers.values())
    out = parallel.stdout.str()
    if dist is None:
        assert "partattn: xdist: --dist loadfile (chosen by partattn" in out
        _the_controller_reported_the_workers_results(pytester, parallel)
    elif dist in SPLITS_FILES:
        assert f"partattn: xdist: --dist {dist} for other tests, each fixture image kept on one worker" in out
        assert out.count(f"--dist {dist} would split a fixture image's checks across workers") == 1
    else:
        assert f"partattn: xdist: --dist {dist} (each image's checks run on one worker)" in out
        assert "would split" not in out


@pytest.mark.parametrize("dist", [None, "no", *SPLITS_FILES, *KEEPS_FILES_TOGETHER, "each"])
def test_every_dist_mode_gets_its_plan(dist):
    """Every --dist value maps to the plan (and the header and warning) the runs above show for their
    representative of the same path."""
    got = scheduling.plan(dist, "load" if dist in (None, "no") else dist)  # what xdist resolved it to
    if dist in (None, "no"):  # -n N alone: xdist fills in "no", partattn runs loadfile
        assert (got.mode, got.replaced) == ("loadfile", False) and "chosen by partattn" in got.header
    elif dist in SPLITS_FILES:
        assert (got.mode, got.replaced) == (dist, True) and f"--dist {dist} would split" in got.warning
    else:
        assert (got.mode, got.replaced, got.warning) == (dist, False, None)
    assert scheduling.plan(dist, "no") is None  # xdist not distributing: nothing to plan


def _the_controller_reported_the_workers_results(pytester, parallel):
    # the controller printed the summary from the workers' reports and wrote the index
    parallel.stdout.fnmatch_lines(
        [
            "*= partattn summary =*",
            "image*baseline",
            "fixtures/images/np1_circle.png*skip*FAIL",
            "fixtures/images/np2_broken.png*ERROR*",
            f"fixtures/images/{IMAGE}*FAIL*",
        ]
    )
    assert parallel.stdout.str().count("which leaves out <system-out>") == 1  # warned by the controller only
    index = (pytester.path / ".partattn-results" / "index.html").read_text()
    assert all(name in index for name in (*IMAGES, "np2_broken.png"))
    # failure text and figures travelled from the workers
    parallel.stdout.fnmatch_lines([f"partattn: part_separation failed for fixtures/images/{IMAGE}", "figures:"])
