"""One output-folder rule for every writer (issue 25): ``partattn run``, ``show`` (into ``--out`` and
into the record's own folder), ``trend`` and the gate's ``--partattn-results`` write only into a new,
empty or own folder; a file of the user's in the way is named with how to proceed (exit 2 for the
command, 4 for pytest) and nothing in the folder changes. Reruns into a writer's own output work.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import FIXTURE_IMAGES, TINY_FIXTURE, tree_bytes
from plugin_support import IMAGE, args, make_project
from record_support import saved_record

from partattn_checks import EMBEDDED_MODEL
from partattn_checks.base import outfolder
from partattn_checks.cli import main
from partattn_checks.gate.results_folder import CANDIDATES

pytest_plugins = ("pytester",)
RUN_IMAGE = FIXTURE_IMAGES / IMAGE


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def assert_refused(code: int, err: str, *phrases: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1, err  # one line
    for phrase in phrases:
        assert phrase in err, err


def users_folder(root: Path, **files: str) -> Path:
    """A folder of the user's holding ``files`` (name -> text; ``__`` in a name is a ``/``)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = root / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture(autouse=True)
def _not_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)  # the gate refuses --partattn-update under CI (tests/test_baseline.py)


@pytest.fixture
def never_denoises(monkeypatch):
    """Loading a model is an error: the command must stop before any work."""
    from partattn_checks.analysis import trend
    from partattn_checks.present import visualizer

    def refuse(*args, **kwargs):
        raise AssertionError("the command loaded a model")

    monkeypatch.setattr(visualizer.AttentionVisualizer, "from_pretrained", refuse)
    monkeypatch.setattr(trend, "run_trend", refuse)


# ----------------------------------------------------------------------------- partattn run
def test_run_refuses_a_users_index_html_before_any_work(tmp_path, capsys, never_denoises):
    out = users_folder(tmp_path / "mine", **{"index.html": "<p>mine</p>", "notes.txt": "mine"})
    before = tree_bytes(out)
    code, err = run_cli(capsys, "run", RUN_IMAGE, "--model", TINY_FIXTURE, "--steps", "2", "--out", out, "-q")
    assert_refused(code, err, f"--out {out}: {out / 'index.html'} is not a file partattn wrote there", "--out DIR")
    assert tree_bytes(out) == before


def test_run_refuses_a_users_figure_named_like_its_own_and_changes_nothing(tmp_path, capsys):
    """Figure names are known once drawn: the run is refused after rendering, before anything is moved in.
    A 1-part image: half the figures of a 2-part one to draw before the refusal."""
    out = users_folder(tmp_path / "mine", **{"overlay_part0.png": "my own picture"})
    before = tree_bytes(out)
    image = FIXTURE_IMAGES / "np1_circle.png"
    code, err = run_cli(capsys, "run", image, "--model", TINY_FIXTURE, "--steps", "2", "--out", out, "-q")
    assert_refused(code, err, f"{out / 'overlay_part0.png'} is not a file partattn wrote there")
    assert tree_bytes(out) == before  # nothing staged is left behind either
    assert sorted(p.name for p in out.iterdir()) == ["overlay_part0.png"]


# ----------------------------------------------------------------------------- partattn show
def test_show_into_the_records_own_folder_refuses_a_users_index_html(tmp_path, capsys):
    folder = users_folder(tmp_path / "rec", **{"index.html": "<p>my notes on this record</p>"})
    saved_record(folder)
    before = tree_bytes(folder)
    code, err = run_cli(capsys, "show", folder)
    assert_refused(code, err, f"output folder (the record's) {folder}: {folder / 'index.html'} is not a file")
    assert tree_bytes(folder) == before
    (folder / "index.html").unlink()  # moved away: the record's folder is then the record's own
    code, _ = run_cli(capsys, "show", folder)
    assert code == 0 and {"index.html", "metrics.json", "record.json"} <= {p.name for p in folder.iterdir()}


def test_show_out_refuses_a_users_metrics_json(tmp_path, capsys):
    record = saved_record(tmp_path / "rec")
    out = users_folder(tmp_path / "mine", **{"metrics.json": '{"mine": true}'})
    before = tree_bytes(out)
    code, err = run_cli(capsys, "show", record, "--out", out)
    assert_refused(code, err, f"--out {out}: {out / 'metrics.json'} is not a file partattn wrote there")
    assert tree_bytes(out) == before


def test_show_reruns_into_its_own_output_and_keeps_the_users_other_files(tmp_path, capsys):
    record = saved_record(tmp_path / "rec", parts=2)
    out = tmp_path / "shown"
    assert run_cli(capsys, "show", record, "--out", out)[0] == 0
    assert [p.parent.name for p in out.glob("*/*.png")] == ["checks"] * 2  # own files in a subfolder too
    (out / "notes.txt").write_text("mine")
    assert run_cli(capsys, "show", record, "--out", out)[0] == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert not [p for p in out.iterdir() if p.name.startswith(outfolder.STAGING_PREFIX)]
    links = json.loads((out / "metrics.json").read_text())["files"]
    assert {f["path"] for f in links} == {"../rec/record.json", "../rec/record.safetensors"}  # relative to out


# ----------------------------------------------------------------------------- partattn trend
@pytest.mark.parametrize("name", ["trend.json", "index.html"])
def test_trend_refuses_a_users_file_before_any_work(tmp_path, capsys, never_denoises, name):
    out = users_folder(tmp_path / "mine", **{name: "mine"})
    before = tree_bytes(out)
    argv = ["trend", EMBEDDED_MODEL, "--fixtures", FIXTURE_IMAGES, "--steps", "2", "--out", out, "-q"]
    code, err = run_cli(capsys, *argv)
    assert_refused(code, err, f"--out {out}: {out / name} is not a file partattn wrote there", "--out DIR")
    assert tree_bytes(out) == before


# ----------------------------------------------------------------------------- the rule itself
def test_staged_outputs_are_checked_all_before_any_is_moved_in(tmp_path):
    out = users_folder(tmp_path / "out", **{"b.png": "mine"})
    with pytest.raises(outfolder.OutputFolderError, match=r"b\.png is not a file partattn wrote there"):
        with outfolder.Outputs(out, "test") as outputs:
            stage = outputs.stage()
            (stage / "a.png").write_text("new")
            (stage / "b.png").write_text("new")
    assert tree_bytes(out) == {"b.png": b"mine"}  # a.png was not moved in either; the stage is gone


def test_a_file_where_a_folder_goes_is_in_the_way(tmp_path):
    out = users_folder(tmp_path / "out", checks="a file named like the folder")
    assert outfolder.in_the_way(out, ["checks/a.png"], owned=set()) == [out / "checks"]


def test_an_own_folder_is_replaced_and_its_stale_files_removed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for names in (["a.png", "b.png"], ["a.png"]):
        with outfolder.Outputs(out, "test") as outputs:
            for name in names:
                (outputs.stage() / name).write_text(f"{len(names)}")
    assert tree_bytes(out).keys() == {"a.png", outfolder.MANIFEST}
    assert json.loads((out / outfolder.MANIFEST).read_text())["files"] == ["a.png"]


# ----------------------------------------------------------------------------- the gate's --partattn-results
def test_gate_refuses_a_results_folder_with_a_users_index_html(pytester):
    make_project(pytester)
    docs = users_folder(pytester.path / "docs", **{"index.html": "<p>our project page</p>"})
    before = tree_bytes(pytester.path)
    result = pytester.runpytest_inprocess(*args("--partattn-results=docs"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    line = f"ERROR: --partattn-results docs: {docs / 'index.html'} is not a file partattn wrote there*"
    result.stderr.fnmatch_lines([line + "; pass --partattn-results=DIR*"])
    assert tree_bytes(pytester.path) == before  # no item ran: no figure, baseline or candidate either


def passing_gate(pytester, *extra: str) -> None:
    result = pytester.runpytest_inprocess(*args(*extra))
    assert result.ret == 0, result.stderr.str() + result.stdout.str()[-3000:]


def test_gate_reruns_into_its_results_and_leaves_the_users_other_files(pytester):
    make_project(pytester)
    results = pytester.path / ".partattn-results"
    passing_gate(pytester, "--partattn-update=missing", "--partattn-baseline-seeds=2")  # a baseline, quickly
    manifest = json.loads((results / outfolder.MANIFEST).read_text())
    assert manifest["written_by"] == "pytest --partattn" and "index.html" in manifest["files"]
    (results / outfolder.MANIFEST).unlink()  # as written before manifests: the gate's own index.html is recognised
    passing_gate(pytester)
    figure = results / Path(IMAGE).stem / "uniformity__heads.png"  # as a session killed before its end leaves it
    figure.parent.mkdir(exist_ok=True)
    figure.write_bytes(b"a figure of the gate's")
    passing_gate(pytester)
    notes = [results / "notes.txt", results / Path(IMAGE).stem / "notes__mine.png", results / CANDIDATES / "n.txt"]
    for path in notes:  # files the gate never writes, replaces or removes
        path.parent.mkdir(exist_ok=True)
        path.write_text("mine")
    passing_gate(pytester)
    assert all(path.read_text() == "mine" for path in notes)
    (results / outfolder.MANIFEST).unlink()
    (results / "index.html").write_text("<title>our team page</title>")  # not the gate's page, listed nowhere
    before = tree_bytes(pytester.path)
    result = pytester.runpytest_inprocess(*args())
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    index = results / "index.html"
    result.stderr.fnmatch_lines([f"ERROR: --partattn-results (default .partattn-results): {index} is not a file*"])
    assert tree_bytes(pytester.path) == before


def test_gate_refuses_a_results_path_that_is_a_file(pytester):
    make_project(pytester)
    (pytester.path / "results.txt").write_text("mine")
    result = pytester.runpytest_inprocess(*args("--partattn-results=results.txt"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --partattn-results results.txt: *results.txt exists and is not a folder*"])
    assert (pytester.path / "results.txt").read_text() == "mine"


def test_compare_shares_the_rule(tmp_path, capsys):
    out = users_folder(tmp_path / "mine", **{"compare.json": "{}"})
    before = tree_bytes(out)
    code, err = run_cli(capsys, "compare", TINY_FIXTURE, TINY_FIXTURE, "--fixtures", FIXTURE_IMAGES, "--out", out)
    assert_refused(code, err, f"{out / 'compare.json'} is not a file partattn wrote there")
    assert tree_bytes(out) == before


def test_a_copied_run_folder_is_still_its_own(tmp_path, capsys):
    """A folder written by ``partattn show`` and then copied elsewhere keeps its manifest: still its own."""
    record = saved_record(tmp_path / "rec")
    first = tmp_path / "first"
    assert run_cli(capsys, "show", record, "--out", first)[0] == 0
    copy = Path(shutil.copytree(first, tmp_path / "copy"))
    assert run_cli(capsys, "show", record, "--out", copy)[0] == 0
