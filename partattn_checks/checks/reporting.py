"""What a check's report hooks share: numbers as text, the headline row and the set verdict's shape.

The gate's reports (:mod:`partattn_checks.gate.report`) hold no check-specific code: they ask the
check (the report hooks of :class:`~.core.Check`) for its table rows, the extra lines of its failure
text and its JUnit properties, and show a verdict over the whole fixture set (a :class:`SetVerdict`)
in the column of the check whose ``set_item`` it is. No torch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .core import CheckResult


def fmt(value, digits: int = 4) -> str:
    """A number as reports show it (4 significant digits), ``—`` for None."""
    if value is None:
        return "—"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (int, float)):
        return f"{value:.{digits}g}"
    return str(value)


def headline_row(label: str, op: str, result: CheckResult, stored: float | None) -> list[str]:
    """The row of a check's headline: ``label``, the value, the pass condition (``op`` threshold),
    the value the stored baseline recorded (``stored``) and the verdict."""
    threshold = "" if result.threshold is None else f"{op} {fmt(result.threshold)}"
    return [label, fmt(result.value), threshold, fmt(stored), result.verdict.upper()]


class SetVerdict(Protocol):
    """A verdict over the whole fixture set (``baselines.fixture_set.SetVerdict``), reported as one more item."""

    @property
    def images(self) -> tuple[str, ...]:
        """The images judged together."""
        ...

    @property
    def verdict(self) -> str:
        """pass | fail | skip."""
        ...

    def reason(self) -> str:
        """One sentence: what moved, or why it was not judged."""
        ...

    def lines(self) -> list[str]:
        """The failure text: a headline, a blank line, then how it is judged and its table."""
        ...
