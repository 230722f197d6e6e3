"""What the checks supply to the reports: the gate's one door to check-specific content.

Each check says, through its report hooks (``Check.report_rows``, ``failure_lines``,
``report_properties``, ``limit_label``, ``offender_note``, ``set_item``; see
:class:`partattn_checks.checks.Check`; ``Summary.verdicts`` reads ``count_verdicts``), how its items
show; the sinks ask here and never name a check. An item of a check that is not registered (any
more) shows its headline. No torch.
"""

from __future__ import annotations

from ...checks import REGISTRY, Check
from ...checks.reporting import fmt, headline_row
from .item import ItemReport


def check_of(p: ItemReport) -> Check | None:
    """The registered check of an item (None: not registered)."""
    return REGISTRY.get(p.check)


def metric_rows(p: ItemReport) -> list[list[str]]:
    """(metric, measured, limit, baseline, verdict) rows of an item report: the check's own, or,
    where it compared none, the headline metrics the item measured (a baseline missing or written)."""
    r = p.result
    if r is None:
        return []
    check, stored = check_of(p), p.baseline_checks.get(p.check)
    rows = check.report_rows(r, stored) if check is not None else [headline_row(p.check, "", r, stored)]
    if not rows and p.summary:  # nothing compared: no (usable) baseline, or one just written
        stored_as = "written" if p.baseline_written else "missing"
        rows = [[name, fmt(value), "", stored_as, "—"] for name, value in sorted(p.summary.items())]
    return rows


def limit_label(p: ItemReport) -> str:
    """The name of the rows' limit column: ``threshold``, or the check's own (``allowance``)."""
    check = check_of(p)
    return check.limit_label if check is not None else "threshold"


def offender_note(p: ItemReport) -> bool:
    """Whether the index page notes the item's worst offender under its table."""
    check = check_of(p)
    return check.offender_note if check is not None else True


def failure_lines(p: ItemReport) -> list[str]:
    """The check's own lines of the failure text, after the worst offender."""
    check = check_of(p)
    return check.failure_lines(p.result) if check is not None and p.result is not None else []


def properties(p: ItemReport) -> list[tuple[str, object]]:
    """The check's own JUnit properties."""
    check = check_of(p)
    return check.report_properties(p.result) if check is not None and p.result is not None else []


def set_check() -> Check | None:
    """The check judged over the whole fixture set too (its ``set_item``), if one is registered:
    the summary tables show that verdict as one more row, in its column."""
    return next((check for check in REGISTRY.values() if check.set_item is not None), None)


def set_item_name() -> str:
    """The name of the item that judges the fixture set (the ``set_item`` of :func:`set_check`)."""
    check = set_check()
    assert check is not None and check.set_item is not None, "a set verdict without a check that judges sets"
    return check.set_item
