"""Upstream-style pipelines under the recorder and the gate: the adapter's record equals our
pipeline's for the same seed, no mesh is decoded, a fork whose attention differs is refused by
name while its outputs stay its own, and ``--partattn-pipeline=module:factory`` runs the gate."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import upstream_standin
from plugin_support import outcomes

from partattn_checks import EMBEDDED_MODEL
from partattn_checks.capture.recorder import AttentionRecorder, CaptureError, Selection, record_attention
from partattn_checks.capture.upstream import PipelineError, UpstreamPipeline, as_pipeline, load_factory
from partattn_checks.model.pipeline import PartCrafterPipeline

pytest_plugins = ("pytester",)

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "fixtures" / "images" / "np2_circle_square.png"
RECORDED = ("entropy", "peak", "eff_keys", "cls_mass", "marginals")


@pytest.fixture(scope="module")
def ours():
    return PartCrafterPipeline.from_pretrained(EMBEDDED_MODEL)


@pytest.fixture(scope="module")
def adapted():
    return as_pipeline(upstream_standin.factory(None, "cpu", "float32"))


def test_the_adapter_records_what_our_pipeline_records(ours, adapted):
    assert isinstance(adapted, UpstreamPipeline) and adapted.patch_grid == ours.patch_grid
    kwargs = dict(steps=3, seed=5, num_tokens=16, guidance_scale=7.0)
    _, mine = record_attention(ours, IMAGE, 2, **kwargs)
    result, theirs = record_attention(adapted, IMAGE, 2, **kwargs)  # stops before mesh decoding
    assert theirs.steps == mine.steps == [0, 1, 2]
    assert theirs.timesteps == pytest.approx(mine.timesteps)  # read from the transformer's forward
    assert theirs.layer_kinds == mine.layer_kinds
    for name in RECORDED:
        assert torch.equal(getattr(theirs, name), getattr(mine, name)), name
    assert len(result.timesteps) == 3


def test_a_fork_regression_is_refused_by_name_and_capture_does_not_change_it(adapted, monkeypatch):
    monkeypatch.setenv(upstream_standin.FORK_SCALE, "3")
    kwargs = dict(steps=2, seed=1, num_tokens=16, guidance_scale=7.0)
    with pytest.raises(CaptureError) as info:
        record_attention(adapted, IMAGE, 2, **kwargs)
    message = str(info.value)
    assert "blocks.1.attn2" in message and "TripoSGAttnProcessor2_0" in message and "relative mismatch" in message
    plain = adapted(IMAGE, 2, **kwargs).latents
    with AttentionRecorder(adapted.transformer, num_parts=2, selection=Selection(layers=[0, 2, 4])) as rec:
        captured = adapted(IMAGE, 2, observers=(rec,), **kwargs).latents
    assert torch.equal(plain, captured)  # the fork's own code ran, with and without capture
    monkeypatch.delenv(upstream_standin.FORK_SCALE)
    healthy = adapted(IMAGE, 2, **kwargs).latents
    assert not torch.equal(plain, healthy)  # and it is the fork's: the scores really were scaled


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_colon", "expected module:factory"),
        ("no_such_module_here:factory", "cannot import no_such_module_here"),
        ("upstream_standin:nothing", "upstream_standin has no nothing"),
        ("upstream_standin:FORK_SCALE", "is not callable"),
    ],
)
def test_a_bad_factory_is_named(spec, message):
    with pytest.raises(PipelineError, match=message):
        load_factory(spec, REPO / "tests")


def test_the_gate_runs_an_upstream_style_pipeline(pytester, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    images = ("np2_circle_square.png", "np3_three_shapes.png")
    folder = pytester.path / "fixtures" / "images"
    folder.mkdir(parents=True)
    for name in images:
        shutil.copyfile(REPO / "fixtures" / "images" / name, folder / name)
        stem = name.rsplit(".", 1)[0]
        shutil.copytree(REPO / "fixtures" / "baselines" / stem, pytester.path / "fixtures" / "baselines" / stem)
    shutil.copyfile(Path(upstream_standin.__file__), pytester.path / "upstream_standin.py")
    args = (
        "-p",
        "no:cacheprovider",
        "--partattn",
        "--partattn-pipeline=upstream_standin:factory",
        f"--partattn-model={EMBEDDED_MODEL}",  # the factory loads it; its partattn.json gives the run settings
    )
    healthy = pytester.runpytest_inprocess(*args)
    found = outcomes(healthy)
    assert healthy.ret == 0 and set(found.values()) == {"passed"} and len(found) == 2 * 6 + 1, found
    healthy.stdout.fnmatch_lines([f"partattn: model upstream_standin:factory({EMBEDDED_MODEL}, ...)*"])

    monkeypatch.setenv(upstream_standin.FORK_SCALE, "3")
    forked = pytester.runpytest_inprocess(*args)
    assert forked.ret == pytest.ExitCode.TESTS_FAILED
    found = outcomes(forked)
    assert found.pop("fixtures/images::fixture-set") == "skipped"  # no image could be compared
    assert set(found.values()) == {"failed"}
    forked.stdout.fnmatch_lines(["*blocks.1.attn2*TripoSGAttnProcessor2_0*relative mismatch*"])


def test_trend_and_compare_run_an_upstream_style_pipeline(tmp_path, monkeypatch):
    from partattn_checks.analysis.compare import compare_checkpoints
    from partattn_checks.analysis.trend import find_checkpoints, fixture_images, run_trend

    monkeypatch.chdir(REPO / "tests")  # the factory's module is imported from the current folder
    images = [s for s in fixture_images(REPO / "fixtures" / "images") if s.path.name == IMAGE.name]
    kwargs = dict(steps=2, pipeline="upstream_standin:factory")
    trend = run_trend(find_checkpoints([EMBEDDED_MODEL]), images, **kwargs)
    ours = run_trend(find_checkpoints([EMBEDDED_MODEL]), images, steps=2)
    assert trend.results == ours.results  # the same records through the stand-in
    monkeypatch.setenv(upstream_standin.FORK_SCALE, "3")
    with pytest.raises(Exception, match="relative mismatch"):
        compare_checkpoints(EMBEDDED_MODEL, EMBEDDED_MODEL, images, **kwargs)


def test_partattn_run_with_an_upstream_style_pipeline(tmp_path, monkeypatch, capsys):
    from partattn_checks import cli

    monkeypatch.chdir(REPO / "tests")
    out = tmp_path / "run"
    code = cli.main(
        ["run", str(IMAGE), "--pipeline", "upstream_standin:factory", "--model", str(EMBEDDED_MODEL)]
        + ["--steps", "2", "--out", str(out), "-q"]
    )
    assert code == 0 and (out / "index.html").is_file() and (out / "metrics.json").is_file()
    assert cli.main(["run", str(IMAGE), "--pipeline", "nosuch:factory", "--out", str(tmp_path / "x"), "-q"]) == 2
    assert "--pipeline nosuch:factory: cannot import nosuch" in capsys.readouterr().err


def test_without_a_model_the_gate_runs_the_settings_its_header_shows(pytester, monkeypatch):
    """``--partattn-pipeline=module:factory`` without ``--partattn-model`` (issue 25): the header says
    the embedded checkpoint's 10 steps and 16 tokens, and the user's pipeline runs exactly those
    (not upstream's 50 x 1024), so the stored baseline's numbers are met."""
    monkeypatch.delenv("CI", raising=False)
    stem = IMAGE.name.rsplit(".", 1)[0]
    (pytester.path / "fixtures" / "images").mkdir(parents=True)
    shutil.copyfile(IMAGE, pytester.path / "fixtures" / "images" / IMAGE.name)
    shutil.copytree(REPO / "fixtures" / "baselines" / stem, pytester.path / "fixtures" / "baselines" / stem)
    shutil.copyfile(Path(upstream_standin.__file__), pytester.path / "upstream_standin.py")
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "--partattn", "--partattn-pipeline=upstream_standin:factory", "-q"
    )
    found = outcomes(result)
    assert result.ret == 0 and set(found.values()) == {"passed"}, found
    result.stdout.fnmatch_lines(
        [
            "model: upstream_standin:factory(None, ...)",  # the summary says it under -q too
            "run settings: steps 10 | tokens 16 | guidance 7 | seed 0 | cpu float32*",
            "thresholds: built-in defaults",
        ]
    )
    assert "partattn: model" not in result.stdout.str()  # -q hides the header; the summary said it


def test_a_pipeline_with_its_own_defaults_runs_the_ones_given(ours):
    from partattn_checks.capture.runspec import for_pipeline

    shown = {"steps": 3, "num_tokens": 8, "guidance_scale": 2.0}
    wrapped = as_pipeline(ours, run_defaults=shown)
    spec = for_pipeline(wrapped, call={"num_parts": 2})
    assert (spec.steps, spec.num_tokens, spec.guidance_scale) == (3, 8, 2.0)
    assert wrapped.transformer is ours.transformer and wrapped.patch_grid == ours.patch_grid
    assert as_pipeline(ours, run_defaults=dict(ours.run_defaults)) is ours  # the same defaults: unwrapped
    _, record = record_attention(wrapped, IMAGE, 2)
    assert record.num_steps == 3 and record.meta["num_tokens"] == 8
