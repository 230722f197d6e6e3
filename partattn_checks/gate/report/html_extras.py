"""pytest-html (``--html``, pytest-html >= 4), a sink: each figure of an item as a base64 PNG extra
on its test report, and a link to the file at full size. No torch.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from urllib.parse import quote

from .item import ItemReport
from .session import Sink


class PytestHtml(Sink):
    def __init__(self, path: str) -> None:
        self.path = path
        self.artifact = ("pytest-html", path)

    def test_report(self, item, report, p: ItemReport) -> None:
        if not p.figures:
            return
        # links relative to the --html report (resolved here, where the item ran)
        report_dir = Path(os.path.expandvars(self.path)).expanduser().absolute().parent
        report.extras = [*getattr(report, "extras", []), *html_extras(p, report_dir)]


def html_extras(p: ItemReport, report_dir: Path | None = None) -> list[dict]:
    """pytest-html (>= 4) extras: per figure, the base64 PNG (shown in pytest-html's fixed-size media
    box, which crops tall figures) and a link to the file at full size (in the report's Links
    column; relative to ``report_dir``, the folder of the ``--html`` report, when given, else a
    ``file://`` URL). [] when pytest-html is not installed."""
    try:
        from pytest_html import extras
    except ImportError:
        return []
    out = []
    for f in p.figures:
        try:
            data = base64.b64encode(Path(f).read_bytes()).decode("ascii")
        except OSError:
            continue
        name = Path(f).name
        out.append(extras.png(data, name=name))
        out.append(extras.url(_file_url(Path(f), report_dir), name=html.escape(f"{name} (full size)")))
    return out


def _file_url(path: Path, report_dir: Path | None) -> str:
    """A link to ``path`` from a page in ``report_dir`` (relative where possible), URL-quoted."""
    path = path.resolve()
    if report_dir is not None:
        try:
            return quote(Path(os.path.relpath(path, Path(report_dir).resolve())).as_posix())
        except ValueError:  # another drive on Windows
            pass
    return path.as_uri()
