"""The paired verdict: the gate reruns the baseline's own seeds and judges the difference from the
stored runs of those seeds against the numeric floor. Formulas pinned by hand; real runs of the
embedded model (benign reruns pass, degradations fail) and of a 12-layer model (a change confined to
one block is named, whichever block, in depth order)."""

from __future__ import annotations

import math
import shutil
import statistics

import numpy as np
import pytest
import torch
from baseline_support import embedded_pipeline, gate, two_images

from partattn_checks import EMBEDDED_MODEL
from partattn_checks.baselines import paired as pr
from partattn_checks.baselines.floor import Condition
from partattn_checks.baselines.paired_attention import kept_steps
from partattn_checks.baselines.runner import BaselineStatus
from partattn_checks.baselines.sample import SeedRun, SeedSample
from partattn_checks.baselines.store import BaselineStore
from partattn_checks.checks import Thresholds
from partattn_checks.checks.baseline import PAIRED, SEED_SPREAD, Deviation
from partattn_checks.model.broken import Variant, broken, graded
from partattn_checks.model.perturb import intra_op_threads
from partattn_checks.model.pipeline import PartCrafterPipeline
from partattn_checks.model.tiny import TINY_TRANSFORMER, build_image_encoder, build_transformer, write_checkpoint


# ----------------------------------------------------------------------------- pinned formulas
def _pairs(shifts):
    conditions = (Condition("rounding", rounding=True), Condition("dtype:bfloat16", dtype="bfloat16"))
    return pr.PairedBaseline((0, 1), conditions, shifts)


def _run(seed, **metrics):
    return SeedRun(seed, metrics, {}, {"dtype": "float32"})


def test_a_paired_metric_is_pinned():
    stored = {"separation": [0.30, 0.32, 0.28, 0.31], "peak_mean": [0.10, 0.12, 0.09, 0.11]}
    shifts = {
        "rounding": {"separation": [0.0002, -0.0001], "peak_mean": [0.0, 0.0]},
        "dtype:bfloat16": {"separation": [0.004, 0.002], "peak_mean": [0.001, 0.001]},
    }
    measured = SeedSample((_run(0, separation=0.29, peak_mean=0.10), _run(1, separation=0.31, peak_mean=0.13)))
    spreads = {"separation": 0.02, "peak_mean": 0.1}
    found = pr.judge_paired(
        (0, 1, 2, 3), stored, _pairs(shifts), measured, spreads, "float32", ["separation", "peak_mean"]
    )
    sep, peak = found.deviations
    # Δ = mean(0.29 - 0.30, 0.31 - 0.32) = -0.01; floor: float32 runs see the rounding condition only,
    # |mean(0.0002, -0.0001)| = 0.00005
    assert sep.z == pytest.approx(-0.01 / 0.02) and sep.floor == pytest.approx(0.00005 / 0.02)
    assert sep.allowance == pytest.approx(max(3 * 0.00005 / 0.02, 0.25)) and sep.moved
    assert sep.mean == pytest.approx(0.31) and sep.measured == pytest.approx(0.30) and sep.verdict == PAIRED
    # on the log scale: Δ = mean(log(0.10/0.10), log(0.13/0.12)) in log units
    assert peak.log_scale and peak.z == pytest.approx(0.5 * math.log(0.13 / 0.12) / 0.1) and peak.moved
    # a bfloat16 run sees the bfloat16 condition too: the floor is the larger
    bf = pr.judge_paired((0, 1, 2, 3), stored, _pairs(shifts), measured, spreads, "bfloat16", ["separation"])
    assert bf.deviations[0].floor == pytest.approx(0.003 / 0.02)
    assert bf.deviations[0].allowance == pytest.approx(3 * 0.003 / 0.02)


def _paired_dev(name, z, floor=0.0, kind="metric"):
    return Deviation(name, kind, 0.0, 0.0, 1.0, 16, 1, z, max(3 * floor, 0.25), verdict=PAIRED, floor=floor)


def test_the_paired_set_is_the_median_shift_beyond_each_floor():
    zs = {"a": (-0.9, 0.0), "b": (-1.0, 0.1), "c": (-0.2, 0.1), "d": (-0.5, 0.0), "chaotic": (+9.0, 0.05)}
    per_image = {image: [_paired_dev("separation", z, f)] for image, (z, f) in zs.items()}
    (d,) = pr.combine_paired(per_image)
    beyond = {"a": -0.9, "b": -0.7, "c": 0.0, "d": -0.5, "chaotic": 8.85}  # sign(z) * max(0, |z| - 3 floor)
    assert d.per_image == pytest.approx(beyond)
    assert d.z == pytest.approx(statistics.median(beyond.values())) == pytest.approx(-0.5)
    assert d.moved and d.allowance == pr.SET_MIN_SHIFT and d.verdict == PAIRED  # the chaotic image cannot flip it
    calm = {image: [_paired_dev("separation", 0.02 * i)] for i, image in enumerate("abcde")}
    assert not pr.combine_paired(calm)[0].moved


def test_steps_kept_fit_the_budget_and_always_include_the_first():
    assert kept_steps(10, 2_560, pr.PAIRED_BUDGET) == list(range(10))  # the tiny model: every step
    kept = kept_steps(50, 21 * 4 * 256 * 2, pr.PAIRED_BUDGET)  # release shape, 4 parts: 12 of 50
    assert kept[0] == 0 and kept[-1] == 49 and len(kept) == 12


# ----------------------------------------------------------------------------- real runs
K = 4


@pytest.fixture(scope="module")
def pipeline():
    return embedded_pipeline()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return two_images(tmp_path_factory)


def _judge(pipeline, root, images, **values):
    return gate(pipeline, root, images, **{"baseline_seeds": K, **values})


@pytest.fixture(scope="module")
def store(tmp_path_factory, pipeline, images):
    """Paired baselines of the two images (K seeds, a floor covering bfloat16 runs too)."""
    root = tmp_path_factory.mktemp("paired")
    judged, session = _judge(pipeline, root, images, update="all", floor_dtypes=("bfloat16",))
    assert all(b.status is BaselineStatus.WRITTEN for b in judged.baselines.values())
    assert session.runs == len(images) * (K + 3)  # K seeds, then the floor: rounding, threads, bfloat16
    return root


def test_a_paired_baseline_holds_the_first_seed_and_its_floor(store, images):
    stored = BaselineStore(store / "baselines").load(images[1].key)
    paired = stored.paired
    assert paired.seeds == (0,) and [c.name for c in paired.conditions] == ["rounding", "threads", "dtype:bfloat16"]
    attention = paired.attention
    assert attention.marginals.shape == (1, 10, 5, 4, 64) and attention.steps == tuple(range(10))
    assert attention.floor.shape == (3, 1, 10, 5, 4) and (attention.scale > 0).all()
    bf16 = attention.floor[2].max()
    assert bf16 > attention.floor[0].max()  # bfloat16 moves attention more than one rounding error


def test_a_rerun_is_the_stored_run_exactly(store, pipeline, images):
    judged, session = _judge(pipeline, store, images)
    assert session.runs == len(images)  # no extra denoising at R = 1
    assert not judged.failing() and judged.fixture_set.verdict == "pass"
    details = judged.results[images[1].display]["baseline"].details
    assert details.verdict == PAIRED and details.paired_onset is None
    layers = [d for d in details.deviations if d.kind == "layer"]
    assert len(layers) == 5 and all(d.measured == 0.0 for d in layers)  # bit-identical attention
    assert all(abs(d.z) < 0.01 for d in details.deviations if d.kind == "metric")  # the stored rounding only


def test_benign_reruns_pass_paired(store, pipeline, images, tmp_path):
    with intra_op_threads(2):
        assert not _judge(pipeline, store, images)[0].failing()
    bf16 = PartCrafterPipeline.from_pretrained(EMBEDDED_MODEL, dtype=torch.bfloat16)
    judged, _ = _judge(bf16, store, images, dtype="bfloat16")
    assert not judged.failing(), judged.failing()
    assert judged.results[images[0].display]["baseline"].details.verdict == PAIRED  # the declared floor pairs it
    moved = shutil.copytree(EMBEDDED_MODEL, tmp_path / "elsewhere")  # the same weights under another path
    judged, session = _judge(PartCrafterPipeline.from_pretrained(moved), store, images)
    assert not judged.failing() and judged.results[images[0].display]["baseline"].details.verdict == PAIRED
    again = session.runner.evaluate(session.image_runs(images[0]), Thresholds())
    assert again.warnings == ()  # fingerprinted by content: the same model, no environment warning


def test_a_small_degradation_fails_paired_and_names_where_it_begins(store, pipeline, images):
    with broken(pipeline.transformer, graded("merge_parts", 0.1)):
        judged, _ = _judge(pipeline, store, images)
    for image in images:
        result = judged.results[image.display]["baseline"]
        assert result.verdict == "fail" and result.details.verdict == PAIRED
        assert "separation" in {d.name for d in result.details.deviations if d.moved}
        onset = result.details.paired_onset
        assert (onset.step, onset.layer, onset.previous) == (0, "blocks.0.attn2", None)  # part embeddings: the input
        assert "the change lies at or before it" in result.reason and result.offender.step == 0
    assert judged.fixture_set.verdict == "fail" and "(paired verdict)" in judged.fixture_set.reason()


def test_another_seed_is_not_paired_and_says_so(store, pipeline, images):
    judged, _ = _judge(pipeline, store, images, seed=9)
    result = judged.results[images[0].display]["baseline"]
    assert result.details.verdict == SEED_SPREAD and "[seed-spread verdict: this run's seed(s) [9]" in result.reason
    failing, _ = _judge(pipeline, store, images, seed=9, verdict="paired")
    reason = failing.results[images[0].display]["baseline"].reason
    assert reason.startswith("the paired verdict was asked for (--partattn-verdict=paired) but cannot be used")


# ----------------------------------------------------------------------------- where a change begins
LAYERS = 12


@pytest.fixture(scope="module")
def deep(tmp_path_factory, images):
    """A 12-layer random PartCrafter (blocks.10 and blocks.11 sort before blocks.2 as text) with paired baselines."""
    root = tmp_path_factory.mktemp("deep")
    config = {**TINY_TRANSFORMER, "num_layers": LAYERS, "global_attn_block_ids": list(range(0, LAYERS, 2))}
    folder = write_checkpoint(
        root / "deep",
        build_transformer(config, seed=3),
        build_image_encoder(seed=4),
        run_defaults={"steps": 3, "num_tokens": 16, "guidance_scale": 7.0},
    )
    pipe = PartCrafterPipeline.from_pretrained(folder)
    _judge(pipe, root, images[:1], update="all", baseline_seeds=2)
    return pipe, root


def _edit_block(block: int) -> Variant:
    name = f"blocks.{block}.attn2.norm_q.weight"  # the query gain: to_q alone would be normalised away
    return Variant(f"q{block}", "", lambda names: [(name, lambda t: t.mul_(1.5))])


@pytest.mark.parametrize("block", range(LAYERS))
def test_a_change_confined_to_one_block_is_named_in_depth_order(deep, images, block):
    pipe, root = deep
    with broken(pipe.transformer, _edit_block(block)):
        judged, _ = _judge(pipe, root, images[:1], baseline_seeds=2)
    result = judged.results[images[0].display]["baseline"]
    onset = result.details.paired_onset
    assert (onset.step, onset.layer) == (0, f"blocks.{block}.attn2")
    if block:
        assert onset.previous == f"blocks.{block - 1}.attn2" and onset.identical
        assert f"identical through blocks.{block - 1}.attn2 at step 0; first difference at blocks.{block}.attn2" in (
            result.reason
        )
    assert result.offender.layer == f"blocks.{block}.attn2" and result.details.onset == f"blocks.{block}.attn2"
    layers = [d for d in result.details.deviations if d.kind == "layer"]
    assert [d.name for d in layers] == [f"blocks.{i}.attn2" for i in range(LAYERS)]  # depth order, not text order


def test_a_paired_summary_at_release_shape_is_about_half_a_megabyte_per_seed(tmp_path):
    from partattn_checks.baselines.paired_attention import PairedAttention

    # release shape: 21 cross-attention layers, 4 parts, a 16x16 patch grid, 50 steps; the default floor on a GPU
    steps = kept_steps(50, 21 * 4 * 256 * 2, pr.PAIRED_BUDGET)
    conditions = (Condition("rounding", rounding=True), Condition("rerun"))
    layers = tuple(f"blocks.{i}.attn2" for i in range(21))
    rng = np.random.default_rng(0)
    marginals = rng.random((1, len(steps), 21, 4, 256)).astype(np.float16)
    paired = PairedAttention(
        (0,), layers, tuple(steps), conditions, marginals, np.zeros((2, 1, len(steps), 21, 4), np.float32),
        np.ones(21, np.float32),
    )  # fmt: skip
    path = tmp_path / "paired.safetensors"
    assert paired.write(path)
    size = path.stat().st_size
    assert 510_000 < size < 540_000, size  # docs/plugin.md and docs/performance.md say about 0.5 MB
    back = PairedAttention.read(path)
    assert back.steps == tuple(steps) and np.array_equal(back.marginals, marginals)
