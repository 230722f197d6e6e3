"""Reports: failure text pieces, JUnit XML (properties, failure text, attachments), pytest-html
extras, the summary table and index.html."""

from __future__ import annotations

import html
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from plugin_support import FAILING_SEPARATION, IMAGE, args, make_project

from partattn_checks.baselines.runner import BaselineState, BaselineStatus
from partattn_checks.checks import CheckResult
from partattn_checks.gate import report

pytest_plugins = ("pytester",)
NODE = f"fixtures/images/{IMAGE}::part_separation"


@pytest.fixture(autouse=True)
def _no_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)


def _item(**kw):
    """An item report; ``result`` may be given in its JSON form (typed here, as the controller does)."""
    result = {
        "name": "part_separation",
        "verdict": "fail",
        "value": 0.0123,
        "threshold": 0.5,
        "offender": {"step": None, "layer": "blocks.0.attn2", "part": 1, "head": None},
        "reason": "parts attend to the same image regions",
        "details": {},
    }
    base = dict(
        image="fixtures/images/np2_a.png",
        key="np2_a",
        check="part_separation",
        result=result,
        figures=["/r/np2_a/part_separation__overlay.png"],
        rerun='pytest --partattn "fixtures/images/np2_a.png::part_separation"',
        update='pytest --partattn --partattn-update=failed "fixtures/images/np2_a.png::baseline"',
        baseline_checks={"part_separation": 0.2},
    )
    base.update(kw)
    if isinstance(base["result"], dict):
        base["result"] = CheckResult.from_dict(base["result"])
    return report.ItemReport(**base)


# ----------------------------------------------------------------------------- pure pieces
def test_failure_text_has_table_offender_paths_commands_and_attachments():
    text = report.failure_text(_item())
    lines = text.splitlines()
    assert lines[0] == "partattn: part_separation failed for fixtures/images/np2_a.png"
    header = next(ln for ln in lines if "measured" in ln)
    assert header.split() == ["metric", "measured", "threshold", "baseline", "verdict"]
    row = next(ln for ln in lines if ln.strip().startswith("part separation"))
    assert row.split()[-4:] == ["≥", "0.5", "0.2", "FAIL"] and "0.0123" in row
    assert "worst offender: step -, layer blocks.0.attn2, part 1, head -" in lines
    assert "  /r/np2_a/part_separation__overlay.png" in lines
    assert 'pytest --partattn --partattn-update=failed "fixtures/images/np2_a.png::baseline"' in text
    assert lines[-1] == "[[ATTACHMENT|/r/np2_a/part_separation__overlay.png]]"


def test_baseline_rows_and_properties():
    result = {
        "name": "baseline",
        "verdict": "fail",
        "value": 0.3,
        "threshold": 0.1,
        "offender": None,
        "reason": "entropy_mean drifted",
        "details": {
            "per_metric": {
                "entropy_mean": {"measured": 0.9, "baseline": 0.6, "drift": 0.3, "allowed": 0.08},
                "peak_mean": {"measured": 0.05, "baseline": 0.05, "drift": 0.0, "allowed": 0.025},
            },
            "missing_in_measured": ["separation"],
        },
    }
    p = _item(check="baseline", result=result, figures=[], summary={"entropy_mean": 0.9, "peak_mean": 0.05})
    rows = report.metric_rows(p)
    assert rows[0] == ["entropy_mean", "0.9", "±0.08", "0.6", "DRIFT"]
    assert rows[1][-1] == "ok" and rows[2][0] == "separation" and rows[2][-1] == "MISSING"
    props = dict(report.user_properties(p))
    assert props["partattn_verdict"] == "fail" and props["partattn_metric_entropy_mean"] == "0.9"


def test_noise_rows_judge_by_distance_as_the_check_does():
    """A log-scale metric below its mean is judged against the lower side of its allowed range: the
    row says DRIFT when the distance exceeds the allowance, even within the wider upper side."""
    peak = dict(measured=0.0756, baseline=0.0867, drift=0.0111, allowed=0.0124, spread=0.03, seeds=16)
    rows = {}
    for z in (-4.5, -4.3):
        result = {
            "name": "baseline",
            "verdict": "fail",
            "value": abs(z),
            "threshold": None,
            "offender": None,
            "reason": "moved beyond the baseline's seed noise: peak_mean",
            "details": {"per_metric": {"peak_mean": {**peak, "z": z, "allowance": 4.4, "log_scale": True}}},
        }
        (rows[z],) = report.metric_rows(_item(check="baseline", result=result, figures=[]))
    assert rows[-4.5][-1] == "-4.5 se DRIFT" and rows[-4.3][-1] == "-4.3 se ok"
    assert rows[-4.5][3] == "0.0867 ×/÷ 1.03 (16 seeds)"


def test_commands_quote_and_relativise(tmp_path):
    image = tmp_path / "fixtures" / "images" / "np3_a b.png"
    cmd = report.pytest_command(["--partattn-model=/m x"], tmp_path, image, "baseline", update="failed")
    assert (
        cmd == "pytest --partattn '--partattn-model=/m x' --partattn-update=failed "
        '"fixtures/images/np3_a b.png::baseline"'
    )
    assert report.quote_nodeid("a$b::c") == "'a$b::c'"


def test_summary_table_and_index_escape(tmp_path):
    s = report.Summary()
    s.add(_item(image="fixtures/images/np2_<a>.png", figures=[str(tmp_path / "np2_a" / "f.png")]))
    s.add(
        _item(
            image="fixtures/images/np2_<a>.png",
            check="uniformity",
            result={
                "name": "uniformity",
                "verdict": "pass",
                "value": 0.25,
                "threshold": 0.5,
                "offender": None,
                "reason": "ok",
                "details": {},
            },
            figures=[],
        )
    )
    lines = s.table_lines()
    assert lines[0].split() == ["image", "uniformity", "part_separation"]
    assert lines[2].split() == ["fixtures/images/np2_<a>.png", "0.25", "pass", "0.0123", "FAIL"]
    page = report.index_html(s, tmp_path, ["partattn: model x"]).replace("&lt;a&gt;", "")
    assert "<a>" not in page.replace("<a href", "") and 'href="np2_a/f.png"' in page


def test_junit_logging_warning_text():
    assert report.junit_logging_warning("system-out") is None and report.junit_logging_warning("all") is None
    assert "junit_logging = no" in report.junit_logging_warning("no")


# ----------------------------------------------------------------------------- JUnit and pytest-html
def test_junit_xml_has_failure_text_properties_and_attachments(pytester):
    make_project(pytester, thresholds=FAILING_SEPARATION)
    result = pytester.runpytest_inprocess(
        *args("--junitxml=out.xml", "-o", "junit_logging=system-out"), NODE, f"fixtures/images/{IMAGE}::uniformity"
    )
    assert "junit_logging" not in result.stdout.str()  # no warning: system-out is kept
    cases = {c.get("name"): c for c in ET.parse(pytester.path / "out.xml").getroot().iter("testcase")}
    failed = cases["part_separation"]
    failure = failed.find("failure")
    assert failure is not None
    assert "part separation" in failure.text and "worst offender:" in failure.text
    assert "--partattn-update=failed" in failure.text
    props = {}
    for prop in failed.iter("property"):
        props.setdefault(prop.get("name"), []).append(prop.get("value"))
    assert props["partattn_check"] == ["part_separation"] and props["partattn_verdict"] == ["fail"]
    assert float(props["partattn_threshold"][0]) == 0.999 and float(props["partattn_value"][0]) < 0.999
    figures = props["partattn_figure"]
    assert len(figures) == 3 and all(Path(f).is_absolute() and Path(f).is_file() for f in figures)
    for f in figures:
        assert f"[[ATTACHMENT|{f}]]" in failure.text
        assert f"[[ATTACHMENT|{f}]]" in failed.find("system-out").text
    passed = cases["uniformity"]
    assert passed.find("failure") is None
    assert {p.get("name"): p.get("value") for p in passed.iter("property")}["partattn_verdict"] == "pass"


def test_junitxml_without_system_out_warns_at_start(pytester):
    make_project(pytester)
    result = pytester.runpytest_inprocess(*args("--junitxml=out.xml", "--collect-only"))
    result.stdout.fnmatch_lines(
        ["*PartattnConfigWarning: --junitxml is used with junit_logging = no*junit_logging = system-out*"]
    )


def test_pytest_html_extras(pytester):
    pytest.importorskip("pytest_html")
    make_project(pytester, thresholds=FAILING_SEPARATION)
    result = pytester.runpytest_inprocess(*args("--html=report.html", "--self-contained-html"), NODE)
    result.assert_outcomes(failed=1)
    page = (pytester.path / "report.html").read_text()
    assert "data:image/png;base64,iVBOR" in page  # the figures, embedded
    rep = next(r for r in result.reprec.getreports("pytest_runtest_logreport") if r.when == "call")
    images = [e for e in rep.extras if e["format_type"] == "image"]
    links = [e for e in rep.extras if e["format_type"] == "url"]
    names = {"part_separation__overlay.png", "part_separation__parts.png", "part_separation__timeline.png"}
    assert len(rep.extras) == 6 and {e["name"] for e in images} == names
    # base64 PNGs (pytest-html prefixes them with a data: URL while it writes the report)
    assert all(e["mime_type"] == "image/png" and "iVBOR" in e["content"][:40] for e in images)
    # and a link to each file at full size (pytest-html's media box crops tall figures)
    assert {e["name"] for e in links} == {f"{n} (full size)" for n in names}
    results = pytester.path / ".partattn-results"
    # relative to the --html report's folder, so the two can be archived together
    assert {e["content"] for e in links} == {
        f.relative_to(pytester.path).as_posix() for f in results.glob("*/part_separation__*.png")
    }
    assert "part_separation__parts.png (full size)</a>" in html.unescape(page)  # in the Links column


def test_item_report_is_frozen_and_travels_as_a_dict():
    import dataclasses
    import json

    written = BaselineState(BaselineStatus.WRITTEN, "fixtures/baselines/np2_a")
    passed = {**_item().result.to_dict(), "name": "baseline", "verdict": "pass", "value": None, "offender": None}
    p = _item(check="baseline", baseline=written, result=passed)
    assert p.verdict == "pass" and p.status is BaselineStatus.WRITTEN and p.outcome == "written"  # kept apart
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.check = "x"
    data = p.to_dict()
    assert data["verdict"] == "pass" and isinstance(data["figures"], list)
    assert data["baseline"]["status"] == "written"  # a string only in JSON
    back = report.ItemReport.from_dict(json.loads(json.dumps(data)))
    assert back == p and back.status is BaselineStatus.WRITTEN
    assert ("partattn_baseline_status", "written") in report.user_properties(p)
    assert report.Summary.cell(p) == "written"
    s = report.Summary()
    s.add(p)
    assert s.notes()[1:] == ["  written: fixtures/baselines/np2_a"]
