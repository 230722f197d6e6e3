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


def _shift_separation(pytester, healthy, shift) -> None:
    """Move every stored separation of each image by ``shift(that image's deviation)``."""
    for key, details in _baseline_items(healthy).items():
        d = next(d for d in details["deviations"] if d["name"] == "separation")
        path = pytester.path / "fixtures" / "baselines" / key / "metrics.json"
        doc = json.loads(path.read_text())
        doc["samples"]["separation"] = [v + shift(d) for v in doc["samples"]["separation"]]
        path.write_text(json.dumps(doc))


def test_the_fixture_set_item_passes_then_fails_on_a_shared_shift(pytester):
    make_project(pytester, images=IMAGES)
    # the embedded trained model: its images share little noise (the random model's share most of it,
    # and then three images say no more than one)
    embedded = ("-p", "no:cacheprovider", "--partattn", "--partattn-steps=4", "-k", "baseline")
    run = lambda *extra: pytester.runpytest_inprocess(*embedded, *extra)  # noqa: E731
    written = run("--partattn-update=all", "--partattn-baseline-seeds=8")
    assert written.ret == 0 and outcomes(written)[SET_NODE] == "skipped"  # nothing judged while writing
    written.stdout.fnmatch_lines(["fixture set: skip (not judged: it needs two images compared with their *"])

    healthy = run()
    assert healthy.ret == 0 and outcomes(healthy)[SET_NODE] == "passed"
    healthy.stdout.fnmatch_lines(
        [
            "baselines: fixtures/baselines (--partattn-verdict auto): paired 3",  # also under -q: which verdict
            "fixture set: pass (no shift shared by the 3 images (paired verdict)*",
        ]
    )

    # Paired: every image's stored run of the gate's seed 0.2 seed spreads higher, below each image's own
    # minimum shift (0.25), above the set's (0.1, the median over the images).
    _shift_separation(pytester, healthy, lambda d: d["spread"] * (d["z"] + 0.2))
    shifted = run("--junitxml=junit.xml")
    found = outcomes(shifted)
    assert found.pop(SET_NODE) == "failed" and set(found.values()) == {"passed"}, found
    assert shifted.ret == pytest.ExitCode.TESTS_FAILED
    shifted.stdout.fnmatch_lines(
        [
            "*partattn: fixture set FAIL: the fixture set moved as a whole over 3 images (paired verdict): "
            "separation (lower, -0.20 vs allowance 0.10, paired)*",
            "*separation*paired*3*-0.20*—*-0.20*0.10*MOVED*",
        ]
    )
    cases = ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")
    (case,) = [c for c in cases if c.get("name") == "fixture-set"]
    assert "separation (lower" in case.find("failure").get("message", "") + case.find("failure").text
    page = (pytester.path / ".partattn-results" / "index.html").read_text()  # the page shows it too
    assert 'id="fixture-set"' in page and "the fixture set moved as a whole" in page


def test_the_seed_spread_set_sums_a_shift_no_image_flags(pytester):
    make_project(pytester, images=IMAGES)
    embedded = ("-p", "no:cacheprovider", "--partattn", "--partattn-steps=4", "-k", "baseline")
    run = lambda *extra: pytester.runpytest_inprocess(*embedded, "--partattn-verdict=seed-spread", *extra)  # noqa: E731
    assert run("--partattn-update=all", "--partattn-baseline-seeds=8").ret == 0
    healthy = run()
    assert healthy.ret == 0 and outcomes(healthy)[SET_NODE] == "passed"
    # Every image's stored separation moved up by the same number of standard errors, 2.9: below each image's
    # own allowance (about 6 at 7 seeds, the gate's seed left out), far beyond what three images share by chance.
    _shift_separation(
        pytester, healthy, lambda d: d["spread"] * (1 / d["repeats"] + 1 / d["seeds"]) ** 0.5 * (d["z"] + 2.9)
    )
    shifted = run()
    found = outcomes(shifted)
    assert found.pop(SET_NODE) == "failed" and set(found.values()) == {"passed"}, found
    shifted.stdout.fnmatch_lines(
        [
            "*partattn: fixture set FAIL: the fixture set moved as a whole over 3 images (seed-spread verdict): "
            "separation (lower, *",
            "*separation*seed-spread*3*-2.90*MOVED*",
        ]
    )


#: Kills the xdist worker that runs one image's baseline item (as `kill -9` would, mid-update). xdist gives
#: the crashed item's file to the worker it starts in its place, which this kills again: the run below lets
#: xdist replace one worker, then stop (by default it replaced eight). Neither ever runs the model, and with
#: the device given (cpu) they import no torch; only the surviving worker loads the model.
KILLER = """
import os, signal

def pytest_runtest_call(item):
    if item.name == "baseline" and item.path.name == "np3_three_shapes.png":
        os.kill(os.getpid(), signal.SIGKILL)
"""
#: The image whose worker crashes and one that the other worker writes meanwhile: loading the model first,
#: it finishes after both crashes, once xdist has stopped replacing workers (a third image, queued behind it
#: on the same worker, showed nothing more and cost that worker another baseline).
CRASH_IMAGES = ("np2_circle_square.png", "np3_three_shapes.png")


def test_a_crashed_worker_is_an_error_in_the_summary_and_the_set_says_why_it_is_not_judged(pytester):
    make_project(pytester, images=CRASH_IMAGES)
    pytester.makeconftest(KILLER)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--partattn", "--partattn-steps=2", "-k", "baseline", "-n", "2",
        "--partattn-update=all", "--partattn-baseline-seeds=2", "--max-worker-restart=1", "--partattn-device=cpu",
    )  # fmt: skip
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*= partattn summary =*",
            "fixtures/images/np3_three_shapes.png*ERROR*",
            "fixture set: skip (not judged: it needs two images compared with their baselines by the same verdict "
            "(2 not compared (no usable baseline, written this run, or not run)))",
        ]
    )
    baselines = pytester.path / "fixtures" / "baselines"
    written = sorted(p.name for p in baselines.iterdir() if (p / "metrics.json").is_file())
    assert written == ["np2_circle_square"]  # the other written whole, nothing of the crashed one half-written
