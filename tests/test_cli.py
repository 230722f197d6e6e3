"""The ``partattn`` command, called in-process through ``cli.main([...])`` (exit status returned).

End to end on the CPU with the tiny random checkpoint and ``--steps 2``; every written PNG/GIF is
opened. Bad inputs must give exit status 2 and a one-line message naming the path, no traceback.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest

from partattn_checks import cli
from partattn_checks.record import AttentionRecord

from test_visualizer import assert_image, assert_links_resolve

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


# ----------------------------------------------------------------------------- help
@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["check", "--help"], ["show", "--help"]])
def test_help_exits_zero(capsys, argv):
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0
    assert out.startswith(f"usage: partattn{' ' + argv[0] if argv[0] != '--help' else ''}")


def test_help_names_the_options(capsys):
    _, out, _ = run_cli(capsys, "run", "--help")
    for option in ("--model", "--num-parts", "--steps", "--seed", "--guidance", "--device", "--dtype", "--out",
                   "--quiet"):
        assert option in out


# ----------------------------------------------------------------------------- run
def test_run_writes_figures_gifs_metrics_record_and_index(run_out, capsys):
    files = {p.relative_to(run_out).as_posix() for p in run_out.rglob("*") if p.is_file()}
    expected = {"index.html", "metrics.json", "record.json", "record.safetensors", "input.png", "parts.png",
                "overlay_part0.png", "overlay_part1.png", "timeline_entropy.png", "timeline_peak.png",
                "timeline_separation.png", "timeline_stability.png", "steps_part0.gif", "steps_part1.gif",
                "heads_blocks.4.attn2_step1_part0.png", "heads_blocks.4.attn2_step1_part1.png"}
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


def test_run_prints_verdicts_and_where_to_look(tmp_path, capsys):
    code, out, err = run_cli(capsys, "run", IMAGES / "np1_circle.png", "--model", TINY, "--steps", "2",
                             "--out", tmp_path / "o", "--layer", "blocks.2.attn2", "--step", "0")
    assert code == 0
    for name in CHECKS:
        assert name in out
    assert "SKIP" in out  # part separation needs 2 parts
    assert str(tmp_path / "o" / "index.html") in out
    assert "loading" in err and "[#" not in err  # status lines; no progress bar when stderr is not a TTY
    assert (tmp_path / "o" / "heads_blocks.2.attn2_step0_part0.png").is_file()
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["layer_shown"] == "blocks.2.attn2"


def test_num_parts_option_beats_the_file_name(tmp_path, capsys):
    image = tmp_path / "plain.png"
    shutil.copy(IMAGE, image)
    code, _, _ = run_cli(capsys, "run", image, "--model", TINY, "--steps", "1", "--num-parts", "3",
                         "--out", tmp_path / "o", "-q", "--guidance", "1.0")
    assert code == 0
    record = AttentionRecord.load(tmp_path / "o" / "record.json")
    assert record.num_parts == 3 and record.meta["cfg"] is False


# ----------------------------------------------------------------------------- show
def test_show_renders_a_saved_record(run_out, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "show", run_out / "record.json", "--out", tmp_path / "shown")
    assert code == 0 and "open" in out
    shown = tmp_path / "shown"
    for name in ("parts.png", "overlay_part0.png", "timeline_entropy.png", "heads_blocks.4.attn2_step1_part1.png"):
        assert_image(shown / name)  # overlays: input.png next to the record was found
    assert_image(shown / "steps_part1.gif", fmt="GIF", frames=2)
    assert json.loads((shown / "metrics.json").read_text())["checks"].keys() == CHECKS
    assert_links_resolve(shown / "index.html")


def test_show_without_the_input_image(run_out, tmp_path, capsys):
    """A record moved away from input.png, its image and its model: drawn on the patch grid, and said so."""
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("record.json", "record.safetensors"):
        shutil.copy(run_out / name, moved / name)
    doc = json.loads((moved / "record.json").read_text())
    doc["meta"]["image"] = str(tmp_path / "gone.png")
    (moved / "record.json").write_text(json.dumps(doc))
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
    monkeypatch.setattr(cli, "DEFAULT_MODEL", tmp_path / "partcrafter-tiny")
    code, _, err = run_cli(capsys, "run", IMAGE)
    assert code == 2 and str(tmp_path / "partcrafter-tiny") in err and "--model" in err


def test_no_part_count(tmp_path, capsys):
    image = tmp_path / "chair.png"
    shutil.copy(IMAGE, image)
    code, _, err = run_cli(capsys, "run", image, "--model", TINY)
    assert code == 2 and "--num-parts" in err and "np<N>_chair.png" in err


@pytest.mark.parametrize("argv, message", [
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
    (["run", str(IMAGE), "--device", "tpu"], "--device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["check", "--device", "gpu"], "--device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
    (["run", str(IMAGE), "--model", str(TINY), "--thresholds", "nope.toml"], "thresholds file not found: nope.toml"),
])
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
    assert text.count("\r") == 3 and "3/3 steps" in text and text.endswith("\n") and text.count("\n") == 1
    assert "[" + "#" * 24 + "]" in text

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
    assert stopped.getvalue().endswith("\n") and "1/5 steps" in stopped.getvalue()


# ----------------------------------------------------------------------------- check
def test_check_builds_the_gate_command():
    args = cli.check_args(Path("m"), Path("f"), steps=2, device="cpu", extra=["--", "-x", "-k", "np2"])
    assert args == ["--partattn", "--partattn-model=m", "--partattn-fixtures=f", "--partattn-steps=2",
                    "--partattn-device=cpu", "f", "-p", "no:cacheprovider", "-x", "-k", "np2"]
    assert cli.check_args(Path("m"), Path("f")) == ["--partattn", "--partattn-model=m", "--partattn-fixtures=f",
                                                    "f", "-p", "no:cacheprovider"]


def test_check_missing_inputs(tmp_path, capsys):
    code, _, err = run_cli(capsys, "check", "--model", tmp_path / "none", "--fixtures", IMAGES)
    assert code == 2 and f"model folder not found: {tmp_path / 'none'}" in err
    code, _, err = run_cli(capsys, "check", "--model", TINY, "--fixtures", tmp_path / "nofix")
    assert code == 2 and f"fixture folder not found: {tmp_path / 'nofix'}" in err


def test_check_runs_the_gate_and_fails_on_a_random_model(tmp_path, monkeypatch, capsys):
    """The random-init model's parts are not separated: the gate exits non-zero, and pytest's rootdir
    (where results and baselines live) is the user's project, not the model's folder."""
    if not (REPO / "partattn_checks" / "plugin.py").is_file():
        pytest.skip("partattn_checks/plugin.py is not written yet: `partattn check` has no gate to run")
    project = tmp_path / "project"
    (project / "fixtures").mkdir(parents=True)
    (project / "pytest.ini").write_text("[pytest]\n")
    shutil.copy(IMAGE, project / "fixtures" / IMAGE.name)
    monkeypatch.chdir(project)
    code, out, _ = run_cli(capsys, "check", "--model", TINY, "--fixtures", "fixtures", "--steps", "2",
                           "--device", "cpu", "--", "-q", "-rf", "-k", "not baseline")
    assert code == 1, out
    assert re.search(r"FAILED \S*np2_circle_square\.png::part_separation", out), out
    assert (project / ".partattn-results" / "np2_circle_square").is_dir()
