"""baseline: fails when a headline metric drifts from the stored baseline (``check_baseline``).

Not a record check: it compares ``AttentionRecord.summary()`` with stored metrics, so
``run_checks`` leaves it out; the baseline engine (``partattn_checks.baseline_compare``) calls
``check_baseline`` and, when the baseline stores an attention summary, adds the attention drift
(``AttentionDrift``) that ``draw`` turns into the ``drift`` figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .core import Check, CheckResult, register
from .details import Details, Matrix, optional_key
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


@dataclass(frozen=True)
class AttentionDrift:
    """How far each layer's step-averaged, head-averaged key-marginals moved from the baseline's
    attention summary (JS/log 2 per part), and the marginals of the layer that moved most."""

    layers: tuple[str, ...]
    per_part: Matrix  # (layers, parts) JS/log 2 in [0, 1]
    layer: str  # the layer that moved most (largest mean over parts)
    part: int  # the part that moved most in that layer
    baseline: Matrix  # (parts, keys) that layer's marginals in the baseline
    now: Matrix  # (parts, keys) and now
    grid: tuple[int, int] | None = None  # patch rows, columns

    @property
    def per_layer(self) -> list[float]:
        """Each layer's drift: the mean over its parts."""
        return [sum(row) / len(row) for row in self.per_part.rows]

    @property
    def value(self) -> float:
        return self.per_part.rows[self.layers.index(self.layer)][self.part]


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
    #: The attention drift from the baseline's summary; ``attention_note`` says why there is none.
    attention: AttentionDrift | None = optional_key()
    attention_note: str | None = optional_key()
    #: Added by the baseline engine: where it wrote, looked, what it could not read, ...
    candidate: str | None = optional_key()
    written: str | None = optional_key()
    looked: str | None = optional_key()
    file: str | None = optional_key()
    environment_diff: list[str] | None = optional_key()


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

    def draw(self, result, details, record, image, thresholds) -> list[tuple[str, bytes]]:
        """``drift``: baseline | now | difference per part for the layer that moved most, and how
        far every layer moved (from ``details.attention``; none without a stored summary)."""
        if details.attention is None:
            return []
        from ..render.drift import drift_figure

        return [("drift", drift_figure(details.attention, image))]


def check_baseline(
    measured: dict[str, float], baseline: dict[str, float], thresholds: Thresholds | None = None
) -> CheckResult:
    """Compare headline metrics with a stored baseline (``Baseline.compare``)."""
    return Baseline().compare(measured, baseline, thresholds or Thresholds())
