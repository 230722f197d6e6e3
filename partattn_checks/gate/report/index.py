"""The results folder's ``index.html``, a sink: a self-contained page that tells the story first.

The verdict line, the failures (reason, metric table, figures, commands), the image x check table
(each cell links to its check) and the passing items folded per image, from the session's
:class:`~.summary.Summary` and the fixture set's verdict. :class:`ResultsFolder` writes it, with the
folder's manifest, at the end of the session. No torch, no matplotlib.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from urllib.parse import quote

from ...base.atomic import atomic_write_text
from ...checks.reporting import SetVerdict
from ...present.pages import Cell, Page
from ...present.pages.page import anchor_id
from ...runs.sidecar import image_keys
from .. import results_folder
from .item import ItemReport
from .rows import limit_label, metric_rows, offender_note, set_check, set_item_name
from .session import Sink
from .summary import PAST, Summary
from .text import offender_text

#: css class of a summary cell per item verdict
_CELL_CLASSES = {"pass": "pass", "fail": "fail", "error": "fail", "skip": "skip"}


class ResultsFolder(Sink):
    """The results folder (``--partattn-results``): ``index.html`` when an item ran, and the manifest."""

    def session_done(self, run, session) -> None:
        s = run.settings
        try:
            if run.summary:
                run.index = write_index(run.summary, s.results, run.header, fixture_set=run.fixture_set)
            results_folder.write_manifest(s.results, image_keys(s.fixtures, s.results))
        except OSError as exc:
            run.errors.append(f"could not write index.html in {s.results}: {exc}")


def write_index(summary: Summary, results_dir: Path, header: list[str], fixture_set: SetVerdict | None = None) -> Path:
    """Write ``index.html`` into ``results_dir`` atomically."""
    text = index_html(summary, Path(results_dir), header, fixture_set)
    return atomic_write_text(Path(results_dir) / "index.html", text)


def index_html(summary: Summary, results_dir: Path, header: list[str], fixture_set: SetVerdict | None = None) -> str:
    """The results page: verdict line, failures (reason, metric table, figures, commands), the
    image x check table (each cell links to its check), then passing items collapsed per image.
    ``fixture_set``: the session's verdict over the fixture set, if judged."""
    groups = summary.failure_groups()
    set_failed = fixture_set is not None and fixture_set.verdict == "fail"
    page = Page("partattn results", base=results_dir)
    page.paragraph(summary.verdict_line(fixture_set), cls="verdict " + ("fail" if groups or set_failed else "pass"))
    if header:
        with page.details("run: " + header[0].removeprefix("partattn: ")):
            page.preformatted(header)
    for line in summary.notes():
        page.note(line.strip())
    if groups or set_failed:
        page.heading(f"Failures ({len(groups) + set_failed})")
        for group in groups:
            _failure(page, group)
        if fixture_set is not None and set_failed:
            _set_failure(page, fixture_set)
    else:
        page.paragraph(_passing_hint(summary, results_dir), cls="hint")
    page.heading("All checks")
    _table(page, summary, groups, fixture_set)
    _passing(page, summary)
    if groups or set_failed:
        page.note(f"This page: {Path(results_dir) / 'index.html'}; figures: {Path(results_dir)}/<image>/")
    return page.render()


def _set_failure(page: Page, fixture_set: SetVerdict) -> None:
    """The failing fixture set: its reason, then how it was judged and its table (its own text)."""
    name = set_item_name()
    with page.section(cls="failure", anchor=anchor_id(name)):
        page.heading(f"{name}: FAIL · all {len(fixture_set.images)} images", level=3)
        # lines(): the reason, a blank line, then how it is judged and the table
        page.paragraph(fixture_set.reason()).preformatted(fixture_set.lines()[2:])


def _table(page: Page, summary: Summary, groups: list[list[ItemReport]], fixture_set: SetVerdict | None) -> None:
    """The image x check table; each cell links to its check (a failure's card, or the check
    inside its image's collapsed block), an image to its first failure."""
    anchors = {(p.image, p.check): _item_anchor(group[0]) for group in groups for p in group}
    checks = summary.checks()
    rows = []
    for image, per in summary.by_image.items():
        first = next((group[0] for group in groups if group[0].image == image), None)
        image_href = _href(_item_anchor(first) if first else anchor_id(next(iter(per.values())).key))
        cells = [
            Cell(
                summary.cell(p),
                _CELL_CLASSES.get(p.outcome, "note"),
                _href(anchors.get((image, p.check)) or _item_anchor(p)),
            )
            if p
            else Cell("")
            for p in (per.get(c) for c in checks)
        ]
        rows.append([Cell(image, href=image_href), *cells])
    set_failed = fixture_set is not None and fixture_set.verdict == "fail"
    column = set_check()
    if fixture_set is not None and column is not None and column.name in checks:  # shown in its check's column
        name = set_item_name()
        href = _href(anchor_id(name)) if set_failed else None
        verdict = Cell("FAIL" if set_failed else fixture_set.verdict, _CELL_CLASSES[fixture_set.verdict], href)
        cells = [verdict if c == column.name else Cell("") for c in checks]
        rows.append([Cell(f"{name} (all {len(fixture_set.images)} images)", href=href), *cells])
    page.table(["image", *checks], rows)
    if fixture_set is not None and not set_failed:
        page.note(f"fixture set: {fixture_set.reason()}")


def _passing(page: Page, summary: Summary) -> None:
    """Passing (and skipped, written) items: one closed ``<details>`` per image."""
    passing: OrderedDict[str, list[ItemReport]] = OrderedDict()
    for p in summary.items():
        if p.outcome not in ("fail", "error"):
            passing.setdefault(p.image, []).append(p)
    if passing:
        page.heading("Passing checks").note("Closed: click an image to open its checks.")
    for image, items in passing.items():
        counts: dict[str, int] = {}
        for p in items:
            counts[p.outcome] = counts.get(p.outcome, 0) + 1
        text = f"{image}: " + ", ".join(f"{n} {PAST[v]}" for v, n in counts.items())
        with page.details(text, anchor=anchor_id(items[0].key)):
            for p in items:
                cls = _CELL_CLASSES.get(p.outcome, "")
                page.heading(f"{p.check}: {p.outcome}", level=3, anchor=_item_anchor(p), cls=cls)
                page.paragraph(p.result.reason if p.result is not None else "").figures(_figures(p))


def _passing_hint(summary: Summary, results_dir: Path) -> str:
    where = f"This page and its figures: {Path(results_dir)}"
    if any(p.figures for p in summary.items()):
        return f"Nothing failed. {where}."
    return (
        "Nothing failed, so no figures were drawn; rerun with --partattn-save-all-figures to draw them for "
        f"every check. {where}."
    )


def _failure(page: Page, group: list[ItemReport]) -> None:
    """One failure: what failed, the reason, the metric table, figures, then the commands.
    A group of items is an image that could not run: its error once, for all its checks."""
    p = group[0]
    with page.section(cls="failure", anchor=_item_anchor(p)):
        if p.result is None:
            checks = ", ".join(q.check for q in group)
            page.heading(f"ERROR · {p.image} could not run ({checks})", level=3)
            page.preformatted([p.error or ""])
            page.preformatted(["# rerun this check", p.rerun], cls="commands")
            return
        r = p.result
        page.heading(f"{p.check}: {p.outcome.upper()} · {p.image}", level=3)
        page.paragraph(r.reason)
        rows = metric_rows(p)
        if rows:
            page.table(
                ["metric", "measured", limit_label(p), "baseline", "verdict"],
                [[*row[:-1], Cell(row[-1], _row_class(row[-1]))] for row in rows],
            )
        if r.offender is not None and offender_note(p):
            page.note(f"worst offender: {offender_text(r.offender)}")
        page.figures(_figures(p))
        for w in p.warnings:
            page.note(f"warning: {w}")
        page.preformatted(["# rerun this check", p.rerun, "# update this image's baseline", p.update], cls="commands")


def _item_anchor(p: ItemReport) -> str:
    return anchor_id(p.key, p.check)


def _href(anchor: str) -> str:
    return "#" + quote(anchor)


def _figures(p: ItemReport) -> list[tuple[str, str]]:
    return [(Path(f).name, f) for f in p.figures]


def _row_class(verdict: str) -> str:
    if any(word in verdict for word in ("DRIFT", "FAIL", "MISSING")):
        return "fail"
    return "pass" if "ok" in verdict or "PASS" in verdict else ""
