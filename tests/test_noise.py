"""Verdicts with a noise model: the statistics (property tests), the seed-spread baseline store, and
the gate's judgement of real runs of the embedded model (another seed passes, a degradation fails in
units of noise, the onset layer, more seeds at gate time, old baselines)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from helpers import FIXTURE_IMAGES, REPO
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from partattn_checks import EMBEDDED_MODEL
from partattn_checks.capture.runspec import DeviceChoice
from partattn_checks.checks import Thresholds
from partattn_checks.checks.baseline import noise
from partattn_checks.checks.baseline import store as bl
from partattn_checks.checks.baseline.compare import SINGLE_RUN_NOTE, BaselineStatus, evaluate
from partattn_checks.checks.fixture_set import set_verdict
from partattn_checks.gate.options import Settings
from partattn_checks.gate.state import GateSession, judge_set
from partattn_checks.model.broken import Variant, broken, graded
from partattn_checks.model.pipeline import PartCrafterPipeline
from partattn_checks.runs.session import Session
from partattn_checks.runs.sidecar import fixture_specs

finite = st.floats(-1e3, 1e3, allow_nan=False)
samples = st.lists(st.floats(0.01, 1.0), min_size=3, max_size=20)


# ----------------------------------------------------------------------------- statistics
@settings(max_examples=60, deadline=None)
@given(st.floats(1e-6, 0.49), st.floats(1.0, 500.0))
def test_t_quantile_inverts_the_tail(p, dof):
    t = noise.t_quantile(p, dof)
    assert t > 0 and noise.t_sf(t, dof) == pytest.approx(p, rel=1e-6)
    assert noise.t_quantile(p, dof + 1) <= t  # more degrees of freedom: thinner tails


def test_t_quantile_matches_the_tables():
    # Student's t tables (two-sided 95 % with 10 dof, 99 % with 5 dof) and the normal limit
    assert noise.t_quantile(0.025, 10) == pytest.approx(2.228, abs=1e-3)
    assert noise.t_quantile(0.005, 5) == pytest.approx(4.032, abs=1e-3)
    assert noise.t_quantile(0.025, math.inf) == pytest.approx(1.95996, abs=1e-5)


@given(st.integers(1, 50), st.integers(2, 64))
def test_more_comparisons_need_a_larger_allowance(tests, seeds):
    metric, layer = noise.allowances(0.001, tests, seeds)
    assert metric > layer > 0  # two-sided beyond one-sided
    assert noise.allowances(0.001, tests + 1, seeds)[0] > metric
    assert noise.allowances(0.01, tests, seeds)[0] < metric


@settings(max_examples=80, deadline=None)
@given(samples, st.floats(-0.5, 0.5), st.floats(0.1, 10.0), st.integers(1, 8))
def test_metric_distance_is_shift_and_scale_free(values, offset, factor, repeats):
    assume(noise.mean_sd(values)[1] > 1e-3)
    measured = sum(values) / len(values) + 0.05
    d = noise.metric_deviation("separation", measured, values, pooled=None, repeats=repeats, allowance=4.0)
    shifted = [v + offset for v in values]
    d2 = noise.metric_deviation("separation", measured + offset, shifted, pooled=None, repeats=repeats, allowance=4.0)
    scaled = [v * factor for v in values]
    d3 = noise.metric_deviation("separation", measured * factor, scaled, pooled=None, repeats=repeats, allowance=4.0)
    assert d.z == pytest.approx(d2.z, rel=1e-6, abs=1e-6) and d.z == pytest.approx(d3.z, rel=1e-6, abs=1e-6)
    assert d.z > 0  # above the mean is positive
    at_mean = noise.metric_deviation("separation", d.mean, values, pooled=None, repeats=repeats, allowance=4.0)
    assert at_mean.z == pytest.approx(0.0, abs=1e-9) and not at_mean.moved
    low, high = d.allowed_range
    assert low < d.mean < high and high - low == pytest.approx(2 * d.allowance * d.standard_error)


@settings(max_examples=60, deadline=None)
@given(samples, st.floats(0.1, 10.0))
def test_log_scale_metrics_are_judged_by_ratios(values, factor):
    assume(noise.mean_sd([math.log(v) for v in values])[1] > 1e-3)
    d = noise.metric_deviation("stability_max_jump", values[0], values, pooled=None, repeats=1, allowance=4.0)
    scaled = [v * factor for v in values]
    d2 = noise.metric_deviation("stability_max_jump", values[0] * factor, scaled, pooled=None, repeats=1, allowance=4.0)
    assert d.log_scale and d.z == pytest.approx(d2.z, rel=1e-6, abs=1e-6)
    low, high = d.allowed_range
    assert low * high == pytest.approx(d.mean**2, rel=1e-9)  # symmetric in ratio around the geometric mean


@given(st.floats(0, 1), st.integers(2, 64), st.floats(0, 1))
def test_a_spread_shrinks_toward_the_pooled_one(own, seeds, pooled):
    s = noise.shrunk(own, seeds, pooled)
    assert s >= noise.RESOLUTION
    assert min(own, pooled) - 1e-12 <= s or s == noise.RESOLUTION
    assert s <= max(own, pooled, noise.RESOLUTION) + 1e-12


@given(st.lists(finite, min_size=3, max_size=16).filter(lambda r: noise.mean_sd(r)[1] > 1e-6), st.integers(2, 6))
def test_images_sharing_their_noise_are_fully_correlated(row, images):
    assert noise.mean_correlation([row] * images) == pytest.approx(1.0)
    assert 0.0 <= noise.mean_correlation([row, [-v for v in row]]) <= 1.0  # anti-correlation counts as 0


def _dev(name, z, kind="metric", residuals=()):
    return noise.Deviation(name, kind, 0.0, 0.0, 1.0, 16, 1, z, 4.5, tuple(residuals))


@given(st.integers(2, 20), st.floats(-2.9, 2.9))
def test_the_set_adds_up_independent_images(n, z):
    combined = noise.combine({f"img{i}": [_dev("separation", z)] for i in range(n)}, 0.001)
    (d,) = combined
    assert d.z == pytest.approx(z * math.sqrt(n)) and d.correlation == 0.0 and d.mean_z == pytest.approx(z)


def test_one_image_in_an_unusual_mode_cannot_carry_the_set():
    per_image = {"odd": [_dev("separation", 40.0)], **{f"img{i}": [_dev("separation", 0.0)] for i in range(9)}}
    (d,) = noise.combine(per_image, 0.001)
    assert d.per_image["odd"] == noise.CLIP and not d.moved


def test_the_set_fails_on_a_shift_that_no_single_image_flags():
    rng = np.random.default_rng(0)
    per_image = {}
    for i in range(10):
        layers = [_dev(f"blocks.{k}.attn2", 1.6 if k >= 2 else 0.1, "layer", rng.normal(size=16)) for k in range(4)]
        per_image[f"img{i}"] = [_dev("separation", -2.0, residuals=rng.normal(size=16)), *layers]
    assert not any(d.moved for devs in per_image.values() for d in devs)  # every image passes alone
    verdict = set_verdict(per_image, 0.001)
    assert verdict.verdict == "fail"
    assert {d.name for d in verdict.moved} == {"separation", "blocks.2.attn2", "blocks.3.attn2"}
    assert verdict.onset == "blocks.2.attn2"  # the first layer in depth order that moved
    text = "\n".join(verdict.lines())
    assert "separation (lower" in text and "the first layer that moved is blocks.2.attn2" in text


def test_the_set_needs_two_images_judged_in_noise_units():
    assert set_verdict({"only": [_dev("separation", -9.0)]}, 0.001) is None


def test_baseline_and_gate_seeds_never_meet():
    for seed in (0, 5, 123):
        assert not set(noise.gate_seeds(seed, 1000)) & set(noise.baseline_seeds(seed, 64))


# ----------------------------------------------------------------------------- the store
def test_a_seed_spread_baseline_round_trips_without_churn(tmp_path):
    store = bl.BaselineStore(tmp_path)
    values = {"separation": [0.2, 0.21, 0.19, 0.205], "entropy_mean": [0.9, 0.91, 0.89, 0.9]}
    means = {k: sum(v) / len(v) for k, v in values.items()}
    kwargs = dict(image="a.png", metrics=means, checks={}, environment={"m": 1}, seeds=(1000, 1001, 1002, 1003))
    assert store.write("a", samples=values, **kwargs)
    stored = store.load("a")
    assert stored.has_spread and stored.seeds == (1000, 1001, 1002, 1003) and stored.samples == values
    doc = json.loads(store.paths("a").metrics.read_text())
    assert doc["schema_version"] == 2 and doc["spread"]["separation"] == round(
        noise.mean_sd(values["separation"])[1], 5
    )
    assert not store.write("a", samples={k: [v + 1e-7 for v in vs] for k, vs in values.items()}, **kwargs)
    assert store.pooled_spreads()["separation"] == pytest.approx(noise.mean_sd(values["separation"])[1], abs=1e-5)


def test_a_schema_1_baseline_is_compared_with_its_tolerance_and_a_note(tmp_path):
    folder = tmp_path / "base" / "img"
    folder.mkdir(parents=True)
    doc = {"schema_version": 1, "image": "img.png", "metrics": {"separation": 0.2}, "checks": {}}
    (folder / "metrics.json").write_text(json.dumps(doc))
    store, cands = bl.BaselineStore(tmp_path / "base"), bl.BaselineStore(tmp_path / "cand")
    stored = store.load("img")
    assert not stored.has_spread and stored.schema_version == 1

    def run(value):
        return evaluate(
            store, cands, "img", image="img.png", metrics={"separation": value}, checks={}, environment={},
            thresholds=Thresholds(),
        ).result  # fmt: skip

    assert run(0.21).verdict == "pass" and SINGLE_RUN_NOTE in run(0.21).reason
    assert run(0.3).verdict == "fail" and "drifted from its baseline" in run(0.3).reason


def test_samples_that_do_not_match_the_seeds_make_the_baseline_unusable(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    doc = {"schema_version": 2, "image": "i", "seeds": [1, 2], "metrics": {"a": 1.0}, "samples": {"a": [1.0]}}
    (folder / "metrics.json").write_text(json.dumps(doc))
    with pytest.raises(bl.BaselineError, match="samples of a must be 2 finite numbers"):
        bl.BaselineStore(tmp_path).load("img")


# ----------------------------------------------------------------------------- the gate, for real
IMAGES = ("np2_circle_square.png", "np4_four_shapes.png")
K = 6


@pytest.fixture(scope="module")
def pipeline():
    return PartCrafterPipeline.from_pretrained(EMBEDDED_MODEL)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for name in IMAGES:
        shutil.copyfile(FIXTURE_IMAGES / name, folder / name)
    return fixture_specs(folder, REPO)


@pytest.fixture(scope="module")
def store(tmp_path_factory, pipeline, images):
    """Baselines of the two images from K noise seeds, written the gate's way."""
    root = tmp_path_factory.mktemp("noise-gate")
    judged = judge_set(_session(pipeline, root, update="all"), images)
    assert all(b.status is BaselineStatus.WRITTEN for b in judged.baselines.values()) and len(judged.baselines) == 2
    return root


def _session(pipeline, root, **values):
    s = Settings.of(baselines=root / "baselines", results=root / "results", baseline_seeds=K, **values)
    return GateSession(lambda: pipeline, s, Thresholds(), DeviceChoice("cpu"))


def test_a_baseline_holds_the_spread_of_its_seeds(store, pipeline, images):
    spec = images[0]
    stored = bl.BaselineStore(store / "baselines").load(spec.key)
    assert stored.seeds == tuple(noise.baseline_seeds(0, K))
    runs = list(Session(lambda: pipeline, cache_size=0).run_set([spec], seeds=stored.seeds))
    for name, values in stored.samples.items():
        assert values == pytest.approx([o.summary[name] for o in runs], abs=1e-5)
    assert stored.attention.has_spread and stored.attention.seed_drift.shape == (K, 5, spec.num_parts)
    assert stored.metrics["separation"] == pytest.approx(np.mean(stored.samples["separation"]), abs=2e-5)


def test_another_seed_of_the_same_model_passes(store, pipeline, images):
    for seed in (0, 7):
        judged = judge_set(_session(pipeline, store, seed=seed), images)
        assert not judged.failing(), judged.failing()
        assert judged.fixture_set is not None and judged.fixture_set.verdict == "pass"


def test_a_graded_degradation_fails_in_units_of_noise(store, pipeline, images):
    with broken(pipeline.transformer, graded("merge_parts", 0.9)):
        judged = judge_set(_session(pipeline, store), images)
    result = judged.results[images[1].display]["baseline"]
    assert result.verdict == "fail"
    assert "separation" in {d.name for d in result.details.deviations if d.moved}
    assert f"over {K} seeds" in result.reason and "standard errors away (allowance ±" in result.reason
    assert judged.fixture_set.verdict == "fail" and "separation (lower" in judged.fixture_set.reason()


def test_the_onset_is_the_first_layer_that_moved_not_the_one_that_moved_most(store, pipeline, images):
    # block 0's cross-attention output x4: its own attention moves (through the latents of later
    # steps) and the change grows downstream, where it is largest
    out_x4 = Variant("block0_out_x4", "", lambda names: [("blocks.0.attn2.to_out.0.weight", lambda t: t.mul_(4.0))])
    with broken(pipeline.transformer, out_x4):
        judged = judge_set(_session(pipeline, store), images)
    result = judged.results[images[1].display]["baseline"]
    layers = [d for d in result.details.deviations if d.kind == "layer"]
    moved = [d.name for d in layers if d.moved]
    assert result.details.onset == "blocks.0.attn2" == moved[0]
    assert max(layers, key=lambda d: d.z).name != "blocks.0.attn2"  # it grew: a later layer moved most
    assert result.offender.layer == "blocks.0.attn2"
    assert "the drift starts at blocks.0.attn2" in result.reason


def test_more_seeds_at_gate_time_judge_the_mean(store, pipeline, images):
    session = _session(pipeline, store, seeds=3)
    judged = judge_set(session, images[:1])
    result = judged.results[images[0].display]["baseline"]
    assert result.verdict == "pass" and result.details.repeats == 3
    assert session.runs == 3  # one run per gate seed, none for the baseline
    assert "the mean of 3 runs" in result.reason


def test_writing_baselines_costs_k_runs_per_image_and_judging_one(tmp_path, pipeline, images):
    writer = _session(pipeline, tmp_path, update="missing")
    judge_set(writer, images[:1])
    assert writer.runs == 1 + K
    judge = _session(pipeline, tmp_path)
    judge_set(judge, images[:1])
    assert judge.runs == 1


def test_a_bfloat16_run_is_judged_against_a_float32_baseline(store, images):
    pipe = PartCrafterPipeline.from_pretrained(EMBEDDED_MODEL, dtype=torch.bfloat16)
    judged = judge_set(_session(pipe, store, dtype="bfloat16"), images)
    assert not judged.failing(), judged.failing()
