"""The GitHub job summary: with ``GITHUB_STEP_SUMMARY`` set, the gate appends its report as markdown.

End to end (pytester, in-process) on two fixture images with their committed baselines: the embedded
model passes; a second tiny model (``fixtures/checkpoints/tiny-seed1``, other weights) fails its
baseline items (paired, with drift numbers per metric and layer), the fixture set and some checks. The
file already holds a line from an "earlier step", which must stay. That under pytest-xdist only the
controller appends is checked by the xdist runs of tests/test_plugin_subprocess.py (each launch of
pytest -n 2 costs some 40 s of CPU: one launch serves both).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from plugin_support import args, make_project

from partattn_checks.gate.report import ItemReport, markdown, metric_rows, offender_text

pytest_plugins = ("pytester",)

REPO = Path(__file__).resolve().parents[1]
IMAGES = ("np2_circle_square.png", "np3_three_shapes.png")
EARLIER = "# Build\nearlier step's line"  # no final newline: the summary must start on a line of its own
CHECKS = ("uniformity", "collapse", "part_separation", "stability", "nonfinite", "baseline")


def gate(pytester: pytest.Pytester, monkeypatch, *extra: str, summary: Path | None = None):
    """The gate on IMAGES with their committed baselines (the embedded model's defaults: paired)."""
    make_project(pytester, images=IMAGES, thresholds="")
    for image in IMAGES:
        stem = Path(image).stem
        shutil.copytree(REPO / "fixtures" / "baselines" / stem, pytester.path / "baselines" / stem)
    path = summary if summary is not None else pytester.path / "step-summary.md"
    if summary is None:
        path.write_text(EARLIER)
    monkeypatch.setenv(markdown.ENV, str(path))
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "--partattn", "--partattn-baselines=baselines", "--junitxml=junit.xml", *extra
    )
    return result, path


def appended(path: Path) -> list[str]:
    """The lines the gate appended after the earlier step's (which must be intact)."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith(EARLIER + "\n\n"), text[:200]
    return text[len(EARLIER) + 2 :].splitlines()


def item_reports(result) -> list[ItemReport]:
    reports = result.reprec.getreports("pytest_runtest_logreport")
    return [ItemReport.from_dict(r.partattn) for r in reports if r.when == "call" and hasattr(r, "partattn")]


def test_a_passing_gate_appends_its_verdict_table_and_artifacts(pytester, monkeypatch):
    result, path = gate(pytester, monkeypatch)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    lines = appended(path)
    assert lines[0] == "## ✅ partattn gate: PASSED: 12 passed · fixture set passed"  # the verdict first
    text = "\n".join(lines)
    assert "### Failures" not in text
    assert "- **model**: embedded partcrafter-tiny (" in text  # what ran (the summary's opening lines)
    assert "- **baselines**: baselines (--partattn-verdict auto): paired 2" in text
    header = lines.index("### All checks") + 2
    assert lines[header] == "| image | " + " | ".join(markdown.escape(c) for c in CHECKS) + " |"
    rows = {line.split(" | ")[0]: line for line in lines[header + 2 : header + 5]}
    assert set(rows) == {f"| `fixtures/images/{i}`" for i in IMAGES} | {"| fixture-set (all 2 images)"}
    assert rows["| `fixtures/images/np2_circle_square.png`"].endswith(" pass |")  # the baseline column
    assert rows["| fixture-set (all 2 images)"] == "| fixture-set (all 2 images) |  |  |  |  |  | pass |"
    assert "fixture set: pass (no shift shared by the 2 images (paired verdict)" in text
    artifacts = lines[lines.index("### Artifacts") + 2 :]
    assert artifacts == [
        "- results folder: `.partattn-results` (figures of the failing checks)",
        "- the full report: `.partattn-results/index.html` (open it from the uploaded results folder)",
        "- JUnit XML: `junit.xml`",
    ]
    assert (pytester.path / ".partattn-results" / "index.html").is_file()


def test_a_failing_gate_appends_each_failure_with_its_reason_and_drift_numbers(pytester, monkeypatch):
    other = REPO / "fixtures" / "checkpoints" / "tiny-seed1"
    result, path = gate(pytester, monkeypatch, f"--partattn-model={other}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    lines = appended(path)
    assert lines[0].startswith("## ❌ partattn gate: FAILED: ")
    text = "\n".join(lines)
    failing = [p for p in item_reports(result) if p.verdict == "fail"]
    assert {p.check for p in failing} >= {"baseline"}
    assert f"- **model**: {markdown.escape(str(other))}" in lines  # what ran
    for p in failing:  # each failure: heading, reason, its metric rows (the drift numbers), commands
        heading = f"#### {markdown.escape(p.check)}: FAIL · `{p.image}`"
        at = lines.index(heading)
        assert lines[at + 2] == markdown.escape(p.result.reason)
        rows = metric_rows(p)
        limit = "allowance" if p.check == "baseline" else "threshold"
        assert lines[at + 4] == f"| metric | measured | {limit} | baseline | verdict |"
        assert lines[at + 6 : at + 6 + len(rows)] == ["| " + " | ".join(map(markdown.escape, r)) + " |" for r in rows]
        assert f"worst offender: {markdown.escape(offender_text(p.result.offender))}" in lines[at:]
        assert f"rerun: `{p.rerun}`" in lines[at:]
    baseline = next(p for p in failing if p.check == "baseline")
    names = [r[0] for r in metric_rows(baseline)]
    assert "separation" in names and any(n.startswith("attention blocks.") for n in names)  # metrics and layers
    assert any("DRIFT" in r[-1] for r in metric_rows(baseline))
    assert "#### fixture-set: FAIL · all 2 images" in lines  # the set moved too, with its own table
    assert "### All checks" in lines and "| fixture-set (all 2 images) |" in text
    assert "- the full report: `.partattn-results/index.html` (open it from the uploaded results folder)" in lines


def test_a_summary_file_that_cannot_be_written_is_a_warning(pytester, monkeypatch):
    make_project(pytester)
    folder = pytester.path / "a-folder"
    folder.mkdir()
    monkeypatch.setenv(markdown.ENV, str(folder))
    result = pytester.runpytest_inprocess(*args("-k", "not baseline"))
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([f"warning: could not append the job summary to GITHUB_STEP_SUMMARY={folder}: *"])
    assert list(folder.iterdir()) == []


def test_without_the_variable_nothing_is_written(pytester, monkeypatch):
    make_project(pytester)
    monkeypatch.delenv(markdown.ENV, raising=False)
    result = pytester.runpytest_inprocess(*args("-k", "uniformity"))
    assert result.ret == pytest.ExitCode.OK
    assert "job summary" not in result.stdout.str()


# ----------------------------------------------------------------------------- the writer alone
@pytest.mark.parametrize(
    "before, after",
    [
        (None, "## x\n"),  # created
        ("", "## x\n"),
        ("line\n", "line\n\n## x\n"),
        ("line", "line\n\n## x\n"),
    ],
)
def test_append_keeps_what_was_there_and_starts_a_block(tmp_path, before, after):
    path = tmp_path / "summary.md"
    if before is not None:
        path.write_text(before)
    assert markdown.append(path, "## x\n") is None
    assert path.read_text() == after


def test_append_to_a_missing_folder_says_why(tmp_path):
    why = markdown.append(tmp_path / "nope" / "summary.md", "x")
    assert why is not None and why.startswith(f"could not append the job summary to GITHUB_STEP_SUMMARY={tmp_path}")


def test_escape_keeps_text_literal_on_one_line():
    assert markdown.escape("a|b *c* <d>\n_e_ [f](g) `h`") == "a\\|b \\*c\\* \\<d\\> \\_e\\_ \\[f\\](g) \\`h\\`"
    assert markdown.code('pytest --partattn "x.png::a"') == '`pytest --partattn "x.png::a"`'
    assert markdown.code("a`b") == "`` a`b ``"
