"""The training-loop monitor: flat {name: float} values, and a training run it cannot change."""

from __future__ import annotations

import json
import math
import random
import shutil

import numpy as np
import pytest
import torch
from helpers import FIXTURE_IMAGES

from partattn_checks import EMBEDDED_MODEL
from partattn_checks.analysis.monitor import AttentionMonitor, JsonlLog, MonitorError, preserved_state
from partattn_checks.model.loading import feature_extractor_from_config, load_checkpoint
from partattn_checks.model.tiny import SCHEDULER_CONFIG, TINY_PREPROCESSOR, TINY_RUN_DEFAULTS
from partattn_checks.model.training import TrainConfig, train
from partattn_checks.runs.session import run_case

IMAGES = [FIXTURE_IMAGES / "np2_circle_square.png", FIXTURE_IMAGES / "np3_three_shapes.png"]


def tiny_monitor(**kwargs) -> AttentionMonitor:
    return AttentionMonitor(
        IMAGES,
        feature_extractor=feature_extractor_from_config(TINY_PREPROCESSOR),
        scheduler_config=SCHEDULER_CONFIG,
        run_defaults=TINY_RUN_DEFAULTS,
        steps=3,
        **kwargs,
    )


def test_a_run_with_the_monitor_ends_with_bit_identical_weights():
    config = TrainConfig(iterations=24, objects_per_batch=4, log_every=12, part_counts=(2, 3))  # small batches: quick
    monitor = tiny_monitor()
    logged = []

    def watch(iteration, transformer, encoder):
        assert transformer.training and encoder.training
        if iteration % 8 == 0:
            logged.append((iteration, monitor(transformer, encoder)))
            assert transformer.training and encoder.training  # training mode restored

    plain = train(config, progress=lambda _: None)
    watched = train(config, progress=lambda _: None, callback=watch)
    assert [it for it, _ in logged] == [8, 16, 24]
    for module_plain, module_watched in zip(plain[:2], watched[:2], strict=True):
        a, b = module_plain.state_dict(), module_watched.state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    assert [p["loss"] for p in plain[2].curve] == [p["loss"] for p in watched[2].curve]
    # the monitor saw the model change as it trained
    first, last = logged[0][1], logged[-1][1]
    assert first["partattn/separation"] != last["partattn/separation"]


def test_monitor_values_match_the_checks_on_a_loaded_checkpoint():
    monitor = AttentionMonitor.from_checkpoint(EMBEDDED_MODEL, IMAGES, steps=3)
    checkpoint = load_checkpoint(EMBEDDED_MODEL)
    values = monitor(checkpoint.transformer, checkpoint.image_encoder)
    assert all(isinstance(v, float) and math.isfinite(v) for v in values.values())
    json.dumps(values)  # any tracker (W&B, TensorBoard, a JSONL file) takes it as it is
    # the same numbers as judging the same run through the normal path
    pipeline = monitor.pipeline(checkpoint.transformer, checkpoint.image_encoder)
    from partattn_checks.capture.runspec import for_pipeline

    for image in IMAGES:
        spec = for_pipeline(pipeline, {"steps": 3, "seed": 0}, call={"num_parts": int(image.name[2])})
        outcome = run_case(pipeline, image, spec)
        for name, result in outcome.results.items():
            assert values[f"partattn/{name}/{image.stem}"] == pytest.approx(result.value, abs=0), name
        assert values["partattn/part_separation/fails"] == 0.0
    sep = [values[f"partattn/part_separation/{image.stem}"] for image in IMAGES]
    assert values["partattn/part_separation/mean"] == pytest.approx(sum(sep) / 2)
    assert values["partattn/separation"] > 0.075  # the trained model separates its parts


def test_preserved_state_restores_modes_and_random_states():
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    module.train()
    module[0].eval()  # a frozen submodule stays as it was
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    with preserved_state(module):
        assert not module.training and not module[1].training
        assert not torch.is_grad_enabled()
        torch.rand(100), random.random(), np.random.rand(10)
    assert module.training and not module[0].training and module[1].training
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_jsonl_log_appends_one_line_per_call(tmp_path):
    log = JsonlLog(tmp_path / "sub" / "monitor.jsonl")
    log.log({"a": 1, "b": 0.5}, step=10)
    log.log({"a": 2.0}, step=20)
    assert log.read() == [{"iteration": 10, "a": 1.0, "b": 0.5}, {"iteration": 20, "a": 2.0}]


def test_monitor_refuses_images_it_cannot_run(tmp_path):
    with pytest.raises(MonitorError, match="np<N>_"):
        shutil.copy(IMAGES[0], tmp_path / "chair.png")
        tiny_monitor().__class__(
            [tmp_path / "chair.png"],
            feature_extractor=feature_extractor_from_config(TINY_PREPROCESSOR),
            run_defaults=TINY_RUN_DEFAULTS,
        )
    with pytest.raises(MonitorError, match="not found"):
        AttentionMonitor(
            [tmp_path / "missing.png"],
            feature_extractor=feature_extractor_from_config(TINY_PREPROCESSOR),
            run_defaults=TINY_RUN_DEFAULTS,
        )


def test_a_sidecar_threshold_override_fails_that_image_in_the_monitor(tmp_path):
    """The same picture twice; the sidecar of one raises part separation's bar out of reach and pins
    a token count, which the monitor's own ``num_tokens`` overrides."""
    for name in ("np2_plain.png", "np2_strict.png"):
        shutil.copy(IMAGES[0], tmp_path / name)
    (tmp_path / "np2_strict.toml").write_text("num_tokens = 8\n[thresholds.part_separation]\nmin_separation = 0.99\n")
    monitor = AttentionMonitor.from_checkpoint(EMBEDDED_MODEL, tmp_path, steps=3, num_tokens=16)
    checkpoint = load_checkpoint(EMBEDDED_MODEL)
    values = monitor(checkpoint.transformer, checkpoint.image_encoder)
    plain, strict = monitor.last["np2_plain.png"], monitor.last["np2_strict.png"]
    assert plain.results["part_separation"].verdict == "pass"
    assert strict.results["part_separation"].verdict == "fail"
    assert values["partattn/part_separation/fails"] == 1.0
    assert strict.spec.num_tokens == plain.spec.num_tokens == 16
    assert values["partattn/part_separation/np2_strict"] == values["partattn/part_separation/np2_plain"]


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method`:DeprecationWarning")
def test_a_wrapped_model_is_unwrapped_and_other_ranks_skip_when_asked(monkeypatch):
    checkpoint = load_checkpoint(EMBEDDED_MODEL)
    monitor = AttentionMonitor.from_checkpoint(EMBEDDED_MODEL, IMAGES[:1], steps=2)
    plain = monitor(checkpoint.transformer, checkpoint.image_encoder)
    # DataParallel (DDP, DeepSpeed and FSDP keep the module in .module the same way) around a
    # torch.compile wrapper (never compiled: the monitor runs the module inside)
    wrapped = torch.nn.DataParallel(torch.compile(checkpoint.transformer))
    assert monitor(wrapped, torch.nn.DataParallel(checkpoint.image_encoder)) == plain
    ranked = AttentionMonitor.from_checkpoint(EMBEDDED_MODEL, IMAGES[:1], steps=2, main_process_only=True)
    monkeypatch.setenv("RANK", "1")
    assert ranked(checkpoint.transformer, checkpoint.image_encoder) == {}
    monkeypatch.setenv("RANK", "0")
    assert ranked(checkpoint.transformer, checkpoint.image_encoder) == plain


def test_the_monitor_judges_against_baselines_with_the_gates_runner(tmp_path):
    from partattn_checks.baselines.policy import BaselinePolicy
    from partattn_checks.baselines.runner import BaselineRunner
    from partattn_checks.baselines.store import BaselineStore
    from partattn_checks.model.broken import broken, graded
    from partattn_checks.runs.session import Session
    from partattn_checks.runs.sidecar import fixture_specs

    images = tmp_path / "images"
    images.mkdir()
    for path in IMAGES:
        shutil.copyfile(path, images / path.name)
    checkpoint = load_checkpoint(EMBEDDED_MODEL)
    from partattn_checks.model.pipeline import PartCrafterPipeline

    # the reference's baselines, at the monitor's settings (3 steps), written as the gate writes them
    session = Session.around(PartCrafterPipeline(checkpoint), options={"steps": 3, "seed": 0})
    writer = BaselineRunner(BaselineStore(tmp_path / "baselines"), None, BaselinePolicy(update="all", baseline_seeds=4))
    for spec in fixture_specs(images):
        writer.evaluate(session.image_runs(spec), session.thresholds)
    monitor = tiny_monitor(baselines=tmp_path / "baselines")
    same = monitor(checkpoint.transformer, checkpoint.image_encoder)
    assert same["partattn/baseline/fails"] == 0.0 and same["partattn/baseline/set"] == 0.0
    assert abs(same["partattn/baseline/shift/separation"]) < 0.01  # the stored run of the same seed, again
    assert 0 <= same["partattn/baseline/np2_circle_square"] < 0.1
    with broken(checkpoint.transformer, graded("merge_parts", 0.2)):
        merged = monitor(checkpoint.transformer, checkpoint.image_encoder)
    assert merged["partattn/baseline/fails"] == 2.0 and merged["partattn/baseline/set"] == 1.0
    assert merged["partattn/baseline/shift/separation"] < -1.0  # in seed spreads: parts alike
    assert merged["partattn/baseline/np3_three_shapes"] > 1.0  # beyond its allowance
    with pytest.raises(MonitorError, match="no such folder"):
        tiny_monitor(baselines=tmp_path / "nowhere")
