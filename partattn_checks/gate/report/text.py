"""The text report of an item: its failure text (what pytest prints and JUnit's ``<failure>`` holds),
the commands that rerun it, and the plain-text table and number formats the terminal shares. No torch.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from ...checks import Offender
from .item import ItemReport
from .rows import failure_lines, metric_rows

#: A figure attached to a JUnit test case (Jenkins and GitLab read it from the text).
ATTACHMENT = "[[ATTACHMENT|{}]]"


def quote_nodeid(nodeid: str) -> str:
    """Double quotes (fine in sh, bash, zsh and cmd) unless the id needs shell escaping."""
    if any(c in nodeid for c in '"$`\\!'):
        return shlex.quote(nodeid)
    return f'"{nodeid}"'


def pytest_command(
    cli_args: list[str], invocation_dir: Path, image: Path, name: str, *, update: str | None = None
) -> str:
    """The exact command that reruns ``<image>::<name>`` with the user's partattn options."""
    rel = Path(os.path.relpath(image, invocation_dir)).as_posix()
    args = ["pytest", "--partattn", *cli_args]
    if update:
        args.append(f"--partattn-update={update}")
    return " ".join([*(shlex.quote(a) for a in args), quote_nodeid(f"{rel}::{name}")])


def offender_text(offender: Offender | None) -> str:
    if offender is None:
        return "—"
    fields = {"step": offender.step, "layer": offender.layer, "part": offender.part, "head": offender.head}
    return ", ".join(f"{k} {'-' if v is None else v}" for k, v in fields.items())


def table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(row):
        return "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
            for i, (c, w) in enumerate(zip(row, widths, strict=False))
        ).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def attachment_lines(figures: Sequence[str]) -> list[str]:
    return [ATTACHMENT.format(f) for f in figures]


def failure_text(p: ItemReport) -> str:
    """The long report of a failing item: what failed, the metric table, the worst offender,
    figure paths, the commands to rerun / update the baseline, and attachment lines."""
    r = p.result
    lines = [f"partattn: {p.check} failed for {p.image}"]
    if r is None:
        lines += [p.error or "(no result and no error recorded)"]
    else:
        lines += [r.reason, ""]
        lines += ["  " + ln for ln in table(metric_rows(p), ["metric", "measured", "threshold", "baseline", "verdict"])]
        lines += ["", f"worst offender: {offender_text(r.offender)}"]
        lines += failure_lines(p)
    for w in p.warnings:
        lines.append(f"warning: {w}")
    if p.figures:
        lines += ["figures:", *(f"  {f}" for f in p.figures)]
    lines += ["rerun this check:", f"  {p.rerun}", "update this image's baseline:", f"  {p.update}"]
    lines += attachment_lines(p.figures)
    return "\n".join(lines)
