"""Typed results from judging to the report: a ``CheckResult`` is frozen and its details are always
its check's own type; an ``ItemReport`` and its result survive ``to_dict`` -> JSON -> ``from_dict``
(the pytest-xdist transport) equal and typed for every registered check, the baseline with its
attention drift included. Dicts exist only there."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from baseline_support import records, runner
from test_checks import LAYERS, NK, H, L, P, S, healthy_marginals, make_record

from partattn_checks.baselines.runner import BaselineState, BaselineStatus
from partattn_checks.checks import CHECKS, REGISTRY, CheckError, CheckResult, Thresholds, run_checks
from partattn_checks.checks.baseline import AttentionDrift, BaselineDetails, Deviation
from partattn_checks.gate import report

K = 6


def _broken():
    """A record every record check fails: near-uniform, collapsed, parts alike, jumping over steps."""
    m = torch.full((S, L, P, H, NK), 1.0)
    m[1::2, :, :, :, 0] = 40.0  # odd steps: every part on key 0
    return make_record(
        entropy=torch.full((S, L, P, H), 0.99),
        peak=torch.full((S, L, P, H), 0.95),
        marginals=m / m.sum(-1, keepdim=True),
        nonfinite=[{"step": 20, "layer": "blocks.0.attn2", "where": "attention"}],
    )


def _with_nan():
    """NaN in every tensor the metric checks read: each says it cannot judge (the non-finite guard)."""
    m, e, p = healthy_marginals(), torch.full((S, L, P, H), 0.6), torch.full((S, L, P, H), 0.3)
    m[2, 1, 0, 0, 3] = e[2, 1, 0, 0] = p[2, 1, 0, 0] = float("nan")
    return make_record(entropy=e, peak=p, marginals=m)


def _through_json(result: CheckResult) -> CheckResult:
    return CheckResult.from_dict(json.loads(json.dumps(result.to_dict())))


def _item(result: CheckResult, baseline: BaselineState | None = None) -> report.ItemReport:
    return report.ItemReport(
        image="fixtures/images/np3_a.png",
        key="np3_a",
        check=result.name,
        result=result,
        figures=("/r/np3_a/x.png",),
        rerun="pytest --partattn x",
        update="pytest --partattn --partattn-update=failed x",
        baseline_checks={result.name: 0.25},
        baseline=baseline,
        warnings=("a warning",),
        summary={"separation": 0.3},
    )


@pytest.fixture(scope="module")
def drifted(tmp_path_factory):
    """A baseline written from noise seeds, and a run of its first seed whose attention moved away from it."""
    root = tmp_path_factory.mktemp("typed")

    def healthy(seed, condition):
        gen = torch.Generator().manual_seed(seed)
        return make_record(marginals=healthy_marginals() + 0.002 * torch.rand(S, L, P, H, NK, generator=gen))

    def moved(seed, condition):
        m = healthy(seed, condition).marginals.float()
        m[:, 1, 0, :, :] = m[:, 1, 1, :, :]  # layer 1's part 0 now looks where part 1 does
        return make_record(marginals=m)

    written = runner(root, update="missing", baseline_seeds=K).evaluate(records("np3_a", healthy), Thresholds())
    assert written.status is BaselineStatus.WRITTEN
    now = runner(root, baseline_seeds=K).evaluate(records("np3_a", moved), Thresholds())
    return written, now


def test_a_check_result_is_frozen_and_its_details_are_its_checks_own():
    result = run_checks(make_record(), names=["uniformity"])[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.verdict = "fail"
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.details.per_layer = {}
    changed = dataclasses.replace(result, verdict="fail")  # how a later stage changes one
    assert changed.verdict == "fail" and result.verdict == "pass" and changed.details is result.details
    with pytest.raises(CheckError, match="the uniformity result's details must be a UniformityDetails, got dict"):
        dataclasses.replace(result, details=result.details.to_dict())
    with pytest.raises(CheckError, match="must be a UniformityDetails, got CollapseDetails"):
        dataclasses.replace(result, details=REGISTRY["collapse"].details_type())


@pytest.mark.parametrize("record", [make_record, _broken, _with_nan], ids=["healthy", "broken", "nan"])
def test_every_record_check_travels_typed_and_equal(record):
    results = run_checks(record())
    assert [r.name for r in results] == list(CHECKS)
    if record is _broken:
        assert {r.name: r.verdict for r in results} == dict.fromkeys(CHECKS, "fail")  # rich details, each check
    for result in results:
        back = _through_json(result)
        assert type(back.details) is REGISTRY[result.name].details_type
        # a NaN is never equal to itself: records with NaN compare by their JSON form
        assert back == result if record is not _with_nan else back.to_dict() == result.to_dict()
        item = _item(result)
        data = json.loads(json.dumps(item.to_dict()))
        assert isinstance(data["result"], dict) and data["verdict"] == result.verdict  # a dict only in JSON
        again = report.ItemReport.from_dict(data)
        assert isinstance(again.result, CheckResult) and type(again.result.details) is type(result.details)
        assert again == item if record is not _with_nan else again.to_dict() == item.to_dict()
        assert report.failure_text(again) == report.failure_text(item)


def test_a_baseline_with_attention_drift_travels_typed_and_equal(drifted):
    written, now = drifted
    assert now.status is BaselineStatus.COMPARED and now.result.verdict == "fail"
    details = now.result.details
    assert isinstance(details, BaselineDetails) and isinstance(details.attention, AttentionDrift)
    assert details.attention.band is not None and details.attention.layer == LAYERS[1]  # judged, paired
    assert details.verdict == "paired" and details.paired_onset is not None and details.onset == LAYERS[1]
    assert details.deviations and all(isinstance(d, Deviation) for d in details.deviations)
    assert now.state.candidate is not None and now.state.folder == written.state.folder
    for outcome in drifted:
        back = _through_json(outcome.result)
        assert back == outcome.result and type(back.details) is BaselineDetails
        item = _item(outcome.result, outcome.state)
        data = json.loads(json.dumps(item.to_dict()))
        assert data["baseline"]["status"] == outcome.status.value  # the status is a string only in JSON
        again = report.ItemReport.from_dict(data)
        assert again == item and again.status is outcome.status
        assert isinstance(again.result.details.attention, AttentionDrift) or outcome is written
        assert again.result.details.deviations == outcome.result.details.deviations
        assert report.failure_text(again) == report.failure_text(item)
    text = report.failure_text(_item(now.result, now.state))
    assert f"attention drift: layer {LAYERS[1]} moved most" in text and "DRIFT" in text


def test_results_refuse_details_of_another_shape():
    data = run_checks(make_record(), names=["part_separation"])[0].to_dict()
    with pytest.raises(CheckError, match="the part_separation result's details do not fit PartSeparationDetails"):
        CheckResult.from_dict({**data, "details": {"status": "written"}})
    # the baseline store's own fields are not the check's details: they are the BaselineState
    with pytest.raises(CheckError, match="do not fit BaselineDetails"):
        CheckResult.from_dict({**data, "name": "baseline", "details": {"candidate": "x"}})
    assert BaselineState.from_dict(json.loads(json.dumps(BaselineState(BaselineStatus.MISSING, "b/x").to_dict()))) == (
        BaselineState(BaselineStatus.MISSING, "b/x")
    )
