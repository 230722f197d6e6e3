"""``partattn calibrate``: the threshold rule, the in-memory broken variants (restored bit for bit;
at the release config on the ``meta`` device), and the whole path on a checkpoint other than the
embedded one: calibrate writes thresholds and baselines (with the noise seeds asked for), the gate
passes on the checkpoint with them and fails the right check for each broken variant
(docs/own-checkpoint.md). On the embedded model: an image's sidecar thresholds judge it in the
matrix, and the graded report names the smallest merge of the parts that part separation catches."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from plugin_support import outcomes

from partattn_checks import cli
from partattn_checks.analysis.calibrate import (
    CALIBRATED,
    ROUNDING_SLACK,
    CalibrationError,
    calibrated,
    decide,
    graded_catches,
    is_ceiling,
    passes,
    pick_threshold,
    summarize,
)
from partattn_checks.analysis.calibration_page import GRADED_TITLE
from partattn_checks.analysis.zoo import targets
from partattn_checks.baselines.fixture_set import ITEM_NAME
from partattn_checks.checks import REGISTRY, CheckResult, Thresholds, load_thresholds
from partattn_checks.model.broken import GRADES, VARIANTS, VariantError, broken, edited_parameters
from partattn_checks.model.loading import load_transformer
from partattn_checks.model.transformer import RELEASE_CONFIG, PartCrafterDiTModel
from partattn_checks.runs.sidecar import ImageSpec

pytest_plugins = ("pytester",)

REPO = Path(__file__).resolve().parents[1]
SEED1 = REPO / "fixtures" / "checkpoints" / "tiny-seed1"
EMBEDDED = REPO / "partattn_checks" / "data" / "partcrafter-tiny"
IMAGES = REPO / "fixtures" / "images"
#: A small calibration set on which every check of tiny-seed1 separates (on all ten fixture images its
#: part separation and stability overlap: docs/own-checkpoint.md shows that refusal).
CALIBRATION_IMAGES = ("np2_circle_square.png", "np2_triangle_circle.png", "np3_three_shapes.png")
STEPS = 10
#: Noise seeds of the baselines calibrate writes: the fewest it takes (the gate's default is 16: slower, no more
#: to test; any number but the default shows that --baseline-seeds reached the gate).
BASELINE_SEEDS = 2

unit = st.floats(0.0, 1.0, allow_nan=False)
fraction = st.floats(0.01, 0.99)


# ---------------------------------------------------------------------------- the rule
@given(unit, unit, fraction)
def test_threshold_sits_strictly_between_the_sides_of_a_ceiling_check(healthy, variant, f):
    t = pick_threshold(True, healthy, variant, f)
    if not healthy < variant:
        assert t is None
        return
    assume(variant - healthy > 1e-12)
    assert healthy < t < variant
    assert abs(t - (healthy + f * (variant - healthy))) <= ROUNDING_SLACK * (variant - healthy) + 1e-15
    assert passes("stability", healthy, t) and not passes("stability", variant, t)


@given(unit, unit, fraction)
def test_threshold_sits_strictly_between_the_sides_of_a_floor_check(healthy, variant, f):
    t = pick_threshold(False, healthy, variant, f)
    if not variant < healthy:
        assert t is None
        return
    assume(healthy - variant > 1e-12)
    assert variant < t < healthy
    assert passes("part_separation", healthy, t) and not passes("part_separation", variant, t)


def test_rounding_keeps_few_decimals_and_the_margin_must_be_inside():
    assert pick_threshold(True, 0.6775, 1.0) == 0.84
    assert pick_threshold(False, 0.12, 0.04878) == 0.084
    assert pick_threshold(True, 0.5, 0.5) is None  # touching is overlapping
    assert pick_threshold(True, 0.2, float("nan")) is None
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="margin must be between 0 and 1"):
            pick_threshold(True, 0.1, 0.9, bad)


def test_ceiling_or_floor_comes_from_the_registry():
    assert {c: is_ceiling(c) for c in REGISTRY if c in CALIBRATED or c == "nonfinite"} == {
        "uniformity": True,
        "collapse": True,
        "part_separation": False,
        "stability": True,
        "nonfinite": True,
    }
    assert all(REGISTRY[c].thresholds_type is not None for c in CALIBRATED)


def _result(check, value, threshold, *, nonfinite=None, verdict=None):
    details_type = REGISTRY[check].details_type
    details = details_type(nonfinite_count=nonfinite) if nonfinite is not None else details_type()
    return CheckResult(check, verdict or "pass", value, threshold, None, "", details)


def _matrix(values: dict[str, list[float]], *, base=None) -> dict:
    """A matrix of real CheckResults: ``values[model]`` per image for uniformity; other checks pass."""
    base = base or Thresholds()
    fixed = {
        "collapse": (0.0, base.collapse.max_share),
        "part_separation": (0.5, base.part_separation.min_separation),
        "stability": (0.1, base.stability.max_jump),
        "nonfinite": (0.0, 0.0),
    }
    out = {}
    for model, per_image in values.items():
        out[model] = {}
        for i, v in enumerate(per_image):
            row = {"uniformity": _result("uniformity", v, base.uniformity.max_share)}
            row |= {c: _result(c, *fixed[c]) for c in fixed}
            out[model][f"np2_{i}.png"] = row
    return out


def test_overlapping_sides_are_refused_and_keep_the_previous_threshold():
    matrix = _matrix({"healthy": [0.2, 0.7], "uniform": [0.65, 1.0]})
    (d,) = [d for d in decide(matrix, Thresholds()) if d.check == "uniformity"]
    assert not d.calibrated and d.threshold == d.previous == Thresholds().uniformity.max_share
    assert d.note == (
        "uniformity: cannot be calibrated on these images: healthy worst 0.7, uniform least-failing 0.65 "
        f"overlap; keeping the previous threshold {d.previous:g}"
    )
    assert calibrated(Thresholds(), decide(matrix, Thresholds())).uniformity == Thresholds().uniformity


def test_separated_sides_are_calibrated_and_non_finite_variant_images_are_left_out():
    matrix = _matrix({"healthy": [0.2, 0.6], "uniform": [0.9, 1.0]})
    poisoned = _result("uniformity", 189.0, 0.84, nonfinite=189, verdict="fail")
    matrix["uniform"]["np2_9.png"] = {**matrix["uniform"]["np2_0.png"], "uniformity": poisoned}
    (d,) = [d for d in decide(matrix, Thresholds(), 0.25) if d.check == "uniformity"]
    assert d.calibrated and (d.healthy_worst, d.variant_least, d.threshold) == (0.6, 0.9, 0.68)
    assert calibrated(Thresholds(), [d]).uniformity.max_share == 0.68


def test_a_healthy_model_with_nan_cannot_anchor_thresholds():
    matrix = _matrix({"healthy": [0.2], "uniform": [1.0]})
    matrix["healthy"]["np2_0.png"]["nonfinite"] = _result("nonfinite", 3.0, 0.0, verdict="fail")
    with pytest.raises(CalibrationError, match="known-good model produces NaN/Inf on np2_0.png"):
        decide(matrix, Thresholds())


def test_an_image_with_its_own_sidecar_threshold_is_judged_with_it_and_left_out_of_calibration():
    """np2_1's sidecar sets uniformity.max_share = 0.95 itself: its healthy 0.9 would overlap the
    variant's 0.95; left out, the threshold sits between 0.2 and 0.95. The matrix judges it with 0.95."""
    base = Thresholds()
    matrix = _matrix({"healthy": [0.2, 0.9], "uniform": [0.95, 1.0]}, base=base)
    matrix["healthy"]["np2_1.png"]["uniformity"] = _result("uniformity", 0.9, 0.95)
    matrix["uniform"]["np2_1.png"]["uniformity"] = _result("uniformity", 1.0, 0.95, verdict="fail")
    own = {"uniformity": {"max_share": 0.95}}
    images = {"np2_1.png": ImageSpec(Path("np2_1.png"), "np2_1", "np2_1.png", 2, thresholds=own, sidecar=Path("x"))}
    with pytest.raises(CalibrationError, match="compared its value with 0.95"):  # the guard needs the sidecar
        decide(matrix, base)
    (d,) = [d for d in decide(matrix, base, images=images) if d.check == "uniformity"]
    assert d.calibrated and (d.healthy_worst, d.variant_least, d.threshold) == (0.2, 0.95, 0.57)
    row = summarize(matrix, calibrated(base, [d]), images)["healthy"]["uniformity"]
    assert (row["threshold"], row["failing"], row["own_thresholds"]) == (0.57, 0, {"np2_1.png": 0.95})


def test_a_graded_level_counts_only_images_that_pass_on_the_healthy_model():
    def level(verdicts):
        return {
            f"np2_{i}.png": {"part_separation": _result("part_separation", 0.1, 0.08, verdict=v)}
            for i, v in enumerate(verdicts)
        }

    graded = {
        "merge_parts": {0.1: level(["pass", "fail"]), 0.5: level(["fail", "fail"])},
        "xattn_gain": {0.9: level(["fail", "fail"]), 1.1: level(["pass", "pass"])},
    }
    healthy = {"np2_0.png": {"part_separation": "pass"}, "np2_1.png": {"part_separation": "fail"}}
    got = {
        c.side: (c.level, c.failing, c.judged, c.healthy_failing)
        for c in graded_catches(graded, healthy, ["part_separation"])
    }
    assert got == {"merge_parts": (0.5, 1, 1, 1), "xattn_gain < 1": (0.9, 1, 1, 1), "xattn_gain > 1": (None, 0, 1, 1)}


# ---------------------------------------------------------------------------- in-memory variants
def _bits(model) -> dict[str, bytes]:
    return {n: p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def tiny():
    return load_transformer(EMBEDDED / "transformer", torch.float32)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_a_variant_edits_in_place_and_restores_every_bit(tiny, name):
    before, params = _bits(tiny), dict(tiny.named_parameters())
    with broken(tiny, name) as touched:
        during = _bits(tiny)
        assert touched == edited_parameters(tiny, name) and touched
        assert {n for n in before if before[n] != during[n]} == set(touched)
    assert _bits(tiny) == before
    assert all(p is params[n] for n, p in tiny.named_parameters())


def test_a_variant_is_restored_when_the_block_raises(tiny):
    before = _bits(tiny)
    with pytest.raises(RuntimeError, match="inside"), broken(tiny, "unstable"):
        raise RuntimeError("inside")
    assert _bits(tiny) == before


def test_a_variant_that_does_not_fit_the_model_fails_before_editing():
    model = PartCrafterDiTModel(
        num_attention_heads=2, width=8, in_channels=4, num_layers=1, cross_attention_dim=8, enable_part_embedding=False
    )
    before = _bits(model)
    with pytest.raises(VariantError, match="no part embedding"), broken(model, "merged_parts"):
        pass
    with pytest.raises(VariantError, match="unknown broken variant 'bent'"), broken(model, "bent"):
        pass
    assert _bits(model) == before
    with broken(model, "nonfinite") as touched:  # one block only: its key weight, not block 2's
        assert touched == ["blocks.0.attn2.to_k.weight"]


def _release_keys() -> list[str]:
    from helpers import read_keys_tsv, reference_keys_path

    return list(read_keys_tsv(reference_keys_path()))


def test_every_variant_applies_and_restores_at_the_release_config_on_meta():
    """The 1.44 B-parameter release transformer on the meta device (no memory): every edit finds its
    tensors by name, and leaving the block keeps the very same Parameters, shapes and dtypes."""
    with torch.device("meta"):
        model = PartCrafterDiTModel(**RELEASE_CONFIG)
    keys = _release_keys()
    assert sorted(n for n, _ in model.named_parameters()) == sorted(keys)  # the release state dict's names
    params = dict(model.named_parameters())
    shapes = {n: (p.shape, p.dtype, p.device.type) for n, p in params.items()}

    def named(pattern):
        return [k for k in keys if re.fullmatch(pattern, k)]

    expected = {
        "uniform": named(r"blocks\.\d+\.attn2\.norm_k\.weight"),
        "collapsed": named(r"blocks\.\d+\.attn2\.norm_q\.weight") + named(r"blocks\.\d+\.attn2\.norm_k\.weight"),
        "merged_parts": ["part_embedding.weight"],
        "unstable": [
            "time_proj.linear_1.weight",
            "time_proj.linear_2.weight",
            "time_proj.linear_2.bias",
            "blocks.0.attn1.norm_k.weight",
            "blocks.0.attn1.to_out.0.weight",
            *named(r"blocks\.\d+\.attn2\.norm_q\.weight"),
        ],
        "nonfinite": ["blocks.2.attn2.to_k.weight"],
    }
    assert len(expected["uniform"]) == RELEASE_CONFIG["num_layers"] == 21
    assert set(expected) == set(VARIANTS)
    for name in VARIANTS:
        with broken(model, name) as touched:
            assert touched == expected[name]
        assert all(p is params[n] for n, p in model.named_parameters())
        assert {n: (p.shape, p.dtype, p.device.type) for n, p in model.named_parameters()} == shapes


def test_release_depth_with_real_values_restores_every_bit():
    """Release depth and block layout (21 blocks, global blocks 0, 2, ..., 20, U-skips), a small width."""
    small = {**RELEASE_CONFIG, "width": 32, "num_attention_heads": 2, "in_channels": 4, "cross_attention_dim": 16}
    model = PartCrafterDiTModel(**small)
    before = _bits(model)
    for name in VARIANTS:
        with broken(model, name) as touched:
            assert (
                len(touched)
                == {"uniform": 21, "collapsed": 42, "merged_parts": 1, "unstable": 26, "nonfinite": 1}[name]
            )
        assert _bits(model) == before


# ---------------------------------------------------------------------------- the whole path
#: The gate's pipeline: the checkpoint, with the broken variant named by $PARTATTN_TEST_VARIANT applied
#: in memory for the whole session (no copy on disk).
VARIANT_CONFTEST = f"""
import contextlib, os

import torch

MODEL = {str(SEED1)!r}
_KEEP = contextlib.ExitStack()


def pytest_partattn_load_pipeline(config, device, dtype):
    from partattn_checks.model.broken import broken
    from partattn_checks.model.pipeline import PartCrafterPipeline

    pipeline = PartCrafterPipeline.from_pretrained(MODEL, device=device, dtype=getattr(torch, dtype))
    name = os.environ.get("PARTATTN_TEST_VARIANT")
    if name:
        _KEEP.enter_context(broken(pipeline.transformer, name))
    return pipeline
"""


@pytest.fixture(scope="module")
def calibrated_project(tmp_path_factory):
    """``partattn calibrate`` on tiny-seed1 (trained by scripts/train_tiny.py --seed 1), with baselines."""
    project = tmp_path_factory.mktemp("project")
    images = project / "fixtures" / "images"
    images.mkdir(parents=True)
    for name in CALIBRATION_IMAGES:
        shutil.copyfile(IMAGES / name, images / name)
    out = project / "calibration"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("CI", raising=False)  # --baselines updates baselines: refused under CI (tested below)
        code = cli.main(
            [
                "calibrate",
                "--model",
                str(SEED1),
                "--fixtures",
                str(images),
                "--out",
                str(out),
                "--baselines",
                str(project / "fixtures" / "baselines"),
                "--baseline-seeds",
                str(BASELINE_SEEDS),
                "--no-graded",
                "--steps",
                str(STEPS),
                "--device",
                "cpu",
                "-q",
            ]
        )
    assert code == 0
    return project


def test_calibrate_writes_thresholds_with_provenance_and_the_matrix(calibrated_project):
    out = calibrated_project / "calibration"
    text = (out / "thresholds.toml").read_text()
    assert f"# model: {SEED1}" in text and "# fingerprint: " in text
    assert f"# images (3): {', '.join(CALIBRATION_IMAGES)}" in text
    assert f"steps {STEPS}, seed 0, num_tokens 16" in text and "dtype float32, device cpu" in text
    t = load_thresholds(out / "thresholds.toml")
    for check, (table, key) in CALIBRATED.items():  # every check separated on this checkpoint
        assert f"{key} = {getattr(t[table], key)!r}  # calibrated" in text, check
    matrix = (out / "model-matrix.md").read_text()
    assert "| healthy |" in matrix and "FAIL" not in matrix.split("| healthy |")[1].split("\n")[0]
    assert GRADED_TITLE not in matrix  # --no-graded
    assert (out / "model-matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "model-matrix.json").read_text())
    assert "graded" not in doc
    (sep,) = [d for d in doc["decisions"] if d["check"] == "part_separation"]
    assert sep["healthy_worst"] < sep["previous"]  # the embedded model's default would fail this healthy model
    assert sep["variant_least"] < sep["threshold"] < sep["healthy_worst"]
    baselines = calibrated_project / "fixtures" / "baselines"
    assert sorted(p.name for p in baselines.iterdir()) == sorted(Path(n).stem for n in CALIBRATION_IMAGES)
    for folder in baselines.iterdir():  # --baseline-seeds reached the gate
        assert len(json.loads((folder / "metrics.json").read_text())["seeds"]) == BASELINE_SEEDS


def _gate(pytester, project, monkeypatch, variant=None, *extra):
    monkeypatch.setenv("PARTATTN_TEST_VARIANT", variant or "")
    monkeypatch.delenv("CI", raising=False)
    return pytester.runpytest_inprocess(
        "-p",
        "no:cacheprovider",
        "--partattn",
        f"--partattn-model={SEED1}",
        f"--partattn-steps={STEPS}",
        "--partattn-device=cpu",
        f"--partattn-thresholds={project / 'calibration' / 'thresholds.toml'}",
        f"--partattn-baselines={project / 'fixtures' / 'baselines'}",
        "fixtures/images",
        *extra,
    )


@pytest.fixture
def gate_project(pytester, calibrated_project):
    shutil.copytree(calibrated_project / "fixtures", pytester.path / "fixtures")
    pytester.makeconftest(VARIANT_CONFTEST)
    return pytester


def test_the_gate_passes_on_the_calibrated_checkpoint(gate_project, calibrated_project, monkeypatch):
    got = outcomes(_gate(gate_project, calibrated_project, monkeypatch))
    assert len(got) == len(CALIBRATION_IMAGES) * len(REGISTRY) + 1  # and the fixture-set item
    assert f"fixtures/images::{ITEM_NAME}" in got
    assert set(got.values()) == {"passed"}, got


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_gate_fails_the_right_check_for_each_broken_variant(gate_project, calibrated_project, monkeypatch, variant):
    (target,) = targets()[variant]  # only its items: a failing item draws figures, the others are slow
    got = outcomes(_gate(gate_project, calibrated_project, monkeypatch, variant, "-k", target))
    assert len(got) == len(CALIBRATION_IMAGES)
    for name in CALIBRATION_IMAGES:
        assert got[f"fixtures/images/{name}::{target}"] == "failed", got


# ---------------------------------------------------------------------------- the embedded model
#: Few steps keep the 19 runs per image (healthy, five variants, thirteen graded levels) quick.
EMBEDDED_STEPS = 4


@pytest.fixture(scope="module")
def embedded_calibration(tmp_path_factory):
    """``partattn calibrate`` on the embedded model, graded report included, on one image twice: as it
    is (np2_plain) and with a sidecar whose part-separation threshold no model reaches (np2_strict).
    Returns the output folder and what it printed."""
    root = tmp_path_factory.mktemp("embedded")
    images = root / "images"
    images.mkdir()
    for name in ("np2_plain.png", "np2_strict.png"):
        shutil.copyfile(IMAGES / "np2_circle_square.png", images / name)
    (images / "np2_strict.toml").write_text("[thresholds.part_separation]\nmin_separation = 0.99\n")
    out = root / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(
            ["calibrate", "--model", str(EMBEDDED), "--fixtures", str(images), "--out", str(out)]
            + ["--steps", str(EMBEDDED_STEPS), "--device", "cpu"]
        )
    assert code == 0
    return out, printed.getvalue()


def test_a_sidecar_threshold_judges_its_image_in_the_calibration_matrix(embedded_calibration):
    out, _ = embedded_calibration
    doc = json.loads((out / "model-matrix.json").read_text())
    healthy = doc["matrix"]["healthy"]
    sep = healthy["part_separation"]
    assert sep["values"]["np2_plain.png"] == sep["values"]["np2_strict.png"]  # the same image
    assert (sep["failing"], sep["judged"], sep["own_thresholds"]) == (1, 2, {"np2_strict.png": 0.99})
    assert all(row["failing"] == 0 for check, row in healthy.items() if check != "part_separation")
    (decision,) = [d for d in doc["decisions"] if d["check"] == "part_separation"]
    assert decision["calibrated"] and decision["threshold"] < sep["values"]["np2_plain.png"]
    text = (out / "model-matrix.md").read_text()
    assert "| healthy |" in text and "part_separation.min_separation 0.99" in text


def test_the_graded_report_names_the_smallest_merge_part_separation_catches(embedded_calibration):
    out, printed = embedded_calibration
    graded = json.loads((out / "model-matrix.json").read_text())["graded"]
    caught = graded["caught"]["part_separation"]["merge_parts"]
    level = caught["level"]
    assert level in GRADES["merge_parts"].levels
    # of the two images only np2_plain passes on the healthy model: np2_strict fails there already
    assert (caught["failing"], caught["judged"], caught["healthy_failing"]) == (1, 1, 1)
    closer = [x for x in GRADES["merge_parts"].levels if x < level]
    assert all(graded["failing"]["merge_parts"][f"{x:g}"]["part_separation"] == 0 for x in closer)
    assert set(graded["caught"]["part_separation"]) == {"merge_parts", "xattn_gain < 1", "xattn_gain > 1"}
    for text in (printed, (out / "model-matrix.md").read_text()):
        assert GRADED_TITLE in text
        assert re.search(rf"^\| part_separation \| {level:g} \(1/1\) \|", text, re.M), text


# ---------------------------------------------------------------------------- the command's edges
RANDOM = REPO / "fixtures" / "checkpoints" / "tiny-random"


def test_an_overlapping_check_is_refused_on_stderr_and_kept_in_the_toml(tmp_path, capsys):
    """The random-init model's parts are not separated, healthy or merged: that check cannot be calibrated."""
    images = tmp_path / "images"
    images.mkdir()
    shutil.copyfile(IMAGES / "np2_circle_square.png", images / "np2_circle_square.png")
    code = cli.main(
        ["calibrate", "--model", str(RANDOM), "--fixtures", str(images), "--out", str(tmp_path / "out")]
        + ["--steps", "2", "--device", "cpu", "-q"]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    previous = Thresholds().part_separation.min_separation
    assert re.search(
        r"^part_separation: cannot be calibrated on these images: healthy worst \S+, merged_parts least-failing "
        rf"\S+ overlap; keeping the previous threshold {previous:g}$",
        err,
        re.M,
    ), err
    text = (tmp_path / "out" / "thresholds.toml").read_text()
    assert f"min_separation = {previous!r}  # NOT calibrated" in text
    assert load_thresholds(tmp_path / "out" / "thresholds.toml").part_separation.min_separation == previous


@pytest.mark.parametrize(
    "extra, phrase",
    [
        (["--margin", "1.5"], "--margin 1.5: must be between 0 and 1"),
        (["--fixtures", "nowhere"], "fixture folder not found: nowhere"),
        (["--fixtures", str(IMAGES), "--thresholds", "missing.toml"], "thresholds file not found: missing.toml"),
    ],
)
def test_bad_arguments_are_usage_errors_before_loading_anything(tmp_path, capsys, monkeypatch, extra, phrase):
    monkeypatch.chdir(tmp_path)
    code = cli.main(["calibrate", "--model", str(RANDOM), *extra])
    err = capsys.readouterr().err
    assert code == 2 and phrase in err and "Traceback" not in err
    assert not (tmp_path / "partattn-calibration").exists()


def test_baseline_seeds_need_baselines_and_at_least_two_seeds(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CI", raising=False)
    for extra, phrase in (
        (["--baseline-seeds", "4"], "--baseline-seeds says how the baselines are written: it needs --baselines"),
        (["--baselines", "b", "--baseline-seeds", "1"], "--baseline-seeds 1: must be between 2 and"),
        (["--seeds", "2"], "--seeds says how the baselines are written: it needs --baselines"),
        (["--baselines", "b", "--seeds", "5", "--baseline-seeds", "4"], "--seeds 5: the gate reruns the first R"),
        (["--baselines", "b", "--floor-dtypes", "float16,fp8"], "--floor-dtypes float16,fp8: 'fp8' is not one of"),
    ):
        code = cli.main(["calibrate", "--model", str(RANDOM), "--fixtures", str(IMAGES), *extra])
        err = capsys.readouterr().err
        assert code == 2 and phrase in err and "Traceback" not in err
    assert not (tmp_path / "partattn-calibration").exists() and not (tmp_path / "b").exists()


def test_baselines_under_ci_are_refused_before_calibrating(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CI", "true")
    code = cli.main(["calibrate", "--model", str(RANDOM), "--fixtures", str(IMAGES), "--baselines", "b"])
    err = capsys.readouterr().err
    assert code == 2 and "--baselines updates baselines" in err and "CI=true" in err and "Traceback" not in err
    assert not (tmp_path / "partattn-calibration").exists() and not (tmp_path / "b").exists()


def test_the_fingerprint_reads_headers_not_tensors(tmp_path):
    from partattn_checks.analysis.calibration_page import model_fingerprint

    copy = Path(shutil.copytree(SEED1, tmp_path / "copy"))
    assert model_fingerprint(copy) == model_fingerprint(SEED1)
    (copy / "partattn.json").write_text((copy / "partattn.json").read_text().replace('"steps": 10', '"steps": 20'))
    assert model_fingerprint(copy) != model_fingerprint(SEED1)
    assert model_fingerprint(RANDOM) != model_fingerprint(SEED1)


# ---------------------------------------------------------------------------- what calibrate leaves in place
COMMITTED_BASELINES = REPO / "fixtures" / "baselines"


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time."""
    files = (p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def _calibrate_with_baselines(root: Path, *extra: str) -> int:
    """``partattn calibrate --baselines`` on the embedded model, one image, quickly."""
    return cli.main(
        ["calibrate", "--model", str(EMBEDDED), "--fixtures", str(root / "images"), "--out", str(root / "out")]
        + ["--baselines", str(root / "baselines"), "--no-graded", "--steps", str(EMBEDDED_STEPS), "--device", "cpu"]
        + (list(extra) or ["--baseline-seeds", "2"])
    )


@pytest.fixture(scope="module")
def calibrated_one_image(tmp_path_factory):
    """One image calibrated with baselines beside another image's committed baselines, the way a user meets
    it: first refused (a file of the user's own where calibrate writes), then, the file moved, done.
    Returns (root, np3's files before, what the refused run printed, what the finished run printed)."""
    root = tmp_path_factory.mktemp("one-image")
    (root / "images").mkdir()
    shutil.copyfile(IMAGES / "np2_circle_square.png", root / "images" / "np2_circle_square.png")
    shutil.copytree(COMMITTED_BASELINES / "np3_three_shapes", root / "baselines" / "np3_three_shapes")
    other = _files(root / "baselines" / "np3_three_shapes")
    (root / "out").mkdir()
    (root / "out" / "thresholds.toml").write_text("# my own thresholds\n")
    printed = []
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("CI", raising=False)  # --baselines updates baselines: refused under CI (tested above)
        for step in ("refused", "done"):
            if step == "done":
                (root / "out" / "thresholds.toml").rename(root / "my-thresholds.toml")
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = _calibrate_with_baselines(root)
            printed.append((code, out.getvalue(), err.getvalue()))
            if step == "refused":
                refused_toml = (root / "out" / "thresholds.toml").read_text()
                refused_baselines = sorted(p.name for p in (root / "baselines").iterdir())
    return root, other, (*printed[0], refused_toml, refused_baselines), printed[1]


def test_calibrate_keeps_the_baselines_of_other_images_and_the_users_own_files(calibrated_one_image):
    root, other, refused, done = calibrated_one_image
    code, _, err, toml, baselines = refused
    assert code == 2
    assert f"--out {root / 'out'}: {root / 'out' / 'thresholds.toml'} is not a file partattn wrote there" in err
    assert err.count("\n") == 1 and "move the file away" in err
    assert toml == "# my own thresholds\n"
    assert baselines == ["np3_three_shapes"]

    code, out, err = done
    assert code == 0, err
    assert "unused baseline" not in out + err
    assert sorted(p.name for p in (root / "baselines").iterdir()) == ["np2_circle_square", "np3_three_shapes"]
    assert _files(root / "baselines" / "np3_three_shapes") == other
    manifest = json.loads((root / "out" / cli.MANIFEST).read_text())
    assert set(OUTPUTS_OF_CALIBRATE) == set(manifest["files"])
    assert sorted(p.name for p in (root / "out").iterdir() if p.name.startswith(".")) == []  # no staging left
    # the paths printed are where the files are now, not the staging folders they were written into
    where = f"partattn: wrote the baselines of 1 image(s) into {root / 'baselines'}:\n"
    assert where + f"partattn:   {root / 'baselines' / 'np2_circle_square'}\n" in err
    assert ".partattn-calibrate-" not in err


OUTPUTS_OF_CALIBRATE = ("thresholds.toml", "model-matrix.md", "model-matrix.json", "model-matrix.png")


def test_an_interrupted_calibration_leaves_out_and_baselines_as_they_were(
    calibrated_one_image, tmp_path, capsys, monkeypatch
):
    from partattn_checks.baselines.runner import BaselineRunner

    monkeypatch.delenv("CI", raising=False)
    root = Path(shutil.copytree(calibrated_one_image[0], tmp_path / "root"))  # a finished calibration, of its own
    assert calibrated_one_image[3][0] == 0
    out, baselines = _files(root / "out"), _files(root / "baselines")
    write = BaselineRunner.write

    def write_then_interrupt(self, image, measured=None):  # Ctrl-C right after a baseline was written (staged)
        write(self, image, measured)
        raise KeyboardInterrupt

    monkeypatch.setattr(BaselineRunner, "write", write_then_interrupt)
    # other settings: new thresholds and baselines were written (staged) when Ctrl-C came
    assert _calibrate_with_baselines(root, "--margin", "0.3", "--baseline-seeds", "3") == 130
    err = capsys.readouterr().err
    assert err.rstrip().endswith("partattn calibrate: interrupted") and "failed" not in err
    assert _files(root / "out") == out and _files(root / "baselines") == baselines
    assert [p.name for p in (root / "out").iterdir() if p.name.startswith(".")] == []
    assert [p.name for p in (root / "baselines").iterdir() if p.name.startswith(".")] == []
