"""``partattn trend``: checkpoints of a real (short) training run, in step order, judged image by image.

The early checkpoints are the first iterations of the schedule the embedded model was trained with
(seed 0, 5000 iterations, docs/training.md), saved by ``scripts/train_tiny.py --stop-after 300
--save-at 150,300`` and committed under ``fixtures/checkpoints/trend-run/`` (its README.md: the
command; training them here took most of this file's time); the embedded model stands in as its
``checkpoint-5000`` (today's libraries draw the batches slightly differently, so it is that
schedule's end, not bit for bit this run's; docs/training.md).
"""

from __future__ import annotations

import importlib.util
import json
import math
import pickle
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FIXTURE_IMAGES, REPO, TINY_FIXTURE

from partattn_checks import EMBEDDED_MODEL
from partattn_checks.analysis.trend import (
    Trend,
    TrendCheckpoint,
    TrendError,
    as_checkpoint,
    find_checkpoints,
    fixture_images,
    load_pipeline,
    run_trend,
)
from partattn_checks.checks import CHECKS, REGISTRY, CheckResult
from partattn_checks.cli import main
from partattn_checks.cli.trend import check_panels, write_trend
from partattn_checks.model.pipeline import PartCrafterPipeline
from partattn_checks.render.training import MIN_SPAN, shared_ranges, trend_checks_figure, x_label

IMAGES = ("np2_circle_square.png", "np2_triangle_circle.png", "np3_three_shapes.png")
EARLY = (150, 300)
#: checkpoint-150/ and checkpoint-300/ of the embedded model's schedule (scripts/train_tiny.py; its README.md)
TREND_RUN = REPO / "fixtures" / "checkpoints" / "trend-run"


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for name in IMAGES:
        shutil.copy(FIXTURE_IMAGES / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A training output folder: checkpoint-150/ and checkpoint-300/ of the embedded model's schedule
    (copies of the committed ones), and checkpoint-5000/, the embedded model itself (a link)."""
    log = json.loads((EMBEDDED_MODEL / "training_log.json").read_text())
    assert (log["config"]["seed"], log["config"]["iterations"]) == (0, 5000)
    folder = tmp_path_factory.mktemp("run")
    for iteration in EARLY:
        saved = TREND_RUN / f"checkpoint-{iteration}"
        description = json.loads((saved / "partattn.json").read_text())["description"]
        assert description == f"iteration {iteration} of scripts/train_tiny.py (seed 0, 5000-iteration schedule)"
        shutil.copytree(saved, folder / saved.name)
    (folder / "checkpoint-5000").symlink_to(EMBEDDED_MODEL, target_is_directory=True)
    return folder


def test_train_tiny_saves_the_first_iterations_of_a_longer_schedule_as_the_trend_run_was_made(tmp_path, monkeypatch):
    """``scripts/train_tiny.py --stop-after N --save-at A,B`` (the command that made fixtures/checkpoints/
    trend-run, here with 3 iterations of 2 objects): checkpoint-A/ and checkpoint-B/ with the description the
    ``run`` fixture checks; the weights saved at the stop are --out's, and where a run stops does not change
    the iterations before it."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts the repository first on it
    spec = importlib.util.spec_from_file_location("train_tiny", REPO / "scripts" / "train_tiny.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    schedule = ["--iterations", "5000", "--objects-per-batch", "2", "--log-every", "1"]
    for stop, save_at in ((3, "1,3"), (1, "1")):
        args = ["--stop-after", str(stop), "--save-at", save_at, "--save-dir", str(tmp_path / f"run{stop}")]
        assert script.main([*schedule, *args, "--out", str(tmp_path / f"out{stop}")]) == 0
    assert sorted(p.name for p in (tmp_path / "run3").iterdir()) == ["checkpoint-1", "checkpoint-3"]
    for iteration in (1, 3):
        saved = json.loads((tmp_path / "run3" / f"checkpoint-{iteration}" / "partattn.json").read_text())
        expected = f"iteration {iteration} of scripts/train_tiny.py (seed 0, 5000-iteration schedule)"
        assert saved["description"] == expected
    folders = ("out3", "run3/checkpoint-3", "out1", "run3/checkpoint-1", "run1/checkpoint-1")
    for name in ("transformer/diffusion_pytorch_model.safetensors", "image_encoder_dinov2/model.safetensors"):
        weights = {folder: (tmp_path / folder / name).read_bytes() for folder in folders}
        assert weights["run3/checkpoint-3"] == weights["out3"] != weights["out1"]
        assert weights["run3/checkpoint-1"] == weights["run1/checkpoint-1"] == weights["out1"]
    log = json.loads((tmp_path / "out3" / "training_log.json").read_text())
    assert log["config"]["iterations"] == 5000 and [p["iteration"] for p in log["curve"]] == [1, 2, 3]


def test_trend_over_a_training_run_shows_separation_rising(run, fixtures, tmp_path, capsys):
    out = tmp_path / "trend"
    code = main(["trend", str(run), "--fixtures", str(fixtures), "--steps", "4", "--device", "cpu", "--out", str(out)])
    printed = capsys.readouterr().out
    doc = json.loads((out / "trend.json").read_text())
    assert [c["step"] for c in doc["checkpoints"]] == [150, 300, 5000]
    assert doc["images"] == list(IMAGES)
    separation = [c["headline"]["separation"] for c in doc["checkpoints"]]
    assert separation[0] < separation[1] < separation[2]
    assert separation[0] < 0.075 < separation[1]  # part separation has emerged by iteration 300
    # the early checkpoint is flagged, the trained one passes: exit 0
    assert doc["first_failure"]["part_separation"] == "checkpoint-150"
    early = doc["checkpoints"][0]
    assert early["failing"]["part_separation"]
    for checkpoint in doc["checkpoints"]:
        for image in IMAGES:
            result = checkpoint["images"][image]["part_separation"]
            assert result["verdict"] == ("fail" if result["value"] < 0.075 else "pass")
    assert doc["checkpoints"][2]["failing"] == {} and doc["last_fails"] is False
    assert code == 0
    assert "part_separation  first fails at: checkpoint-150" in printed
    page = (out / "index.html").read_text()
    assert "checkpoint-300" in page and "trend_checks.png" in page and "trend.json" in page
    assert _h2s(page)[0] == "Verdict" and _caption(page, "trend_checks.png").endswith("training step (log scale)")
    for png in ("trend_checks.png", "trend_metrics.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trend_exits_1_when_the_last_checkpoint_fails(run, fixtures, tmp_path, capsys, monkeypatch):
    out = tmp_path / "trend"
    loaded = []
    original = PartCrafterPipeline.from_pretrained.__func__

    def counting(cls, path, **kwargs):
        loaded.append(path)
        return original(cls, path, **kwargs)

    monkeypatch.setattr(PartCrafterPipeline, "from_pretrained", classmethod(counting))
    # given in reverse: ordered by step, so checkpoint-150 comes first
    args = ["trend", str(run / "checkpoint-5000"), str(run / "checkpoint-150"), "--fixtures", str(fixtures)]
    assert main([*args, "--steps", "4", "--device", "cpu", "--out", str(out), "-q"]) == 0
    doc = json.loads((out / "trend.json").read_text())
    assert [c["label"] for c in doc["checkpoints"]] == ["checkpoint-150", "checkpoint-5000"]
    assert len(loaded) == 2  # one load per checkpoint, not per image
    # folders without step numbers keep the order given: the random-init model last fails
    args = ["trend", str(EMBEDDED_MODEL), str(TINY_FIXTURE), "--fixtures", str(fixtures)]
    assert main([*args, "--steps", "4", "--device", "cpu", "--out", str(out), "-q"]) == 1
    doc = json.loads((out / "trend.json").read_text())
    assert [c["label"] for c in doc["checkpoints"]] == ["partcrafter-tiny", "tiny-random"]
    assert doc["last_fails"] is True and "part_separation" in doc["checkpoints"][-1]["failing"]
    assert doc["first_failure"]["part_separation"] == "tiny-random"
    assert "last checkpoint (tiny-random) fails part_separation" in capsys.readouterr().out
    page = (out / "index.html").read_text()  # folder names: no step column, no "training step"
    assert "<th>step</th>" not in page and "training step" not in page


def _transformer_only(folder, source):
    folder.mkdir(parents=True)
    shutil.copytree(source / "transformer", folder / "transformer")
    return folder


def test_a_transformer_only_checkpoint_borrows_the_rest_from_base(tmp_path):
    ckpt = _transformer_only(tmp_path / "out" / "checkpoint-7", EMBEDDED_MODEL)
    [found] = find_checkpoints([tmp_path / "out"], base=TINY_FIXTURE)
    assert found.transformer_only and found.step == 7
    pipeline = load_pipeline(found, base=TINY_FIXTURE)
    assert pipeline.checkpoint.path == ckpt
    trained = load_pipeline(find_checkpoints([EMBEDDED_MODEL])[0])
    random = load_pipeline(find_checkpoints([TINY_FIXTURE])[0])
    for key, value in pipeline.transformer.state_dict().items():
        assert torch.equal(value, trained.transformer.state_dict()[key]), key
    for key, value in pipeline.image_encoder.state_dict().items():
        assert torch.equal(value, random.image_encoder.state_dict()[key]), key
    assert not any(p.name.startswith("partattn-trend-") for p in ckpt.parent.iterdir())


def test_a_transformer_only_checkpoint_without_base_is_a_usage_error(tmp_path, capsys):
    _transformer_only(tmp_path / "run" / "checkpoint-10", EMBEDDED_MODEL)
    with pytest.raises(TrendError, match="--base DIR"):
        find_checkpoints([tmp_path / "run"])
    assert main(["trend", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 2
    assert "holds only transformer/; pass --base DIR" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_checkpoint_folders_are_ordered_by_step_number(tmp_path):
    for step in (1000, 200, 30):
        (tmp_path / f"checkpoint-{step}" / "transformer").mkdir(parents=True)
    (tmp_path / "logs").mkdir()  # not a checkpoint: ignored
    found = find_checkpoints([tmp_path], base=EMBEDDED_MODEL)
    assert [c.step for c in found] == [30, 200, 1000]
    assert [c.label for c in found] == ["checkpoint-30", "checkpoint-200", "checkpoint-1000"]
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "checkpoint-200" / "transformer").mkdir(parents=True)
    with pytest.raises(TrendError, match="two checkpoints for step 200"):
        find_checkpoints([tmp_path, tmp_path / "again"], base=EMBEDDED_MODEL)
    with pytest.raises(TrendError, match="neither a checkpoint"):
        find_checkpoints([tmp_path / "logs"])
    with pytest.raises(TrendError, match="not a folder"):
        find_checkpoints([tmp_path / "missing"])
    # without step numbers the order given is kept
    assert [c.path for c in find_checkpoints([EMBEDDED_MODEL, TINY_FIXTURE])] == [EMBEDDED_MODEL, TINY_FIXTURE]


def test_a_sidecar_threshold_override_fails_that_image_in_the_trend(tmp_path):
    """The same picture twice; the sidecar of one raises part separation's bar out of reach."""
    for name in ("np2_plain.png", "np2_strict.png"):
        shutil.copy(FIXTURE_IMAGES / IMAGES[0], tmp_path / name)
    (tmp_path / "np2_strict.toml").write_text("[thresholds.part_separation]\nmin_separation = 0.99\n")
    done = []
    trend = run_trend(find_checkpoints([EMBEDDED_MODEL]), fixture_images(tmp_path), steps=3, progress=done.append)
    assert done == [1, 2]
    [checkpoint] = trend.to_dict()["checkpoints"]
    plain, strict = (checkpoint["images"][name]["part_separation"] for name in ("np2_plain.png", "np2_strict.png"))
    assert plain["verdict"] == "pass" and strict["verdict"] == "fail"
    assert strict["threshold"] == 0.99 and strict["value"] == plain["value"]  # the same run, judged by another bar
    assert checkpoint["failing"] == {"part_separation": ["np2_strict.png"]}


# ------------------------------------------------------------------ upstream's training output
SEED1 = REPO / "fixtures" / "checkpoints" / "tiny-seed1"
#: What accelerate's save_state writes beside the models. Garbage: unpickling any of them would raise.
STATE_FILES = ("optimizer.bin", "scheduler.bin", "random_states_0.pkl", "scaler.pt")
GARBAGE = b"\x80\x05 not a pickle"


def _upstream_step(folder, weights, ema):
    """``<ckpt_dir>/<step:06d>/`` as upstream's training script saves it with EMA on: ``transformer/``
    (from checkpoint ``weights``), ``transformer_ema/`` (from ``ema``; its config.json carries the
    EMA's own keys, as diffusers' EMAModel writes them) and accelerate's state files."""
    folder.mkdir(parents=True)
    shutil.copytree(weights / "transformer", folder / "transformer")
    shutil.copytree(ema / "transformer", folder / "transformer_ema")
    config = json.loads((folder / "transformer_ema" / "config.json").read_text())
    config.update(decay=0.9999, optimization_step=int(folder.name), _diffusers_version="0.30.0")
    (folder / "transformer_ema" / "config.json").write_text(json.dumps(config))
    for name in STATE_FILES:
        (folder / name).write_bytes(GARBAGE)
    return folder


def test_upstream_run_folder_is_ordered_by_step_and_judged_on_its_ema_weights(fixtures, tmp_path, capsys):
    """Upstream's ``000150/``, ``000300/`` with ``--base``: step 150's EMA equals its weights, step 300's
    EMA is the random-init transformer, so only step 300 changes (and fails) under ``--ema``."""
    run = tmp_path / "ckpt"
    _upstream_step(run / "000300", EMBEDDED_MODEL, TINY_FIXTURE)
    _upstream_step(run / "000150", SEED1, SEED1)
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(GARBAGE)  # what reading the state files would do
    args = ["trend", str(run), "--base", str(EMBEDDED_MODEL), "--fixtures", str(fixtures), "--steps", "4"]
    assert main([*args, "--device", "cpu", "--out", str(tmp_path / "plain"), "-q"]) == 0
    assert main([*args, "--ema", "--device", "cpu", "--out", str(tmp_path / "ema"), "-q"]) == 1
    plain, ema = (json.loads((tmp_path / out / "trend.json").read_text()) for out in ("plain", "ema"))
    for doc, weights in ((plain, "transformer"), (ema, "transformer_ema")):
        assert [(c["label"], c["step"]) for c in doc["checkpoints"]] == [("000150", 150), ("000300", 300)]
        assert doc["settings"]["weights"] == weights
        assert all(c["weights"] == weights and c["transformer_only"] for c in doc["checkpoints"])
        page = (tmp_path / ("plain" if doc is plain else "ema") / "index.html").read_text()
        assert f"weights judged: {weights}" in page and "000300" in page
    assert ema["checkpoints"][0]["images"] == plain["checkpoints"][0]["images"]  # the same weights at step 150
    separation = [doc["checkpoints"][1]["headline"]["separation"] for doc in (plain, ema)]
    assert separation[0] > 0.075 > separation[1]  # the embedded transformer vs the random-init EMA
    assert plain["last_fails"] is False and ema["last_fails"] is True
    assert plain["checkpoints"][1]["failing"] == {} and ema["checkpoints"][1]["failing"]["part_separation"]
    assert "last checkpoint (000300) fails part_separation" in capsys.readouterr().out
    # the EMA weights are the ones loaded, and nothing of the step folder but them was touched
    [step] = find_checkpoints([run / "000300"], base=EMBEDDED_MODEL, ema=True)
    loaded = load_pipeline(step, base=EMBEDDED_MODEL).transformer.state_dict()
    random = load_pipeline(as_checkpoint(TINY_FIXTURE)).transformer.state_dict()
    assert all(torch.equal(value, random[key]) for key, value in loaded.items())
    for name in STATE_FILES:
        assert (run / "000300" / name).read_bytes() == GARBAGE
    assert sorted(p.name for p in run.iterdir()) == ["000150", "000300"]


def _step_folders(root, *names):
    for name in names:
        (root / name / "transformer").mkdir(parents=True)
    return root


def test_step_names_decide_the_order(tmp_path):
    run = _step_folders(tmp_path / "run", "001000", "000150", "checkpoint-300", "final")
    (run / "logs").mkdir()
    # a run folder's step subfolders (upstream's and accelerate's alike) by step; others in it ignored
    found = find_checkpoints([run], base=EMBEDDED_MODEL)
    assert [(c.label, c.step) for c in found] == [("000150", 150), ("checkpoint-300", 300), ("001000", 1000)]
    # given one by one: a name that merely ends in a number is no step, and the order given is kept
    _step_folders(tmp_path, "seed2", "seed1", "run_v2")
    found = find_checkpoints([tmp_path / n for n in ("seed2", "seed1", "run_v2")], base=EMBEDDED_MODEL)
    assert [(c.label, c.step) for c in found] == [("seed2", None), ("seed1", None), ("run_v2", None)]
    # every name a step: ordered by step; one that is not: the order given, a run folder's steps in order
    found = find_checkpoints([run / "001000", run / "checkpoint-300", run / "000150"], base=EMBEDDED_MODEL)
    assert [c.step for c in found] == [150, 300, 1000]
    found = find_checkpoints([run / "001000", tmp_path / "seed1", run / "000150"], base=EMBEDDED_MODEL)
    assert [c.label for c in found] == ["001000", "seed1", "000150"]
    found = find_checkpoints([tmp_path / "seed1", run], base=EMBEDDED_MODEL)
    assert [c.label for c in found] == ["seed1", "000150", "checkpoint-300", "001000"]
    # the same step under two names
    _step_folders(tmp_path / "other", "checkpoint-150")
    with pytest.raises(TrendError, match="two checkpoints for step 150"):
        find_checkpoints([run, tmp_path / "other"], base=EMBEDDED_MODEL)


def test_the_same_folder_given_twice_is_refused_naming_it(tmp_path, capsys):
    run = _step_folders(tmp_path / "run", "checkpoint-5", "checkpoint-9")
    (tmp_path / "link").symlink_to(run / "checkpoint-9", target_is_directory=True)
    for given, named in (
        ([EMBEDDED_MODEL, f"{EMBEDDED_MODEL}/"], EMBEDDED_MODEL),  # X and X/: no step name, so no step clash
        ([run / "checkpoint-5", run], run / "checkpoint-5"),  # a checkpoint and its run folder
        ([run / "checkpoint-9", tmp_path / "link"], tmp_path / "link"),  # a link to it
    ):
        with pytest.raises(TrendError, match="the same checkpoint folder is given twice") as err:
            find_checkpoints(given, base=EMBEDDED_MODEL)
        assert str(err.value).startswith(f"{named}: ")
    assert main(["trend", str(EMBEDDED_MODEL), f"{EMBEDDED_MODEL}/", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{EMBEDDED_MODEL}: the same checkpoint folder is given twice; give each checkpoint once" in err
    assert not (tmp_path / "out").exists()


def test_ema_needs_transformer_ema_in_every_checkpoint(tmp_path, capsys):
    run = _step_folders(tmp_path / "run", "000100", "000200")
    (run / "000100" / "transformer_ema").mkdir()
    assert [c.weights for c in find_checkpoints([run], base=EMBEDDED_MODEL)] == ["transformer", "transformer"]
    with pytest.raises(TrendError, match=r"000200: no transformer_ema/ in it; drop --ema"):
        find_checkpoints([run], base=EMBEDDED_MODEL, ema=True)
    assert main(["trend", str(run), "--base", str(EMBEDDED_MODEL), "--ema", "--out", str(tmp_path / "out")]) == 2
    assert f"{run / '000200'}: no transformer_ema/" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(TrendError, match=r"no transformer_ema/ in it"):
        find_checkpoints([EMBEDDED_MODEL], ema=True)
    # EMA weights alone: judged with --ema, pointed at it without
    (tmp_path / "ema-only" / "transformer_ema").mkdir(parents=True)
    [found] = find_checkpoints([tmp_path / "ema-only"], base=EMBEDDED_MODEL, ema=True)
    assert found.weights == "transformer_ema" and found.transformer_only
    with pytest.raises(TrendError, match="no transformer/ in it; pass --ema"):
        find_checkpoints([tmp_path / "ema-only"], base=EMBEDDED_MODEL)
    # a full checkpoint with EMA weights: the rest comes from itself, the transformer from transformer_ema/
    full = tmp_path / "full"
    shutil.copytree(EMBEDDED_MODEL, full)
    shutil.copytree(TINY_FIXTURE / "transformer", full / "transformer_ema")
    [found] = find_checkpoints([full], ema=True)
    assert not found.transformer_only and found.weights == "transformer_ema"
    loaded = load_pipeline(found)
    random = load_pipeline(as_checkpoint(TINY_FIXTURE)).transformer.state_dict()
    assert all(torch.equal(value, random[key]) for key, value in loaded.transformer.state_dict().items())
    trained = load_pipeline(as_checkpoint(EMBEDDED_MODEL)).image_encoder.state_dict()
    assert all(torch.equal(value, trained[key]) for key, value in loaded.image_encoder.state_dict().items())


def _config_only(folder, **changes):
    """A transformer-only checkpoint holding the embedded model's config.json with ``changes`` and no
    weights: whatever refuses it does so before loading anything."""
    config = json.loads((EMBEDDED_MODEL / "transformer" / "config.json").read_text())
    (folder / "transformer").mkdir(parents=True)
    (folder / "transformer" / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


def test_mixed_architectures_are_refused_before_running_anything(tmp_path, capsys):
    run = tmp_path / "run"
    _config_only(run / "000100")
    _config_only(run / "000200", num_layers=3)
    with pytest.raises(TrendError) as refused:
        find_checkpoints([run], base=EMBEDDED_MODEL)
    message = str(refused.value)
    assert str(run / "000100" / "transformer" / "config.json") in message
    assert str(run / "000200" / "transformer" / "config.json") in message and "num_layers 5 vs 3" in message
    wide = _config_only(tmp_path / "wide", width=32)
    args = ["trend", str(EMBEDDED_MODEL), str(wide), "--base", str(EMBEDDED_MODEL), "--out", str(tmp_path / "out")]
    assert main([*args, "--fixtures", str(FIXTURE_IMAGES)]) == 2
    err = capsys.readouterr().err
    assert "describe different architectures (width 64 vs 32)" in err and str(wide / "transformer") in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(TrendError, match="width 64 vs 32"):
        run_trend([as_checkpoint(EMBEDDED_MODEL), as_checkpoint(wide)], [], base=EMBEDDED_MODEL)
    # keys that are no architecture (an EMA's decay, the diffusers version) may differ
    ema_like = _config_only(tmp_path / "ema_like", decay=0.9999, _diffusers_version="0.30.0")
    assert len(find_checkpoints([EMBEDDED_MODEL, ema_like], base=EMBEDDED_MODEL)) == 2


# ------------------------------------------------------------------ what the page and figures show
def _h2s(page: str) -> list[str]:
    return re.findall(r"<h2[^>]*>([^<]*)</h2>", page)


def _caption(page: str, png: str) -> str:
    return re.search(rf'<img src="{png}"[^>]*></a><figcaption>([^<]*)</figcaption>', page).group(1)


THRESHOLDS = {"uniformity": 0.84, "collapse": 0.56, "part_separation": 0.084, "stability": 0.25, "nonfinite": 0.0}


def _result(name: str, value: float, verdict: str, **details) -> CheckResult:
    return CheckResult(name, verdict, value, THRESHOLDS[name], None, "", REGISTRY[name].details_type(**details))


def _trend(steps, separation, *, fails=()):
    """A judged trend without running a model: two images, every check, ``separation[i]`` at checkpoint
    ``i`` (image b a little above it); ``fails``: checkpoints where both images fail part separation."""
    checkpoints = [
        TrendCheckpoint(Path(f"checkpoint-{s}" if s is not None else f"run{i}"), s) for i, s in enumerate(steps)
    ]
    images = ["np2_a.png", "np2_b.png"]
    checks = list(CHECKS)
    values = {"uniformity": 0.4, "collapse": 0.05, "stability": 0.1, "nonfinite": 0.0}
    trend = Trend(
        checkpoints,
        images,
        checks,
        {"steps": 4, "seed": 0, "device": "cpu", "dtype": "float32", "weights": "transformer", "thresholds": {}},
    )
    for i, sep in enumerate(separation):
        per_image = {}
        for j, image in enumerate(images):
            value = {**values, "part_separation": sep + 0.01 * j}
            per_image[image] = {
                name: _result(name, value[name], "fail" if name == "part_separation" and i in fails else "pass")
                for name in checks
            }
        trend.results.append(per_image)
        trend.headline.append({"separation": sep, "entropy_mean": 0.92 - 0.01 * i, "peak_mean": 0.1})
    return trend


def test_the_trend_page_opens_with_the_verdict_and_its_figure_and_says_what_the_axis_shows(tmp_path):
    written = write_trend(_trend([150, 300, 5000], [0.03, 0.12, 0.22], fails={0}), tmp_path / "steps")
    page = written["index"].read_text()
    assert _h2s(page)[0] == "Verdict"
    # the verdict, then the checks' figure, before any table
    assert (
        page.index("part_separation first fails at checkpoint-150")
        < page.index("trend_checks.png")
        < page.index("<table>")
    )
    assert _caption(page, "trend_checks.png") == f"each check against the {x_label([150, 300, 5000], True)}"
    assert x_label([150, 300, 5000], True) == "training step (log scale)"
    header = re.search(r"<table>\s*<tr>(.*?)</tr>", page, re.S).group(1)
    assert "<th>step</th>" in header
    assert all(f'<td class="num">{s}</td>' in page for s in (150, 300, 5000))
    # folder names without steps: no step column, and the caption names what the axis shows
    written = write_trend(_trend([None, None], [0.2, 0.01], fails={1}), tmp_path / "names")
    page = written["index"].read_text()
    assert "<th>step</th>" not in page and "training step" not in page
    assert _caption(page, "trend_checks.png").startswith(f"each check per {x_label([], False)}: not every folder")
    assert x_label([], False) == "checkpoint folder (order given)"
    # a step known for some checkpoints only: the column stays, unknown steps are marked
    page = write_trend(_trend([None, 300], [0.2, 0.01]), tmp_path / "some")["index"].read_text()
    assert "<th>step</th>" in page and "<td>–</td>" in page and "checkpoint folder (order given)" in page


def test_trend_panels_put_failing_checks_first_and_share_one_scale_with_their_thresholds():
    trend = _trend([150, 300, 5000], [0.03, 0.06, 0.09], fails={0, 1})
    panels = check_panels(trend)
    assert [p.name for p in panels] == ["part_separation", "uniformity", "collapse", "stability", "nonfinite"]
    assert [p.threshold for p in panels] == [0.084, 0.84, 0.56, 0.25, 0.0]
    fig = trend_checks_figure([150, 300, 5000], [], panels)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == len(panels)
    spans = set()
    for ax, panel in zip(axes, panels, strict=True):
        low, high = ax.get_ylim()
        assert low <= panel.threshold <= high and low <= np.nanmin(panel.values) and np.nanmax(panel.values) <= high
        assert [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == "--"] == [panel.threshold]
        assert ax.get_xlabel() == "training step (log scale)"
        if not panel.count:
            spans.add(round(high - low, 9))
    assert len(spans) == 1  # a 0.03 change is as tall in every 0..1 panel
    low, high = axes[-1].get_ylim()  # the count of non-finite values: from 0, with room above it
    assert axes[-1].get_ylabel() == "count" and low < 0 < 1 < high


def test_shared_ranges_hold_data_and_threshold_at_one_span():
    panels = [([0.025, 0.117, 0.221], 0.084), ([0.92, 0.879, 0.882], None), ([0.04, 0.05], 0.25)]
    ranges, span = shared_ranges(panels)
    assert span == pytest.approx(0.25 - 0.04)  # the widest extent, the jump panel's threshold included
    assert len({round(high - low, 12) for low, high in ranges}) == 1
    for (low, high), (values, threshold) in zip(ranges, panels, strict=True):
        assert low < min([*values, threshold or 1.0]) and max([*values, threshold or 0.0]) < high
        assert low >= -0.1 * span and high <= 1 + 0.1 * span  # inside the 0..1 scale, but for the pad
    # changes smaller than the noise floor do not fill a panel; NaN (not judged) and empty panels are ignored
    ranges, span = shared_ranges([([0.5, 0.501], None), ([math.nan], None), ([], None)])
    assert span == MIN_SPAN and all(high - low == pytest.approx(MIN_SPAN * 1.16) for low, high in ranges)


def test_a_checkpoint_with_nan_attention_puts_the_count_first_and_marks_checks_it_left_without_value():
    trend = _trend([100, 200], [0.2, 0.2])
    for image in trend.images:  # a check that cannot measure NaN attention: its value is the NaN count
        trend.results[1][image]["uniformity"] = _result("uniformity", 40.0, "fail", nonfinite_count=40)
        trend.results[1][image]["nonfinite"] = _result("nonfinite", 40.0, "fail")
    entry = trend.to_dict()["checkpoints"][1]["images"][trend.images[0]]["uniformity"]
    assert entry == {"value": None, "verdict": "fail", "threshold": None, "reason": ""}  # no value in trend.json
    panels = check_panels(trend)
    assert [p.name for p in panels][:2] == ["nonfinite", "uniformity"]
    assert panels[1].threshold == 0.84 and panels[1].unmeasured([100, 200]) == [200]
    fig = trend_checks_figure([100, 200], [], panels)
    texts = [[t.get_text() for t in ax.texts] for ax in fig.axes[:3]]
    assert texts[1] == ["✗ no value\n(NaN/Inf)", "pass: ≤ 0.84"] and texts[2] == ["pass: ≤ 0.56"]
    assert fig.axes[0].get_ylim()[1] > 40
