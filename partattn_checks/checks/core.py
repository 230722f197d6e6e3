"""The shape every check shares: results and the ``Check`` base class (the registry: ``registry.py``).

A check is one class, registered with ``@register``: its ``name``, its thresholds dataclass
(``thresholds_type``, the ``[name]`` table of a thresholds file), its headline (``label`` and
``op``, the pass condition shown before the threshold), ``judge(record, thresholds)`` returning a
``CheckResult`` whose ``details`` is the check's own frozen dataclass (``details.py``), ``draw`` (the figures
that explain the result, drawn from those details) and ``timeline`` (what it judges per recorded step and
layer against its own threshold: the run report's figure of the check). Its report hooks (``report_rows``,
``failure_lines``, ...) say how the gate's reports show it; the defaults show the headline. Reports, the
summary table, the figures, the run report and the thresholds tables all read the registry; see "Writing a
check" in docs/metrics.md.

No torch here: checks import it when they run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

from .details import Details
from .registry import CHECKS, OPS, CheckError, details_type_of
from .reporting import headline_row
from .thresholds import Thresholds

if TYPE_CHECKING:
    from ..capture.record import AttentionRecord

#: The details type of a check, ``class Collapse(Check[CollapseDetails])``: what its ``draw`` reads.
DetailsT = TypeVar("DetailsT", bound=Details)

VERDICTS = ("pass", "fail", "skip")


# ====================================================================== results
@dataclass(frozen=True)
class Offender:
    """Where a problem is worst; ``None`` fields do not apply (e.g. a whole layer)."""

    step: int | None = None
    layer: str | None = None
    part: int | None = None
    head: int | None = None

    def __str__(self) -> str:
        parts = [
            f"{name} {value}"
            for name, value in (("step", self.step), ("layer", self.layer), ("part", self.part), ("head", self.head))
            if value is not None
        ]
        return ", ".join(parts) if parts else "the whole record"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check, frozen (``dataclasses.replace`` makes a changed copy).
    ``value``/``threshold`` are the numbers the verdict compared; ``details`` is the check's own
    ``details_type`` (a ``Details`` subclass; a check that is not registered may use any)."""

    name: str
    verdict: str
    value: float | None
    threshold: float | None
    offender: Offender | None
    reason: str
    details: Details

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise CheckError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        expected = details_type_of(self.name)
        if not isinstance(self.details, expected):
            raise CheckError(
                f"the {self.name} result's details must be a {expected.__name__}, got {type(self.details).__name__} "
                f"(build them with {expected.__name__}(...), or from JSON with CheckResult.from_dict)"
            )

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    @property
    def measured(self) -> bool:
        """False when NaN/Inf kept the check from judging: its details carry ``nonfinite_count`` and
        its ``value`` is that count, not a measurement."""
        return getattr(self.details, "nonfinite_count", None) is None

    def to_dict(self) -> dict:
        """JSON-ready form (for reports and for pytest-xdist transport)."""
        return {
            "name": self.name,
            "verdict": self.verdict,
            "value": self.value,
            "threshold": self.threshold,
            "offender": self.offender.to_dict() if self.offender is not None else None,
            "reason": self.reason,
            "details": self.details.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> CheckResult:
        """Back from ``to_dict()``, typed: the details as the registered check's ``details_type``."""
        name = d["name"]
        details_type = details_type_of(name)
        try:
            details = details_type.from_dict(d.get("details") or {})
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckError(
                f"the {name} result's details do not fit {details_type.__name__} ({exc}); "
                f"is the check that wrote them registered?"
            ) from None
        offender = d.get("offender")
        return cls(
            name,
            d["verdict"],
            d.get("value"),
            d.get("threshold"),
            Offender(**offender) if offender is not None else None,
            d.get("reason", ""),
            details,
        )


@dataclass(frozen=True)
class Timeline:
    """What a check judges, per recorded step and layer, against its own threshold.

    ``values`` is ``(len(steps), len(layers))`` (a tensor or array; NaN shows as a gap). ``judged``,
    when set, is the ``(len(steps),)`` series the verdict reduces over the steps (``judged_label``
    names it: all layers, the worst layer, ...); ``value`` is the number the verdict compares with
    ``threshold`` (passing when it is ``op`` the threshold) and ``value_label`` says how it comes
    from the figure ("mean over steps of the bold line"). ``stem``: the run report writes
    ``timeline_<stem>.png``."""

    values: Any
    steps: tuple[int, ...]
    layers: tuple[str, ...]
    metric: str
    threshold: float | None
    op: str
    title: str
    stem: str
    judged: Any = None
    judged_label: str = ""
    value: float | None = None
    value_label: str = ""

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise CheckError(f"timeline {self.stem!r}: op must be one of {', '.join(OPS)}, got {self.op!r}")
        shape = tuple(getattr(self.values, "shape", ()))
        if shape != (len(self.steps), len(self.layers)):
            raise CheckError(
                f"timeline {self.stem!r}: values must be (steps={len(self.steps)}, layers={len(self.layers)}), "
                f"got shape {shape}"
            )

    @property
    def caption(self) -> str:
        """One line for a page: the title and the pass condition."""
        if self.threshold is None:
            return self.title
        return f"{self.title} (pass: {self.value_label or 'value'} {self.op} {self.threshold:g})"

    def draw(self, path=None, *, title: str | None = None, ylim=None):
        """The figure (``render.timeline``): PNG bytes, or the written ``path``."""
        from .. import render

        return render.timeline(
            self.values,
            self.steps,
            self.layers,
            metric=self.metric,
            threshold=self.threshold,
            title=self.title if title is None else title,
            judged=self.judged,
            judged_label=self.judged_label,
            value=self.value,
            value_label=self.value_label,
            ylim=ylim,
            path=path,
        )


# ====================================================================== checks
class Check(Generic[DetailsT]):
    """One check. Subclass it, set the class attributes, implement ``judge`` (and ``draw`` for
    figures), and decorate the class with ``@register``."""

    #: The check's name: the item id (``image.png::name``), the thresholds table, figure prefixes.
    name: ClassVar[str]
    #: Headline: ``label`` of ``value``, passing when it is ``op`` (``"≤"`` or ``"≥"``) the threshold.
    label: ClassVar[str]
    op: ClassVar[str]
    #: The frozen dataclass of its ``[name]`` thresholds table (built with ``param``); None: no table.
    thresholds_type: ClassVar[type | None] = None
    #: The frozen dataclass of ``CheckResult.details`` (a ``Details`` subclass).
    details_type: ClassVar[type[Details]] = Details
    #: Judged from a record by ``run_checks``; False for checks that need more (baseline).
    record_check: ClassVar[bool] = True
    #: The field of its thresholds table that ``partattn calibrate`` sets from a known-good model and
    #: the variant built to break it: the one the headline value is compared with. None: not calibrated.
    calibrated: ClassVar[str | None] = None
    #: The ``model.broken`` variant built to make this check fail (the model matrix's expectation).
    broken_by: ClassVar[str | None] = None
    #: Reports: the name of the limit column of ``report_rows`` in the index page and job summary.
    limit_label: ClassVar[str] = "threshold"
    #: Reports: the index page notes the worst offender under the table (False: the rows say where).
    offender_note: ClassVar[bool] = True
    #: The item that judges this check over the whole fixture set too, after the fixtures folder in its
    #: node id (the reports show it in this check's column); None: images one by one only.
    set_item: ClassVar[str | None] = None

    def judge(self, record: AttentionRecord, thresholds: Thresholds) -> CheckResult:
        raise NotImplementedError(f"the {self.name} check is not judged from a record alone")

    def __call__(self, record: AttentionRecord, thresholds: Thresholds | None = None) -> CheckResult:
        return self.judge(record, thresholds or Thresholds())

    def limits(self, thresholds: Thresholds):
        """This check's table of ``thresholds``."""
        return thresholds[self.name]

    def draw(
        self, result: CheckResult, details: DetailsT, record: AttentionRecord, image, thresholds: Thresholds
    ) -> list[tuple[str, bytes]]:
        """``(what, png bytes)`` pairs explaining ``result``, drawn from ``details`` (never recomputed)."""
        return []

    def timeline(self, record: AttentionRecord, thresholds: Thresholds) -> Timeline | None:
        """What this check judges per recorded step and layer, against its threshold (the run
        report draws it); None: nothing to draw (the default, or a record the check skips)."""
        return None

    # -- how reports show it (gate/report reads these; the defaults show the headline) -------------
    def report_rows(self, result: CheckResult, stored: float | None) -> list[list[str]]:
        """(metric, measured, limit, baseline, verdict) rows of ``result`` for the reports' tables;
        ``stored``: this check's value in the image's stored baseline. Default: the headline."""
        return [headline_row(self.label, self.op, result, stored)]

    def failure_lines(self, result: CheckResult) -> list[str]:
        """Lines the failure text adds after the worst offender (default: none)."""
        return []

    def report_properties(self, result: CheckResult) -> list[tuple[str, object]]:
        """(name, value) JUnit properties beyond the ones every item records (default: none)."""
        return []

    def count_verdicts(self, results: Sequence[CheckResult | None]) -> dict[str, int]:
        """How many of this check's items (their results; None: not run) each of its ways of
        judging judged, for the summary's opening lines; {} (the default): it has one way."""
        return {}

    def figures(
        self,
        result: CheckResult,
        record: AttentionRecord,
        outdir: str | Path,
        image=None,
        thresholds: Thresholds | None = None,
    ) -> list[Path]:
        """Write ``draw``'s figures as ``<outdir>/<name>__<what>.png``; none for a skip or a check
        that draws none."""
        from ..base.atomic import atomic_write_bytes

        if result.verdict == "skip" or type(self).draw is Check.draw:
            return []
        details = result.details
        if not isinstance(details, self.details_type):
            raise CheckError(
                f"cannot draw the {self.name} figures: its details are not a {self.details_type.__name__} "
                f"(got {type(details).__name__})"
            )
        pngs = self.draw(result, cast(DetailsT, details), record, image, thresholds or Thresholds())
        return [atomic_write_bytes(Path(outdir) / f"{self.name}__{what}.png", data) for what, data in pngs]

    def __repr__(self) -> str:
        return f"<check {self.name}>"


def run_checks(
    record: AttentionRecord, thresholds: Thresholds | None = None, names: list[str] | None = None
) -> list[CheckResult]:
    """Run the named record checks (all of ``CHECKS`` by default) in registry order."""
    thresholds = thresholds or Thresholds()
    if names is None:
        names = list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise CheckError(f"unknown check {unknown[0]!r} (known: {', '.join(CHECKS)})")
    return [check.judge(record, thresholds) for name, check in CHECKS.items() if name in names]
