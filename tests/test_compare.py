"""``partattn compare A B`` and ``compare_checkpoints``: what changed between two checkpoints."""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
from helpers import FIXTURE_IMAGES, TINY_FIXTURE
from hypothesis import given, settings
from hypothesis import strategies as st

from partattn_checks import EMBEDDED_MODEL
from partattn_checks.analysis.compare import CompareError, compare_checkpoints, marginal_change
from partattn_checks.capture.record import AttentionRecord
from partattn_checks.checks import CHECKS
from partattn_checks.cli import main
from partattn_checks.cli.compare import check_panels
from partattn_checks.cli.io import COMPARE_OUTPUTS, refuse_foreign
from partattn_checks.model.broken import broken
from partattn_checks.model.loading import load_checkpoint
from partattn_checks.model.tiny import write_checkpoint
from partattn_checks.render.training import CheckPanel, check_marks, check_values_figure

IMAGES = ("np2_circle_square.png", "np3_three_shapes.png", "np1_circle.png")


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for name in IMAGES:
        shutil.copy(FIXTURE_IMAGES / name, folder / name)
    return folder


def _variant_on_disk(tmp_path_factory, name: str, edited: str):
    """The embedded model with broken variant ``name`` applied (it edits ``edited``), written to disk."""
    checkpoint = load_checkpoint(EMBEDDED_MODEL)
    out = tmp_path_factory.mktemp("variants") / name
    with broken(checkpoint.transformer, name) as names:
        assert names == [edited]
        write_checkpoint(out, checkpoint.transformer, checkpoint.image_encoder, run_defaults=checkpoint.run_defaults)
    return out


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """The embedded model with its part embedding merged (every row their mean), on disk."""
    return _variant_on_disk(tmp_path_factory, "merged_parts", "part_embedding.weight")


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory):
    """The embedded model with one cross-attention key weight of block 2 set to NaN, on disk."""
    return _variant_on_disk(tmp_path_factory, "nonfinite", "blocks.2.attn2.to_k.weight")


def test_compare_names_the_separation_drop_and_the_layers_that_moved(merged, fixtures, tmp_path, capsys):
    out = tmp_path / "compare"
    args = ["compare", str(EMBEDDED_MODEL), str(merged), "--fixtures", str(fixtures), "--steps", "4"]
    assert main([*args, "--device", "cpu", "--out", str(out), "-q"]) == 0
    doc = json.loads((out / "compare.json").read_text())
    assert doc["layers"] == [f"blocks.{i}.attn2" for i in range(5)]
    change = doc["change"]
    assert len(change) == 5 and all(len(row) == 4 for row in change)
    assert all(0.0 <= v <= 1.0 for row in change for v in row)
    # the part embedding enters at the input; its effect grows with depth and is largest at the end
    per_layer = [doc["layer_change"][name] for name in doc["layers"]]
    assert per_layer[-1] == max(per_layer) > 0.05
    assert doc["most_changed_layers"][0] == "blocks.4.attn2"
    sep = doc["separation"]
    assert sep["a"] > 0.075 > sep["b"]
    assert doc["checks"]["part_separation"]["a"] > doc["checks"]["part_separation"]["b"]
    assert doc["failing"]["a"] == {} and doc["failing"]["b"]["part_separation"] >= 1
    verdict = doc["verdict"]
    assert "blocks.4.attn2" in verdict and f"Part separation {sep['a']:.3f} -> {sep['b']:.3f}" in verdict
    assert "part_separation fails on 0 -> " in verdict
    page = (out / "index.html").read_text()
    assert "blocks.4.attn2" in page and "Part separation" in page
    for png in ("change_heatmap.png", "parts_a.png", "parts_b.png", "check_values.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert png in page
    assert verdict in capsys.readouterr().out
    # the verdict first, then the two figures that show it, then the tables
    assert re.findall(r"<h2[^>]*>([^<]*)</h2>", page)[0] == "Verdict"
    assert page.index("Part separation") < page.index("check_values.png") < page.index("change_heatmap.png")
    assert page.index("change_heatmap.png") < page.index("<table>")
    # the part panels say why their image was chosen
    shown = max(
        (img for img in doc["images"] if not img["image"].startswith("np1_")),
        key=lambda img: sum(img["change"][4]),
    )
    why = f"Shown: {shown['image']}, the image whose attention changed most in blocks.4.attn2 (JS/log 2"
    assert why in page and "of the 2 images with two or more parts" in page
    assert doc["checks"]["part_separation"]["threshold"] == pytest.approx(0.084)
    row = re.search(r"<tr><td>part_separation</td>(.*?)</tr>", page).group(1)
    assert "≥ 0.084" in row and f"{doc['failing']['b']['part_separation']}/2" in row  # np1_ is not judged


def test_a_model_compared_with_itself_changes_nowhere(fixtures):
    images = [fixtures / name for name in IMAGES[:2]]
    comparison = compare_checkpoints(EMBEDDED_MODEL, EMBEDDED_MODEL, images, steps=3)
    assert comparison.change == [[0.0] * 4 for _ in range(5)]
    assert all(v == 0.0 for img in comparison.images for row in img.change for v in row)
    assert comparison.most_changed_layers == [] and comparison.max_change == 0.0
    assert comparison.verdict.startswith("No change")
    assert comparison.check_means("a") == comparison.check_means("b")
    doc = comparison.to_dict()
    json.dumps(doc)
    assert doc["separation"]["a"] == doc["separation"]["b"]


def test_nan_weights_in_b_fail_the_command_and_compare_json_stays_json(nan_model, tmp_path, capsys):
    (tmp_path / "images").mkdir()
    shutil.copy(FIXTURE_IMAGES / IMAGES[0], tmp_path / "images" / IMAGES[0])
    out = tmp_path / "compare"
    args = ["compare", str(EMBEDDED_MODEL), str(nan_model), "--fixtures", str(tmp_path / "images"), "--steps", "2"]
    assert main([*args, "--device", "cpu", "--out", str(out), "-q"]) == 1
    captured = capsys.readouterr()
    where = f"{IMAGES[0]} (from blocks.2.attn2 at step 0)"
    assert "barely moved" not in captured.out and f"B's attention is not finite (NaN or inf) on {where}" in captured.out
    assert captured.err.startswith("partattn compare: failed: attention is not finite")
    assert f"B: {where}" in captured.err

    def no_nan(token):
        raise AssertionError(f"compare.json holds {token}")

    doc = json.loads((out / "compare.json").read_text(), parse_constant=no_nan)
    assert doc["finite"] is False and doc["nonfinite"] == {"a": [], "b": [where]}
    assert doc["max_change"] is None and doc["layer_change"]["blocks.4.attn2"] is None
    assert doc["images"][0]["nonfinite_b"] == "blocks.2.attn2 at step 0" and doc["images"][0]["nonfinite_a"] is None
    # checks that cannot measure B fail with no value (not the count of NaN, not on their 0..1 scale)
    uniformity = doc["images"][0]["checks_b"]["uniformity"]
    assert uniformity["verdict"] == "fail" and uniformity["value"] is None and uniformity["threshold"] is None
    assert doc["checks"]["uniformity"] == {
        "a": pytest.approx(doc["checks"]["uniformity"]["a"]),
        "b": None,
        "threshold": 0.84,
    }
    assert doc["checks"]["nonfinite"]["b"] > 0 and doc["checks"]["nonfinite"]["threshold"] == 0.0
    page = (out / "index.html").read_text()
    assert "attention is not finite" in page and "check_values.png" in page
    assert re.search(r"<tr><td>nonfinite</td><td>≤ 0</td>.*?<td>0/1</td><td>1/1</td></tr>", page)


def test_compare_refuses_a_folder_that_is_no_checkpoint(tmp_path, capsys):
    assert main(["compare", str(EMBEDDED_MODEL), str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "checkpoint folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match="not a checkpoint folder"):
        compare_checkpoints(EMBEDDED_MODEL, tmp_path / "empty", [FIXTURE_IMAGES / IMAGES[0]])


def test_compare_refuses_to_overwrite_a_users_own_file_in_out(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.html").write_text("<p>mine</p>")
    args = ["compare", str(EMBEDDED_MODEL), str(EMBEDDED_MODEL), "--fixtures", str(FIXTURE_IMAGES)]
    assert main([*args, "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: {out / 'index.html'} is not a file partattn wrote there" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == ["index.html"] and (out / "index.html").read_text() == "<p>mine</p>"
    # what an earlier compare wrote there (before manifests existed) is its own to overwrite
    (out / "compare.json").write_text(json.dumps({"a": "A", "b": "B", "change": [[0.0]], "verdict": "No change"}))
    refuse_foreign(out, COMPARE_OUTPUTS, "--out")


def _record(marginals: torch.Tensor) -> AttentionRecord:
    S, L, P, H, K = marginals.shape
    scalars = torch.zeros(S, L, P, H)
    return AttentionRecord(
        steps=list(range(S)),
        timesteps=[1000.0 - i for i in range(S)],
        layers=[f"blocks.{i}.attn2" for i in range(L)],
        layer_kinds=["global"] * L,
        num_parts=P,
        num_heads=H,
        num_patch_keys=K,
        has_cls=True,
        patch_grid=None,
        entropy=scalars,
        peak=scalars,
        eff_keys=scalars,
        cls_mass=scalars,
        marginals=marginals,
    )


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 3), st.integers(1, 3), st.integers(2, 9))
def test_marginal_change_is_zero_on_itself_symmetric_and_bounded(seed, layers, heads, keys):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(2, layers, 2, heads, keys, generator=g).softmax(-1)
    b = torch.rand(2, layers, 2, heads, keys, generator=g).softmax(-1)
    ra, rb = _record(a), _record(b)
    assert torch.equal(marginal_change(ra, ra), torch.zeros(layers, heads))
    ab, ba = marginal_change(ra, rb), marginal_change(rb, ra)
    assert ab.shape == (layers, heads)
    assert torch.allclose(ab, ba, atol=1e-6)
    assert bool(((ab >= 0) & (ab <= 1)).all())
    # disjoint supports are as far apart as it gets
    one_hot = torch.zeros(1, layers, 1, heads, keys)
    one_hot[..., 0] = 1.0
    other = torch.zeros(1, layers, 1, heads, keys)
    other[..., 1] = 1.0
    assert torch.allclose(marginal_change(_record(one_hot), _record(other)), torch.ones(layers, heads), atol=1e-3)


def test_marginal_change_refuses_runs_of_different_shape():
    a = _record(torch.full((1, 2, 2, 2, 4), 0.25))
    b = _record(torch.full((1, 3, 2, 2, 4), 0.25))
    with pytest.raises(CompareError, match="differ in layers"):
        marginal_change(a, b)


def test_a_sidecar_threshold_override_fails_that_image_on_both_sides(tmp_path):
    """The same picture twice; the sidecar of one raises part separation's bar out of reach."""
    for name in ("np2_plain.png", "np2_strict.png"):
        shutil.copy(FIXTURE_IMAGES / IMAGES[0], tmp_path / name)
    (tmp_path / "np2_strict.toml").write_text("[thresholds.part_separation]\nmin_separation = 0.99\n")
    images = [tmp_path / "np2_plain.png", tmp_path / "np2_strict.png"]
    done = []
    comparison = compare_checkpoints(EMBEDDED_MODEL, EMBEDDED_MODEL, images, steps=3, progress=done.append)
    assert done == [1, 2]
    plain, strict = comparison.images
    assert (plain.image, strict.image) == ("np2_plain.png", "np2_strict.png")
    for side in (plain.checks_a, plain.checks_b):
        assert side["part_separation"].verdict == "pass"
    for side in (strict.checks_a, strict.checks_b):
        assert side["part_separation"].verdict == "fail"
    assert strict.checks_a["part_separation"].value == plain.checks_a["part_separation"].value
    assert comparison.to_dict()["failing"] == {"a": {"part_separation": 1}, "b": {"part_separation": 1}}


def test_an_image_that_cannot_run_fails_the_command_with_one_line(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "np2_broken.png").write_bytes(b"not a png")
    args = ["compare", str(EMBEDDED_MODEL), str(EMBEDDED_MODEL), "--fixtures", str(tmp_path / "images")]
    assert main([*args, "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "out"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "partattn compare: failed: could not run" in err and "np2_broken.png" in err
    assert not (tmp_path / "out").exists()


def _transformer_only(folder, weights, ema=None):
    """An upstream-style step folder: ``transformer/`` from checkpoint ``weights``, ``transformer_ema/``
    from ``ema`` when given, and an optimizer state that is never read."""
    folder.mkdir(parents=True)
    shutil.copytree(weights / "transformer", folder / "transformer")
    if ema is not None:
        shutil.copytree(ema / "transformer", folder / "transformer_ema")
    (folder / "optimizer.bin").write_bytes(b"\x80\x05 not a pickle")
    return folder


def test_compare_ema_judges_the_ema_weights(tmp_path, capsys):
    """A and B share their weights; only B's EMA differs (the random-init transformer)."""
    a = _transformer_only(tmp_path / "000100", EMBEDDED_MODEL, ema=EMBEDDED_MODEL)
    b = _transformer_only(tmp_path / "000200", EMBEDDED_MODEL, ema=TINY_FIXTURE)
    (tmp_path / "images").mkdir()
    shutil.copy(FIXTURE_IMAGES / IMAGES[0], tmp_path / "images" / IMAGES[0])
    plain = compare_checkpoints(a, b, [tmp_path / "images" / IMAGES[0]], steps=2, base=EMBEDDED_MODEL)
    assert plain.max_change == 0.0 and plain.settings["weights"] == "transformer"
    out = tmp_path / "compare"
    args = ["compare", str(a), str(b), "--base", str(EMBEDDED_MODEL), "--ema", "--fixtures", str(tmp_path / "images")]
    assert main([*args, "--steps", "2", "--device", "cpu", "--out", str(out), "-q"]) == 0
    doc = json.loads((out / "compare.json").read_text())
    assert doc["settings"]["weights"] == "transformer_ema" and doc["max_change"] > 0.05
    assert "weights judged: transformer_ema" in (out / "index.html").read_text()
    capsys.readouterr()
    with pytest.raises(CompareError, match=re.escape(f"{tmp_path / 'plain'}: no transformer_ema/ in it; drop --ema")):
        compare_checkpoints(a, _transformer_only(tmp_path / "plain", EMBEDDED_MODEL), [], base=EMBEDDED_MODEL, ema=True)


def test_compare_checks_both_configs_before_running_either(tmp_path, capsys):
    """B has a deeper transformer's config.json and no weights at all: refused before A is run."""
    config = json.loads((EMBEDDED_MODEL / "transformer" / "config.json").read_text())
    deeper = tmp_path / "deeper"
    (deeper / "transformer").mkdir(parents=True)
    (deeper / "transformer" / "config.json").write_text(json.dumps({**config, "num_layers": 7}))
    with pytest.raises(CompareError, match="different architectures \\(num_layers 5 vs 7\\)"):
        compare_checkpoints(EMBEDDED_MODEL, deeper, [FIXTURE_IMAGES / IMAGES[0]], base=EMBEDDED_MODEL)
    args = ["compare", str(EMBEDDED_MODEL), str(deeper), "--base", str(EMBEDDED_MODEL)]
    assert main([*args, "--fixtures", str(FIXTURE_IMAGES), "--out", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert str(EMBEDDED_MODEL / "transformer" / "config.json") in err
    assert str(deeper / "transformer" / "config.json") in err and "num_layers 5 vs 7" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ what the page and figures show
def _panel(name, label, values, verdicts, threshold, op, count=False):
    return CheckPanel(name, label, np.array(values, dtype=float), verdicts, threshold, op, count=count)


def test_check_values_draw_each_threshold_and_a_pass_or_fail_mark_per_side():
    panels = [
        _panel(
            "part_separation",
            "part separation",
            [[0.2, 0.1, 0.3], [0.01, 0.2, 0.0]],
            [["pass"] * 3, ["fail", "pass", "fail"]],
            0.084,
            "≥",
        ),
        _panel(
            "uniformity",
            "near-uniform share",
            [[0.4, 0.5, 0.6], [math.nan] * 3],
            [["pass"] * 3, ["skip"] * 3],
            0.84,
            "≤",
        ),
        _panel(
            "nonfinite",
            "non-finite values",
            [[0, 0, 0], [0, 12, 0]],
            [["pass"] * 3, ["pass", "fail", "pass"]],
            0.0,
            "≤",
            count=True,
        ),
    ]
    assert [check_marks(p) for p in panels] == [
        [("pass", "pass"), ("fail 2/3", "fail")],
        [("pass", "pass"), ("not judged", "skip")],
        [("pass", "pass"), ("fail 1/3", "fail")],
    ]
    fig = check_values_figure(panels, title="A vs B")
    assert len(fig.axes) == 3
    for ax, panel in zip(fig.axes, panels, strict=True):
        low, high = ax.get_ylim()
        assert [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == "--"] == [panel.threshold]
        assert low <= 0 and max(np.nanmax(panel.values), panel.threshold) < high  # bars from 0, every dot shown
        assert ax.get_xlabel() == f"pass: {panel.op} {panel.threshold:g}"
        marks = [(t.get_text(), t.get_color()) for t in ax.texts if t.get_position()[1] == 0.975]
        assert [text for text, _ in marks] == [text for text, _ in check_marks(panel)]
        assert {colour for text, colour in marks if text.startswith("fail")} <= {"#c62828"}
    assert fig.axes[2].get_ylabel() == "count" and fig.axes[2].get_ylim()[1] > 12
    # a side that fails without a value (its record held NaN/Inf) says so where its bar would be
    assert [t.get_text() for t in fig.axes[1].texts] == ["pass", "not judged"]
    unmeasured = _panel("stability", "jump", [[0.1, 0.2, 0.1], [math.nan] * 3], [["pass"] * 3, ["fail"] * 3], 0.25, "≤")
    assert check_marks(unmeasured) == [("pass", "pass"), ("fail 3/3", "fail")]
    [ax] = check_values_figure([unmeasured], title="A vs B").axes
    assert "no value\n(NaN/Inf)" in [t.get_text() for t in ax.texts]


def test_every_check_keeps_its_panel_and_threshold_when_nothing_changed(fixtures):
    comparison = compare_checkpoints(EMBEDDED_MODEL, EMBEDDED_MODEL, [fixtures / IMAGES[0]], steps=2)
    panels = check_panels(comparison)
    assert [p.name for p in panels] == list(CHECKS)  # the non-finite count (0 on both sides) included
    nonfinite = panels[-1]
    assert nonfinite.count and nonfinite.threshold == 0.0 and nonfinite.values.tolist() == [[0.0], [0.0]]
    assert all(p.threshold is not None for p in panels)
    assert comparison.to_dict()["checks"]["part_separation"]["threshold"] == pytest.approx(0.084)
