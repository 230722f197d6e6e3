"""The session as the outputs see it: :class:`SessionReport` (the report data on the controller)
and :class:`Sink`, the shape of one output (terminal, JUnit, pytest-html, index.html, job summary).

A sink implements the hooks it needs; the plugin calls every hook of every sink chosen for the
session (``sinks.choose``), in that order. No torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...checks.reporting import SetVerdict
from .summary import Summary

if TYPE_CHECKING:
    import pytest

    from ..options import Settings
    from .item import ItemReport


@dataclass
class SessionReport:
    """What the session reports (on the controller, the xdist controller too): the run's header and
    what ran (``context``), every item's report, the fixture set's verdict, the unused baselines, and
    what the outputs wrote (``index``) or could not (``errors`` in red, ``warnings`` in yellow)."""

    settings: Settings
    header: list[str]
    #: ``{label: text}`` the summaries open with (it survives ``-q``, the header does not): the model,
    #: the run settings, the thresholds' source; add here what else a quiet run must say.
    context: dict[str, str] = field(default_factory=dict)
    summary: Summary = field(default_factory=Summary)
    fixture_set: SetVerdict | None = None  # this session's, once judged
    unused_lines: list[str] = field(default_factory=list)
    interrupted: bool = False  # a keyboard interrupt (or pytest.exit) stopped the session
    index: Path | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def opening(self) -> dict[str, str]:
        """What ran, then the line on the baselines: where, and which verdict judged how many images."""
        counts = self.summary.verdicts()
        if not counts:
            return dict(self.context)
        s = self.settings
        judged = ", ".join(f"{kind} {n}" for kind, n in counts.items())
        return {**self.context, "baselines": f"{s.shown(s.baselines)} (--partattn-verdict {s.verdict}): {judged}"}

    def notes(self) -> list[str]:
        """Baselines written or updated, then unused ones."""
        return [*self.summary.notes(), *self.unused_lines]


class Sink:
    """One output of the gate. Every hook does nothing here; a sink overrides those it needs."""

    #: ``(label, path)`` of the file it writes, listed among the job summary's artifacts.
    artifact: tuple[str, str] | None = None

    def warning(self) -> str | None:
        """A configuration that loses something, warned about at start (controller only)."""
        return None

    def item_done(self, item: pytest.Item, p: ItemReport) -> None:
        """An item's report is built, on the process that ran it (possibly an xdist worker)."""

    def test_report(self, item: pytest.Item, report: pytest.TestReport, p: ItemReport) -> None:
        """The item's call-phase test report, before it travels to the controller."""

    def session_done(self, run: SessionReport, session: pytest.Session) -> None:
        """The end of the session (controller only): write the output."""

    def terminal_summary(self, tr: Any, run: SessionReport) -> None:
        """The terminal summary (controller only)."""
