"""The fixture-set item in a real pytest run: it appears after the images' items, passes on the
model its baselines came from, fails (and fails the session) on a shift every image shares that no
image's own baseline item flags, lands in JUnit, and the noise options are validated."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from plugin_support import make_project, outcomes

pytest_plugins = ("pytester",)

IMAGES = ("np2_circle_square.png", "np3_three_shapes.png", "np4_four_shapes.png")
SET_NODE = "fixtures/images::fixture-set"


@pytest.fixture(autouse=True)
def _no_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)


def _baseline_items(result) -> dict[str, dict]:
    """{image: the baseline item's details} of a run."""
    out = {}
    for rep in result.reprec.getreports("pytest_runtest_logreport"):
        data = getattr(rep, "partattn", None)
        if rep.when == "call" and data and data["check"] == "baseline":
            out[data["key"]] = data["result"]["details"]
    return out


def test_the_fixture_set_item_passes_then_fails_on_a_shared_shift(pytester):
    make_project(pytester, images=IMAGES)
    # the embedded trained model: its images share little noise (the random model's share most of it,
    # and then three images say no more than one)
    embedded = ("-p", "no:cacheprovider", "--partattn", "--partattn-steps=4", "-k", "baseline")
    run = lambda *extra: pytester.runpytest_inprocess(*embedded, *extra)  # noqa: E731
    written = run("--partattn-update=all", "--partattn-baseline-seeds=8")
    assert written.ret == 0 and SET_NODE not in outcomes(written)  # nothing judged while writing

    healthy = run()
    assert healthy.ret == 0 and outcomes(healthy)[SET_NODE] == "passed"
    healthy.stdout.fnmatch_lines(["fixture set: pass (no shift shared by the 3 images beyond their seed noise*"])

    # Every image's stored separation moved up by the same number of standard errors, 2.9: below
    # each image's own allowance (about 5 at 8 seeds), far beyond what three images share by chance.
    for key, details in _baseline_items(healthy).items():
        d = next(d for d in details["deviations"] if d["name"] == "separation")
        se = d["spread"] * (1 / d["repeats"] + 1 / d["seeds"]) ** 0.5
        shift = se * (d["z"] + 2.9)
        path = pytester.path / "fixtures" / "baselines" / key / "metrics.json"
        doc = json.loads(path.read_text())
        doc["samples"]["separation"] = [v + shift for v in doc["samples"]["separation"]]
        path.write_text(json.dumps(doc))

    shifted = run("--junitxml=junit.xml")
    found = outcomes(shifted)
    assert found.pop(SET_NODE) == "failed" and set(found.values()) == {"passed"}, found
    assert shifted.ret == pytest.ExitCode.TESTS_FAILED
    shifted.stdout.fnmatch_lines(
        [
            "*partattn: fixture set FAIL: the fixture set moved as a whole over 3 images: separation (lower, *",
            "*separation*3*-2.90*MOVED*",
        ]
    )
    cases = ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")
    (case,) = [c for c in cases if c.get("name") == "fixture-set"]
    assert "separation (lower" in case.find("failure").get("message", "") + case.find("failure").text
    page = (pytester.path / ".partattn-results" / "index.html").read_text()  # the page shows it too
    assert 'id="fixture-set"' in page and "the fixture set moved as a whole" in page
