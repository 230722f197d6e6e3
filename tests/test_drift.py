"""Baselines that can be drawn: the attention summary next to the metrics, the drift between two
summaries, the drift figure of a baseline failure, and the gate on a broken model (merged parts)
against the committed baselines."""

from __future__ import annotations

import json
import math
import shutil
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from baseline_support import ENV, records, runner
from helpers import more_colours_than
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from plugin_support import REPO

from partattn_checks import EMBEDDED_MODEL
from partattn_checks.baselines import store as bl
from partattn_checks.baselines.judge import NO_SUMMARY_NOTE
from partattn_checks.baselines.sample import SeedRun, SeedSample
from partattn_checks.baselines.store import SUMMARY_FILE, BaselineContent
from partattn_checks.baselines.summary import (
    KEEP_ATOL,
    AttentionSummary,
    SummaryError,
    attention_drift,
    js_normalized,
)
from partattn_checks.capture import metrics
from partattn_checks.capture.record import AttentionRecord
from partattn_checks.checks import REGISTRY, CheckResult, Thresholds
from partattn_checks.checks.baseline import AttentionDrift, BaselineDetails
from partattn_checks.checks.details import Matrix
from partattn_checks.gate import report
from partattn_checks.render import drift as drift_render

pytest_plugins = ("pytester",)

METRICS = {"entropy_mean": 0.9, "peak_mean": 0.06, "separation": 0.3}
COMMITTED = REPO / "fixtures" / "baselines"


@pytest.fixture(autouse=True)
def _no_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)


def _record(S=4, L=3, P=2, H=2, grid=(4, 4), seed=0, focus=None) -> AttentionRecord:
    """A record whose part p attends mostly to patch ``focus[l][p]`` (default: key p) in layer l."""
    K = grid[0] * grid[1]
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(S, L, P, H, K, generator=g) * 0.1
    for layer in range(L):
        for p in range(P):
            m[:, layer, p, :, (focus[layer][p] if focus else p) % K] += 1.0
    m = m / m.sum(-1, keepdim=True)

    def scalars():
        return torch.rand(S, L, P, H, generator=g)

    return AttentionRecord(
        steps=list(range(0, 2 * S, 2)),
        timesteps=[1000.0 - 100 * i for i in range(S)],
        layers=[f"blocks.{i}.attn2" for i in range(L)],
        layer_kinds=["global"] * L,
        num_parts=P,
        num_heads=H,
        num_patch_keys=K,
        has_cls=True,
        patch_grid=grid,
        entropy=scalars(),
        peak=scalars(),
        eff_keys=scalars(),
        cls_mass=scalars(),
        marginals=m,
    )


# ----------------------------------------------------------------------------- the summary
def test_summary_is_the_step_and_head_averaged_marginal_and_round_trips(tmp_path):
    rec = _record(S=10)
    s = AttentionSummary.from_record(rec, image_size=(112, 112))
    expected = rec.marginals_by_part().mean(0)
    expected = (expected / expected.sum(-1, keepdim=True)).numpy()
    assert s.mean.dtype == np.float16 and s.mean.shape == (3, 2, 16)
    np.testing.assert_allclose(s.mean.astype(np.float64), expected, atol=2e-3)
    assert s.step_subset[0] == rec.steps[0] and s.step_subset[-1] == rec.steps[-1] and len(s.step_subset) == 8
    i = rec.steps.index(s.step_subset[3])
    np.testing.assert_allclose(s.per_step[3].astype(np.float64), rec.marginals_by_part()[i].numpy(), atol=2e-3)
    np.testing.assert_allclose(s.cls_mass.astype(np.float64), rec.cls_mass.float().mean((0, 3)).numpy(), atol=2e-3)

    path = tmp_path / SUMMARY_FILE
    assert s.write(path)
    back = AttentionSummary.read(path)
    assert back.metadata() == s.metadata() and back.metadata()["key_grid"] == [4, 4]
    assert back.metadata()["image_size"] == [112, 112] and back.layers == tuple(rec.layers)
    for name in ("mean", "per_step", "cls_mass"):
        assert np.array_equal(getattr(back, name), getattr(s, name))


def test_summary_at_release_shape_is_a_few_hundred_kb(tmp_path):
    # release shape: 21 cross-attention layers, 16 heads, 4 parts, a 16x16 patch grid (+ CLS), 50 steps
    rec = _record(S=50, L=21, P=4, H=16, grid=(16, 16))
    path = tmp_path / SUMMARY_FILE
    AttentionSummary.from_record(rec, image_size=(224, 224)).write(path)
    size = path.stat().st_size
    back = AttentionSummary.read(path)
    assert back.mean.shape == (21, 4, 256) and back.per_step.shape == (6, 21, 4, 256)
    kept = [rec.steps.index(step) for step in back.step_subset]  # 6 evenly spaced of the 50 recorded steps
    assert kept[0] == 0 and kept[-1] == 49 and {b - a for a, b in zip(kept, kept[1:], strict=False)} <= {9, 10}
    assert 300_000 < size < 310_000, size  # docs/plugin.md says 302 KB


def test_unreadable_summary_names_the_file(tmp_path):
    path = tmp_path / SUMMARY_FILE
    path.write_bytes(b"not safetensors")
    with pytest.raises(SummaryError, match=str(path)):
        AttentionSummary.read(path)


# ----------------------------------------------------------------------------- the store
def _sample(attention: AttentionSummary | None, seeds=(0, 1), metrics=METRICS) -> SeedSample:
    """Runs of ``seeds`` with the same attention and metrics a little apart (so that they have a spread)."""
    return SeedSample(
        tuple(
            SeedRun(s, {k: v + 0.001 * i for k, v in metrics.items()}, {}, ENV, attention) for i, s in enumerate(seeds)
        )
    )


def _write(store, attention, metrics=METRICS):
    return store.write("img", BaselineContent("img.png", _sample(attention, metrics=metrics), ENV))


def test_update_twice_leaves_every_file_byte_identical(tmp_path):
    store = bl.BaselineStore(tmp_path)
    s = AttentionSummary.from_record(_record(), exact=True)
    assert _write(store, s)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "img").iterdir()}
    assert set(before) == {"metrics.json", "environment.json", SUMMARY_FILE}
    again = AttentionSummary.from_record(_record(), exact=True)  # the same run again
    assert not _write(store, again)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "img").iterdir()} == before
    # values that moved by less than KEEP_ATOL keep the stored file; more is a rewrite
    nudged = AttentionSummary(**{**vars(s), "cls_mass": s.cls_mass + KEEP_ATOL / 4})
    assert not _write(store, nudged)
    moved = AttentionSummary(**{**vars(s), "cls_mass": s.cls_mass + 0.01})
    assert _write(store, moved)
    doc = json.loads((tmp_path / "img" / "metrics.json").read_text())  # only the summary and its hash changed
    assert doc["metrics"] == json.loads(before["metrics.json"][0])["metrics"]
    assert doc["files"][SUMMARY_FILE] != json.loads(before["metrics.json"][0])["files"][SUMMARY_FILE]


def test_remove_and_unused_listing_include_the_summary(tmp_path):
    store = bl.BaselineStore(tmp_path)
    _write(store, AttentionSummary.from_record(_record(), exact=True))
    assert bl.unused_keys(store, set()) == ["img"]
    store.remove("img")
    assert not (tmp_path / "img").exists()
    # a folder left with only a summary (an interrupted first write) is a baseline too
    AttentionSummary.from_record(_record()).write(tmp_path / "half" / SUMMARY_FILE)
    assert store.keys() == ["half"] and store.load("half") is None
    store.remove("half")
    assert not (tmp_path / "half").exists()


def _judge(tmp_path, now_record, **policy):
    """The stored baseline of "img" against one run of ``now_record`` (seed 0)."""
    return runner(tmp_path, **policy).evaluate(records("img", lambda seed, c: now_record), Thresholds())


def test_old_baseline_without_summary_compares_metrics_and_says_how_to_add_pictures(tmp_path):
    rec = _record()
    store = bl.BaselineStore(tmp_path / "base")
    store.write("img", BaselineContent("img.png", _sample(None, metrics=rec.summary()), ENV))  # as before summaries
    out = _judge(tmp_path, rec, verdict="seed-spread", baseline_seeds=2)
    assert out.result.offender is None
    assert out.result.details.attention is None and out.result.details.attention_note == NO_SUMMARY_NOTE
    assert "regenerate it with --partattn-update=failed to add the drift pictures" in out.result.reason
    assert REGISTRY["baseline"].figures(out.result, None, tmp_path / "figs") == []  # nothing to draw
    # --partattn-update=all adds the summary
    added = _judge(tmp_path, rec, update="all", baseline_seeds=2)
    assert added.status == "updated" and (tmp_path / "base" / "img" / SUMMARY_FILE).is_file()
    assert _judge(tmp_path, rec, update="all", baseline_seeds=2).status == "compared"  # and then it is up to date


def test_damaged_summary_is_reported_and_the_metrics_still_count(tmp_path):
    store = bl.BaselineStore(tmp_path / "base")
    rec = _record()
    _write(store, AttentionSummary.from_record(rec, exact=True), metrics=rec.summary())
    (tmp_path / "base" / "img" / SUMMARY_FILE).write_bytes(b"\x00" * 12)
    out = _judge(tmp_path, rec, baseline_seeds=2)
    assert "attention summary is unusable" in out.result.reason
    assert str(tmp_path / "base" / "img" / SUMMARY_FILE) in out.result.details.attention_note
    assert "does not belong to its metrics.json" in out.result.details.attention_note  # its hash differs


def test_summary_with_nan_is_unusable_and_the_metrics_still_count(tmp_path):
    store = bl.BaselineStore(tmp_path / "base")
    rec = _record()
    good = AttentionSummary.from_record(rec, exact=True)
    nan_mean = good.mean.copy()
    nan_mean[0, 0, 0] = np.nan
    path = tmp_path / "base" / "img" / SUMMARY_FILE
    AttentionSummary(**{**vars(good), "mean": nan_mean}).write(path)
    with pytest.raises(SummaryError, match="non-finite") as err:
        AttentionSummary.read(path)
    assert str(path) in str(err.value) and "regenerate it with --partattn-update=all" in str(err.value)
    store.write("img", BaselineContent("img.png", _sample(None, metrics=rec.summary()), ENV))
    AttentionSummary(**{**vars(good), "mean": nan_mean}).write(path)  # a summary whose metrics.json names none
    out = _judge(tmp_path, rec, baseline_seeds=2, verdict="seed-spread")  # no drift of 0.500 in every layer
    assert out.result.offender is None
    assert out.result.details.attention is None and "attention summary is unusable" in out.result.reason
    assert str(path) in out.result.details.attention_note


def test_drift_names_the_layer_and_part_that_moved_and_travels_as_json(tmp_path):
    healthy = [_record(L=3, P=2, seed=s) for s in range(4)]
    runner(tmp_path, update="all", baseline_seeds=4).evaluate(
        records("img", lambda seed, c: healthy[seed]), Thresholds()
    )
    # layer 1's part 1 now attends elsewhere; everything else as before
    out = _judge(tmp_path, _record(L=3, P=2, focus=[[0, 1], [0, 9], [0, 1]]), baseline_seeds=4)
    r = out.result
    assert r.verdict == "fail" and (r.offender.layer, r.offender.part) == ("blocks.1.attn2", 1)
    assert r.offender.step == 0  # paired: where the change begins
    assert "(attention moved most in layer blocks.1.attn2, part 1: JS/log2 " in r.reason  # index.html shows it
    d = r.details.attention
    assert d.layer == "blocks.1.attn2" and d.part == 1 and d.grid == (4, 4) and d.verdict == "paired"
    assert d.per_layer[1] > 10 * max(d.per_layer[0], d.per_layer[2])
    # through JSON (the pytest-xdist transport) and back, typed again, and drawn from there
    back = CheckResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert isinstance(back.details, BaselineDetails) and back.details.attention == d and back == r
    assert out.state.candidate == str(tmp_path / "cand" / "img")
    figs = REGISTRY["baseline"].figures(back, None, tmp_path / "figs")
    assert [p.name for p in figs] == ["baseline__drift.png"] and figs[0].stat().st_size > 20_000
    item = report.ItemReport(
        image="img.png", key="img", check="baseline", result=r, figures=[str(figs[0])], rerun="r", update="u"
    )
    text = report.failure_text(report.ItemReport.from_dict(json.loads(json.dumps(item.to_dict()))))
    assert "worst offender: step 0, layer blocks.1.attn2, part 1, head -" in text
    assert "attention drift: layer blocks.1.attn2 moved most" in text and f"[[ATTACHMENT|{figs[0]}]]" in text


def test_drift_between_unlike_summaries_is_a_note_not_an_error(tmp_path):
    a = AttentionSummary.from_record(_record(P=2))
    assert "2 parts" in attention_drift(a, AttentionSummary.from_record(_record(P=3)))
    assert "keys" in attention_drift(a, AttentionSummary.from_record(_record(grid=(2, 2))))


# ----------------------------------------------------------------------------- drift math
_dist = arrays(np.float64, st.integers(2, 12), elements=st.floats(0, 1, allow_nan=False)).filter(
    lambda a: a.sum() > 1e-6
)


@settings(max_examples=60, deadline=None)
@given(_dist, st.data())
def test_js_normalized_is_bounded_symmetric_and_matches_metrics(p, data):
    q = data.draw(arrays(np.float64, p.shape, elements=st.floats(0, 1)).filter(lambda a: a.sum() > 1e-6))
    v = float(js_normalized(p, q))
    assert 0.0 <= v <= 1.0
    assert v == pytest.approx(float(js_normalized(q, p)), abs=1e-12)
    assert js_normalized(p, p) == pytest.approx(0.0, abs=1e-12)
    expected = float(metrics.js_distance_normalized(torch.tensor(p), torch.tensor(q)))
    assert v == pytest.approx(expected, abs=1e-5)


def test_disjoint_distributions_are_one_apart():
    assert js_normalized(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)


def test_a_subnormal_entry_is_no_distance():
    """Half the smallest subnormal underflows to 0: the mixture is 0 where one side is 5e-324 (found by
    hypothesis: the distance came out 1, disjoint, instead of 0)."""
    p, q = np.array([0.0, 1.0]), np.array([5e-324, 1.0])
    assert js_normalized(p, q) == pytest.approx(0.0, abs=1e-12) and js_normalized(q, p) == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(0, 10_000))
def test_identical_summaries_do_not_drift(L, P, seed):
    s = AttentionSummary.from_record(_record(S=2, L=L, P=P, seed=seed))
    d = attention_drift(s, AttentionSummary(**vars(s)))
    per_part = np.asarray(d.per_part.rows)
    assert np.all(per_part == 0.0) and d.value == 0.0 and per_part.shape == (L, P)


# ----------------------------------------------------------------------------- the figure
def _moved_at_layer_3(parts: int, grid: tuple[int, int]) -> AttentionDrift:
    L = 5
    focus = [[p for p in range(parts)] for _ in range(L)]
    focus[3] = [p + grid[1] + 3 for p in range(parts)]
    d = attention_drift(
        AttentionSummary.from_record(_record(S=2, L=L, P=parts, grid=grid)),
        AttentionSummary.from_record(_record(S=2, L=L, P=parts, grid=grid, focus=focus)),
    )
    assert d.layer == "blocks.3.attn2"
    return d


def _encoder_view() -> Image.Image:
    return Image.open(REPO / "fixtures" / "images" / "np4_four_shapes.png").convert("RGB").resize((224, 224))


#: The sizes depend on the number of parts only (one row of panels each); the patch grid only reshapes each
#: row's maps (the embedded model's 8x8, the release's 16x16 at its 4 parts), the same drawing either way.
@pytest.mark.parametrize("parts, grid", [(1, (8, 8)), (2, (8, 8)), (4, (8, 8)), (4, (16, 16))])
def test_drift_figure_keeps_panels_and_text_readable(tmp_path, parts, grid):
    d = _moved_at_layer_3(parts, grid)
    image = _encoder_view()
    path = drift_render.drift_figure(d, image, path=tmp_path / f"drift{parts}.png")
    with Image.open(path) as png:
        width, height = png.size
        many_colours = more_colours_than(png, 500)  # PIL counts them (np.unique of every pixel: 3 s a figure)
    assert drift_render.PANEL_IN * drift_render.DPI >= 180 and drift_render.FONT >= 10
    assert width >= 3 * 180 and height >= 250 + parts * 180
    assert many_colours  # over 500 colours: maps on the image, not a blank canvas


def test_drift_figure_without_an_image_or_a_grid():
    """Without an image: the patch grid; without a grid: one strip per part (two parts: one marked "most")."""
    d = _moved_at_layer_3(2, (8, 8))
    assert drift_render.drift_figure(d)[:4] == b"\x89PNG"
    no_grid = replace(d, grid=None)
    assert drift_render.drift_figure(no_grid, _encoder_view())[:4] == b"\x89PNG"


def _drift(shift: int = 3, parts: int = 2) -> AttentionDrift:
    """A drift whose layer 1 moved: every part now attends ``shift`` patches further on a 4x4 grid."""
    focus = [[p for p in range(parts)] for _ in range(3)]
    focus[1] = [p + shift for p in range(parts)]
    base = AttentionSummary.from_record(_record(S=2, L=3, P=parts))
    return attention_drift(base, AttentionSummary.from_record(_record(S=2, L=3, P=parts, focus=focus)))


def _delta_bar(fig):
    """The colour bar of the now − baseline column: (its limits, its label)."""
    (ax,) = [ax for sub in fig.subfigs for ax in sub.axes if ax.get_ylabel().startswith("Δ attention")]
    return ax.get_ylim(), ax.get_ylabel()


def test_drift_scale_fixes_the_delta_colours_and_the_figure_says_which():
    d = _drift()
    diff = (np.asarray(d.now.rows) - np.asarray(d.baseline.rows)) * 16
    (lo, hi), label = _delta_bar(drift_render._drift_fig(d, None))
    assert (lo, hi) == pytest.approx((-np.abs(diff).max(), np.abs(diff).max())) and "auto" in label
    assert f"±{np.abs(diff).max():.3g}" in label
    for fig in (drift_render._drift_fig(d, None, 3.0), drift_render._drift_fig(replace(d, delta_scale=3.0), None)):
        (lo, hi), label = _delta_bar(fig)
        assert (lo, hi) == (-3.0, 3.0) and "scale ±3 (fixed)" in label
        diff_maps = [ax.get_images()[0] for ax in fig.subfigs[1].axes[2:6:3]]
        assert all(im.norm.vmin == -3.0 and im.norm.vmax == 3.0 for im in diff_maps)
    # two images that moved by different amounts: their own ranges (auto), one range (fixed)
    half = replace(d, now=Matrix.of((np.asarray(d.baseline.rows) + np.asarray(d.now.rows)) / 2))
    assert _delta_bar(drift_render._drift_fig(half, None))[0][1] == pytest.approx(
        _delta_bar(drift_render._drift_fig(d, None))[0][1] / 2
    )
    assert _delta_bar(drift_render._drift_fig(half, None, 3.0))[0] == (-3.0, 3.0)


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, "4", True])
def test_drift_scale_must_be_a_positive_number(bad):
    with pytest.raises(ValueError, match="delta_scale must be a positive number"):
        drift_render.drift_figure(_drift(), delta_scale=bad)


def test_the_gate_draws_the_drift_figure_on_its_drift_scale_option(tmp_path):
    from types import SimpleNamespace

    from partattn_checks.capture.runspec import DeviceChoice
    from partattn_checks.gate.options import Settings
    from partattn_checks.gate.state import GateSession

    d = _drift()
    result = CheckResult("baseline", "fail", 9.0, 4.0, None, "moved", BaselineDetails(attention=d))
    spec, outcome = SimpleNamespace(key="img", path=tmp_path / "img.png"), SimpleNamespace(record=None)
    drawn = {}
    for scale in (None, 2.5):
        settings = Settings.of(results=tmp_path / str(scale), drift_scale=scale)
        session = GateSession(lambda: None, settings, Thresholds(), DeviceChoice("cpu"))
        paths, problems = session.figures(spec, outcome, result, Thresholds())
        assert not problems and [Path(p).name for p in paths] == ["baseline__drift.png"]
        drawn[scale] = Path(paths[0]).read_bytes()
    assert drawn[2.5] == drift_render.drift_figure(d, delta_scale=2.5) != drawn[None]
    assert drawn[None] == drift_render.drift_figure(d)
    assert result.details.attention.delta_scale is None  # the judged result is left as it was


@pytest.mark.parametrize("value, expected", [("auto", None), ("AUTO", None), ("4", 4.0), ("0.5", 0.5), (" 12 ", 12.0)])
def test_drift_scale_option_values(value, expected):
    from partattn_checks.gate.option_table import _convert
    from partattn_checks.gate.options import BY_NAME

    assert _convert(BY_NAME["drift_scale"], value, "cli", Path.cwd()) == expected


def test_bad_drift_scale_in_the_ini_file_names_the_ini_key(pytester):
    from plugin_support import args, make_project

    from partattn_checks.gate.options import Settings

    make_project(pytester)
    pytester.makeini("[pytest]\npartattn_drift_scale = wide\n")
    result = pytester.runpytest_inprocess(*args("--collect-only"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ini option partattn_drift_scale wide: expected auto or a positive number*"])
    with pytest.raises(pytest.UsageError, match="--partattn-drift-scale.*expected auto or a positive number"):
        Settings.of(drift_scale=-2.0)


# ----------------------------------------------------------------------------- the gate on a broken model
def _merged_parts_model(out: Path) -> Path:
    """The embedded model with the merged_parts edit, on disk (the gate loads models from folders)."""
    from safetensors.torch import load_file, save_file

    from partattn_checks.model.broken import get_variant

    model = Path(shutil.copytree(EMBEDDED_MODEL, out))
    weights = model / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    for name, edit in get_variant("merged_parts").plan(list(state)):
        edit(state[name])
    save_file(state, weights)
    return model


def _most_moved(stored: Path, now: Path) -> tuple[str, int]:
    """The (layer, part) that moved most, computed here from the two files with plain numpy."""
    a, b = AttentionSummary.read(stored), AttentionSummary.read(now)
    p, q = a.mean.astype(np.float64), b.mean.astype(np.float64)
    p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = lambda x: np.where(x > 0, x * np.log(x / m), 0.0).sum(-1)  # noqa: E731
    js = (kl(p) + kl(q)) / 2 / math.log(2)  # (L, P)
    layer = int(np.argmax(js.mean(1)))
    return a.layers[layer], int(np.argmax(js[layer]))


IMAGES = ("np2_circle_square.png", "np4_four_shapes.png")


def test_merged_parts_against_the_committed_baselines_shows_the_drift_figure(pytester, tmp_path):
    pytest.importorskip("pytest_html")
    model = _merged_parts_model(tmp_path / "merged")
    (pytester.path / "fixtures" / "images").mkdir(parents=True)
    for name in IMAGES:
        stem = name.rsplit(".", 1)[0]
        assert (COMMITTED / stem / SUMMARY_FILE).is_file(), "the committed baselines carry attention summaries"
        shutil.copyfile(REPO / "fixtures" / "images" / name, pytester.path / "fixtures" / "images" / name)
        shutil.copytree(COMMITTED / stem, pytester.path / "fixtures" / "baselines" / stem)
    nodes = [f"fixtures/images/{name}::baseline" for name in IMAGES]
    result = pytester.runpytest_inprocess(
        "-p",
        "no:cacheprovider",
        "--partattn",
        f"--partattn-model={model}",
        "--junitxml=out.xml",
        "-o",
        "junit_logging=system-out",
        "--html=report.html",
        "--self-contained-html",
        *nodes,
    )
    result.assert_outcomes(failed=3)  # both images' baseline items, and the fixture set they both moved
    terminal = result.stdout.str()
    results = pytester.path / ".partattn-results"
    cases = {c.get("classname"): c for c in ET.parse(pytester.path / "out.xml").getroot().iter("testcase")}
    reports = {r.nodeid: r for r in result.reprec.getreports("pytest_runtest_logreport") if r.when == "call"}
    index = (results / "index.html").read_text()
    for name, node in zip(IMAGES, nodes, strict=True):
        stem = name.rsplit(".", 1)[0]
        candidate = results / "baseline-candidates" / stem / SUMMARY_FILE  # this run's summary
        layer, part = _most_moved(COMMITTED / stem / SUMMARY_FILE, candidate)
        figure = results / stem / "baseline__drift.png"
        assert figure.is_file() and figure.stat().st_size > 50_000
        # terminal: the worst offender is where the drift starts (the first layer beyond its seed noise;
        # the one that moved most when none is), the layer that moved most is named, the figure listed
        details = reports[node].partattn["result"]["details"]
        start = details["onset"] or layer
        start_part = next(d["part"] for d in details["deviations"] if d["name"] == start) if details["onset"] else part
        assert f"partattn: baseline failed for fixtures/images/{name}" in terminal
        # the paired verdict also knows the step where the change begins (its first kept step)
        onset_step = details["paired_onset"]["step"] if details["onset"] and details.get("paired_onset") else "-"
        assert f"worst offender: step {onset_step}, layer {start}, part {start_part}, head -" in terminal
        assert f"attention drift: layer {layer} moved most" in terminal and f"  {figure}" in terminal
        # JUnit: the attachment line in the failure text and in <system-out>
        case = cases[f"fixtures.images.{name}"]
        assert f"[[ATTACHMENT|{figure}]]" in case.find("failure").text
        assert f"[[ATTACHMENT|{figure}]]" in case.find("system-out").text
        assert f"layer {start}, part {start_part}" in case.find("failure").text
        # pytest-html: the figure as an embedded PNG
        extras = reports[node].extras
        assert [e["name"] for e in extras] == ["baseline__drift.png", "baseline__drift.png (full size)"]
        assert "iVBOR" in extras[0]["content"][:40]  # embedded, and linked at full size
        assert reports[node].partattn["result"]["offender"]["layer"] == start
        # index.html shows it too
        assert f"{stem}/baseline__drift.png" in index
        assert f"attention moved most in layer {layer}, part {part}: JS/log2" in index
    assert "data:image/png;base64,iVBOR" in (pytester.path / "report.html").read_text()


def test_a_summary_of_another_shape_is_said_beside_a_passing_item(tmp_path):
    healthy = [_record(seed=s) for s in range(2)]
    runner(tmp_path, update="all", baseline_seeds=2).evaluate(
        records("img", lambda seed, c: healthy[seed]), Thresholds()
    )
    other_grid = _record(grid=(2, 2))  # the same metrics' names, another key grid: a truncated or foreign summary
    out = _judge(tmp_path, other_grid, baseline_seeds=2)
    folder = tmp_path / "base" / "img"
    assert (
        f"{folder}: no drift figure: the baseline's attention summary has 16 keys per part, this run 4" in out.problems
    )
    assert any(p.startswith(f"{folder}: layers not compared") for p in out.problems)
    assert out.result.details.attention is None
