"""baseline: fails when a headline metric drifts from the stored baseline (``check_baseline``).

Not a record check: it compares ``AttentionRecord.summary()`` with stored metrics, so
``run_checks`` leaves it out; the baseline store (``partattn_checks.baseline``) calls
``check_baseline``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .core import Check, CheckResult, register
from .details import Details, optional_key
from .thresholds import Thresholds, param


@dataclass(frozen=True)
class BaselineThresholds:
    atol: float = param(0.02, 0.0, None, doc="absolute tolerance of a headline metric against its baseline")
    rtol: float = param(0.1, 0.0, None, doc="relative tolerance (times |baseline|), added to atol")


@dataclass(frozen=True)
class MetricDrift:
    measured: float
    baseline: float
    drift: float  # |measured - baseline| (inf when either is not finite)
    allowed: float  # atol + rtol * |baseline|


@dataclass(frozen=True, kw_only=True)
class BaselineDetails(Details):
    per_metric: dict[str, MetricDrift] | None = optional_key()
    missing_in_measured: list[str] | None = optional_key()
    missing_in_baseline: list[str] | None = optional_key()
    atol: float | None = optional_key()
    rtol: float | None = optional_key()
    worst_metric: str | None = optional_key()  # the metric closest to (or furthest past) its allowance
    #: How the result came about: "compared" here; the baseline store also writes "written", "missing", ...
    status: str = field(default="compared")


@register
class Baseline(Check):
    """Compare headline metrics with a stored baseline (see ``compare``)."""

    name = "baseline"
    label, op = "worst drift", "≤"
    thresholds_type = BaselineThresholds
    details_type = BaselineDetails
    record_check = False

    def compare(self, measured: dict[str, float], baseline: dict[str, float], thresholds: Thresholds) -> CheckResult:
        """A metric fails when |measured - baseline| > atol + rtol * |baseline|. A metric in the
        baseline but not measured fails; a measured metric absent from the baseline is reported only."""
        t = self.limits(thresholds)
        if not baseline:
            return CheckResult(
                self.name, "skip", None, None, None, "no baseline stored for this image", BaselineDetails()
            )
        missing = sorted(set(baseline) - set(measured))
        extra = sorted(set(measured) - set(baseline))
        per_metric, worst, worst_ratio = {}, None, -1.0
        for key in sorted(set(baseline) & set(measured)):
            m, b = float(measured[key]), float(baseline[key])
            allowed = t.atol + t.rtol * abs(b)
            drift = abs(m - b) if math.isfinite(m) and math.isfinite(b) else math.inf
            ratio = drift / allowed if allowed > 0 else (0.0 if drift == 0 else math.inf)
            per_metric[key] = MetricDrift(m, b, drift, allowed)
            if ratio > worst_ratio:
                worst, worst_ratio = key, ratio
        details = BaselineDetails(
            per_metric=per_metric,
            missing_in_measured=missing,
            missing_in_baseline=extra,
            atol=t.atol,
            rtol=t.rtol,
            worst_metric=worst,
        )
        notes = []
        if missing:
            notes.append(f"not measured: {', '.join(missing)}")
        if extra:
            notes.append(f"not in baseline: {', '.join(extra)}")
        note = f" ({'; '.join(notes)})" if notes else ""
        if worst is not None:
            w = per_metric[worst]
            drifted = worst_ratio > 1.0
            head = (
                (
                    f"{worst} drifted from its baseline: {w.measured:.4f} vs {w.baseline:.4f}, "
                    f"|Δ| {w.drift:.4f} > allowed {w.allowed:.4f}"
                )
                if drifted
                else (
                    f"all metrics within tolerance (closest to the limit: {worst}, |Δ| {w.drift:.4f} "
                    f"≤ allowed {w.allowed:.4f})"
                )
            )
            value, threshold = w.drift, w.allowed
        else:
            drifted, head, value, threshold = False, "no metric in common with the baseline", None, None
        if drifted or missing:
            if not drifted:
                head = "baseline metrics were not measured"
            return CheckResult(self.name, "fail", value, threshold, None, head + note, details)
        return CheckResult(self.name, "pass", value, threshold, None, head + note, details)


def check_baseline(
    measured: dict[str, float], baseline: dict[str, float], thresholds: Thresholds | None = None
) -> CheckResult:
    """Compare headline metrics with a stored baseline (``Baseline.compare``)."""
    return Baseline().compare(measured, baseline, thresholds or Thresholds())
