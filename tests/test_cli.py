"""The ``partattn`` command, called in-process through ``cli.main([...])`` (exit status returned).

End to end on the CPU with the tiny random checkpoint and ``--steps 2``; every written PNG/GIF is
opened. Bad inputs must give exit status 2 and a one-line message naming the path, no traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from helpers import tree_bytes
from record_support import saved_record
from test_visualizer import assert_image, assert_links_resolve

from partattn_checks import cli
from partattn_checks.capture.record import AttentionRecord

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "fixtures" / "checkpoints" / "tiny-random"
IMAGES = REPO / "fixtures" / "images"
IMAGE = IMAGES / "np2_circle_square.png"
CHECKS = {"uniformity", "collapse", "part_separation", "stability", "nonfinite"}


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture(scope="module")
def run_out(tmp_path_factory):
    """One ``partattn run`` (2 parts, 2 steps) shared by the tests that read its outputs."""
    out = tmp_path_factory.mktemp("run") / "np2"
    code = cli.main(["run", str(IMAGE), "--model", str(TINY), "--steps", "2", "--out", str(out), "-q"])
    assert code == 0
    return out


#: Files of the user's put into the folder ``run1`` runs into: not partattn's, so never removed.
USERS_FILES = {"notes.txt": b"mine", "overlay_part7.png": b"mine too: not in the manifest"}


@pytest.fixture(scope="module")
def run1(tmp_path_factory, run_out):
    """One ``partattn run`` of a single part, with its output: ``(out folder, status, stdout, stderr)``.

    Not quiet, so its status lines can be read; an image named without a part count, so ``--num-parts``
    is what gives it one; CFG off (``--guidance 1.0``); a chosen layer and step for the multi-head grids.
    It reruns into a used folder: a copy of the 2-part run (``run_out``) holding ``USERS_FILES``, whose
    part-1 files are its stale ones (test_rerun_removes_its_own_stale_files_and_nothing_else)."""
    base = tmp_path_factory.mktemp("run1")
    image = base / "plain.png"
    shutil.copy(IMAGES / "np1_circle.png", image)
    out = Path(shutil.copytree(run_out, base / "o"))
    for name, data in USERS_FILES.items():
        (out / name).write_bytes(data)
    argv = ["run", image, "--model", TINY, "--steps", "2", "--num-parts", "1", "--guidance", "1.0"]
    argv += ["--out", out, "--layer", "blocks.2.attn2", "--step", "0"]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main([str(a) for a in argv])
    return out, code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def run1_out(run1):
    out, code, _, err = run1
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def small_record(tmp_path_factory):
    """A saved record of one part, step, layer and head: the fewest figures ``show`` draws. What the tests
    of the output-folder rules show into a used folder (a copy of ``run_out``): its part-1 files are stale."""
    return saved_record(tmp_path_factory.mktemp("small") / "rec")


# ----------------------------------------------------------------------------- help
@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["check", "--help"], ["show", "--help"]])
def test_help_exits_zero(capsys, argv):
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0
    assert out.startswith(f"usage: partattn{' ' + argv[0] if argv[0] != '--help' else ''}")


def test_help_names_the_options(capsys):
    _, out, _ = run_cli(capsys, "run", "--help")
    for option in (
        "--model",
        "--num-parts",
        "--steps",
        "--seed",
        "--guidance",
        "--device",
        "--dtype",
        "--out",
        "--quiet",
    ):
        assert option in out


# ----------------------------------------------------------------------------- run
def test_run_writes_figures_gifs_metrics_record_and_index(run_out, capsys):
    files = {p.relative_to(run_out).as_posix() for p in run_out.rglob("*") if p.is_file()}
    expected = {
        "index.html",
        "metrics.json",
        "record.json",
        "record.safetensors",
        "input.png",
        "parts.png",
        "overlay_part0.png",
        "overlay_part1.png",
        "timeline_uniformity.png",
        "timeline_collapse.png",
        "timeline_part_separation.png",
        "timeline_stability.png",
        "steps_part0.gif",
        "steps_part1.gif",
        "heads_blocks.4.attn2_step1_part0.png",
        "heads_blocks.4.attn2_step1_part1.png",
    }
    assert expected <= files, expected - files
    assert any(f.startswith("checks/") for f in files)  # the random model fails checks: their figures
    for name in files:
        path = run_out / name
        if name.endswith(".gif"):
            assert_image(path, fmt="GIF", frames=2)
        elif name.endswith(".png") and name != "input.png":
            assert_image(path)

    doc = json.loads((run_out / "metrics.json").read_text())
    assert set(doc["checks"]) == CHECKS
    assert doc["checks"]["part_separation"]["verdict"] in ("pass", "fail")
    assert {"entropy_mean", "separation", "stability_max_jump"} <= set(doc["summary"])
    assert doc["record"]["steps"] == [0, 1] and doc["record"]["num_parts"] == 2
    assert doc["record"]["full_maps"] == [[1, "blocks.4.attn2"]]
    assert all((run_out / f["path"]).is_file() for f in doc["figures"])

    record = AttentionRecord.load(run_out / "record")
    assert record.num_parts == 2 and record.steps == [0, 1] and record.meta["steps"] == 2
    page = (run_out / "index.html").read_text()
    assert "Checks" in page and "overlay_part1.png" in page and "steps_part0.gif" in page
    assert_links_resolve(run_out / "index.html")


def test_run_prints_verdicts_and_where_to_look(run1):
    o, code, out, err = run1
    assert code == 0 and "Traceback" not in err
    for name in CHECKS:
        assert name in out
    assert "SKIP" in out  # part separation needs 2 parts
    assert str(o / "index.html") in out
    assert "loading" in err and "[#" not in err  # status lines; no progress bar when stderr is not a TTY
    assert (o / "heads_blocks.2.attn2_step0_part0.png").is_file()
    assert json.loads((o / "metrics.json").read_text())["layer_shown"] == "blocks.2.attn2"


def test_num_parts_option_beats_the_file_name(run1_out):
    """plain.png names no part count (without --num-parts that is an error: test_no_part_count)."""
    record = AttentionRecord.load(run1_out / "record.json")
    assert Path(record.meta["image"]).name == "plain.png"
    assert record.num_parts == 1 and record.meta["cfg"] is False


# ----------------------------------------------------------------------------- show
def test_show_renders_a_saved_record(run_out, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "show", run_out / "record.json", "--out", tmp_path / "shown")
    assert code == 0 and "open" in out
    shown = tmp_path / "shown"
    for name in ("parts.png", "overlay_part0.png", "timeline_uniformity.png", "heads_blocks.4.attn2_step1_part1.png"):
        assert_image(shown / name)  # overlays: input.png next to the record was found
    assert_image(shown / "steps_part1.gif", fmt="GIF", frames=2)
    assert json.loads((shown / "metrics.json").read_text())["checks"].keys() == CHECKS
    assert_links_resolve(shown / "index.html")


def test_show_without_the_input_image(tmp_path, capsys):
    """A record moved away from input.png and its image (its model still there, as a run records it): drawn
    on the patch grid, and said so. A small record: the fewest figures to draw."""
    moved = saved_record(tmp_path / "moved", meta={"image": str(tmp_path / "gone.png"), "model": str(TINY)})
    code, _, _ = run_cli(capsys, "show", moved)
    assert code == 0
    assert not list(moved.glob("overlay_*.png")) and (moved / "parts.png").is_file()
    assert "--image PATH" in (moved / "index.html").read_text()


# ----------------------------------------------------------------------------- bad inputs
def test_missing_image_is_named(tmp_path, capsys):
    missing = tmp_path / "np2_nothing.png"
    code, _, err = run_cli(capsys, "run", missing, "--model", TINY)
    assert code == 2 and f"image not found: {missing}" in err


def test_unreadable_image_is_named(tmp_path, capsys):
    broken = tmp_path / "np2_broken.png"
    broken.write_bytes(b"not a png")
    code, _, err = run_cli(capsys, "run", broken, "--model", TINY)
    assert code == 2 and str(broken) in err


def test_missing_model_is_named(tmp_path, capsys):
    missing = tmp_path / "no-model"
    code, _, err = run_cli(capsys, "run", IMAGE, "--model", missing)
    assert code == 2 and f"model folder not found: {missing}" in err


def test_incomplete_model_is_named(tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(TINY, broken)
    shutil.rmtree(broken / "transformer")
    code, _, err = run_cli(capsys, "run", IMAGE, "--model", broken, "-q")
    assert code == 2 and str(broken / "transformer") in err


def test_missing_default_model(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli.args, "DEFAULT_MODEL", tmp_path / "partcrafter-tiny")
    code, _, err = run_cli(capsys, "run", IMAGE)
    assert code == 2 and str(tmp_path / "partcrafter-tiny") in err and "--model" in err


def test_no_part_count(tmp_path, capsys):
    image = tmp_path / "chair.png"
    shutil.copy(IMAGE, image)
    code, _, err = run_cli(capsys, "run", image, "--model", TINY)
    assert code == 2 and "--num-parts" in err and "np<N>_chair.png" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", str(IMAGE), "--steps", "0"], "--steps: must be at least 1"),
        (["run", str(IMAGE), "--num-parts", "two"], "--num-parts: expected a whole number"),
        (["run", str(IMAGE), "--dtype", "float64"], "--dtype: invalid choice"),
        (["run", str(IMAGE), "--bogus"], "unrecognized arguments: --bogus"),
        (["run"], "required: IMAGE"),
        (["show"], "required: RECORD"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
        (["run", str(IMAGE), "--model", str(TINY), "--num-parts", "5"], "use at most 4 parts"),
        (["run", str(IMAGE), "--model", str(TINY), "--layer", "blocks.9.attn2"], "--layer blocks.9.attn2"),
        (["run", str(IMAGE), "--model", str(TINY), "--layer", "7"], "--layer 7"),
        (["run", str(IMAGE), "--model", str(TINY), "--steps", "2", "--step", "2"], "--step 2: out of range"),
        (["run", str(IMAGE), "--device", "tpu"], "--device: unknown device; use auto, cpu, cuda or cuda:N, got 'tpu'"),
        (["check", "--device", "gpu"], "--device: unknown device; use auto, cpu, cuda or cuda:N, got 'gpu'"),
        (["run", str(IMAGE), "--seed", "-1"], "--seed: must be at least 0, got -1"),
        (["run", str(IMAGE), "--guidance", "-2"], "--guidance: must be at least 0"),
        (
            ["run", str(IMAGE), "--model", str(TINY), "--thresholds", "nope.toml"],
            "thresholds file not found: nope.toml",
        ),
    ],
)
def test_bad_arguments_exit_2_with_a_message(capsys, argv, message):
    code, _, err = run_cli(capsys, *argv, "-q") if argv[:1] == ["run"] and len(argv) > 2 else run_cli(capsys, *argv)
    assert code == 2
    assert message in err, err


def test_show_missing_record(tmp_path, capsys):
    code, _, err = run_cli(capsys, "show", tmp_path / "record.json")
    assert code == 2 and str(tmp_path / "record.json") in err


def test_show_bad_layer(run_out, capsys):
    code, _, err = run_cli(capsys, "show", run_out, "--layer", "blocks.7.attn2", "--out", run_out / "x")
    assert code == 2 and "blocks.7.attn2" in err


# ----------------------------------------------------------------------------- progress bar
class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_draws_on_a_terminal_only():
    tty = _Tty()
    bar = cli.ProgressBar(3, stream=tty)
    for step in range(3):
        bar(step, 1000.0, None)
    bar.close()
    text = tty.getvalue()
    assert "denoising" in text and "3/3" in text and "step" in text and text.endswith("\n") and text.count("\n") == 1

    piped = io.StringIO()
    bar = cli.ProgressBar(3, stream=piped)
    bar(0)
    bar.close()
    assert piped.getvalue() == ""
    quiet = _Tty()
    cli.ProgressBar(3, stream=quiet, enabled=False)(0)
    assert quiet.getvalue() == ""

    stopped = _Tty()
    bar = cli.ProgressBar(5, stream=stopped)
    bar(0)
    bar.close()  # a run that stopped early still ends its line
    assert stopped.getvalue().endswith("\n") and "1/5" in stopped.getvalue()


# ----------------------------------------------------------------------------- check
def test_check_builds_the_gate_command():
    args = cli.check_args(Path("m"), Path("f"), steps=2, device="cpu", extra=["--", "-x", "-k", "np2"])
    assert args == [
        "--partattn",
        "--partattn-model=m",
        "--partattn-fixtures=f",
        "--partattn-steps=2",
        "--partattn-device=cpu",
        "f",
        "-p",
        "no:cacheprovider",
        "-x",
        "-k",
        "np2",
    ]
    assert cli.check_args(Path("m"), Path("f")) == [
        "--partattn",
        "--partattn-model=m",
        "--partattn-fixtures=f",
        "f",
        "-p",
        "no:cacheprovider",
    ]


def test_check_missing_inputs(tmp_path, capsys):
    code, _, err = run_cli(capsys, "check", "--model", tmp_path / "none", "--fixtures", IMAGES)
    assert code == 2 and f"model folder not found: {tmp_path / 'none'}" in err
    code, _, err = run_cli(capsys, "check", "--model", TINY, "--fixtures", tmp_path / "nofix")
    assert code == 2 and f"fixture folder not found: {tmp_path / 'nofix'}" in err


def test_check_runs_the_gate_and_fails_on_a_random_model(tmp_path, monkeypatch, capsys):
    """The random-init model's parts are not separated: the gate exits non-zero, and pytest's rootdir
    (where results and baselines live) is the user's project, not the model's folder."""
    project = tmp_path / "project"
    (project / "fixtures").mkdir(parents=True)
    (project / "pytest.ini").write_text("[pytest]\n")
    shutil.copy(IMAGE, project / "fixtures" / IMAGE.name)
    monkeypatch.chdir(project)
    code, out, err = run_cli(
        capsys,
        "check",
        "--model",
        TINY,
        "--fixtures",
        "fixtures",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--",
        "-q",
        "-rf",
        "-k",
        "not baseline",
    )
    assert code == 1, out
    assert "PytestAssertRewriteWarning" not in out + err  # pytest runs in-process, after our package was imported
    assert re.search(r"FAILED \S*np2_circle_square\.png::part_separation", out), out
    assert (project / ".partattn-results" / "np2_circle_square").is_dir()


# ----------------------------------------------------------------------------- damaged inputs: exit 2, one line
def assert_one_line_error(code, err, *phrases):
    assert code == 2, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for phrase in phrases:
        assert phrase in lines[0], (phrase, err)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def never_loads(monkeypatch):
    """Loading a model (hence denoising) is an error: the command must stop before it."""
    from partattn_checks.present import visualizer

    def refuse(*args, **kwargs):
        raise AssertionError("the command loaded the model")

    monkeypatch.setattr(visualizer.AttentionVisualizer, "from_pretrained", refuse)


def test_run_truncated_checkpoint_weights_is_a_usage_error(tmp_path, capsys, never_loads):
    broken = Path(shutil.copytree(TINY, tmp_path / "broken"))
    weights = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    truncate(weights)
    code, _, err = run_cli(capsys, "run", IMAGE, "--model", broken, "--out", tmp_path / "o", "-q")
    assert_one_line_error(code, err, str(weights), "truncated:", "the header promises", "re-download")
    assert not (tmp_path / "o").exists(), "a failed run leaves no empty output folder behind"


def test_check_damaged_checkpoint_is_a_usage_error_before_pytest(tmp_path, capsys, monkeypatch):
    broken = Path(shutil.copytree(TINY, tmp_path / "broken"))
    weights = broken / "image_encoder_dinov2" / "model.safetensors"
    weights.write_bytes(b"PK\x03\x04 a zip archive, not safetensors")
    (broken / "scheduler" / "scheduler_config.json").write_text("{oops")
    monkeypatch.setattr("pytest.main", lambda *a, **k: pytest.fail("pytest ran on a damaged checkpoint"))
    code, _, err = run_cli(capsys, "check", "--model", broken, "--fixtures", IMAGES)
    assert_one_line_error(
        code,
        err,
        str(weights),
        "not a safetensors file",
        str(broken / "scheduler" / "scheduler_config.json"),
        "not valid JSON",
    )


@pytest.mark.parametrize("damage", ["truncated tensors", "garbage tensors", "garbage json"])
def test_show_damaged_record_is_a_usage_error(run_out, tmp_path, capsys, damage):
    folder = tmp_path / "rec"
    folder.mkdir()
    for name in ("record.json", "record.safetensors"):
        shutil.copy(run_out / name, folder / name)
    if damage == "truncated tensors":
        truncate(folder / "record.safetensors")
        named, what = folder / "record.safetensors", "truncated:"
    elif damage == "garbage tensors":
        (folder / "record.safetensors").write_bytes(b"\x00" * 64)
        named, what = folder / "record.safetensors", "not a safetensors file"
    else:
        (folder / "record.json").write_text('{"schema_version": 1, "pair_id": ')
        named, what = folder / "record.json", "not valid JSON"
    code, _, err = run_cli(capsys, "show", folder, "--out", tmp_path / "shown")
    assert_one_line_error(code, err, str(named), what, "re-save the record with partattn run")


def test_run_too_large_image_is_a_usage_error(tmp_path, capsys, monkeypatch, never_loads):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # the 224 x 224 fixture is over it
    code, _, err = run_cli(capsys, "run", IMAGE, "--model", TINY, "--out", tmp_path / "o", "-q")
    assert_one_line_error(
        code,
        err,
        str(IMAGE),
        "image too large: 50,176 pixels",
        "limit of 10,000 pixels",
        "PIL.Image.MAX_IMAGE_PIXELS",
        "downscale",
    )
    assert "DecompressionBomb" not in err


def test_show_too_large_or_truncated_image_is_a_usage_error(run_out, tmp_path, capsys, monkeypatch):
    from PIL import Image

    truncated = tmp_path / "half.png"
    shutil.copy(IMAGE, truncated)
    truncate(truncated)
    code, _, err = run_cli(capsys, "show", run_out, "--out", tmp_path / "a", "--image", truncated)
    assert_one_line_error(code, err, str(truncated), "not a readable image")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    code, _, err = run_cli(capsys, "show", run_out, "--out", tmp_path / "b", "--image", IMAGE)
    assert_one_line_error(code, err, str(IMAGE), "image too large", "downscale")


def test_show_damaged_input_png_falls_back_to_the_patch_grid(run1_out, tmp_path, capsys):
    """A run's input.png, damaged, next to a small record (the fewest figures to draw) whose image is gone."""
    folder = saved_record(tmp_path / "rec", meta={"image": str(tmp_path / "gone.png"), "model": str(TINY)})
    shutil.copy(run1_out / "input.png", folder / "input.png")
    truncate(folder / "input.png")
    code, _, err = run_cli(capsys, "show", folder, "--out", tmp_path / "shown")
    assert code == 0
    assert f"skipping {folder / 'input.png'}" in err
    assert "--image PATH" in (tmp_path / "shown" / "index.html").read_text()
    assert not list((tmp_path / "shown").glob("overlay_*.png"))


# ----------------------------------------------------------------------------- output folder checked up front
@pytest.mark.parametrize("command", ["run", "show"])
def test_out_that_is_a_file_fails_before_any_work(run_out, tmp_path, capsys, never_loads, command):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    source = [IMAGE, "--model", TINY, "-q"] if command == "run" else [run_out]
    code, _, err = run_cli(capsys, command, *source, "--out", taken)
    assert_one_line_error(code, err, f"--out {taken}: exists and is not a folder", "--out DIR")
    assert taken.read_text() == "mine"


@pytest.mark.parametrize("command", ["run", "show"])
def test_out_that_cannot_be_created_fails_before_any_work(run_out, tmp_path, capsys, never_loads, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    out = blocker / "sub" / "out"  # under a file: not creatable, even for root
    source = [IMAGE, "--model", TINY, "-q"] if command == "run" else [run_out]
    code, _, err = run_cli(capsys, command, *source, "--out", out)
    assert_one_line_error(code, err, f"--out {out}: cannot write there", "--out DIR")


def test_out_in_a_read_only_folder(tmp_path, capsys, never_loads):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the uncreatable case is tested under a file")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = run_cli(capsys, "run", IMAGE, "--model", TINY, "-q", "--out", locked / "out")
    finally:
        locked.chmod(0o700)
    assert_one_line_error(code, err, f"--out {locked / 'out'}: cannot write there")


def test_failed_run_removes_the_output_folders_it_created(tmp_path, capsys):
    out = tmp_path / "new" / "deeper"
    code, _, err = run_cli(capsys, "run", IMAGE, "--model", TINY, "--layer", "99", "-q", "--out", out)
    assert code == 2 and "--layer 99" in err
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- re-running into a folder
# A used folder is a copy of the 2-part run; what is run or shown into it has one part (the 1-part run, or the
# small record: the fewest figures to draw): its part-1 files are the stale ones.
def files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def manifest_files(folder: Path) -> set[str]:
    return set(json.loads((folder / cli.MANIFEST).read_text())["files"])


def test_manifest_lists_what_run_wrote(run_out):
    assert manifest_files(run_out) == files_in(run_out) - {cli.MANIFEST}


def test_rerun_removes_its_own_stale_files_and_nothing_else(run_out, run1_out):
    """``run1`` ran into a copy of ``run_out`` holding the user's files."""
    assert {"overlay_part1.png", "steps_part1.gif"} <= files_in(run_out)  # what was there before
    files = files_in(run1_out)
    assert not any("part1" in name for name in files), sorted(files)
    assert all((run1_out / name).read_bytes() == data for name, data in USERS_FILES.items())
    assert AttentionRecord.load(run1_out).num_parts == 1
    assert manifest_files(run1_out) == files - {cli.MANIFEST, *USERS_FILES}
    assert_links_resolve(run1_out / "index.html")


def test_show_into_a_used_folder_removes_stale_figures_and_keeps_records(run_out, small_record, tmp_path, capsys):
    out = Path(shutil.copytree(run_out, tmp_path / "out"))
    (out / "notes.txt").write_text("mine")
    code, _, _ = run_cli(capsys, "show", small_record, "--out", out)
    assert code == 0
    files = files_in(out)
    assert not any("part1" in name for name in files), sorted(files)
    assert {"record.json", "record.safetensors", "input.png", "notes.txt"} <= files  # data is never removed
    assert AttentionRecord.load(out).num_parts == 2  # the 2-part record is still there, untouched
    assert manifest_files(out) == files - {cli.MANIFEST, "notes.txt"}


def test_show_into_the_records_own_folder_keeps_the_record(run1_out, tmp_path, capsys):
    out = Path(shutil.copytree(run1_out, tmp_path / "out"))
    code, _, _ = run_cli(capsys, "show", out, "--layer", "0")
    assert code == 0
    assert AttentionRecord.load(out).num_parts == 1 and (out / "input.png").is_file()
    assert manifest_files(out) == files_in(out) - {cli.MANIFEST, *USERS_FILES}  # the user's files: still theirs


def test_folder_written_before_manifests_is_cleaned_from_its_metrics(run_out, small_record, tmp_path, capsys):
    out = Path(shutil.copytree(run_out, tmp_path / "out"))
    (out / cli.MANIFEST).unlink()  # as written by partattn before manifests: metrics.json lists the figures
    (out / "notes.txt").write_text("mine")
    code, _, _ = run_cli(capsys, "show", small_record, "--out", out)
    assert code == 0
    files = files_in(out)
    assert not any("part1" in name for name in files) and "notes.txt" in files


def test_interrupted_render_changes_nothing(run_out, small_record, tmp_path, capsys, monkeypatch):
    from partattn_checks.present.pages import run_page

    out = tmp_path / "out"
    real = run_page.render_record

    def crash_after_figures(record, out_dir, **kwargs):
        real(record, out_dir, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_page, "render_record", crash_after_figures)
    code, _, _ = run_cli(capsys, "show", small_record, "--out", out)
    assert code == 130 and not out.exists()  # rendered aside: the interrupted attempt leaves nothing behind
    used = Path(shutil.copytree(run_out, tmp_path / "used"))
    before = tree_bytes(used)
    code, _, _ = run_cli(capsys, "show", small_record, "--out", used)
    assert code == 130 and tree_bytes(used) == before  # ... and changes nothing in a folder already used
    monkeypatch.setattr(run_page, "render_record", real)
    code, _, _ = run_cli(capsys, "show", small_record, "--out", out)
    assert code == 0 and (out / "parts.png").is_file() and (out / "steps_part0.gif").is_file()


def test_unreadable_manifest_removes_nothing_and_says_so(run_out, small_record, tmp_path, capsys):
    out = Path(shutil.copytree(run_out, tmp_path / "out"))
    (out / cli.MANIFEST).write_text("{not json")
    code, _, err = run_cli(capsys, "show", small_record, "--out", out)
    assert code == 0 and f"{out / cli.MANIFEST} is unreadable" in err
    assert (out / "overlay_part1.png").is_file()  # unknown ownership: left alone
    assert "overlay_part1.png" not in manifest_files(out)
