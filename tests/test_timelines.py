"""Each check's timeline draws what the check judges against its own threshold (issues 19 and 20).

Records come from the embedded tiny model on one fixture image, healthy and with the broken variants
(``model/broken.py``) built to fail uniformity, collapse and part separation; each is run once per module.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from partattn_checks import EMBEDDED_MODEL, record_attention
from partattn_checks.capture import metrics
from partattn_checks.checks import CHECKS, REGISTRY, Thresholds, run_checks
from partattn_checks.checks.core import CheckError, Timeline
from partattn_checks.model.broken import broken
from partattn_checks.model.pipeline import PartCrafterPipeline
from partattn_checks.present.pages.run_page import render_record
from partattn_checks.render import grids as render_grids
from partattn_checks.render import maps as render_figures

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "fixtures" / "images" / "np3_three_shapes.png"
#: The broken variant built to fail each check (model/broken.py).
BROKEN = {"uniformity": "uniform", "collapse": "collapsed", "part_separation": "merged_parts"}


@pytest.fixture(scope="module")
def records():
    """``{"healthy" or variant: record}``: the embedded model on one 3-part image, 10 steps."""
    pipe = PartCrafterPipeline.from_pretrained(EMBEDDED_MODEL, device="cpu")
    out = {"healthy": record_attention(pipe, IMAGE, 3)[1]}
    for variant in BROKEN.values():
        with broken(pipe.transformer, variant):
            out[variant] = record_attention(pipe, IMAGE, 3)[1]
    return out


def judged_by_rule(name, record, thresholds):
    """The (step, layer) statistic each check judges, recomputed here by the check's documented rule."""
    t = thresholds[name]
    if name == "uniformity":  # share of (part, head) maps with entropy >= entropy_min_uniform
        return (record.entropy.float() >= t.entropy_min_uniform).float().mean(dim=(2, 3))
    if name == "collapse":  # share of maps collapsed by any cause
        pk, ent, cls = record.peak.float(), record.entropy.float(), record.cls_mass.float()
        flags = (pk >= t.peak_max) | (ent <= t.entropy_min) | (cls >= t.cls_mass_max)
        return flags.float().mean(dim=(2, 3))
    if name == "part_separation":  # mean JS / log 2 over part pairs of head-averaged marginals
        return metrics.part_separation(record.marginals_by_part())
    if name == "stability":  # the worst part's jump from the previous step
        return metrics.timestep_jumps(record.marginals_by_part()).amax(-1)
    raise AssertionError(name)


THRESHOLD_FIELD = {
    "uniformity": "max_share",
    "collapse": "max_share",
    "part_separation": "min_separation",
    "stability": "max_jump",
}
VARIANTS = [
    Thresholds(),
    Thresholds().merged({"uniformity": {"layer_aggregate": "max", "max_share": 0.5}}),
    Thresholds().merged({"part_separation": {"layer_aggregate": "min", "step_aggregate": "max"}}),
    Thresholds().merged({"part_separation": {"layer_aggregate": "mean"}}),
    Thresholds().merged({"collapse": {"peak_max": 0.5, "max_share": 0.1}}),
]


# ----------------------------------------------------------------------------- the judged statistic
@pytest.mark.parametrize("thresholds", VARIANTS, ids=range(len(VARIANTS)))
@pytest.mark.parametrize("model", ["healthy", "uniform", "collapsed", "merged_parts"])
def test_each_timeline_is_the_judged_statistic_against_its_own_threshold(records, model, thresholds):
    record = records[model]
    results = {r.name: r for r in run_checks(record, thresholds)}
    for name, field in THRESHOLD_FIELD.items():
        timeline = CHECKS[name].timeline(record, thresholds)
        assert isinstance(timeline, Timeline) and timeline.stem == name
        expected = judged_by_rule(name, record, thresholds)
        torch.testing.assert_close(torch.as_tensor(timeline.values).float(), expected)
        assert timeline.threshold == getattr(thresholds[name], field) == results[name].threshold
        assert timeline.op == CHECKS[name].op
        assert timeline.value == pytest.approx(results[name].value, abs=1e-6), name  # the number the verdict used
        steps = record.steps[1:] if name == "stability" else record.steps
        assert list(timeline.steps) == steps and list(timeline.layers) == record.layers


def test_the_bold_series_reduces_to_the_judged_value(records):
    record = records["healthy"]
    t = Thresholds()
    uni = CHECKS["uniformity"].timeline(record, t)
    assert uni.judged_label == "all layers (mean)"  # layer_aggregate mean: the whole model's share per step
    torch.testing.assert_close(uni.judged, torch.as_tensor(uni.values).mean(1))
    assert float(uni.judged.mean()) == pytest.approx(uni.value)
    col = CHECKS["collapse"].timeline(record, t)
    worst = int(torch.as_tensor(col.values).mean(0).argmax())
    assert col.judged_label == f"layer {record.layers[worst]} (most collapsed)"
    sep = CHECKS["part_separation"].timeline(record, t)
    assert "most separated" in sep.judged_label and float(sep.judged.mean()) == pytest.approx(sep.value)


def test_a_broken_model_crosses_the_threshold_where_its_check_fails(records):
    """The bold (judged) series of each broken variant lies on the failing side of its check's threshold
    at every step, and the healthy model's on the passing side; the verdicts agree."""
    t = Thresholds()
    for name, variant in BROKEN.items():
        check = CHECKS[name]
        for model, verdict in (("healthy", "pass"), (variant, "fail")):
            timeline = check.timeline(records[model], t)
            judged = torch.as_tensor(timeline.judged)
            passing = judged <= timeline.threshold if check.op == "≤" else judged >= timeline.threshold
            assert check(records[model], t).verdict == verdict, (name, model)
            assert bool(passing.all()) == (verdict == "pass"), (name, model, judged.tolist())
            assert bool(passing.any()) == (verdict == "pass"), (name, model, judged.tolist())


def test_skipping_checks_and_a_clean_record_draw_no_timeline(records):
    record = records["healthy"]
    tensors = ("entropy", "peak", "eff_keys", "cls_mass", "marginals")
    one_part = dataclasses.replace(
        record, num_parts=1, full_maps={}, **{k: getattr(record, k)[:, :, :1] for k in tensors}
    )
    assert CHECKS["part_separation"].timeline(one_part, Thresholds()) is None
    one_step = dataclasses.replace(
        record,
        steps=record.steps[:1],
        timesteps=record.timesteps[:1],
        full_maps={},
        **{k: getattr(record, k)[:1] for k in tensors},
    )
    assert CHECKS["stability"].timeline(one_step, Thresholds()) is None
    assert CHECKS["nonfinite"].timeline(record, Thresholds()) is None  # no NaN/Inf: nothing to draw
    assert REGISTRY["baseline"].timeline(record, Thresholds()) is None  # not judged from a record


def test_nonfinite_timeline_counts_where_the_values_are(records):
    record = records["healthy"]
    entropy = record.entropy.clone()
    entropy[3, 2, 0, 1] = float("nan")
    marginals = record.marginals.clone()
    marginals[5, 1, 2, 0, :4] = float("inf")
    bad = dataclasses.replace(record, entropy=entropy, marginals=marginals, full_maps={})
    timeline = CHECKS["nonfinite"].timeline(bad, Thresholds())
    values = torch.as_tensor(timeline.values)
    assert values[3, 2] == 1 and values[5, 1] == 4 and values.sum() == 5
    assert timeline.threshold == 0.0 and values.sum() == CHECKS["nonfinite"](bad).value


def test_a_timeline_checks_its_shape_and_op():
    with pytest.raises(CheckError, match=r"values must be \(steps=2, layers=1\), got shape \(2, 3\)"):
        Timeline(torch.zeros(2, 3), (0, 1), ("a",), "m", 0.5, "≤", "t", "x")
    with pytest.raises(CheckError, match="op must be one of"):
        Timeline(torch.zeros(2, 1), (0, 1), ("a",), "m", 0.5, "<", "t", "x")


# ----------------------------------------------------------------------------- the run page
@pytest.fixture(scope="module")
def broken_page(records, tmp_path_factory):
    """The run page of the model whose parts are merged (part separation fails): (folder, report)."""
    out = tmp_path_factory.mktemp("broken_page")
    return out, render_record(records["merged_parts"], out)


def test_the_run_page_draws_every_checks_timeline(broken_page):
    out, report = broken_page
    doc = json.loads((out / "metrics.json").read_text())
    timelines = doc["timelines"]
    assert list(timelines) == ["uniformity", "collapse", "part_separation", "stability"]  # registry order
    figures = {f["path"]: f["caption"] for f in doc["figures"]}
    t = Thresholds()
    for name, entry in timelines.items():
        assert entry["path"] == f"timeline_{name}.png" and (out / entry["path"]).is_file()
        assert entry["threshold"] == getattr(t[name], THRESHOLD_FIELD[name]) and entry["op"] == CHECKS[name].op
        assert entry["value"] == pytest.approx(doc["checks"][name]["value"], abs=1e-6)
        assert f"{entry['op']} {entry['threshold']:g}" in figures[entry["path"]]  # the caption says what passes
    assert {"timeline_entropy.png", "timeline_peak.png"}.isdisjoint(figures)  # the old means are gone
    assert any(str(p).endswith("timeline_uniformity.png") for _, p in report["figures"])
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "timeline_part_separation.png" in page and "≥ 0.084" in page
    # the story first: the verdict, the checks, why they failed, what each judges; then parts and metrics
    assert '<p class="verdict fail">1 of 5 checks failed: part_separation.</p>' in page
    order = ["Checks", "Why checks failed", "What each check judges", "Parts", "Over steps", "Metrics", "Files"]
    at = [page.index(f"<h2>{heading}") for heading in order]
    assert at == sorted(at), dict(zip(order, at, strict=True))


def test_the_default_layer_says_why(broken_page, records, tmp_path):
    out, _ = broken_page
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["layer_shown_why"].startswith("the most part-separated layer")
    assert doc["layer_shown_why"].endswith("still below the floor 0.084")  # the check failed
    (caption,) = [f["caption"] for f in doc["figures"] if f["path"] == "parts.png"]
    assert caption.startswith(f"parts · layer {doc['layer_shown']}: the most part-separated")
    record = records["healthy"]
    two_steps = dataclasses.replace(  # one part of two steps: the fewest figures to draw
        record,
        num_parts=1,
        steps=record.steps[:2],
        timesteps=record.timesteps[:2],
        full_maps={},
        **{k: getattr(record, k)[:2, :, :1] for k in ("entropy", "peak", "eff_keys", "cls_mass", "marginals")},
    )
    render_record(two_steps, tmp_path, layer=0)
    assert json.loads((tmp_path / "metrics.json").read_text())["layer_shown_why"] == "the layer asked for"


def test_a_failing_part_separation_says_why_its_layer(records):
    result = CHECKS["part_separation"](records["merged_parts"])
    assert result.verdict == "fail"
    assert result.details.shown_layer == result.offender.layer  # the layer that sets the value ...
    assert "most separated" in result.details.shown_why and "still below the floor" in result.details.shown_why
    passed = CHECKS["part_separation"](records["healthy"])
    assert passed.details.shown_why == "the most separated layer (mean over steps)"


# ----------------------------------------------------------------------------- the figure
def test_timeline_y_range_fits_data_and_threshold():
    # part separation just under its 0.084 floor, spanning 0.05 to 0.08 (both ends present: an unseeded
    # draw whose smallest value lay well above 0.05 failed `lo < 0.05` about one run in twenty)
    near_floor = 0.05 + 0.03 * torch.rand(10, 3, generator=torch.Generator().manual_seed(0))
    near_floor[0, 0], near_floor[-1, -1] = 0.05, 0.08
    lo, hi = render_figures._timeline_fig(near_floor, range(10), ["a", "b", "c"], threshold=0.084).axes[0].get_ylim()
    assert lo < 0.05 and 0.084 < hi < 0.1  # the threshold is visible, with a margin ...
    assert (0.08 - 0.05) / (hi - lo) > 0.6  # ... and the data fill most of the axis, not its bottom 8 %
    lo, hi = render_figures._timeline_fig(near_floor, range(10), ["a", "b", "c"], threshold=0.9).axes[0].get_ylim()
    assert lo < 0.05 and 0.9 < hi  # a far threshold is still drawn
    lo, hi = render_figures._timeline_fig(near_floor, range(10), ["a", "b", "c"], ylim=(0.0, 1.0)).axes[0].get_ylim()
    assert lo < 0.0 and 1.0 < hi < 1.05  # a fixed range when asked for
    flat = render_figures._timeline_fig(torch.zeros(4, 2), range(4), ["a", "b"], threshold=0.0).axes[0].get_ylim()
    assert flat[0] < 0.0 < flat[1]  # all on the threshold: still a readable range


def test_timeline_draws_the_judged_series_value_and_threshold(records):
    timeline = CHECKS["uniformity"].timeline(records["healthy"], Thresholds())
    fig = render_figures._timeline_fig(
        timeline.values,
        timeline.steps,
        timeline.layers,
        threshold=timeline.threshold,
        judged=timeline.judged,
        judged_label=timeline.judged_label,
        value=timeline.value,
        value_label=timeline.value_label,
    )
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "all layers (mean)" in legend and "threshold 0.84" in legend
    assert f"value {timeline.value:.3g} (mean over steps of the bold line)" in legend
    assert len(ax.get_lines()) == len(timeline.layers) + 3  # layers, the judged series, value, threshold


def test_bare_heads_grid_has_index_ticks():
    """Without a patch grid (a bare model), each head's queries x keys panel has index ticks: key indices
    labelled on the bottom row, query indices in the left column."""
    maps = torch.softmax(torch.randn(5, 16, 65), -1)
    fig = render_grids._multi_head_fig(maps)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title().startswith("head")]
    assert len(panels) == 5
    fig.canvas.draw()
    for h, ax in enumerate(panels):
        xticks = [t for t in ax.get_xticks() if 0 <= t <= 64]
        yticks = [t for t in ax.get_yticks() if 0 <= t <= 15]
        assert len(xticks) >= 2 and len(yticks) >= 2, h
        x_labelled = any(t.get_visible() and t.get_text() for t in ax.get_xticklabels())
        y_labelled = any(t.get_visible() and t.get_text() for t in ax.get_yticklabels())
        assert x_labelled == (h >= 2), h  # 3 columns: heads 2, 3 and 4 end their columns
        assert y_labelled == (h % 3 == 0), h
    assert fig._supxlabel.get_text() == "key index" and fig._supylabel.get_text() == "query index"
    strips = render_grids._multi_head_fig(torch.softmax(torch.randn(4, 1, 64), -1), ylabel=None)
    assert len(strips.axes[0].get_xticks()) >= 2 and len(strips.axes[0].get_yticks()) == 0
    on_grid = render_grids._multi_head_fig(torch.softmax(torch.randn(4, 16, 64), -1), grid=(8, 8))
    assert len(on_grid.axes[0].get_xticks()) == 0  # on the patch grid the picture is the axis
