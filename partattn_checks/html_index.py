"""A tiny, self-contained HTML index: a title, sections of captioned images, tables; written atomically.

The page has inline CSS and no scripts; images and other files are linked by paths relative to the
page (so a results folder can be moved or zipped as a whole). Everything shown is HTML-escaped.

>>> write_index("out/index.html", "np2_chair",
...             sections=[("Parts", [("part panel", "parts.png"), ("part 0 over steps", "part0.gif")])],
...             metrics={"entropy_mean": 0.91, "separation": 0.42},
...             tables=[("Checks", ["check", "verdict"], [["uniformity", "pass"]])],
...             links=[("record", "record.json")])
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping, Sequence
from urllib.parse import quote

from .atomic import atomic_write_text

__all__ = ["write_index", "render_index", "atomic_write_text"]

IMAGE_SUFFIXES = (".png", ".gif", ".jpg", ".jpeg", ".svg", ".webp")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:1200px;
padding:0 1em;color:#222;background:#fff}
h1{font-size:1.4em;margin-bottom:.2em} h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}
p.note{color:#555;margin-top:0}
.grid{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;max-width:520px} figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.85em;color:#444;margin-top:.2em}
table{border-collapse:collapse;font-size:.9em;margin:.4em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#17702d;font-weight:600} .fail{color:#b3141b;font-weight:600} .skip{color:#7a6400;font-weight:600}
ul.links{padding-left:1.2em}
""".strip()


def _href(path: str | os.PathLike, base: Path | None) -> str:
    """A URL-quoted relative link; absolute paths are made relative to ``base`` when possible."""
    p = Path(path)
    if p.is_absolute() and base is not None:
        try:
            p = Path(os.path.relpath(p, base))
        except ValueError:  # another drive on Windows: keep it absolute
            return p.as_uri()
    if p.is_absolute():
        return p.as_uri()
    return quote(PurePosixPath(*p.parts).as_posix())


def _cell(value) -> tuple[str, str]:
    """(text, css class) of one table cell."""
    if isinstance(value, bool):
        return str(value), ""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value), "num"
        return (f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"), "num"
    if isinstance(value, int):
        return str(value), "num"
    text = "" if value is None else str(value)
    return text, text if text in ("pass", "fail", "skip") else ""


def _table(header: Sequence[str] | None, rows: Iterable[Sequence]) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for value in row:
            text, cls = _cell(value)
            attr = f' class="{cls}"' if cls else ""
            cells.append(f"<td{attr}>{html.escape(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def render_index(title: str, sections: Iterable[tuple[str, Sequence[tuple[str, str | os.PathLike]]]] = (), *,
                 metrics: Mapping[str, object] | None = None,
                 tables: Iterable[tuple[str, Sequence[str] | None, Iterable[Sequence]]] = (),
                 links: Iterable[tuple[str, str | os.PathLike]] = (), note: str | None = None,
                 base: str | os.PathLike | None = None) -> str:
    """The page as a string. ``sections``: ``(heading, [(caption, path), ...])``; image paths are
    shown inline, other files as links. ``metrics``: a name -> value table. ``tables``:
    ``(heading, header or None, rows)``. ``links``: ``(label, path)`` for files such as records.
    Relative paths are used as given; absolute ones are made relative to ``base``."""
    base_dir = Path(base) if base is not None else None
    body = [f"<h1>{html.escape(title)}</h1>"]
    if note:
        body.append(f'<p class="note">{html.escape(note)}</p>')
    if metrics:
        body.append("<h2>Metrics</h2>")
        body.append(_table(["metric", "value"], [[k, v] for k, v in metrics.items()]))
    for heading, header, rows in tables:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        body.append(_table(header, rows))
    for heading, items in sections:
        items = list(items)
        if not items:
            continue
        body.append(f"<h2>{html.escape(heading)}</h2>")
        body.append('<div class="grid">')
        for caption, path in items:
            href = _href(path, base_dir)
            cap = html.escape(str(caption))
            if str(path).lower().endswith(IMAGE_SUFFIXES):
                body.append(f'<figure><a href="{html.escape(href)}"><img src="{html.escape(href)}" '
                            f'alt="{cap}" loading="lazy"></a><figcaption>{cap}</figcaption></figure>')
            else:
                body.append(f'<figure><a href="{html.escape(href)}">{cap}</a></figure>')
        body.append("</div>")
    links = list(links)
    if links:
        body.append("<h2>Files</h2>")
        body.append('<ul class="links">' + "".join(
            f'<li><a href="{html.escape(_href(p, base_dir))}">{html.escape(str(label))}</a></li>' for label, p in links
        ) + "</ul>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>\n"
        + "\n".join(body) + "\n</body>\n</html>\n"
    )


def write_index(path: str | os.PathLike, title: str, sections=(), *, metrics=None, tables=(), links=(),
                note: str | None = None) -> Path:
    """Write :func:`render_index` to ``path`` atomically (temporary file + ``os.replace``); return it.

    Absolute paths in ``sections``/``links`` are made relative to the page's folder.
    """
    path = Path(path)
    text = render_index(title, sections, metrics=metrics, tables=tables, links=links, note=note,
                        base=path.parent.resolve())
    return atomic_write_text(path, text)
