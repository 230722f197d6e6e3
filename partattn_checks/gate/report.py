"""What the plugin reports: failure text, JUnit properties and attachments, pytest-html extras,
the terminal summary table and the results folder's ``index.html``.

Everything here works on :class:`ItemReport`: what an item found, built where it ran (possibly a
pytest-xdist worker); it travels to the controller as a plain dict on the test report
(``report.partattn``) and is rebuilt there. The functions build lines and documents; the plugin's hooks print or
write them. No torch, no matplotlib.
"""

from __future__ import annotations

import base64
import html
import math
import os
import shlex
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from ..base.atomic import atomic_write_text
from ..baselines.fixture_set import ITEM_NAME as ITEM_FIXTURE_SET
from ..baselines.runner import BaselineState, BaselineStatus
from ..checks import REGISTRY, CheckResult, Offender
from ..checks.baseline import BaselineDetails, MetricDrift
from ..present.pages import Cell, Page
from ..present.pages.page import anchor_id
from .context import defaults_note, model_text

ATTACHMENT = "[[ATTACHMENT|{}]]"
#: css class of a summary cell per item verdict
_CELL_CLASSES = {"pass": "pass", "fail": "fail", "error": "fail", "skip": "skip"}
#: junit_logging values that write <system-out>, where Jenkins/GitLab look for attachments.
JUNIT_LOGGING_WITH_STDOUT = ("system-out", "out-err", "all")


# ----------------------------------------------------------------------------- small pieces
def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (int, float)):
        return f"{value:.{digits}g}"
    return str(value)


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


# ----------------------------------------------------------------------------- item report
@dataclass(frozen=True)
class ItemReport:
    """What one item found, as reports need it. Frozen and typed; it becomes a dict only to travel
    on the test report to the pytest-xdist controller (``to_dict``/``from_dict``).

    ``result`` is the check's ``CheckResult`` (None when the image could not run: ``error`` says
    why). ``verdict`` is the check's own; ``baseline`` what happened to the image's baseline
    (the ``baseline`` item's: its status, written, updated, missing, ..., and folders).
    """

    image: str
    key: str
    check: str
    result: CheckResult | None
    figures: tuple[str, ...]
    rerun: str
    update: str
    baseline_checks: dict[str, float | None] = field(default_factory=dict)
    baseline: BaselineState | None = None
    error: str | None = None
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0
    summary: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "figures", tuple(self.figures))
        object.__setattr__(self, "warnings", tuple(self.warnings))

    @property
    def verdict(self) -> str:
        """pass | fail | skip, or error when the image could not run."""
        return "error" if self.result is None else self.result.verdict

    @property
    def status(self) -> BaselineStatus | None:
        """The baseline's status (the ``baseline`` item only)."""
        return self.baseline.status if self.baseline is not None else None

    @property
    def baseline_written(self) -> bool:
        return self.baseline is not None and self.baseline.written

    @property
    def outcome(self) -> str:
        """What the summary shows: the verdict, or the baseline's "written"/"updated"."""
        return self.baseline.status.value if self.baseline is not None and self.baseline.written else self.verdict

    def to_dict(self) -> dict:
        """Plain JSON data (the test report's ``partattn``): the result and the baseline as their
        ``to_dict()``, the verdict alongside for readers (``from_dict`` derives it again)."""
        return {
            "image": self.image,
            "key": self.key,
            "check": self.check,
            "result": self.result.to_dict() if self.result is not None else None,
            "figures": list(self.figures),
            "rerun": self.rerun,
            "update": self.update,
            "baseline_checks": dict(self.baseline_checks),
            "baseline": self.baseline.to_dict() if self.baseline is not None else None,
            "error": self.error,
            "warnings": list(self.warnings),
            "seconds": self.seconds,
            "summary": dict(self.summary),
            "verdict": self.verdict,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> ItemReport:
        """Back from ``to_dict()`` (after JSON), typed again."""
        result, baseline = d.get("result"), d.get("baseline")
        return cls(
            image=d["image"],
            key=d["key"],
            check=d["check"],
            result=CheckResult.from_dict(result) if result is not None else None,
            figures=tuple(d.get("figures") or ()),
            rerun=d["rerun"],
            update=d["update"],
            baseline_checks=dict(d.get("baseline_checks") or {}),
            baseline=BaselineState.from_dict(baseline) if baseline is not None else None,
            error=d.get("error"),
            warnings=tuple(d.get("warnings") or ()),
            seconds=d.get("seconds", 0.0),
            summary=dict(d.get("summary") or {}),
        )


def metric_rows(p: ItemReport) -> list[list[str]]:
    """(metric, measured, threshold, baseline, verdict) rows of an item report."""
    r = p.result
    if r is None:
        return []
    if isinstance(r.details, BaselineDetails):
        return _baseline_rows(p, r.details)
    check = REGISTRY.get(p.check)  # headline: label and pass condition shown before the threshold
    label, op = (check.label, check.op) if check is not None else (p.check, "")
    threshold = "" if r.threshold is None else f"{op} {fmt(r.threshold)}"
    return [[label, fmt(r.value), threshold, fmt(p.baseline_checks.get(p.check)), r.verdict.upper()]]


def _baseline_rows(p: ItemReport, details: BaselineDetails) -> list[list[str]]:
    rows = []
    paired = details.verdict == "paired"
    for name, m in (details.per_metric or {}).items():
        ok = m.drift <= m.allowed
        if paired and m.z is not None and m.allowance is not None:  # in seed spreads, against the numeric floor
            ok = abs(m.z) <= m.allowance
            floor = f", floor {m.floor:.2f}σ" if m.floor is not None else ""
            rows.append(
                [
                    name,
                    fmt(m.measured),
                    f"±{fmt(m.allowed, 3)} ({m.allowance:.2f}σ{floor})",
                    f"{fmt(m.baseline)} (same seed)",
                    f"{m.z:+.2f}σ {'ok' if ok else 'DRIFT'}",
                ]
            )
        elif m.z is not None and m.allowance is not None:  # judged in units of seed noise (as Deviation.moved)
            ok = abs(m.z) <= m.allowance
            rows.append(
                [
                    name,
                    fmt(m.measured),
                    f"±{fmt(m.allowed, 3)} ({m.allowance:.1f} se)",
                    f"{fmt(m.baseline)} {_spread_text(m)} ({m.seeds} seeds)",
                    f"{m.z:+.1f} se {'ok' if ok else 'DRIFT'}",
                ]
            )
        else:
            rows.append([name, fmt(m.measured), f"±{fmt(m.allowed, 3)}", fmt(m.baseline), "ok" if ok else "DRIFT"])
    for d in details.deviations or []:
        if d.kind == "layer" and paired:
            rows.append(
                [
                    f"attention {d.name}",
                    f"√JS {fmt(d.measured, 3)}",
                    f"{d.allowance:.2f}σ (floor {fmt(d.floor, 2)}σ)",
                    f"same seed; σ {fmt(d.spread, 3)}",
                    f"{d.z:+.2f}σ {'DRIFT' if d.moved else 'ok'}",
                ]
            )
        elif d.kind == "layer":
            moved = d.z > d.allowance
            rows.append(
                [
                    f"attention {d.name}",
                    f"√JS {fmt(d.measured, 3)}",
                    f"{d.allowance:.1f} spreads",
                    f"typical {fmt(d.mean, 3)} ({d.seeds} seeds)",
                    f"{d.z:+.1f} {'DRIFT' if moved else 'ok'}",
                ]
            )
    for name in details.missing_in_measured or []:
        rows.append([name, "not measured", "", "stored", "MISSING"])
    if not rows and p.summary:  # nothing compared: no (usable) baseline, or one just written
        stored = "written" if p.baseline_written else "missing"
        for name, value in sorted(p.summary.items()):
            rows.append([name, fmt(value), "", stored, "—"])
    return rows


def _spread_text(m: MetricDrift) -> str:
    """``± 0.005``, or ``×/÷ 1.29`` for a metric judged on the log scale."""
    spread = m.spread if m.spread is not None else math.nan
    return f"×/÷ {math.exp(spread):.3g}" if m.log_scale else f"± {fmt(spread, 2)}"


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


def drift_lines(result: CheckResult) -> list[str]:
    """What the attention drift of a baseline result says: the layer and part that moved most."""
    drift = result.details.attention if isinstance(result.details, BaselineDetails) else None
    if drift is None:
        return []
    moved = drift.per_layer[drift.layers.index(drift.layer)]
    return [
        f"attention drift: layer {drift.layer} moved most (JS/log2 {moved:.3f}, mean over parts), "
        f"part {drift.part} most of all ({drift.value:.3f})"
    ]


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
        lines += drift_lines(r)
    for w in p.warnings:
        lines.append(f"warning: {w}")
    if p.figures:
        lines += ["figures:", *(f"  {f}" for f in p.figures)]
    lines += ["rerun this check:", f"  {p.rerun}", "update this image's baseline:", f"  {p.update}"]
    lines += attachment_lines(p.figures)
    return "\n".join(lines)


def user_properties(p: ItemReport) -> list[tuple[str, object]]:
    """(name, value) pairs for ``item.user_properties`` (JUnit <property> elements)."""
    props: list[tuple[str, object]] = [("partattn_check", p.check), ("partattn_verdict", p.verdict)]
    if p.baseline is not None:
        props.append(("partattn_baseline_status", p.baseline.status.value))
    r = p.result
    if r is not None:
        props += [("partattn_value", fmt(r.value, 6)), ("partattn_threshold", fmt(r.threshold, 6))]
        if r.offender is not None:
            props.append(("partattn_offender", offender_text(r.offender)))
        if p.check in p.baseline_checks:
            props.append(("partattn_baseline", fmt(p.baseline_checks[p.check], 6)))
    if p.check == "baseline":
        details = r.details if r is not None else None
        if isinstance(details, BaselineDetails) and details.verdict is not None:
            props.append(("partattn_baseline_verdict", details.verdict))  # paired | seed-spread | tolerance
        props += [(f"partattn_metric_{k}", fmt(v, 6)) for k, v in sorted(p.summary.items())]
    props += [("partattn_figure", f) for f in p.figures]
    return props


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


def junit_logging_warning(junit_logging: str) -> str | None:
    if junit_logging in JUNIT_LOGGING_WITH_STDOUT:
        return None
    return (
        f"--junitxml is used with junit_logging = {junit_logging}, which leaves out <system-out>: "
        f"Jenkins and GitLab will not pick up the [[ATTACHMENT|...]] lines of partattn figures "
        f"(they are still in the <failure> text). Set junit_logging = system-out (or all) in your "
        f"pytest configuration to attach the figures"
    )


# ----------------------------------------------------------------------------- session summary
class Summary:
    """Collects item reports (on the controller) and renders the summary table and index.html."""

    def __init__(self) -> None:
        self.by_image: OrderedDict[str, dict[str, ItemReport]] = OrderedDict()

    def add(self, p: ItemReport) -> None:
        self.by_image.setdefault(p.image, {})[p.check] = p
        # sorted by image, whatever order xdist workers report in
        self.by_image = OrderedDict(sorted(self.by_image.items()))

    def __bool__(self) -> bool:
        return bool(self.by_image)

    def checks(self) -> list[str]:
        order = list(REGISTRY)
        seen = {c for per in self.by_image.values() for c in per}
        return [c for c in order if c in seen] + sorted(seen - set(order))

    @staticmethod
    def cell(p: ItemReport | None) -> str:
        if p is None:
            return ""
        verdict = p.outcome
        shown = verdict.upper() if verdict in ("fail", "error") else verdict
        r = p.result
        if p.baseline is not None and p.baseline.status in _SAID_IN_CELL and verdict == "fail":
            return f"{p.baseline.status.value} {shown}"
        if r is None or r.value is None:
            return shown
        return f"{fmt(r.value, 3)} {shown}"

    def table_lines(self) -> list[str]:
        checks = self.checks()
        rows = [[image, *(self.cell(per.get(c)) for c in checks)] for image, per in self.by_image.items()]
        return table(rows, ["image", *checks])

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for per in self.by_image.values():
            for p in per.values():
                out[p.outcome] = out.get(p.outcome, 0) + 1
        return out

    def verdicts(self) -> dict[str, int]:
        """How many images each baseline verdict judged (paired, seed-spread, tolerance), and how many
        were not compared (written, missing, unusable, not run)."""
        out: dict[str, int] = {}
        for per in self.by_image.values():
            p = per.get("baseline")
            if p is None:
                continue
            details = p.result.details if p.result is not None else None
            kind = details.verdict if isinstance(details, BaselineDetails) and details.verdict else "not compared"
            out[kind] = out.get(kind, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: kv[0] == "not compared"))

    def notes(self) -> list[str]:
        out = []
        written = [p for per in self.by_image.values() for p in per.values() if p.baseline_written]
        if written:
            out.append(
                f"{len(written)} baseline{'s' if len(written) != 1 else ''} written or updated "
                f"(review and commit them):"
            )
            out += [f"  {p.baseline.status.value}: {p.baseline.folder}" for p in written if p.baseline is not None]
        return out

    # -- index.html ------------------------------------------------------------------------
    def items(self) -> list[ItemReport]:
        """Every item, by image and then in check order."""
        checks = self.checks()
        return [per[c] for per in self.by_image.values() for c in checks if c in per]

    def index_html(self, results_dir: Path, header: list[str], fixture_set=None) -> str:
        """The results page: verdict line, failures (reason, metric table, figures, commands), the
        image x check table (each cell links to its check), then passing items collapsed per image.
        ``fixture_set``: the session's ``fixture_set.SetVerdict``, if judged."""
        groups = self.failure_groups()
        set_failed = fixture_set is not None and fixture_set.verdict == "fail"
        page = Page("partattn results", base=results_dir)
        page.paragraph(self.verdict_line(fixture_set), cls="verdict " + ("fail" if groups or set_failed else "pass"))
        if header:
            with page.details("run: " + header[0].removeprefix("partattn: ")):
                page.preformatted(header)
        for line in self.notes():
            page.note(line.strip())
        if groups or set_failed:
            page.heading(f"Failures ({len(groups) + set_failed})")
            for group in groups:
                self._failure(page, group)
            if set_failed:
                with page.section(cls="failure", anchor=anchor_id(ITEM_FIXTURE_SET)):
                    page.heading(f"{ITEM_FIXTURE_SET}: FAIL · all {len(fixture_set.images)} images", level=3)
                    # lines(): the reason, a blank line, then how it is judged and the table
                    page.paragraph(fixture_set.reason()).preformatted(fixture_set.lines()[2:])
        else:
            page.paragraph(self._passing_hint(results_dir), cls="hint")
        page.heading("All checks")
        self._table(page, groups, fixture_set)
        self._passing(page)
        if groups or set_failed:
            page.note(f"This page: {Path(results_dir) / 'index.html'}; figures: {Path(results_dir)}/<image>/")
        return page.render()

    def failure_groups(self) -> list[list[ItemReport]]:
        """Failing items in image and check order, one per group, except that the items of an image
        that could not run (the same error for each check) form one group."""
        groups: list[list[ItemReport]] = []
        for p in self.items():
            if p.outcome not in ("fail", "error"):
                continue
            last = groups[-1][0] if groups else None
            same_error = last is not None and last.result is None and (last.image, last.error) == (p.image, p.error)
            if p.result is None and same_error:
                groups[-1].append(p)
            else:
                groups.append([p])
        return groups

    def _table(self, page: Page, groups: list[list[ItemReport]], fixture_set) -> None:
        """The image x check table; each cell links to its check (a failure's card, or the check
        inside its image's collapsed block), an image to its first failure."""
        anchors = {(p.image, p.check): _item_anchor(group[0]) for group in groups for p in group}
        checks = self.checks()
        rows = []
        for image, per in self.by_image.items():
            first = next((group[0] for group in groups if group[0].image == image), None)
            image_href = _href(_item_anchor(first) if first else anchor_id(next(iter(per.values())).key))
            cells = [
                Cell(
                    self.cell(p),
                    _CELL_CLASSES.get(p.outcome, "note"),
                    _href(anchors.get((image, p.check)) or _item_anchor(p)),
                )
                if p
                else Cell("")
                for p in (per.get(c) for c in checks)
            ]
            rows.append([Cell(image, href=image_href), *cells])
        set_failed = fixture_set is not None and fixture_set.verdict == "fail"
        if fixture_set is not None and "baseline" in checks:  # the set is judged from the baseline items
            href = _href(anchor_id(ITEM_FIXTURE_SET)) if set_failed else None
            verdict = Cell("FAIL" if set_failed else fixture_set.verdict, _CELL_CLASSES[fixture_set.verdict], href)
            cells = [verdict if c == "baseline" else Cell("") for c in checks]
            rows.append([Cell(f"{ITEM_FIXTURE_SET} (all {len(fixture_set.images)} images)", href=href), *cells])
        page.table(["image", *checks], rows)
        if fixture_set is not None and not set_failed:
            page.note(f"fixture set: {fixture_set.reason()}")

    def _passing(self, page: Page) -> None:
        """Passing (and skipped, written) items: one closed ``<details>`` per image."""
        passing: OrderedDict[str, list[ItemReport]] = OrderedDict()
        for p in self.items():
            if p.outcome not in ("fail", "error"):
                passing.setdefault(p.image, []).append(p)
        if passing:
            page.heading("Passing checks").note("Closed: click an image to open its checks.")
        for image, items in passing.items():
            counts: dict[str, int] = {}
            for p in items:
                counts[p.outcome] = counts.get(p.outcome, 0) + 1
            summary = f"{image}: " + ", ".join(f"{n} {_PAST[v]}" for v, n in counts.items())
            with page.details(summary, anchor=anchor_id(items[0].key)):
                for p in items:
                    cls = _CELL_CLASSES.get(p.outcome, "")
                    page.heading(f"{p.check}: {p.outcome}", level=3, anchor=_item_anchor(p), cls=cls)
                    page.paragraph(p.result.reason if p.result is not None else "").figures(_figures(p))

    def verdict_line(self, fixture_set) -> str:
        """FAILED or PASSED: what failed, then the other counts."""
        counts = self.counts()
        bad = []
        if counts.get("fail"):
            bad.append(f"{counts['fail']} of {sum(counts.values())} checks failed")
        if counts.get("error"):
            bad.append(f"{counts['error']} could not run")
        if fixture_set is not None and fixture_set.verdict == "fail":
            bad.append("the fixture set moved")
        rest = [f"{counts[v]} {_PAST[v]}" for v in ("pass", "skip", "written", "updated") if counts.get(v)]
        if fixture_set is not None and fixture_set.verdict == "pass":
            rest.append("fixture set passed")
        if bad:
            return "FAILED: " + " · ".join([", ".join(bad), *rest])
        return "PASSED: " + " · ".join(rest)

    def _passing_hint(self, results_dir: Path) -> str:
        where = f"This page and its figures: {Path(results_dir)}"
        if any(p.figures for p in self.items()):
            return f"Nothing failed. {where}."
        return (
            "Nothing failed, so no figures were drawn; rerun with --partattn-save-all-figures to draw them for "
            f"every check. {where}."
        )

    def _failure(self, page: Page, group: list[ItemReport]) -> None:
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
                limit = "allowance" if p.check == "baseline" else "threshold"
                page.table(
                    ["metric", "measured", limit, "baseline", "verdict"],
                    [[*row[:-1], Cell(row[-1], _row_class(row[-1]))] for row in rows],
                )
            if r.offender is not None and p.check != "baseline":
                page.note(f"worst offender: {offender_text(r.offender)}")
            page.figures(_figures(p))
            for w in p.warnings:
                page.note(f"warning: {w}")
            page.preformatted(
                ["# rerun this check", p.rerun, "# update this image's baseline", p.update], cls="commands"
            )

    def write_index(self, results_dir: Path, header: list[str], fixture_set=None) -> Path:
        """Write ``index.html`` into ``results_dir`` atomically."""
        text = self.index_html(Path(results_dir), header, fixture_set)
        return atomic_write_text(Path(results_dir) / "index.html", text)


#: baseline statuses a failing summary cell names (the value says nothing there)
_SAID_IN_CELL = (BaselineStatus.MISSING, BaselineStatus.UNREADABLE, BaselineStatus.ENV_MISMATCH)

#: how the verdict line and the collapsed summaries name outcomes
_PAST = {
    "pass": "passed",
    "skip": "skipped",
    "fail": "failed",
    "error": "errors",
    "written": "written",
    "updated": "updated",
}


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


# ----------------------------------------------------------------------------- header
def header_lines(settings, device, thresholds_source: str, custom_hooks: list[str], defaults: dict) -> list[str]:
    """The report header: model, device (and any CPU fallback), dtype, steps, versions, folders.
    ``defaults``: the checkpoint's run settings (``runspec.checkpoint_defaults``), shown for unset options."""
    import importlib.metadata as md
    import sys

    def version(name: str) -> str:
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "__version__"):
            return module.__version__
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    model = model_text(settings, custom_hooks) + defaults_note(settings, custom_hooks)
    dev = device.device + (f" ({device.note})" if device.note else "")
    steps = str(settings.steps) if settings.steps is not None else f"checkpoint default ({defaults['steps']})"
    tokens = getattr(settings, "num_tokens", None)
    tokens = str(tokens) if tokens is not None else f"checkpoint default ({defaults['num_tokens']})"
    guidance = "checkpoint default" if settings.guidance is None else fmt(settings.guidance)
    update = settings.update or "off"
    return [
        f"partattn: model {model}",
        f"partattn: device {dev} | dtype {settings.dtype} | steps {steps} | seed {settings.seed} | "
        f"guidance {guidance} | tokens {tokens} | torch {version('torch')} | diffusers {version('diffusers')}",
        f"partattn: fixtures {settings.shown(settings.fixtures)} | baselines {settings.shown(settings.baselines)} "
        f"(update: {update}) | results {settings.shown(settings.results)} | thresholds: {thresholds_source}",
    ]
