"""Checks pass on a healthy record, fail on planted faults and name the planted offender."""

import json
import textwrap

import numpy as np
import pytest
import torch

from partattn_checks.capture import metrics
from partattn_checks.capture.record import AttentionRecord
from partattn_checks.checks import (
    CHECKS,
    CheckResult,
    Offender,
    Thresholds,
    check_baseline,
    check_collapse,
    check_nonfinite,
    check_part_separation,
    check_stability,
    check_uniformity,
    load_thresholds,
    run_checks,
    thresholds_from_pyproject,
)

S, L, P, H, NK = 4, 3, 3, 4, 16
LAYERS = [f"blocks.{i}.attn2" for i in range(L)]


def make_record(
    entropy=None, peak=None, marginals=None, cls_mass=None, nonfinite=(), steps=None, full_maps=None
) -> AttentionRecord:
    """An AttentionRecord from given arrays; omitted arrays get healthy-looking values."""
    if marginals is None:
        marginals = healthy_marginals()
    else:
        marginals = torch.as_tensor(np.asarray(marginals), dtype=torch.float32)
    s, n_layers, p, h, nk = marginals.shape
    full = lambda v: torch.full((s, n_layers, p, h), v)  # noqa: E731
    entropy = full(0.6) if entropy is None else torch.as_tensor(np.asarray(entropy), dtype=torch.float32)
    peak = full(0.3) if peak is None else torch.as_tensor(np.asarray(peak), dtype=torch.float32)
    cls_mass = full(0.05) if cls_mass is None else torch.as_tensor(np.asarray(cls_mass), dtype=torch.float32)
    steps = list(range(0, 10 * s, 10)) if steps is None else steps
    return AttentionRecord(
        steps=steps,
        timesteps=[1000.0 * (1 - k / 50) for k in steps],
        layers=LAYERS[:n_layers],
        layer_kinds=["global", "local", "global"][:n_layers],
        num_parts=p,
        num_heads=h,
        num_patch_keys=nk,
        has_cls=True,
        patch_grid=None,
        entropy=entropy,
        peak=peak,
        eff_keys=full(0.5),
        cls_mass=cls_mass,
        marginals=marginals,
        full_maps=full_maps or {},
        nonfinite=list(nonfinite),
    )


def healthy_marginals(s=S, n_layers=L, p=P, h=H, nk=NK) -> torch.Tensor:
    """Part k attends mostly to its own block of keys, drifting slightly over steps."""
    m = torch.full((s, n_layers, p, h, nk), 0.02)
    width = nk // p
    for part in range(p):
        m[:, :, part, :, part * width : (part + 1) * width] = 1.0
    m += 0.01 * torch.arange(s).view(s, 1, 1, 1, 1) * torch.linspace(0, 1, nk)
    return m / m.sum(-1, keepdim=True)


def record_from_maps(maps: torch.Tensor) -> AttentionRecord:
    """A record reduced from full maps (S, L, P, H, Q, 1 + NK) the way the recorder does it."""
    st = metrics.row_stats(maps, has_cls=True)
    rec = make_record(entropy=st["entropy"], peak=st["peak"], marginals=st["marginal"], cls_mass=st["cls_mass"])
    rec.eff_keys = st["eff_keys"].half()
    return rec


@pytest.fixture
def healthy() -> AttentionRecord:
    return make_record()


# --------------------------------------------------------------------------- healthy
def test_healthy_record_passes_everything(healthy):
    results = run_checks(healthy)
    assert (
        [r.name for r in results]
        == list(CHECKS)
        == ["uniformity", "collapse", "part_separation", "stability", "nonfinite"]
    )
    for r in results:
        assert r.passed, r.reason
        assert r.offender is None
        json.dumps(r.to_dict(), allow_nan=False)  # details are JSON-serialisable
        back = CheckResult.from_dict(json.loads(json.dumps(r.to_dict())))
        assert back.reason == r.reason
        assert type(back.details) is type(r.details) and back.details == r.details  # typed again


def test_run_checks_subset_and_unknown(healthy):
    assert [r.name for r in run_checks(healthy, names=["stability", "collapse"])] == ["collapse", "stability"]
    with pytest.raises(ValueError, match="unknown check 'colapse'"):
        run_checks(healthy, names=["colapse"])


def test_offender_str():
    assert str(Offender(3, "blocks.4.attn2", 1, 2)) == "step 3, layer blocks.4.attn2, part 1, head 2"
    assert str(Offender(step=3)) == "step 3"
    assert str(Offender()) == "the whole record"


def test_check_result_rejects_bad_verdict():
    with pytest.raises(ValueError, match="verdict"):
        CheckResult("x", "ok", None, None, None, "", {})


# --------------------------------------------------------------------------- uniformity
#: Strict variants of the defaults for tests that plant one bad layer or one bad map.
PER_LAYER_UNIFORMITY = Thresholds().merged({"uniformity": {"layer_aggregate": "max", "max_share": 0.5}})
ANY_COLLAPSE = Thresholds().merged({"collapse": {"max_share": 0.0}})


def test_default_uniformity_tolerates_one_lazy_layer_but_not_a_uniform_model():
    logits = torch.randn(S, L, P, H, 6, 1 + NK) * 3
    maps = torch.softmax(logits, -1)
    maps[:, 1] = 1.0 / (1 + NK)  # one lazy layer
    assert check_uniformity(record_from_maps(maps)).passed
    maps[:] = 1.0 / (1 + NK)  # every layer uniform: zero keys everywhere
    r = check_uniformity(record_from_maps(maps))
    assert r.verdict == "fail" and r.value == 1.0 and r.threshold == 0.84
    assert r.reason.startswith(
        "attention is near-uniform: 100% of all heads have normalized entropy ≥ 0.98 (allowed 84%)"
    )


def test_uniform_maps_fail_uniformity():
    maps = torch.softmax(torch.randn(S, L, P, H, 6, 1 + NK) * 3, -1)
    maps[:, 1] = 1.0 / (1 + NK)  # layer 1: zero keys -> exactly uniform (the CFG-uncond case)
    r = check_uniformity(record_from_maps(maps), PER_LAYER_UNIFORMITY)
    assert r.verdict == "fail"
    assert r.offender.layer == "blocks.1.attn2"
    assert r.value == 1.0 and r.threshold == 0.5
    assert r.reason.startswith(
        "attention is near-uniform: 100% of heads in layer blocks.1.attn2 have normalized entropy ≥ 0.98 (allowed 50%)"
    )


def test_uniformity_names_the_planted_head():
    ent = torch.full((S, L, P, H), 0.6)
    ent[:, 2, :, :3] = 0.99  # 75% of heads in layer 2
    ent[2, 2, 1, 1] = 1.0  # the most uniform one
    r = check_uniformity(make_record(entropy=ent), PER_LAYER_UNIFORMITY)
    assert r.verdict == "fail"
    assert r.offender == Offender(step=20, layer="blocks.2.attn2", part=1, head=1)
    assert r.value == pytest.approx(0.75)
    assert "75% of heads in layer blocks.2.attn2" in r.reason
    assert r.details.per_layer["blocks.2.attn2"].share == pytest.approx(0.75)
    # within the allowed share when it is raised
    raised = PER_LAYER_UNIFORMITY.merged({"uniformity": {"max_share": 0.8}})
    assert check_uniformity(make_record(entropy=ent), raised).passed


# --------------------------------------------------------------------------- collapse
def test_one_hot_maps_fail_collapse():
    maps = torch.softmax(torch.randn(S, L, P, H, 6, 1 + NK), -1)
    one_hot = torch.zeros(6, 1 + NK)
    one_hot[torch.arange(6), 1 + torch.arange(6)] = 1.0
    maps[3, 0, 2, 1] = one_hot
    assert check_collapse(record_from_maps(maps)).passed  # one collapsed map is within the default share
    r = check_collapse(record_from_maps(maps), ANY_COLLAPSE)
    assert r.verdict == "fail"
    assert r.offender == Offender(step=30, layer="blocks.0.attn2", part=2, head=1)
    assert r.details.cause == "peak"
    assert "collapsed onto one key: peak 1.000 ≥ 0.9 at step 30, layer blocks.0.attn2, part 2, head 1" in r.reason


def test_cls_sink_fails_collapse():
    cls = torch.full((S, L, P, H), 0.05)
    cls[1, 2, 0, 3] = 0.95
    r = check_collapse(make_record(cls_mass=cls), ANY_COLLAPSE)
    assert r.verdict == "fail" and r.details.cause == "cls_mass"
    assert r.offender == Offender(step=10, layer="blocks.2.attn2", part=0, head=3)
    assert "CLS" in r.reason and "0.950 ≥ 0.9" in r.reason


def test_low_entropy_fails_collapse():
    ent = torch.full((S, L, P, H), 0.6)
    ent[0, 1, 1, 0] = 0.01
    r = check_collapse(make_record(entropy=ent), ANY_COLLAPSE)
    assert r.verdict == "fail" and r.details.cause == "entropy"
    assert r.offender == Offender(step=0, layer="blocks.1.attn2", part=1, head=0)


# --------------------------------------------------------------------------- part separation
def test_identical_parts_fail_separation():
    m = healthy_marginals()
    m[:] = m[:, :, :1]  # every part attends like part 0
    r = check_part_separation(make_record(marginals=m))
    assert r.verdict == "fail"
    assert r.value == pytest.approx(0.0, abs=1e-4)
    assert r.offender.part == 0 and r.details.closest_pair == (0, 1)
    assert "part separation 0.000 < 0.084" in r.reason


def test_separation_aggregate_is_configurable():
    m = healthy_marginals()
    m[:, 1:] = m[:, 1:, :1]  # only layer 0 separates parts
    rec = make_record(marginals=m)
    assert check_part_separation(rec).passed  # default: max over layers
    r = check_part_separation(rec, Thresholds().merged({"part_separation": {"layer_aggregate": "min"}}))
    assert r.verdict == "fail" and r.offender.layer in LAYERS[1:]


def test_single_part_skips_separation():
    r = check_part_separation(make_record(marginals=healthy_marginals(p=1)))
    assert r.verdict == "skip" and "at least 2 parts" in r.reason and not r.passed


# --------------------------------------------------------------------------- stability
def test_jumping_marginals_fail_stability():
    m = healthy_marginals()
    m[3:, 0, 2] = m[3:, 0, 0]  # part 2 of layer 0 moves to part 0's region at step index 3
    r = check_stability(make_record(marginals=m))
    assert r.verdict == "fail"
    assert r.offender == Offender(step=30, layer="blocks.0.attn2", part=2)
    assert r.value > 0.5 and "between steps 20 and 30" in r.reason


def test_single_step_skips_stability():
    r = check_stability(make_record(marginals=healthy_marginals(s=1)))
    assert r.verdict == "skip" and "at least 2" in r.reason


# --------------------------------------------------------------------------- non-finite
def test_nan_fails_nonfinite_and_names_first_step_and_layer():
    ent = torch.full((S, L, P, H), 0.6)
    ent[2, 1, 0, 0] = float("nan")
    ent[3, 0, 0, 0] = float("inf")
    rec = make_record(entropy=ent)
    r = check_nonfinite(rec)
    assert r.verdict == "fail"
    assert r.offender == Offender(step=20, layer="blocks.1.attn2")
    assert "starting at step 20, layer blocks.1.attn2" in r.reason
    # the metric checks refuse to judge instead of passing silently
    u = check_uniformity(rec)
    assert u.verdict == "fail" and "non-finite" in u.reason and u.offender.step == 20


def test_nonfinite_events_and_full_maps():
    maps = {(10, "blocks.2.attn2"): torch.full((P, H, 2, NK + 1), float("nan"))}
    events = [
        {"step": 30, "layer": None, "where": "latents"},
        {"step": 20, "layer": "blocks.0.attn2", "where": "attention"},
    ]
    r = check_nonfinite(make_record(nonfinite=events, full_maps=maps))
    assert r.verdict == "fail" and r.offender == Offender(step=10, layer="blocks.2.attn2")
    r = check_nonfinite(make_record(nonfinite=events[:1]))
    assert r.offender == Offender(step=30) and "in latents starting at step 30" in r.reason


# --------------------------------------------------------------------------- baseline
def test_baseline_pass_and_drift():
    base = {"entropy_mean": 0.6, "separation": 0.4, "peak_mean": 0.3}
    ok = check_baseline({"entropy_mean": 0.61, "separation": 0.41, "peak_mean": 0.3}, base)
    assert ok.passed, ok.reason
    bad = check_baseline({"entropy_mean": 0.61, "separation": 0.2, "peak_mean": 0.3}, base)
    assert bad.verdict == "fail" and bad.reason.startswith("separation drifted from its baseline: 0.2000 vs 0.4000")
    assert bad.value == pytest.approx(0.2) and bad.threshold == pytest.approx(0.02 + 0.1 * 0.4)
    assert check_baseline({"entropy_mean": float("nan"), "separation": 0.4, "peak_mean": 0.3}, base).verdict == "fail"


def test_baseline_missing_keys_are_reported():
    base = {"entropy_mean": 0.6, "separation": 0.4}
    r = check_baseline({"entropy_mean": 0.6, "stability_max_jump": 0.1}, base)
    assert r.verdict == "fail"
    assert "not measured: separation" in r.reason and "not in baseline: stability_max_jump" in r.reason
    r = check_baseline({"entropy_mean": 0.6, "separation": 0.4, "extra": 1.0}, base)
    assert r.passed and "not in baseline: extra" in r.reason
    assert check_baseline({"a": 1.0}, {}).verdict == "skip"


# --------------------------------------------------------------------------- thresholds
def test_defaults_in_one_place():
    t = Thresholds()
    u, c = t.uniformity, t.collapse
    assert (u.entropy_min_uniform, u.max_share, u.layer_aggregate) == (0.98, 0.84, "mean")
    assert (c.peak_max, c.entropy_min, c.cls_mass_max, c.max_share) == (0.9, 0.05, 0.9, 0.56)
    assert (t.part_separation.min_separation, t.part_separation.layer_aggregate) == (0.084, "max")
    assert t.stability.max_jump == 0.25 and (t.baseline.atol, t.baseline.rtol) == (0.02, 0.1)


def test_load_thresholds_toml(tmp_path):
    f = tmp_path / "thresholds.toml"
    f.write_text(
        textwrap.dedent("""
        [collapse]
        peak_max = 0.95
        max_share = 0

        [part_separation]
        step_aggregate = "min"
    """)
    )
    t = load_thresholds(f)
    assert t.collapse.peak_max == 0.95 and t.collapse.max_share == 0.0 and t.collapse.entropy_min == 0.05
    assert t.part_separation.step_aggregate == "min" and t.uniformity == Thresholds().uniformity


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "[collapse]\npeek_max = 0.9\n",
            "thresholds.toml: [collapse] unknown key 'peek_max' "
            "(known: peak_max, entropy_min, cls_mass_max, max_share)",
        ),
        ("[colapse]\npeak_max = 0.9\n", "thresholds.toml: unknown table [colapse] (known: uniformity, collapse"),
        (
            "[uniformity]\nmax_share = 1.5\n",
            "thresholds.toml: [uniformity] max_share = 1.5 is out of range (expected 0.0 <= value <= 1.0)",
        ),
        (
            "[baseline]\natol = -0.1\n",
            "thresholds.toml: [baseline] atol = -0.1 is out of range (expected value >= 0.0)",
        ),
        ('[stability]\nmax_jump = "big"\n', "must be a finite number"),
        ("[stability]\nmax_jump = true\n", "must be a finite number"),
        ('[part_separation]\nlayer_aggregate = "median"\n', "is not one of mean, min, max"),
        ("collapse = 3\n", "must be a table"),
        ("[collapse\n", "invalid TOML"),
    ],
)
def test_bad_threshold_files_are_rejected(tmp_path, text, message):
    f = tmp_path / "thresholds.toml"
    f.write_text(text)
    with pytest.raises(ValueError) as err:
        load_thresholds(f)
    assert str(err.value).startswith(f"{f}: ")
    assert message.replace("thresholds.toml", str(f)) in str(err.value)


def test_thresholds_from_pyproject(tmp_path):
    f = tmp_path / "pyproject.toml"
    f.write_text(
        textwrap.dedent("""
        [project]
        name = "x"

        [tool.partattn.thresholds.stability]
        max_jump = 0.3
    """)
    )
    assert thresholds_from_pyproject(f).stability.max_jump == 0.3
    f.write_text("[tool.partattn.thresholds.stability]\nmax_jmp = 0.3\n")
    with pytest.raises(ValueError, match=r"\[tool.partattn.thresholds.stability\] unknown key 'max_jmp'"):
        thresholds_from_pyproject(f)
    f.write_text("[project]\nname = 'x'\n")
    assert thresholds_from_pyproject(f) == Thresholds()


def test_merged_overrides_keep_the_rest():
    base = Thresholds().merged({"collapse": {"peak_max": 0.95}})
    t = base.merged({"collapse": {"cls_mass_max": 0.8}}, source="np2_chair.toml")
    assert (t.collapse.peak_max, t.collapse.cls_mass_max) == (0.95, 0.8)
    with pytest.raises(ValueError, match="np2_chair.toml: \\[collapse\\] unknown key 'x'"):
        t.merged({"collapse": {"x": 1}}, source="np2_chair.toml")
    assert Thresholds.from_dict(t.to_dict()) == t
