"""The gate's report as markdown, a sink: GitHub's job summary (``$GITHUB_STEP_SUMMARY``).

When the environment variable ``GITHUB_STEP_SUMMARY`` names a file, the pytest controller (never an
xdist worker) appends :func:`job_summary` to it at the end of the session: the verdict first, then
the failures (reason, metric table with the drift numbers, worst offender, figures, rerun command),
the image x check table and where the artifacts are. Everything comes from the report data
(``Summary``, ``ItemReport``, ``metric_rows``) and the fixture set's verdict; this module only writes
it as markdown. Appending never touches what earlier steps wrote; a file that cannot be written is a
warning, never a failure of the gate. No torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from ...checks.reporting import SetVerdict
from .item import ItemReport
from .rows import limit_label, metric_rows, set_check, set_item_name
from .session import SessionReport, Sink
from .summary import Summary
from .text import offender_text

ENV = "GITHUB_STEP_SUMMARY"
#: Failures written in full; the others are counted (index.html has them all). GitHub keeps 1 MiB a step.
MAX_FAILURES = 20
_SPECIAL = "\\`*_[]<>|~"


class JobSummary(Sink):
    """Appends the session to the file ``GITHUB_STEP_SUMMARY`` names (not in a collect-only run)."""

    def __init__(self, path: str, reports: Mapping[str, str]) -> None:
        self.path = path
        self.reports = reports  # {label: path} of the other outputs' files (JUnit XML, pytest-html)

    def session_done(self, run: SessionReport, session: pytest.Session) -> None:
        s = run.settings
        text = job_summary(
            run.summary,
            fixture_set=run.fixture_set,
            context=run.opening(),
            shown=lambda p: s.shown(Path(p)),
            results=s.results,
            index=run.index,
            reports=self.reports,
            notes=run.notes(),
            interrupted=run.interrupted or session.exitstatus == pytest.ExitCode.INTERRUPTED,
        )
        problem = append(self.path, text)
        if problem:
            run.warnings.append(problem)


def escape(text: str) -> str:
    """``text`` shown as it is by GitHub markdown: one line, its markup characters escaped."""
    out = " ".join(str(text).split())
    return "".join(f"\\{c}" if c in _SPECIAL else c for c in out)


def code(text: str) -> str:
    """``text`` as inline code."""
    text = " ".join(str(text).split())
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A GitHub table of already escaped cells."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def job_summary(
    summary: Summary,
    *,
    fixture_set: SetVerdict | None = None,
    context: Mapping[str, str] | None = None,
    shown: Callable[[str | Path], str] = str,
    results: Path,
    index: Path | None = None,
    reports: Mapping[str, str | None] | None = None,
    notes: Sequence[str] = (),
    interrupted: bool = False,
) -> str:
    """The session as markdown: verdict, what ran, failures, all checks, notes, artifacts.
    ``fixture_set``: the session's ``SetVerdict`` (or None); ``shown``: how paths are written (relative to
    the rootdir); ``reports``: ``{"JUnit XML": path, ...}`` written by pytest."""
    groups = summary.failure_groups()
    set_failed = fixture_set is not None and fixture_set.verdict == "fail"
    if not summary:
        verdict = "no fixture images ran" + (" (interrupted)" if interrupted else "")
        lines = [f"## partattn gate: {verdict}", ""]
    else:
        mark = "❌" if groups or set_failed else "✅"
        verdict = summary.verdict_line(fixture_set)
        lines = [f"## {mark} partattn gate: {escape(verdict)}" + (" (interrupted)" if interrupted else ""), ""]
    lines += [f"- **{escape(label)}**: {escape(text)}" for label, text in (context or {}).items()]
    lines.append("")
    if groups or set_failed:
        lines += [f"### Failures ({len(groups) + set_failed})", ""]
        for group in groups[:MAX_FAILURES]:
            lines += _failure(group, shown)
        if len(groups) > MAX_FAILURES:
            lines += [f"… and {len(groups) - MAX_FAILURES} more failures: see index.html (below).", ""]
        if fixture_set is not None and set_failed:
            lines += _fixture_set(fixture_set)
    if summary:
        lines += ["### All checks", "", *_checks_table(summary, fixture_set, shown), ""]
        if fixture_set is not None and not set_failed:
            lines += [f"fixture set: {escape(fixture_set.verdict)} ({escape(fixture_set.reason())})", ""]
    if notes:
        lines += ["### Notes", "", *(f"- {escape(n)}" for n in notes), ""]
    lines += ["### Artifacts", "", f"- results folder: {code(shown(results))} (figures of the failing checks)"]
    if index is not None:
        lines.append(f"- the full report: {code(shown(index))} (open it from the uploaded results folder)")
    lines += [f"- {escape(label)}: {code(shown(path))}" for label, path in (reports or {}).items() if path]
    return "\n".join(lines) + "\n"


def _failure(group: list[ItemReport], shown: Callable[[str | Path], str]) -> list[str]:
    """One failing item (or an image that could not run: one entry for all its checks)."""
    p = group[0]
    if p.result is None:
        checks = ", ".join(q.check for q in group)
        return [
            f"#### ERROR · {code(p.image)} could not run ({escape(checks)})",
            "",
            escape(p.error or ""),
            "",
            f"rerun: {code(p.rerun)}",
            "",
        ]
    lines = [f"#### {escape(p.check)}: {p.outcome.upper()} · {code(p.image)}", "", escape(p.result.reason), ""]
    rows = metric_rows(p)
    if rows:
        header = ["metric", "measured", limit_label(p), "baseline", "verdict"]
        lines += [*table(header, [[escape(c) for c in row] for row in rows]), ""]
    if p.result.offender is not None:
        lines += [f"worst offender: {escape(offender_text(p.result.offender))}", ""]
    for warning in p.warnings:
        lines += [f"warning: {escape(warning)}", ""]
    if p.figures:
        lines += ["figures: " + ", ".join(code(shown(f)) for f in p.figures), ""]
    lines += [f"rerun: {code(p.rerun)}", "", f"update its baseline: {code(p.update)}", ""]
    return lines


def _fixture_set(fixture_set: SetVerdict) -> list[str]:
    """A failing fixture set: its reason, then how it was judged and its table (its own text)."""
    return [
        f"#### {escape(set_item_name())}: FAIL · all {len(fixture_set.images)} images",
        "",
        escape(fixture_set.reason()),
        "",
        "```",
        *fixture_set.lines()[2:],  # lines(): the reason, a blank line, then how it is judged and the table
        "```",
        "",
    ]


def _checks_table(summary: Summary, fixture_set: SetVerdict | None, shown: Callable[[str | Path], str]) -> list[str]:
    """The image x check table (the terminal summary's cells), the fixture set as its last row."""
    checks = summary.checks()
    rows = [
        [code(image), *(escape(summary.cell(per.get(c))) for c in checks)] for image, per in summary.by_image.items()
    ]
    column = set_check()
    if fixture_set is not None and column is not None and column.name in checks:  # shown in its check's column
        verdict = "FAIL" if fixture_set.verdict == "fail" else fixture_set.verdict
        name = f"{set_item_name()} (all {len(fixture_set.images)} images)"
        rows.append([escape(name), *(escape(verdict) if c == column.name else "" for c in checks)])
    return table(["image", *(escape(c) for c in checks)], rows)


def append(path: str | Path, text: str) -> str | None:
    """Append ``text`` to ``path`` (created when missing), on a line of its own: what earlier steps wrote
    stays. Returns None, or why it could not (for a warning)."""
    path = Path(path)
    try:
        with open(path, "a+b") as fh:  # append mode: every write lands at the end, nothing is truncated
            end = fh.seek(0, 2)
            last = b"\n"
            if end:
                fh.seek(end - 1)
                last = fh.read(1)
            lead = b"" if not end else b"\n" if last == b"\n" else b"\n\n"  # a blank line before ours
            fh.write(lead + text.encode("utf-8"))
    except OSError as exc:
        return f"could not append the job summary to {ENV}={path}: {exc.strerror or exc}"
    return None
