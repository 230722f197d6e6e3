"""One page writer for every HTML page partattn writes.

A :class:`Page` collects blocks (preformatted text, notes, tables, figure grids, file links) and
renders them through ``templates/page.html`` with ``templates/style.css`` inlined, so a page is a
single self-contained file. Files are linked by paths relative to the page, so a results folder
can be moved or zipped whole; every image is shown at its natural size (at most the page width, so
its text stays readable at 100 % zoom) and links to the file itself.
Everything shown is HTML-escaped. Pages are written atomically.

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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path, PurePosixPath
from string import Template
from urllib.parse import quote

from ...base.atomic import atomic_write_text

FIGURE_SUFFIXES = (".png", ".gif", ".jpg", ".jpeg", ".svg", ".webp")
VERDICT_CLASSES = ("pass", "fail", "skip")


@cache
def _template(name: str) -> str:
    return resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Cell:
    """A table cell with a css class and an optional link (plain values become cells too)."""

    text: str
    cls: str = ""
    href: str | None = None

    @classmethod
    def of(cls, value: object) -> Cell:
        if isinstance(value, Cell):
            return value
        if isinstance(value, bool):
            return cls(str(value))
        if isinstance(value, float):
            if not math.isfinite(value):
                return cls(str(value), "num")
            return cls(f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}", "num")
        if isinstance(value, int):
            return cls(str(value), "num")
        text = "" if value is None else str(value)
        return cls(text, text if text in VERDICT_CLASSES else "")

    def html(self, tag: str = "td") -> str:
        text = html.escape(self.text)
        if self.href is not None:
            text = f'<a href="{html.escape(self.href)}">{text}</a>'
        attr = f' class="{html.escape(self.cls)}"' if self.cls else ""
        return f"<{tag}{attr}>{text}</{tag}>"


def anchor_id(*parts: str) -> str:
    """An element id made of ``parts`` (whitespace, which ids cannot hold, becomes ``_``);
    link to it with ``"#" + quote(id)``."""
    return "_".join("--".join(parts).split())


def _attrs(anchor: str | None = None, cls: str = "") -> str:
    return (f' id="{html.escape(anchor)}"' if anchor else "") + (f' class="{html.escape(cls)}"' if cls else "")


class Page:
    """Blocks of one page, in order. Absolute file paths are linked relative to ``base``."""

    def __init__(self, title: str, base: str | os.PathLike[str] | None = None):
        self.title = title
        self.base = Path(base) if base is not None else None
        self.blocks: list[str] = []

    def href(self, path: str | os.PathLike[str]) -> str:
        """A URL-quoted link to ``path``: relative to the page where possible."""
        p = Path(path)
        if p.is_absolute() and self.base is not None:
            try:
                p = Path(os.path.relpath(p, self.base))
            except ValueError:  # another drive on Windows: keep it absolute
                return p.as_uri()
        if p.is_absolute():
            return p.as_uri()
        return quote(PurePosixPath(*p.parts).as_posix())

    def heading(self, text: str, *, level: int = 2, anchor: str | None = None, cls: str = "") -> Page:
        self.blocks.append(f"<h{level}{_attrs(anchor, cls)}>{html.escape(text)}</h{level}>")
        return self

    def note(self, text: str) -> Page:
        self.blocks.append(f'<p class="note">{html.escape(text)}</p>')
        return self

    def paragraph(self, text: str, *, cls: str = "") -> Page:
        self.blocks.append(f"<p{_attrs(cls=cls)}>{html.escape(text)}</p>")
        return self

    def preformatted(self, lines: Iterable[str], *, cls: str = "") -> Page:
        self.blocks.append(f"<pre{_attrs(cls=cls)}>{html.escape(chr(10).join(lines))}</pre>")
        return self

    @contextmanager
    def section(self, *, cls: str = "", anchor: str | None = None) -> Iterator[Page]:
        """Blocks added inside the ``with`` go into one ``<section>`` (a card, a link target)."""
        start = len(self.blocks)
        yield self
        inner = self.blocks[start:]
        del self.blocks[start:]
        self.blocks.append(f"<section{_attrs(anchor, cls)}>\n" + "\n".join(inner) + "\n</section>")

    @contextmanager
    def details(self, summary: str, *, anchor: str | None = None, open: bool = False) -> Iterator[Page]:
        """Blocks added inside the ``with`` go into a collapsible ``<details>``, closed unless ``open``;
        a link to an id inside it opens it in current browsers."""
        start = len(self.blocks)
        yield self
        inner = self.blocks[start:]
        del self.blocks[start:]
        head = f"<details{_attrs(anchor)}{' open' if open else ''}><summary>{html.escape(summary)}</summary>"
        self.blocks.append(head + "\n" + "\n".join(inner) + "\n</details>")

    def table(self, header: Sequence[object] | None, rows: Iterable[Sequence[object]]) -> Page:
        """A table; values may be plain (formatted by ``Cell.of``) or ``Cell`` objects with a class or link."""
        out = ["<table>"]
        if header:
            out.append("<tr>" + "".join(Cell.of(h).html("th") for h in header) + "</tr>")
        for row in rows:
            out.append("<tr>" + "".join(Cell.of(v).html() for v in row) + "</tr>")
        out.append("</table>")
        self.blocks.append("\n".join(out))
        return self

    def figures(self, items: Iterable[tuple[str, str | os.PathLike[str]]]) -> Page:
        """A grid of captioned thumbnails, each linking to its full-size file (other files: links)."""
        items = list(items)
        if not items:
            return self
        out = ['<div class="grid">']
        for caption, path in items:
            href = html.escape(self.href(path))
            cap = html.escape(str(caption))
            if str(path).lower().endswith(FIGURE_SUFFIXES):
                out.append(
                    f'<figure><a href="{href}"><img src="{href}" alt="{cap}" loading="lazy"></a>'
                    f"<figcaption>{cap}</figcaption></figure>"
                )
            else:
                out.append(f'<figure><a href="{href}">{cap}</a></figure>')
        out.append("</div>")
        self.blocks.append("\n".join(out))
        return self

    def links(self, items: Iterable[tuple[str, str | os.PathLike[str]]]) -> Page:
        items = list(items)
        if items:
            self.blocks.append(
                '<ul class="links">'
                + "".join(
                    f'<li><a href="{html.escape(self.href(p))}">{html.escape(str(label))}</a></li>'
                    for label, p in items
                )
                + "</ul>"
            )
        return self

    def render(self) -> str:
        return Template(_template("page.html")).substitute(
            title=html.escape(self.title), style=_template("style.css").strip(), body="\n".join(self.blocks)
        )

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the page atomically (temporary file, then ``os.replace``); return its path."""
        return atomic_write_text(path, self.render())


def render_index(
    title: str,
    sections: Iterable[tuple[str, Sequence[tuple[str, str | os.PathLike[str]]]]] = (),
    *,
    metrics: Mapping[str, object] | None = None,
    tables: Iterable[tuple[str, Sequence[str] | None, Iterable[Sequence[object]]]] = (),
    links: Iterable[tuple[str, str | os.PathLike[str]]] = (),
    note: str | None = None,
    base: str | os.PathLike[str] | None = None,
) -> str:
    """A page of metrics, tables, figure sections and file links, as a string. ``sections``:
    ``(heading, [(caption, path), ...])``; ``metrics``: name -> value; ``tables``: ``(heading,
    header or None, rows)``; ``links``: ``(label, path)``. Absolute paths are made relative to ``base``."""
    page = Page(title, base)
    if note:
        page.note(note)
    if metrics:
        page.heading("Metrics").table(["metric", "value"], [[k, v] for k, v in metrics.items()])
    for heading, header, rows in tables:
        page.heading(heading).table(header, rows)
    for heading, items in sections:
        items = list(items)
        if items:
            page.heading(heading).figures(items)
    links = list(links)
    if links:
        page.heading("Files").links(links)
    return page.render()


def write_index(
    path: str | os.PathLike[str],
    title: str,
    sections: Iterable[tuple[str, Sequence[tuple[str, str | os.PathLike[str]]]]] = (),
    *,
    metrics: Mapping[str, object] | None = None,
    tables: Iterable[tuple[str, Sequence[str] | None, Iterable[Sequence[object]]]] = (),
    links: Iterable[tuple[str, str | os.PathLike[str]]] = (),
    note: str | None = None,
) -> Path:
    """Write :func:`render_index` to ``path`` atomically; absolute paths are linked relative to it."""
    path = Path(path)
    text = render_index(
        title, sections, metrics=metrics, tables=tables, links=links, note=note, base=path.parent.resolve()
    )
    return atomic_write_text(path, text)
