"""``partattn trend``: checkpoints of a real (short) training run, in step order, judged image by image.

The early checkpoints are the first iterations of the schedule the embedded model was trained with
(seed 0, 5000 iterations, docs/training.md), re-run here with ``stop_after``; the embedded model
stands in as its ``checkpoint-5000`` (today's libraries draw the batches slightly differently, so it
is that schedule's end, not bit for bit this run's; docs/training.md).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import FIXTURE_IMAGES, TINY_FIXTURE

from partattn_checks import EMBEDDED_MODEL
from partattn_checks.cli import main
from partattn_checks.model.pipeline import PartCrafterPipeline
from partattn_checks.model.tiny import TINY_RUN_DEFAULTS, write_checkpoint
from partattn_checks.model.training import TrainConfig, train
from partattn_checks.trend import TrendError, find_checkpoints, fixture_images, load_pipeline, run_trend

IMAGES = ("np2_circle_square.png", "np2_triangle_circle.png", "np3_three_shapes.png")
EARLY = (150, 300)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for name in IMAGES:
        shutil.copy(FIXTURE_IMAGES / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A training output folder: checkpoint-150/ and checkpoint-300/ of the embedded model's schedule,
    and checkpoint-5000/, the embedded model itself (a link)."""
    log = json.loads((EMBEDDED_MODEL / "training_log.json").read_text())
    assert (log["config"]["seed"], log["config"]["iterations"]) == (0, 5000)
    folder = tmp_path_factory.mktemp("run")

    def save(iteration, transformer, encoder):
        if iteration in EARLY:
            write_checkpoint(folder / f"checkpoint-{iteration}", transformer, encoder, run_defaults=TINY_RUN_DEFAULTS)

    train(TrainConfig(seed=0, iterations=5000), progress=lambda _: None, callback=save, stop_after=max(EARLY))
    (folder / "checkpoint-5000").symlink_to(EMBEDDED_MODEL, target_is_directory=True)
    return folder


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
