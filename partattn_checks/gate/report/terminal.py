"""The terminal summary, a sink (always on): ``partattn summary`` at the end of the session.

What ran (it survives ``-q``), the image x check table, the fixture set's verdict, baselines
written and unused, where index.html is, and what an output could not write. No torch.
"""

from __future__ import annotations

from .session import SessionReport, Sink


class Terminal(Sink):
    def terminal_summary(self, tr, run: SessionReport) -> None:
        if not run.summary and tr.config.option.collectonly:
            return
        tr.write_sep("=", "partattn summary")
        for label, text in run.opening().items():
            tr.write_line(f"{label}: {text}")
        if not run.summary:
            why = f"fixtures folder: {run.settings.fixtures}"
            why = "interrupted before one finished" if run.interrupted else why
            tr.write_line(f"no fixture images ran ({why})")
            for line in run.unused_lines:
                tr.write_line(line)
            _write_problems(tr, run)
            return
        for line in run.summary.table_lines():
            tr.write_line(line)
        if run.fixture_set is not None:
            tr.write_line(f"fixture set: {run.fixture_set.verdict} ({run.fixture_set.reason()})")
        for line in run.notes():
            tr.write_line(line)
        if run.index is not None:
            tr.write_line(f"figures and index: {run.index}")
        _write_problems(tr, run)


def _write_problems(tr, run: SessionReport) -> None:
    for error in run.errors:
        tr.write_line(error, red=True)
    for warning in run.warnings:
        tr.write_line(f"warning: {warning}", yellow=True)
