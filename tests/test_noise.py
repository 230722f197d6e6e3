"""The seed-spread verdict: its statistics pinned by small cases computed independently in the test
(numpy, a numerical integral of Student's t, hand arithmetic), property tests, and the gate's
judgement of real runs of the embedded model at seeds the baseline does not pair."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from baseline_support import embedded_pipeline, gate, two_images
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from partattn_checks import EMBEDDED_MODEL
from partattn_checks.base.seeds import baseline_seeds, gate_seeds
from partattn_checks.baselines import noise
from partattn_checks.baselines import store as bl
from partattn_checks.baselines.fixture_set import set_verdict
from partattn_checks.baselines.runner import BaselineStatus
from partattn_checks.capture.runspec import DeviceChoice
from partattn_checks.checks import Thresholds
from partattn_checks.checks.baseline import SEED_SPREAD, BaselineDetails, Deviation
from partattn_checks.gate.options import Settings
from partattn_checks.gate.state import GateSession
from partattn_checks.model.broken import broken, graded
from partattn_checks.model.pipeline import PartCrafterPipeline
from partattn_checks.runs.judgement import judge_set
from partattn_checks.runs.session import Session

finite = st.floats(-1e3, 1e3, allow_nan=False)
samples = st.lists(st.floats(0.01, 1.0), min_size=3, max_size=20)


def t_tail(x: float, dof: float) -> float:
    """P(T > x) for Student's t by a numerical integral of its density (independent of noise.t_sf)."""
    c = math.exp(math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2)) / math.sqrt(dof * math.pi)
    # substitute t = x / u, u in (0, 1]: the tail becomes a finite integral
    u = np.linspace(1e-9, 1.0, 400_001)
    t = x / u
    f = c * (1 + t * t / dof) ** (-(dof + 1) / 2) * x / (u * u)
    return float(np.trapezoid(f, u))


# ----------------------------------------------------------------------------- pinned formulas
@pytest.mark.parametrize("p, dof", [(0.025, 10), (0.005, 5), (5e-5, 15), (1e-4, 15), (5e-6, 30)])
def test_t_quantile_is_the_quantile_of_students_t(p, dof):
    t = noise.t_quantile(p, dof)
    assert t_tail(t, dof) == pytest.approx(p, rel=2e-4)


def test_t_quantile_matches_the_tables():
    # Student's t tables (two-sided 95 % with 10 dof, 99 % with 5 dof) and the normal limit
    assert noise.t_quantile(0.025, 10) == pytest.approx(2.228, abs=1e-3)
    assert noise.t_quantile(0.005, 5) == pytest.approx(4.032, abs=1e-3)
    assert noise.t_quantile(0.025, math.inf) == pytest.approx(1.95996, abs=1e-5)


def test_the_allowance_is_t_with_k_minus_1_dof_at_alpha_over_m():
    # K = 16 seeds, 10 comparisons, alpha 0.001: two-sided metrics at 0.001 / 10 / 2, one-sided layers at 0.001 / 10
    metric, layer = noise.allowances(0.001, 10, 16)
    assert t_tail(metric, 15) == pytest.approx(0.001 / 10 / 2, rel=2e-4)
    assert t_tail(layer, 15) == pytest.approx(0.001 / 10, rel=2e-4)


def test_the_spread_is_raised_toward_the_pooled_one_never_lowered():
    # own 0.003, pooled 0.004: sqrt((0.003² + 0.004²) / 2) = sqrt(12.5e-6)
    assert noise.shrunk(0.003, 16, 0.004) == pytest.approx(math.sqrt(12.5e-6), rel=1e-12)
    # own 0.008 above the pooled 0.004: its own spread is kept whole
    assert noise.shrunk(0.008, 16, 0.004) == 0.008
    assert noise.shrunk(0.0, 16, None) == noise.RESOLUTION


def test_a_metric_distance_is_pinned():
    values = [0.20, 0.21, 0.19, 0.22, 0.18]  # mean 0.2, sd = sqrt(0.001 / 4) = 0.0158114
    d = noise.metric_deviation("separation", 0.25, values, pooled=0.01, repeats=2, allowance=4.0)
    sd = float(np.std(values, ddof=1))
    sigma = max(sd, math.sqrt((sd**2 + 0.01**2) / 2))  # own above pooled: kept
    assert d.spread == pytest.approx(sigma, rel=1e-12) and sigma == pytest.approx(0.0158114, rel=1e-5)
    assert d.z == pytest.approx((0.25 - 0.2) / (sigma * math.sqrt(1 / 2 + 1 / 5)), rel=1e-12)
    assert d.seeds == 5 and d.repeats == 2 and d.verdict == SEED_SPREAD
    # on the log scale: geometric mean and log-spread
    d = noise.metric_deviation("peak_mean", 0.3, [0.1, 0.2, 0.4], pooled=None, repeats=1, allowance=4.0)
    logs = np.log([0.1, 0.2, 0.4])
    assert d.mean == pytest.approx(0.2, rel=1e-12) and d.spread == pytest.approx(np.std(logs, ddof=1), rel=1e-12)
    assert d.z == pytest.approx((math.log(0.3) - logs.mean()) / (np.std(logs, ddof=1) * math.sqrt(1 + 1 / 3)))


def test_a_layer_distance_is_pinned():
    drifts = [0.010, 0.012, 0.008, 0.011]
    d = noise.layer_deviation("blocks.0.attn2", 0.02, drifts, pooled=None, repeats=1, allowance=4.0)
    logs = np.log(drifts)
    k = 4
    scale = (1 / 1 + 1 / k) / (1 + 1 / (k - 1))  # a mean of R runs from the mean of K, vs one seed from K-1
    now = math.log(0.02) - 0.5 * math.log(scale)
    assert d.z == pytest.approx((now - logs.mean()) / (np.std(logs, ddof=1) * math.sqrt(1 + 1 / k)), rel=1e-12)
    assert d.mean == pytest.approx(math.exp(logs.mean()), rel=1e-12)


def test_the_set_statistic_is_pinned_with_the_images_correlation():
    rng = np.random.default_rng(3)
    shared = rng.normal(size=16)
    residuals = [shared + 0.5 * rng.normal(size=16) for _ in range(4)]  # correlated through shared seeds
    zs = [1.0, 2.0, 4.0, -0.5]  # 4.0 is clipped to 3
    per_image = {
        f"i{k}": [_dev("separation", z, residuals=r)] for k, (z, r) in enumerate(zip(zs, residuals, strict=True))
    }
    (d,) = noise.combine(per_image, 0.001)
    corr = np.corrcoef(np.stack(residuals))
    rho = max(0.0, float(corr[np.triu_indices(4, 1)].mean()))
    n = 4
    assert d.correlation == pytest.approx(rho, rel=1e-9) and rho > 0.5
    assert d.z == pytest.approx((1.0 + 2.0 + 3.0 - 0.5) / math.sqrt(n + n * (n - 1) * rho), rel=1e-9)
    # the allowance: the normal quantile at alpha / M, two-sided (one comparison here)
    assert 2 * (1 - 0.5 * (1 + math.erf(d.allowance / math.sqrt(2)))) == pytest.approx(0.001, rel=1e-6)


# ----------------------------------------------------------------------------- properties
@settings(max_examples=60, deadline=None)
@given(st.floats(1e-6, 0.49), st.floats(1.0, 500.0))
def test_t_quantile_inverts_the_tail(p, dof):
    t = noise.t_quantile(p, dof)
    assert t > 0 and noise.t_sf(t, dof) == pytest.approx(p, rel=1e-6)
    assert noise.t_quantile(p, dof + 1) <= t  # more degrees of freedom: thinner tails


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
def test_a_spread_is_never_below_its_own_nor_the_resolution(own, seeds, pooled):
    s = noise.shrunk(own, seeds, pooled)
    assert s >= max(own, noise.RESOLUTION)
    assert s <= max(own, pooled, noise.RESOLUTION) + 1e-12


@given(st.lists(finite, min_size=3, max_size=16).filter(lambda r: noise.mean_sd(r)[1] > 1e-6), st.integers(2, 6))
def test_images_sharing_their_noise_are_fully_correlated(row, images):
    assert noise.mean_correlation([row] * images) == pytest.approx(1.0)
    assert 0.0 <= noise.mean_correlation([row, [-v for v in row]]) <= 1.0  # anti-correlation counts as 0


def _dev(name, z, kind="metric", residuals=()):
    return Deviation(name, kind, 0.0, 0.0, 1.0, 16, 1, z, 4.5, tuple(residuals))


def _details(deviations) -> BaselineDetails:
    return BaselineDetails(deviations=list(deviations), verdict=SEED_SPREAD)


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
        per_image[f"img{i}"] = _details([_dev("separation", -2.0, residuals=rng.normal(size=16)), *layers])
    assert not any(d.moved for details in per_image.values() for d in details.deviations)  # each passes alone
    verdict = set_verdict(per_image, 0.001)
    assert verdict.verdict == "fail"
    assert {d.name for d in verdict.moved} == {"separation", "blocks.2.attn2", "blocks.3.attn2"}
    assert verdict.onset == "blocks.2.attn2"  # the first layer in depth order that moved
    text = "\n".join(verdict.lines())
    assert "separation (lower" in text and "the first layer that moved is blocks.2.attn2" in text


def test_a_set_of_fewer_than_two_comparable_images_is_not_judged_and_says_why():
    verdict = set_verdict({"only": _details([_dev("separation", -9.0)]), "new": None, "gone": None}, 0.001)
    assert verdict.verdict == "skip" and not verdict.deviations
    assert verdict.reason() == (
        "not judged: it needs two images compared with their baselines by the same verdict (1 by the seed-spread "
        "verdict; 2 not compared (no usable baseline, written this run, or not run))"
    )


def test_the_gate_reruns_the_first_seeds_of_the_baseline():
    assert baseline_seeds(5, 4) == [5, 6, 7, 8] and gate_seeds(5, 2) == [5, 6]


# ----------------------------------------------------------------------------- the gate, for real
K = 6


@pytest.fixture(scope="module")
def pipeline():
    return embedded_pipeline()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return two_images(tmp_path_factory)


def _session(pipeline, root, **values):
    s = Settings.of(baselines=root / "baselines", results=root / "results", baseline_seeds=K, **values)
    return GateSession(lambda: pipeline, s, Thresholds(), DeviceChoice("cpu"))


def _judge(pipeline, root, images, **values):
    return gate(pipeline, root, images, **{"baseline_seeds": K, **values})[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory, pipeline, images):
    """Baselines of the two images from K noise seeds, written the gate's way."""
    root = tmp_path_factory.mktemp("noise-gate")
    judged = _judge(pipeline, root, images, update="all")
    assert all(b.status is BaselineStatus.WRITTEN for b in judged.baselines.values()) and len(judged.baselines) == 2
    return root


def test_a_baseline_holds_the_spread_of_its_seeds(store, pipeline, images):
    spec = images[0]
    stored = bl.BaselineStore(store / "baselines").load(spec.key)
    assert stored.seeds == tuple(baseline_seeds(0, K))
    runs = list(Session(lambda: pipeline, cache_size=0).run_set([spec], seeds=stored.seeds))
    for name, values in stored.samples.items():
        assert values == pytest.approx([o.summary[name] for o in runs], abs=1e-5)
    assert stored.attention.has_spread and stored.attention.seed_drift.shape == (K, 5, spec.num_parts)
    assert stored.metrics["separation"] == pytest.approx(np.mean(stored.samples["separation"]), abs=2e-5)


def test_another_seed_of_the_same_model_passes_by_the_seed_spread(store, pipeline, images):
    for seed in (21, 37):
        judged = _judge(pipeline, store, images, seed=seed)
        assert not judged.failing(), judged.failing()
        result = judged.results[images[0].display]["baseline"]
        assert result.details.verdict == SEED_SPREAD and "not among the baseline's paired seeds" in result.reason
        assert judged.fixture_set.verdict == "pass"


def test_a_seed_spread_run_of_a_paired_seed_is_judged_against_the_other_seeds(store, pipeline, images):
    judged = _judge(pipeline, store, images, verdict="seed-spread")
    result = judged.results[images[0].display]["baseline"]
    assert result.verdict == "pass" and result.details.verdict == SEED_SPREAD
    assert f"over {K - 1} seeds" in result.reason and f"judged against {K - 1}" in result.reason


def test_a_graded_degradation_fails_in_units_of_noise(store, pipeline, images):
    with broken(pipeline.transformer, graded("merge_parts", 0.9)):
        judged = _judge(pipeline, store, images, seed=21)
    result = judged.results[images[1].display]["baseline"]
    assert result.verdict == "fail" and result.details.verdict == SEED_SPREAD
    assert "separation" in {d.name for d in result.details.deviations if d.moved}
    assert f"over {K} seeds" in result.reason and "standard errors away (allowance ±" in result.reason
    assert judged.fixture_set.verdict == "fail" and "separation (lower" in judged.fixture_set.reason()


def test_more_seeds_at_gate_time_judge_the_mean(store, pipeline, images):
    session = _session(pipeline, store, seeds=3, seed=21)
    judged = judge_set(session, session.runner, images[:1])
    result = judged.results[images[0].display]["baseline"]
    assert result.verdict == "pass" and result.details.repeats == 3
    assert session.runs == 3  # one run per gate seed, none for the baseline
    assert "the mean of 3 runs" in result.reason


def test_a_bfloat16_run_without_a_declared_floor_is_judged_by_the_seed_spread(store, images):
    pipe = PartCrafterPipeline.from_pretrained(EMBEDDED_MODEL, dtype=torch.bfloat16)
    judged = _judge(pipe, store, images, dtype="bfloat16")
    assert not judged.failing(), judged.failing()
    result = judged.results[images[0].display]["baseline"]
    assert result.details.verdict == SEED_SPREAD and "--partattn-floor-dtypes=bfloat16" in result.reason


def test_leave_one_out_distances_are_pinned():
    # k = 0: the others 2, 3, 4 have mean 3 and sd 1: (1 - 3) / (1 * sqrt(1 + 1/3))
    z = noise.leave_one_out([1.0, 2.0, 3.0, 4.0])
    assert z[0] == pytest.approx(-2.0 / math.sqrt(4.0 / 3.0), rel=1e-12) and z[3] == pytest.approx(-z[0])


def test_the_tail_factor_is_one_for_students_t_and_larger_for_a_heavier_tail():
    rng = np.random.default_rng(1)
    k = 16  # the leave-one-out distance of a normal sample follows t with K - 2 degrees of freedom
    normal = [z for _ in range(400) for z in noise.leave_one_out(list(rng.normal(size=k)))]
    assert noise.tail_factor(normal, k, two_sided=True) < 1.08
    heavy = [z for _ in range(400) for z in noise.leave_one_out(list(rng.standard_t(2, size=k)))]
    assert noise.tail_factor(heavy, k, two_sided=True) > 1.3
    # pinned: distances whose every quantile is twice Student's at 14 dof give a factor of 2
    qs = np.linspace(0.0005, 0.9995, 1000)
    doubled = [2 * noise.t_quantile(1 - q, 14) if q > 0.5 else 0.0 for q in qs]
    assert noise.tail_factor(doubled, k, two_sided=False) == pytest.approx(2.0, rel=0.02)
    assert noise.tail_factor([0.1] * 10, k, two_sided=True) == 1.0  # too few to say


def test_the_allowance_is_widened_by_the_folders_tail_factor():
    plain = noise.allowances(0.001, 10, 16)
    wide = noise.allowances(0.001, 10, 16, (1.1, 1.2))
    assert wide == pytest.approx((plain[0] * 1.1, plain[1] * 1.2))
