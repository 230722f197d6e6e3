"""Adding a check touches one module: a check class defined here, once registered, is run by
``run_checks`` and by the pytest gate (an item per image), has its thresholds table, its headline
in reports, its figures, its timeline on the run page, and its threshold calibrated."""

from __future__ import annotations

import dataclasses
import io
import json
import textwrap
from dataclasses import dataclass

import pytest
import torch
from PIL import Image

from partattn_checks.capture.record import AttentionRecord
from partattn_checks.checks import (
    CHECKS,
    REGISTRY,
    Check,
    CheckError,
    CheckResult,
    Details,
    Offender,
    Thresholds,
    ThresholdsError,
    load_thresholds,
    param,
    run_checks,
)
from partattn_checks.checks.core import Timeline
from partattn_checks.gate import report
from partattn_checks.present.check_figures import figures_for
from partattn_checks.present.pages.run_page import render_record

pytest_plugins = ("pytester",)

BUILT_IN = ["uniformity", "collapse", "part_separation", "stability", "nonfinite", "baseline"]


# ----------------------------------------------------------------------------- the whole new check
@dataclass(frozen=True)
class MaxPeakThresholds:
    max_peak: float = param(0.5, 0.0, 1.0, doc="fail when some layer's largest peak exceeds this")


@dataclass(frozen=True, kw_only=True)
class MaxPeakDetails(Details):
    per_layer: dict[str, float]  # largest peak of each layer
    worst_layer: str


class MaxPeak(Check):
    """Fails when some head of some layer puts more than ``max_peak`` of a query's attention on one key."""

    name = "max_peak"
    label, op = "largest peak", "≤"
    calibrated = "max_peak"  # what partattn calibrate sets
    broken_by = "collapsed"  # the broken variant that must fail it
    thresholds_type = MaxPeakThresholds
    details_type = MaxPeakDetails

    def judge(self, record, thresholds):
        t = self.limits(thresholds)
        per_layer = record.peak.float().amax(dim=(0, 2, 3))
        worst = int(per_layer.argmax())
        value = float(per_layer[worst])
        details = MaxPeakDetails(
            per_layer=dict(zip(record.layers, per_layer.tolist(), strict=True)), worst_layer=record.layers[worst]
        )
        if value > t.max_peak:
            return CheckResult(
                self.name,
                "fail",
                value,
                t.max_peak,
                Offender(layer=details.worst_layer),
                f"a head is peaky: {value:.3f} > {t.max_peak:g} in {details.worst_layer}",
                details,
            )
        return CheckResult(self.name, "pass", value, t.max_peak, None, f"largest peak {value:.3f}", details)

    def draw(self, result, details, record, image, thresholds):
        bars = Image.new("L", (8 * len(details.per_layer), 32))  # one bar per layer, from the details
        for i, peak in enumerate(details.per_layer.values()):
            bars.paste(255, (8 * i, 32 - round(32 * peak), 8 * i + 7, 32))
        png = io.BytesIO()
        bars.save(png, format="PNG")
        return [("bars", png.getvalue())]

    def timeline(self, record, thresholds):
        per = record.peak.float().amax(dim=(2, 3))  # (steps, layers): each layer's largest peak
        return Timeline(
            per,
            tuple(record.steps),
            tuple(record.layers),
            metric="largest peak",
            threshold=self.limits(thresholds).max_peak,
            op=self.op,
            title="max_peak: largest peak per step and layer",
            stem=self.name,
            value=float(per.max()),
            value_label="max over steps and layers",
        )


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture
def max_peak():
    with REGISTRY.registered(MaxPeak) as check:
        yield check
    assert "max_peak" not in REGISTRY and list(REGISTRY) == BUILT_IN


def make_record(peak: float = 0.3) -> AttentionRecord:
    s, n_layers, p, h, nk = 2, 2, 2, 2, 4
    full = lambda v: torch.full((s, n_layers, p, h), v)  # noqa: E731
    return AttentionRecord(
        steps=[0, 1],
        timesteps=[1000.0, 500.0],
        layers=["blocks.0.attn2", "blocks.1.attn2"],
        layer_kinds=["global", "local"],
        num_parts=p,
        num_heads=h,
        num_patch_keys=nk,
        has_cls=True,
        patch_grid=None,
        entropy=full(0.6),
        peak=full(peak),
        eff_keys=full(0.5),
        cls_mass=full(0.05),
        marginals=torch.softmax(torch.randn(s, n_layers, p, h, nk), -1),
        full_maps={},
        nonfinite=[],
    )


# ----------------------------------------------------------------------------- the built-in registry
def test_registry_order_and_record_checks():
    assert list(REGISTRY) == BUILT_IN
    assert list(CHECKS) == BUILT_IN[:-1]  # baseline needs a stored baseline, not only a record
    assert [REGISTRY[n].label for n in ("part_separation", "baseline")] == ["part separation", "worst drift"]
    assert REGISTRY["part_separation"].op == "≥" and REGISTRY["baseline"].op == "≤"
    assert list(Thresholds().to_dict()) == ["uniformity", "collapse", "part_separation", "stability", "baseline"]


def test_registration_is_checked():
    with pytest.raises(CheckError, match="already registered"):
        REGISTRY.add(REGISTRY["collapse"])

    class NoHeadline(Check):
        name = "no_headline"

    with pytest.raises(CheckError, match="needs a headline"):
        REGISTRY.add(NoHeadline())
    assert "no_headline" not in REGISTRY


# ----------------------------------------------------------------------------- a new check
def test_run_checks_runs_a_registered_check(max_peak):
    assert list(CHECKS)[-1] == "max_peak"
    results = run_checks(make_record(peak=0.75))
    assert [r.name for r in results] == [*BUILT_IN[:-1], "max_peak"]
    r = results[-1]
    assert r.verdict == "fail" and r.value == pytest.approx(0.75) and r.offender == Offender(layer="blocks.0.attn2")
    assert isinstance(r.details, MaxPeakDetails) and r.details.worst_layer == "blocks.0.attn2"
    assert r.to_dict()["details"] == {
        "per_layer": {"blocks.0.attn2": pytest.approx(0.75), "blocks.1.attn2": pytest.approx(0.75)},
        "worst_layer": "blocks.0.attn2",
    }
    assert CheckResult.from_dict(r.to_dict()).details == r.details  # typed again after transport
    assert [x.name for x in run_checks(make_record(), names=["max_peak"])] == ["max_peak"]
    assert run_checks(make_record(), names=["max_peak"])[0].passed


def test_thresholds_take_its_table(max_peak, tmp_path):
    assert Thresholds().max_peak == MaxPeakThresholds() and Thresholds()["max_peak"].max_peak == 0.5
    t = Thresholds.from_dict({"max_peak": {"max_peak": 0.8}})
    assert t.max_peak.max_peak == 0.8 and t.collapse == Thresholds().collapse
    assert run_checks(make_record(peak=0.75), t, names=["max_peak"])[0].passed
    f = tmp_path / "thresholds.toml"
    f.write_text(
        textwrap.dedent("""
        [max_peak]
        max_peak = 0.2
    """)
    )
    assert load_thresholds(f).max_peak.max_peak == 0.2
    f.write_text("[max_peak]\nmax_peek = 0.2\n")
    with pytest.raises(ThresholdsError, match=r"\[max_peak\] unknown key 'max_peek' \(known: max_peak\)"):
        load_thresholds(f)


def test_unregistered_check_has_no_table():
    with pytest.raises(ThresholdsError, match=r"unknown table \[max_peak\]"):
        Thresholds.from_dict({"max_peak": {"max_peak": 0.2}})


def test_reports_show_its_headline_and_column(max_peak):
    result = max_peak(make_record(peak=0.75))
    p = report.ItemReport(
        image="fixtures/images/np2_a.png",
        key="np2_a",
        check="max_peak",
        result=result,
        figures=[],
        rerun="pytest",
        update="pytest",
        baseline_checks={},
    )
    assert report.metric_rows(p) == [["largest peak", "0.75", "≤ 0.5", "—", "FAIL"]]
    summary = report.Summary()
    summary.add(p)
    passing = CheckResult("collapse", "pass", 0.1, 0.5, None, "", REGISTRY["collapse"].details_type())
    summary.add(dataclasses.replace(p, check="collapse", result=passing))
    assert summary.checks() == ["collapse", "max_peak"]  # registry order
    assert summary.table_lines()[0].split() == ["image", "collapse", "max_peak"]


def test_figures_dispatch_to_it(max_peak, tmp_path):
    record = make_record(peak=0.75)
    result = max_peak(record)
    paths = figures_for(result, record, tmp_path)
    assert paths == [tmp_path / "max_peak__bars.png"]
    assert Image.open(paths[0]).size == (16, 32)
    # the same from the JSON form (e.g. after pytest-xdist transport)
    assert figures_for(CheckResult.from_dict(result.to_dict()), record, tmp_path / "again") == [
        tmp_path / "again" / "max_peak__bars.png"
    ]
    # details are always the check's own type: a dict, or JSON of another shape, is refused
    with pytest.raises(CheckError, match="the max_peak result's details must be a MaxPeakDetails, got dict"):
        CheckResult("max_peak", "fail", 1.0, 0.5, None, "", {"other": 1})
    with pytest.raises(CheckError, match="the max_peak result's details do not fit MaxPeakDetails"):
        CheckResult.from_dict({**result.to_dict(), "details": {"other": 1}})
    with pytest.raises(CheckError, match="cannot draw the collapse figures: its details are not a CollapseDetails"):
        REGISTRY["collapse"].figures(result, record, tmp_path)


def test_the_run_page_draws_its_timeline(max_peak, tmp_path):
    record = make_record(peak=0.75)
    report = render_record(record, tmp_path)
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["timelines"]["max_peak"] == {
        "path": "timeline_max_peak.png",
        "metric": "largest peak",
        "value": 0.75,
        "value_label": "max over steps and layers",
        "op": "≤",
        "threshold": 0.5,
    }
    assert (tmp_path / "timeline_max_peak.png") in [p for _, p in report["figures"]]
    assert Image.open(tmp_path / "timeline_max_peak.png").format == "PNG"
    caption = {f["path"]: f["caption"] for f in doc["figures"]}["timeline_max_peak.png"]
    assert caption == "max_peak: largest peak per step and layer (pass: max over steps and layers ≤ 0.5)"
    assert "timeline_max_peak.png" in (tmp_path / "index.html").read_text(encoding="utf-8")
    assert (tmp_path / "checks" / "max_peak__bars.png").is_file()  # it failed: its figures too


def test_calibration_sets_its_field_and_the_model_matrix_expects_its_variant_to_fail_it(max_peak):
    """Calibration reads the check's ``calibrated`` field and ``broken_by`` variant: a matrix of its
    real results on healthy (peaks 0.3, 0.35) and collapsed (0.9, 0.95) records calibrates
    max_peak.max_peak between them; the model matrix marks collapsed as built to fail it."""
    from partattn_checks.analysis.calibrate import CALIBRATED, decide
    from partattn_checks.analysis.zoo import targets

    def judged(*peaks):
        return {f"np2_{i}.png": {r.name: r for r in run_checks(make_record(peak))} for i, peak in enumerate(peaks)}

    assert CALIBRATED["max_peak"] == ("max_peak", "max_peak")
    assert targets()["collapsed"] == ("collapse", "max_peak")
    decisions = {
        d.check: d for d in decide({"healthy": judged(0.3, 0.35), "collapsed": judged(0.9, 0.95)}, Thresholds())
    }
    d = decisions["max_peak"]
    assert (
        d.calibrated
        and d.variant == "collapsed"
        and (d.healthy_worst, d.variant_least) == pytest.approx((0.35, 0.9), abs=1e-3)
    )
    assert 0.35 < d.threshold < 0.9 and d.previous == MaxPeakThresholds().max_peak


def test_checks_without_figures_draw_none(tmp_path):
    result = CheckResult("baseline", "fail", None, None, None, "no baseline", REGISTRY["baseline"].details_type())
    assert figures_for(result, make_record(), tmp_path) == []
    assert not list(tmp_path.iterdir())


#: A user's conftest.py that adds the toy check: the gate collects it, judges it and reports it.
GATE_CONFTEST = """
from partattn_checks.checks import REGISTRY
from test_check_registry import MaxPeak

def pytest_configure(config):
    REGISTRY.add(MaxPeak())

def pytest_unconfigure(config):
    REGISTRY.remove("max_peak")
"""


def test_the_gate_makes_it_an_item_per_image_and_reports_it(pytester):
    from plugin_support import IMAGE, PASSING, args, make_project, outcomes

    make_project(pytester, thresholds=PASSING + "\n[max_peak]\nmax_peak = 0.01\n")  # every model fails 0.01
    pytester.makeconftest(GATE_CONFTEST)
    result = pytester.runpytest_inprocess(*args("-k", "max_peak or uniformity"))
    got = outcomes(result)
    assert got == {f"fixtures/images/{IMAGE}::uniformity": "passed", f"fixtures/images/{IMAGE}::max_peak": "failed"}
    result.stdout.fnmatch_lines(
        ["*partattn: max_peak failed for fixtures/images/*", "*a head is peaky*", "*largest peak*"]
    )
    assert "max_peak" not in REGISTRY  # the conftest took it out again
