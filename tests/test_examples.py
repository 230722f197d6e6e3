"""The three scripts in examples/ run as written, from any working directory, on the embedded model.

Each runs from an empty temporary working directory, so it can only find the model and its images
through the installed package. They run in this process as ``__main__`` (``runpy``, with
``sys.argv`` and ``sys.path[0]`` as ``python examples/<name>.py OUT_DIR ...`` sets them; a
SystemExit gives the exit status): the same code as a user's run, without paying ~10 s of
interpreter and torch start-up each time. One runs as a real subprocess, where the process is the
property: a fresh interpreter that starts the script as written, says one line on stderr and exits 2.
Their outputs are opened and checked: real PNG/GIF figures of a readable size, and JSON numbers
that say what the script claims.
"""

from __future__ import annotations

import argparse
import json
import math
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import more_colours_than
from PIL import Image

from partattn_checks.render.panels import MIN_PANEL_PX

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
LAYERS = [f"blocks.{i}.attn2" for i in range(5)]  # the embedded tiny model's cross-attention layers
STEPS = 3


@pytest.fixture
def run_main(cwd, monkeypatch, capsys):
    """``run_main(name, *args)``: ``examples/<name>.py out ...`` run in this process as ``__main__``
    from ``cwd``, with ``sys.argv`` and ``sys.path[0]`` as ``python examples/<name>.py`` sets them;
    returns its exit status (0 when it returns) and what it wrote on stdout and stderr."""
    monkeypatch.chdir(cwd)
    monkeypatch.syspath_prepend(str(EXAMPLES))

    def run(name: str, *args: str) -> tuple[int, str, str]:
        script = str(EXAMPLES / f"{name}.py")
        monkeypatch.setattr(sys, "argv", [script, "out", *args])
        capsys.readouterr()
        try:
            runpy.run_path(script, run_name="__main__")
            status = 0
        except SystemExit as exit_:
            status = exit_.code
        said = capsys.readouterr()
        return status, said.out, said.err

    return run


@pytest.fixture
def run_example(cwd, run_main):
    """``run_example(name, *args)``: ``examples/<name>.py out ...`` from ``cwd`` (``run_main``), which must
    succeed; returns the output folder and stdout."""

    def run(name: str, *args: str) -> tuple[Path, str]:
        status, out, err = run_main(name, *args)
        assert status == 0, f"{name} failed:\n{out}\n{err}"
        return cwd / "out", out

    return run


def assert_figure(path: Path, fmt: str = "PNG", frames: int | None = None) -> None:
    """A decodable figure of real content and readable size."""
    assert path.is_file(), path
    assert path.stat().st_size > 10_000, (path, path.stat().st_size)
    with Image.open(path) as im:
        assert im.format == fmt, (path, im.format)
        assert min(im.size) >= MIN_PANEL_PX, (path, im.size)
        if frames is not None:
            assert im.n_frames == frames, (path, im.n_frames)
        assert more_colours_than(im, 50), (path, "50 colours or fewer")


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def test_examples_folder_has_the_three_scripts_the_guide_names():
    names = {p.name for p in EXAMPLES.glob("*.py")}
    assert {
        "attention_visualization_example.py",
        "part_attention_analysis.py",
        "temporal_attention_analysis.py",
    } <= names
    assert (EXAMPLES / "README.md").is_file()


def test_attention_visualization_example(run_example):
    out, stdout = run_example("attention_visualization_example")
    for name in ("heatmap.png", "heads.png", "parts.png"):
        assert_figure(out / name)
    with Image.open(out / "scene.png") as scene:  # the drawn 2-part scene it ran on
        assert scene.size == (224, 224) and len(scene.convert("RGB").getcolors()) == 3  # background + 2 parts
    stats = json.loads((out / "statistics.json").read_text())
    assert list(stats) == LAYERS
    for layer in stats.values():
        assert 0.0 < layer["entropy"] <= 1.0 and 0.0 <= layer["sparsity"] <= 1.0
        assert len(layer["heads"]) == 4 and layer["num_keys"] == 64
    assert "blocks.4.attn2: (2, 4, 16, 65)" in stdout  # parts, heads, queries, CLS + 64 patch keys


def test_part_attention_analysis(run_example):
    out, stdout = run_example("part_attention_analysis", "--steps", str(STEPS))
    assert_figure(out / "parts.png")
    for layer in LAYERS:
        assert_figure(out / f"parts_{layer}.png")
    summary = json.loads((out / "separation.json").read_text())
    per_layer = summary["separation_per_layer"]
    assert list(per_layer) == LAYERS and all(0.0 <= v <= 1.0 for v in per_layer.values())
    assert summary["most_separated_layer"] == max(per_layer, key=per_layer.get)
    pairwise = summary["pairwise_separation"]
    assert len(pairwise) == 3 and all(math.isclose(pairwise[i][i], 0.0, abs_tol=1e-6) for i in range(3))
    # the healthy embedded model separates the parts of a scene like those it was trained on
    assert summary["checks"]["part_separation"] == "pass"
    assert f"{summary['most_separated_layer']}: part separation" in stdout


def test_temporal_attention_analysis_on_a_given_image(run_example):
    image = REPO / "fixtures" / "images" / "np2_circle_square.png"
    args = ("--steps", str(STEPS), "--image", str(image), "--num-parts", "2")
    out, stdout = run_example("temporal_attention_analysis", *args)
    assert_figure(out / "entropy.png")
    assert_figure(out / "jumps.png")
    for part in range(2):
        assert_figure(out / f"part{part}.gif", fmt="GIF", frames=STEPS)
    assert not (out / "scene.png").exists()  # it used the given image
    doc = json.loads((out / "steps.json").read_text())
    assert [row["step"] for row in doc["steps"]] == list(range(STEPS))
    assert doc["steps"][0]["max_jump"] is None
    assert all(0.0 <= row["max_jump"] <= 1.0 for row in doc["steps"][1:])
    assert all(0.0 < row["entropy"] <= 1.0 for row in doc["steps"])
    assert stdout.count("step ") == STEPS


def test_temporal_attention_analysis_takes_the_part_count_from_the_image_name(run_example):
    image = REPO / "fixtures" / "images" / "np3_three_shapes.png"
    out, _ = run_example("temporal_attention_analysis", "--steps", "2", "--image", str(image))
    assert sorted(p.name for p in out.glob("*.gif")) == ["part0.gif", "part1.gif", "part2.gif"]


# ----------------------------------------------------------------------------- bad arguments: one line, exit 2
@pytest.mark.parametrize(
    "name", ["attention_visualization_example", "part_attention_analysis", "temporal_attention_analysis"]
)
def test_an_output_path_that_is_a_file_is_one_line_and_exit_2(cwd, run_main, name):
    (cwd / "out").write_text("my notes\n")
    status, _, err = run_main(name)
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith(f"{name}.py: error: out: exists and is not a folder")
    assert (cwd / "out").read_text() == "my notes\n"


def test_a_script_started_by_python_says_one_line_and_exits_2(cwd):
    """The process boundary, once: ``python examples/<name>.py out`` in a fresh interpreter finds
    ``_inputs`` next to the script, exits with status 2 and says nothing on stderr but the one line
    (no start-up warning or traceback). The three scripts import the same modules before they check
    their arguments, so one of them stands for all three here; the others run in this process above."""
    name = "temporal_attention_analysis"
    (cwd / "out").write_text("my notes\n")
    script = str(EXAMPLES / f"{name}.py")
    proc = subprocess.run([sys.executable, script, "out"], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"{name}.py: error: out: exists and is not a folder")
    assert (cwd / "out").read_text() == "my notes\n"


@pytest.fixture
def inputs(monkeypatch):
    """``examples/_inputs.py``, the scripts' argument checks, and a parser like theirs."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import _inputs

    parser = argparse.ArgumentParser(prog="example.py")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--image", type=Path)
    parser.add_argument("--num-parts", type=_inputs.positive_int)
    return lambda *argv: _inputs.checked_inputs(parser, parser.parse_args(argv), drawn_parts=2)


def test_the_part_count_comes_from_the_option_the_name_or_the_drawn_scene(inputs, tmp_path):
    np3 = tmp_path / "np3_shapes.png"
    shutil.copyfile(REPO / "fixtures" / "images" / "np3_three_shapes.png", np3)
    assert inputs(str(tmp_path / "a"), "--image", str(np3)) == 3
    assert inputs(str(tmp_path / "b"), "--image", str(np3), "--num-parts", "3") == 3
    assert inputs(str(tmp_path / "c")) == 2 and (tmp_path / "c").is_dir()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--image", "missing.png"], "--image missing.png: no such file"),
        (["--image", "notes.png"], "--image notes.png: not a readable image"),
        (["--image", "plain.png"], "--image plain.png: cannot tell its number of parts; pass --num-parts N or name"),
        (["--image", "np0_x.png"], "--image np0_x.png: the np<N>_ prefix needs N >= 1"),
        (["--image", "np3_x.png", "--num-parts", "2"], "--num-parts 2 contradicts the image's name np3_x.png (np3_)"),
        (["--num-parts", "0"], "argument --num-parts: must be at least 1, got 0"),
    ],
)
def test_bad_images_and_part_counts_are_one_line_and_exit_2(inputs, tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.png").write_text("not an image")
    for name in ("plain.png", "np0_x.png", "np3_x.png"):
        shutil.copyfile(REPO / "fixtures" / "images" / "np2_circle_square.png", tmp_path / name)
    with pytest.raises(SystemExit) as exit_:
        inputs("out", *argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err.splitlines()[-1], err
    assert not (tmp_path / "out").exists()  # checked before the output folder is made
