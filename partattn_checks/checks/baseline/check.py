"""baseline: fails when a headline metric or a layer's attention moved from the stored baseline
further than the baseline's noise seeds make likely.

Not a record check: it compares ``AttentionRecord.summary()`` with stored metrics, so
``run_checks`` leaves it out; the baseline engine (``partattn_checks.checks.baseline.compare``) calls it.
A baseline written from several noise seeds is judged in units of their spread
(:meth:`Baseline.judge_noise`, statistics in :mod:`partattn_checks.checks.baseline.noise`); a single-run baseline
(schema 1) with the fixed ``atol``/``rtol`` of :meth:`Baseline.compare`. When the baseline stores
an attention summary the engine adds the attention drift (``AttentionDrift``) that ``draw`` turns
into the ``drift`` figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..core import Check, CheckResult, register
from ..details import Details, Matrix, optional_key
from ..thresholds import Thresholds, param
from .noise import Deviation


@dataclass(frozen=True)
class BaselineThresholds:
    atol: float = param(0.02, 0.0, None, doc="absolute tolerance of a headline metric against its baseline")
    rtol: float = param(0.1, 0.0, None, doc="relative tolerance (times |baseline|), added to atol")


@dataclass(frozen=True)
class MetricDrift:
    measured: float
    baseline: float
    drift: float  # |measured - baseline| (inf when either is not finite)
    allowed: float  # atol + rtol * |baseline|; judged in noise units: the allowance times the standard error
    spread: float | None = None  # seed-to-seed spread used (noise units only)
    seeds: int | None = None  # baseline seeds
    z: float | None = None  # (measured - baseline) in standard errors
    allowance: float | None = None  # the largest |z| allowed
    log_scale: bool = False  # judged on the log scale: ``spread`` is in log units


@dataclass(frozen=True)
class AttentionDrift:
    """How far each layer's step-averaged, head-averaged key-marginals moved from the baseline's
    attention summary (JS/log 2 per part), and the marginals of the layer that moved most: what
    ``attention.attention_drift`` measures, what the baseline engine adds the seed band to, what the
    drift figure draws and what travels in ``BaselineDetails.attention``."""

    layers: tuple[str, ...]
    per_part: Matrix  # (layers, parts) JS/log 2 in [0, 1]
    layer: str  # the layer that moved most (largest mean over parts)
    part: int  # the part that moved most in that layer
    baseline: Matrix  # (parts, keys) that layer's marginals in the baseline
    now: Matrix  # (parts, keys) and now
    grid: tuple[int, int] | None = None  # patch rows, columns
    #: With a seed spread: per layer, the drift judged (√(JS/log 2), mean over parts), the typical
    #: drift of one seed and the largest drift the allowance admits (the noise band).
    judged: tuple[float, ...] | None = None
    typical: tuple[float, ...] | None = None
    band: tuple[float, ...] | None = None
    onset: str | None = None  # the first layer in depth order beyond its own seed noise
    #: How the drift figure draws now − baseline: ± this (attention × Nk), None: its largest |Δ|.
    delta_scale: float | None = None

    @property
    def per_layer(self) -> list[float]:
        """Each layer's drift: the mean over its parts."""
        return [sum(row) / len(row) for row in self.per_part.rows]

    @property
    def value(self) -> float:
        return self.per_part.rows[self.layers.index(self.layer)][self.part]


@dataclass(frozen=True, kw_only=True)
class BaselineDetails(Details):
    """The comparison with a stored baseline (empty when none was compared: what the store did is
    ``compare.BaselineState``, beside the result)."""

    per_metric: dict[str, MetricDrift] | None = optional_key()
    missing_in_measured: list[str] | None = optional_key()
    missing_in_baseline: list[str] | None = optional_key()
    atol: float | None = optional_key()
    rtol: float | None = optional_key()
    worst_metric: str | None = optional_key()  # the metric closest to (or furthest past) its allowance
    #: Noise units: every metric and layer compared, the seeds, the gate's repeats and the rate.
    deviations: list[Deviation] | None = optional_key()
    onset: str | None = optional_key()  # first layer (depth order) that moved beyond its own noise
    seeds: int | None = optional_key()
    repeats: int | None = optional_key()
    false_alarm_rate: float | None = optional_key()
    #: The attention drift from the baseline's summary; ``attention_note`` says why there is none.
    attention: AttentionDrift | None = optional_key()
    attention_note: str | None = optional_key()


@register
class Baseline(Check[BaselineDetails]):
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

    def judge_noise(self, deviations: list[Deviation], alpha: float, missing: Sequence[str] = ()) -> CheckResult:
        """Fail when a metric or a layer moved further from the baseline's seed mean than its
        allowance (``noise``); the reason gives measured, mean ± spread over N seeds, the distance in
        spreads and the allowance, and names the first layer (in depth order) that moved."""
        metrics = {d.name: d for d in deviations if d.kind == "metric"}
        per_metric = {
            name: MetricDrift(
                d.measured,
                d.mean,
                abs(d.measured - d.mean) if math.isfinite(d.measured) else math.inf,
                d.allowed_delta,
                d.spread,
                d.seeds,
                d.z,
                d.allowance,
                d.log_scale,
            )
            for name, d in metrics.items()
        }
        moved = [d for d in deviations if d.moved]
        onset = next((d for d in deviations if d.kind == "layer" and d.moved), None)
        worst = max(deviations, key=lambda d: (abs(d.z) if d.two_sided else d.z) / d.allowance) if deviations else None
        any_d = deviations[0] if deviations else None
        details = BaselineDetails(
            per_metric=per_metric,
            missing_in_measured=list(missing),
            worst_metric=worst.name if worst is not None and worst.kind == "metric" else None,
            deviations=list(deviations),
            onset=onset.name if onset is not None else None,
            seeds=any_d.seeds if any_d else None,
            repeats=any_d.repeats if any_d else None,
            false_alarm_rate=alpha,
        )
        if worst is None:
            return CheckResult(self.name, "fail", None, None, None, "no metric in common with the baseline", details)
        runs = f"the mean of {worst.repeats} runs" if worst.repeats > 1 else "this run"
        if moved:
            names = ", ".join(d.name for d in moved)
            head = f"moved beyond the baseline's seed noise: {names}. {describe(worst, runs)}"
            if onset is not None:
                head += f"; the drift starts at {onset.name} (the first layer beyond its own noise)"
        else:
            head = f"within the baseline's seed noise (closest to its allowance: {describe(worst, runs)})"
        if missing:
            head += f" (not measured: {', '.join(missing)})"
        value, threshold = (abs(worst.z) if worst.two_sided else worst.z), worst.allowance
        verdict = "fail" if moved or missing else "pass"
        return CheckResult(self.name, verdict, value, threshold, None, head, details)

    def draw(self, result, details, record, image, thresholds) -> list[tuple[str, bytes]]:
        """``drift``: baseline | now | difference per part for the layer that moved most, and how
        far every layer moved (from ``details.attention``; none without a stored summary)."""
        if details.attention is None:
            return []
        from ...render.drift import drift_figure

        return [("drift", drift_figure(details.attention, image))]


def with_delta_scale(result: CheckResult, delta_scale: float | None) -> CheckResult:
    """``result`` whose drift figure draws now − baseline on ±``delta_scale`` (the gate's
    ``--partattn-drift-scale``); unchanged when it has no attention drift or ``delta_scale`` is None."""
    details = result.details
    if delta_scale is None or not isinstance(details, BaselineDetails) or details.attention is None:
        return result
    return replace(result, details=replace(details, attention=replace(details.attention, delta_scale=delta_scale)))


def describe(d: Deviation, runs: str = "this run") -> str:
    """``separation 0.2100 vs 0.2612 ± 0.0050 over 16 seeds: 5.2 spreads away (allowance 4.9)``."""
    if d.kind == "metric":
        low, high = d.allowed_range
        spread = f"×/÷ {math.exp(d.spread):.3f} (geometric)" if d.log_scale else f"± {d.spread:.4f}"
        return (
            f"{d.name} {d.measured:.4f} ({runs}) vs baseline {d.mean:.4f} {spread} over {d.seeds} seeds: "
            f"{d.z:+.1f} standard errors away (allowance ±{d.allowance:.1f}, i.e. {low:.4f} .. {high:.4f})"
        )
    part = f", part {d.part} most" if d.part is not None else ""
    return (
        f"attention of {d.name} drifted √(JS/log2) {d.measured:.4f} ({runs}{part}) where one seed typically "
        f"drifts {d.mean:.4f} (log-spread {d.spread:.2f} over {d.seeds} seeds): {d.z:+.1f} spreads "
        f"(allowance {d.allowance:.1f})"
    )


def check_baseline(
    measured: dict[str, float], baseline: dict[str, float], thresholds: Thresholds | None = None
) -> CheckResult:
    """Compare headline metrics with a stored baseline (``Baseline.compare``)."""
    return Baseline().compare(measured, baseline, thresholds or Thresholds())
