"""The pytest plugin end to end (pytester, in-process): collection, activation, options, items,
failure reports, sidecars, broken images, the partattn fixture and marker, the custom pipeline hook."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from plugin_support import (
    FAILING_SEPARATION,
    IMAGE,
    IMAGES,
    RUN_COUNTER,
    TINY,
    args,
    call_reports,
    make_project,
    outcomes,
)

from partattn_checks.gate.items import ITEM_CHECKS
from partattn_checks.gate.options import EMBEDDED_MODEL, OPTIONS
from partattn_checks.runs.sidecar import read_spec

pytest_plugins = ("pytester",)


@pytest.fixture(autouse=True)
def _no_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)


# ----------------------------------------------------------------------------- inert mode
def test_without_flag_items_are_collected_and_skipped(pytester):
    make_project(pytester, images=(IMAGE, "np1_circle.png"))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=2 * len(ITEM_CHECKS))
    result.stdout.fnmatch_lines(
        ["*SKIPPED [[]6[]] fixtures/images/np1_circle.png*pass --partattn to run attention checks*"]
    )
    assert "partattn summary" not in result.stdout.str()
    assert "partattn: model" not in result.stdout.str()  # no header line either


def test_one_item_per_check_named_after_the_image(pytester):
    make_project(pytester)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only", "-q")
    ids = [ln for ln in result.stdout.lines if "::" in ln]
    assert ids == [f"fixtures/images/{IMAGE}::{check}" for check in ITEM_CHECKS]
    assert ITEM_CHECKS == ("uniformity", "collapse", "part_separation", "stability", "nonfinite", "baseline")


def test_only_images_under_the_fixtures_folder_are_collected(pytester):
    make_project(pytester)
    other = pytester.path / "elsewhere"
    other.mkdir()
    (other / IMAGE).write_bytes((IMAGES / IMAGE).read_bytes())
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only", "-q", "elsewhere")
    assert not [ln for ln in result.stdout.lines if "::" in ln]
    # an image named explicitly on the command line is collected when it is under the fixtures folder
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only", "-q", f"fixtures/images/{IMAGE}")
    assert len([ln for ln in result.stdout.lines if "::" in ln]) == len(ITEM_CHECKS)


def test_default_model_is_the_embedded_package_folder():
    assert EMBEDDED_MODEL == Path(__import__("partattn_checks").__file__).resolve().parent / "data" / "partcrafter-tiny"
    assert {o.flag for o in OPTIONS} >= {
        "--partattn",
        "--partattn-model",
        "--partattn-device",
        "--partattn-update",
        "--partattn-thresholds",
        "--partattn-save-all-figures",
    }


# ----------------------------------------------------------------------------- activation


def test_activation_runs_each_image_once_with_one_model_load(pytester):
    make_project(pytester, images=(IMAGE, "np1_circle.png"))
    pytester.makeconftest(RUN_COUNTER)
    result = pytester.runpytest_inprocess(*args("--partattn-update=missing", "--partattn-baseline-seeds=2"))
    got = outcomes(result)
    assert got["fixtures/images/np1_circle.png::part_separation"] == "skipped"  # one part
    assert sorted(got.values()).count("passed") == 2 * len(ITEM_CHECKS) - 1
    assert result.ret == 0
    events = __import__("json").loads((pytester.path / "events-main.json").read_text())
    assert events["loads"] == ["cpu"]
    # once per image, not per check; writing its baseline adds its other K - 1 seeds (the first is the
    # gate's run) and the numeric floor's two reruns of that seed (a rounding error, another thread count)
    assert sorted(events["calls"]) == sorted([IMAGE, "np1_circle.png"] * (1 + (2 - 1) + 2))
    result.stdout.fnmatch_lines(["partattn: model from pytest_partattn_load_pipeline (conftest.py); unset run *"])
    # the terminal summary: one row per image, one column per check
    result.stdout.fnmatch_lines(
        [
            "*= partattn summary =*",
            "image*uniformity*collapse*part_separation*stability*nonfinite*baseline",
            f"fixtures/images/{IMAGE}*pass*written*",
        ]
    )
    assert (pytester.path / ".partattn-results" / "index.html").is_file()


def test_header_names_model_device_dtype_steps_versions_and_baselines(pytester):
    make_project(pytester)
    result = pytester.runpytest_inprocess(*args("--collect-only"))
    text = result.stdout.str()
    import torch

    fallback = "CUDA not found, fell back to CPU" if not torch.cuda.is_available() else "auto: CUDA found"
    result.stdout.fnmatch_lines(
        [
            "partattn: model *tiny-random*",
            f"partattn: device * ({fallback})* | dtype float32 | steps 2 | seed 0 | "
            f"*torch {torch.__version__}*diffusers *",
            "partattn: fixtures fixtures/images | baselines fixtures/baselines (update: off) | "
            "results .partattn-results*",
        ]
    )
    assert "thresholds: " in text


def test_fixture_dir_is_added_when_pytest_runs_its_testpaths(pytester):
    make_project(pytester)
    pytester.makeini("[pytest]\ntestpaths = tests\n")
    pytester.mkdir("tests")
    pytester.path.joinpath("tests", "test_a.py").write_text("def test_a():\n    pass\n")
    result = pytester.runpytest_inprocess(*args("--collect-only", "-q"))
    ids = [ln for ln in result.stdout.lines if "::" in ln]
    assert "tests/test_a.py::test_a" in ids and f"fixtures/images/{IMAGE}::baseline" in ids
    # without --partattn, testpaths are left alone
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only", "-q")
    assert [ln for ln in result.stdout.lines if "::" in ln] == ["tests/test_a.py::test_a"]


# ----------------------------------------------------------------------------- options
def test_cuda_without_cuda_is_a_usage_error(pytester):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    make_project(pytester)
    result = pytester.runpytest_inprocess(*args("--partattn-device=cuda"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: --partattn-device cuda: CUDA is not available here (torch {torch.__version__}); use cpu or auto"]
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize(
    "option, message",
    [
        ("--partattn-steps=0", "--partattn-steps 0: steps must be at least 1"),
        ("--partattn-seed=abc", "--partattn-seed abc: expected a whole number"),
        ("--partattn-device=tpu", "--partattn-device tpu: unknown device; use auto, cpu, cuda or cuda:N"),
        ("--partattn-thresholds=nope.toml", "--partattn-thresholds nope.toml: no such file *"),
        ("--partattn-model=no/such/dir", "--partattn-model no/such/dir: no such checkpoint folder *"),
        ("--partattn-baseline-seeds=1", "--partattn-baseline-seeds 1: must be between 2 and 1000*"),
        ("--partattn-seeds=0", "--partattn-seeds 0: must be between 1 and 1000*"),
        ("--partattn-false-alarm-rate=0.7", "--partattn-false-alarm-rate 0.7: must lie in [[]1e-12, 0.5)*"),
        ("--partattn-false-alarm-rate=1e-300", "--partattn-false-alarm-rate 1e-300: must lie in [[]1e-12, 0.5)*"),
        ("--partattn-seeds=17", "--partattn-seeds 17: the gate reruns the first R of the baseline's 16 seeds*"),
        ("--partattn-floor-dtypes=float16,fp8", "--partattn-floor-dtypes float16,fp8: 'fp8' is not one of *"),
        ("--partattn-drift-scale=0", "--partattn-drift-scale 0: expected auto or a positive number*"),
        ("--partattn-drift-scale=wide", "--partattn-drift-scale wide: expected auto or a positive number*"),
    ],
)
def test_invalid_option_values_are_usage_errors_naming_the_option(pytester, option, message):
    make_project(pytester)
    result = pytester.runpytest_inprocess(*args(option))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


def test_invalid_thresholds_file_is_a_usage_error(pytester):
    make_project(pytester, thresholds="[part_separation]\nmin_separaton = 0.1\n")
    result = pytester.runpytest_inprocess(*args())
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --partattn-thresholds thresholds.toml: *thresholds.toml: [[]part_separation[]] "
            "unknown key 'min_separaton'*"
        ]
    )


def test_ini_twins_with_command_line_precedence(pytester):
    make_project(pytester)
    pytester.makeini(
        f"[pytest]\npartattn = true\npartattn_model = {TINY}\npartattn_steps = 3\n"
        "partattn_dtype = bfloat16\npartattn_baselines = refs\npartattn_device = tpu\n"
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ini option partattn_device = tpu: unknown device*"])
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "--collect-only", "--partattn-steps=2", "--partattn-device=cpu"
    )
    result.stdout.fnmatch_lines(
        ["partattn: device cpu | dtype bfloat16 | steps 2 | *", "partattn: fixtures fixtures/images | baselines refs *"]
    )


def test_thresholds_from_the_rootdir_pyproject(pytester):
    make_project(pytester)
    pytester.makepyprojecttoml("[tool.partattn.thresholds.part_separation]\nmin_separation = 0.999\n")
    base = [a for a in args() if not a.startswith("--partattn-thresholds")]
    result = pytester.runpytest_inprocess(*base, f"fixtures/images/{IMAGE}::part_separation")
    result.stdout.fnmatch_lines(["*thresholds: *pyproject.toml [[]tool.partattn.thresholds[]]*"])
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*part separation*≥ 0.999*FAIL*"])


@pytest.mark.parametrize("damage", ["empty folder", "truncated transformer weights"])
def test_a_checkpoint_that_cannot_load_is_one_error_at_session_start(pytester, damage):
    import shutil

    make_project(pytester, images=(IMAGE, "np1_circle.png"))
    model = pytester.path / "model"
    if damage == "empty folder":
        model.mkdir()
        expected = f"*{model}: the checkpoint folder is empty*"
    else:
        shutil.copytree(TINY, model)
        weights = model / "transformer" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1000])
        expected = f"*{weights}*truncated*"
    base = [a for a in args() if not a.startswith("--partattn-model")]
    result = pytester.runpytest_inprocess(*base, "--partattn-model=model")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --partattn-model model: the checkpoint cannot be loaded:", expected])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    assert "passed" not in result.stdout.str() and "failed" not in result.stdout.str()  # no item ran


def test_unknown_table_under_tool_partattn_is_a_usage_error(pytester):
    make_project(pytester)
    pytester.makepyprojecttoml("[tool.partattn.threshold.part_separation]\nmin_separation = 0.999\n")
    base = [a for a in args() if not a.startswith("--partattn-thresholds")]
    result = pytester.runpytest_inprocess(*base, "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: *pyproject.toml: unknown key [[]tool.partattn.threshold[]]; did you mean "
            "[[]tool.partattn.thresholds[]]? (known: [[]tool.partattn.thresholds[]])"
        ]
    )


def test_verbose_output_prints_node_ids_that_can_be_pasted_back(pytester):
    make_project(pytester)
    result = pytester.runpytest_inprocess(*args("-v"), f"fixtures/images/{IMAGE}::uniformity")
    node = f"fixtures/images/{IMAGE}::uniformity"
    result.stdout.fnmatch_lines([f"{node} PASSED*"])
    assert "::png::" not in result.stdout.str()
    again = pytester.runpytest_inprocess(*args("--collect-only", "-q"), node)  # pasted back
    assert [ln for ln in again.stdout.lines if "::" in ln] == [node]


def test_header_says_what_is_collected(pytester):
    make_project(pytester, images=(IMAGE, "np1_circle.png"))
    pytester.makeini("[pytest]\ntestpaths = tests\n")
    pytester.mkdir("tests")
    result = pytester.runpytest_inprocess(*args("--collect-only"))
    result.stdout.fnmatch_lines(
        ["partattn: collecting 2 fixture images under fixtures/images (added to testpaths: tests)"]
    )
    result = pytester.runpytest_inprocess(*args("--collect-only"), f"fixtures/images/{IMAGE}")
    result.stdout.fnmatch_lines(
        ["partattn: 2 fixture images under fixtures/images; collected where the paths given include them"]
    )


# ----------------------------------------------------------------------------- failure report
def test_failing_check_reports_table_offender_figures_and_commands(pytester):
    make_project(pytester, thresholds=FAILING_SEPARATION)
    result = pytester.runpytest_inprocess(*args(), f"fixtures/images/{IMAGE}")
    got = outcomes(result)
    assert got[f"fixtures/images/{IMAGE}::part_separation"] == "failed"
    assert got[f"fixtures/images/{IMAGE}::uniformity"] == "passed"
    text = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            f"partattn: part_separation failed for fixtures/images/{IMAGE}",
            "parts attend to the same image regions: part separation * < 0.999*",
            "*metric*measured*threshold*baseline*verdict",
            "*part separation*≥ 0.999*FAIL",
            "worst offender: step -, layer blocks.*.attn2, part *, head -",
            "figures:",
            "rerun this check:",
            f"  pytest --partattn --partattn-model={TINY} --partattn-steps=2 --partattn-thresholds=thresholds.toml "
            f'"fixtures/images/{IMAGE}::part_separation"',
            "update this image's baseline:",
            f"  pytest --partattn --partattn-model={TINY} --partattn-steps=2 --partattn-thresholds=thresholds.toml "
            f'--partattn-update=failed "fixtures/images/{IMAGE}::baseline"',
        ]
    )
    assert "Traceback" not in text and "items.py" not in text  # a report, not a traceback
    figures = [Path(ln.strip()) for ln in text.splitlines() if ln.strip().endswith(".png") and ln.startswith("  /")]
    stem = IMAGE.rsplit(".", 1)[0]
    assert {f.name for f in figures} == {
        "part_separation__overlay.png",
        "part_separation__parts.png",
        "part_separation__timeline.png",
    }
    for f in figures:
        assert f.is_absolute() and f.is_file() and f.parent == pytester.path / ".partattn-results" / stem
        assert f"[[ATTACHMENT|{f}]]" in text
    # passing checks wrote no figures
    assert not list((pytester.path / ".partattn-results" / stem).glob("uniformity__*"))
    # the data travelled on the report
    rep = call_reports(result)[f"fixtures/images/{IMAGE}::part_separation"]
    assert rep.partattn["verdict"] == "fail" and rep.partattn["figures"] == [str(f) for f in figures]
    assert ("partattn_verdict", "fail") in rep.user_properties
    # no temporary files were left in the results folder
    assert not [p for p in (pytester.path / ".partattn-results").rglob("*") if p.name.startswith(".")]
    # the printed rerun command works as printed
    line = next(ln for ln in result.stdout.lines if ln.startswith("  pytest --partattn") and "::part_separation" in ln)
    rerun = pytester.runpytest_inprocess("-p", "no:cacheprovider", *shlex.split(line)[1:])
    rerun.assert_outcomes(failed=1)


def test_save_all_figures_and_index(pytester):
    make_project(pytester)
    result = pytester.runpytest_inprocess(*args("--partattn-save-all-figures", "--partattn-update=missing"))
    assert result.ret == 0
    folder = pytester.path / ".partattn-results" / IMAGE.rsplit(".", 1)[0]
    names = {p.name for p in folder.glob("*.png")}
    for check in ("uniformity", "collapse", "part_separation", "stability"):
        assert any(n.startswith(f"{check}__") for n in names), (check, names)
    assert not any(n.startswith("nonfinite__") for n in names)  # nothing to count: no empty chart
    index = (pytester.path / ".partattn-results" / "index.html").read_text()
    assert "<script" not in index and "http" not in index  # self-contained
    import re

    hrefs = set(re.findall(r'href="([^"#]+)"', index))
    assert hrefs and all((pytester.path / ".partattn-results" / h).is_file() for h in hrefs)
    assert {Path(h).name for h in hrefs} == names
    # a later run without the flag removes the figures of checks that now pass without figures
    pytester.runpytest_inprocess(*args())
    assert not list(folder.glob("*.png"))


# ----------------------------------------------------------------------------- image problems
def test_broken_image_fails_its_own_items_only(pytester):
    folder = make_project(pytester)
    (folder / "np2_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    result = pytester.runpytest_inprocess(*args("--partattn-update=missing", "--partattn-baseline-seeds=2"))
    got = outcomes(result)
    assert {k for k, v in got.items() if v == "failed"} == {f"fixtures/images/np2_broken.png::{c}" for c in ITEM_CHECKS}
    assert {k for k, v in got.items() if v == "passed"} == {f"fixtures/images/{IMAGE}::{c}" for c in ITEM_CHECKS}
    result.stdout.fnmatch_lines(
        [
            "partattn: uniformity failed for fixtures/images/np2_broken.png",
            "could not run fixtures/images/np2_broken.png: *np2_broken.png: not a readable image*",
        ]
    )
    assert "Traceback" not in result.stdout.str()
    result.stdout.fnmatch_lines(["fixtures/images/np2_broken.png*ERROR*ERROR*ERROR*"])  # summary row


def test_missing_part_count_names_the_file_and_both_fixes(pytester):
    folder = make_project(pytester, images=())
    (folder / "shapes.png").write_bytes((IMAGES / IMAGE).read_bytes())
    result = pytester.runpytest_inprocess(*args())
    result.assert_outcomes(failed=len(ITEM_CHECKS))
    result.stdout.fnmatch_lines(
        [
            "fixtures/images/shapes.png: unknown part count. Either rename "
            "the file with an np<N>_ prefix (e.g. np3_shapes.png) or add a sidecar file shapes.toml "
            "next to it with 'num_parts = 3'"
        ]
    )
    # without --partattn the same items are skipped, not failed
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(skipped=len(ITEM_CHECKS))


def test_sidecar_sets_parts_steps_and_threshold_overrides(pytester):
    folder = make_project(pytester, images=())
    (folder / "shapes.png").write_bytes((IMAGES / IMAGE).read_bytes())
    (folder / "shapes.toml").write_text(
        "num_parts = 2\nsteps = 1\nseed = 3\n\n[thresholds.part_separation]\nmin_separation = 0.999\n"
    )
    result = pytester.runpytest_inprocess(*args("--partattn-update=missing", "--partattn-baseline-seeds=2"))
    got = outcomes(result)
    assert got["fixtures/images/shapes.png::part_separation"] == "failed"  # the sidecar's threshold
    assert got["fixtures/images/shapes.png::stability"] == "skipped"  # 1 step (sidecar beats --partattn-steps)
    assert got["fixtures/images/shapes.png::uniformity"] == "passed"
    env = (pytester.path / "fixtures" / "baselines" / "shapes" / "environment.json").read_text()
    assert '"steps": 1' in env and '"seed": 3' in env and '"num_parts": 2' in env


def test_bad_sidecar_fails_the_items_with_the_file_named(pytester, tmp_path):
    folder = tmp_path / "fixtures"
    folder.mkdir()
    img = folder / "np2_x.png"
    img.write_bytes(b"")
    for text, expected in [
        ("num_parts = 2\ncolour = 'red'\n", "unknown key 'colour'"),
        ("num_parts = 0\n", "num_parts = 0 must be at least 1"),
        ("steps = 2.5\n", "steps = 2.5 must be a whole number"),
        ("num_parts = 3\n", "num_parts = 3 contradicts the file name prefix np2_"),
        ("[thresholds.part_separation]\nfloor = 1\n", "[thresholds.part_separation] unknown key 'floor'"),
        ("num_parts = [\n", "invalid TOML"),
    ]:
        (folder / "np2_x.toml").write_text(text)
        spec = read_spec(img, folder, tmp_path)
        assert spec.error is not None and str(folder / "np2_x.toml") in spec.error and expected in spec.error, (
            spec.error
        )


# ----------------------------------------------------------------------------- fixture and marker
TEST_FILE = f"""
import pytest


def test_uses_fixture(partattn):
    outcome = partattn("fixtures/images/{IMAGE}")
    assert outcome.record.num_parts == 2
    assert outcome.results["nonfinite"].passed
    again = partattn("fixtures/images/{IMAGE}")
    assert again is outcome  # same settings: the session's cached run
    other = partattn("{IMAGE}", num_parts=3, steps=1, thresholds={{"stability": {{"max_jump": 0.9}}}})
    assert other.record.num_parts == 3 and other.record.num_steps == 1


@pytest.mark.partattn
def test_marked():
    pass
"""


def test_partattn_fixture_and_marker(pytester):
    make_project(pytester)
    pytester.makepyfile(test_hand=TEST_FILE)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs", "test_hand.py")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*pass --partattn to run attention checks*"])
    result = pytester.runpytest_inprocess(*args(), "test_hand.py")
    result.assert_outcomes(passed=2)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.partattn: *skipped unless pytest runs with --partattn"])


REJUDGE_FILE = f"""
IMAGE = "fixtures/images/{IMAGE}"


def test_other_thresholds_judge_the_same_run(partattn):
    loose = partattn(IMAGE, thresholds={{"part_separation": {{"min_separation": 0.0}}}})
    strict = partattn(IMAGE, thresholds={{"part_separation": {{"min_separation": 0.999}}}})
    assert loose.results["part_separation"].passed and not strict.results["part_separation"].passed
    assert strict.record is loose.record
    only = partattn(IMAGE, checks=["uniformity"])
    assert list(only.results) == ["uniformity"] and only.record is loose.record
"""


def test_changing_only_thresholds_does_not_rerun_the_model(pytester):
    """The record cache is keyed by (model, image, run spec): the image's gate items and a
    hand-written test judging it under other thresholds and checks share one denoising run."""
    make_project(pytester)
    pytester.makeconftest(RUN_COUNTER)
    pytester.makepyfile(test_rejudge=REJUDGE_FILE)
    result = pytester.runpytest_inprocess(*args(), "fixtures/images", "test_rejudge.py")
    got = outcomes(result)
    assert got["test_rejudge.py::test_other_thresholds_judge_the_same_run"] == "passed", result.stdout.str()
    assert got[f"fixtures/images/{IMAGE}::part_separation"] == "passed"
    events = __import__("json").loads((pytester.path / "events-main.json").read_text())
    assert events["calls"] == [IMAGE]  # one pipeline call for every threshold set and check


def test_device_choice_per_xdist_worker(monkeypatch):
    import torch

    from partattn_checks.gate import options

    def settings(device):
        return options.Settings(
            enabled=True,
            model=TINY,
            device=device,
            dtype="float32",
            steps=None,
            seed=0,
            guidance=None,
            fixtures=IMAGES,
            results=IMAGES,
            baselines=IMAGES,
            update=None,
            force_update=False,
            strict_env=False,
            thresholds=None,
            save_all_figures=False,
            rootdir=IMAGES,
            sources={"device": "cli"},
            raw={"device": device},
        )

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert options.device_for(settings("auto")).device == "cuda:0"
    assert options.device_for(settings("auto"), "gw3").device == "cuda:1"
    assert options.device_for(settings("cuda"), "gw2").device == "cuda:0"
    assert options.device_for(settings("cuda:1"), "gw0").device == "cuda:1"  # explicit index wins
    assert options.device_for(settings("cpu"), "gw1").device == "cpu"
    assert "xdist worker gwN uses cuda:(N mod 2)" in options.device_for(settings("auto"), spread=True).note
    with pytest.raises(pytest.UsageError, match=r"--partattn-device cuda:2: there are only 2 CUDA devices here"):
        options.device_for(settings("cuda:2"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    choice = options.device_for(settings("auto"), "gw1")
    assert (choice.device, choice.note) == ("cpu", "CUDA not found, fell back to CPU")


def test_docs_list_every_option_with_its_ini_name():
    text = (Path(__file__).resolve().parents[1] / "docs" / "plugin.md").read_text()
    for opt in OPTIONS:
        assert f"`{opt.flag}" in text and f"`{opt.ini}`" in text, opt.flag
