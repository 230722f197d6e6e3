"""baseline: fails when a headline metric or a layer's attention moved from the stored baseline
further than chance allows.

Not a record check: it compares a run with stored baselines, so ``run_checks`` leaves it out; the
baseline layer (:mod:`partattn_checks.baselines`) judges it. This module is the check's shape: its
thresholds (``atol``/``rtol``, for a single-run baseline of schema 1), its typed details, the
deviation of one metric or layer, the text of a deviation, the ``drift`` figure and the report hooks
(how the gate's reports show it, and the fixture set's verdict: :mod:`.baseline_report`).

Two verdicts, said in ``BaselineDetails.verdict``:

* ``paired``: the run reran the baseline's own noise seeds, so the difference from the stored run of
  the same seed is the change itself; it is judged against the **numeric floor** (what the same
  seeds gave under perturbations that must not count, measured when the baseline was written),
  with a small minimum in units of the seed spread (``baselines.paired``);
* ``seed-spread``: another seed, or a baseline without paired data: the run is judged in standard
  errors of the baseline's seed-to-seed spread at a false-alarm rate (``baselines.noise``).

A baseline of schema 1 (one run) is compared with the fixed ``atol``/``rtol`` of :meth:`Baseline.judge_metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .core import Check, CheckResult
from .details import Details, Matrix, optional_key
from .registry import register
from .thresholds import Thresholds, param

#: The verdict kinds (``BaselineDetails.verdict``, ``Deviation.verdict``).
PAIRED = "paired"
SEED_SPREAD = "seed-spread"
TOLERANCE = "tolerance"  # schema 1: atol/rtol
VERDICT_KINDS = (PAIRED, SEED_SPREAD, TOLERANCE)


@dataclass(frozen=True)
class BaselineThresholds:
    atol: float = param(0.02, 0.0, None, doc="absolute tolerance of a headline metric against its baseline")
    rtol: float = param(0.1, 0.0, None, doc="relative tolerance (times |baseline|), added to atol")


@dataclass(frozen=True)
class Deviation:
    """One metric (or layer) of one image against its stored baseline.

    ``z`` and ``allowance`` are in the verdict's unit (:attr:`unit`): standard errors of the seed
    spread for ``seed-spread``, seed spreads for ``paired`` (where ``floor`` is the numeric floor in
    spreads). A layer is one-sided (only moving away counts), a metric two-sided.
    """

    name: str
    kind: str  # "metric" or "layer"
    measured: float  # the metric (mean of the runs); for a layer, its drift (√(JS/log 2), mean over parts)
    mean: float  # the baseline's value: the mean of its seeds (seed-spread) or of the same seeds (paired);
    # for a layer: one seed's typical drift (seed-spread) or the numeric floor's distance (paired)
    spread: float  # the seed spread used (shrunk), in the units the metric is judged in (log units on the log scale)
    seeds: int  # K, the baseline's seeds behind the spread
    repeats: int  # R, the runs measured
    z: float  # the distance, in units of :attr:`unit`
    allowance: float  # the largest distance allowed, same units
    residuals: tuple[float, ...] = ()  # each stored seed's (value − mean) / spread, for the set's correlation
    part: int | None = None  # for a layer: the part that moved most
    log_scale: bool = False  # a metric judged on the log scale (``mean`` geometric, ``spread`` in log units)
    verdict: str = SEED_SPREAD
    floor: float | None = None  # paired: the numeric floor, in spreads

    @property
    def two_sided(self) -> bool:
        return self.kind == "metric"

    @property
    def moved(self) -> bool:
        return (abs(self.z) if self.two_sided else self.z) > self.allowance

    @property
    def standard_error(self) -> float:
        """The seed-spread verdict's unit: the standard error of the difference of a mean of R runs
        and the mean of K seeds."""
        return self.spread * math.sqrt(1.0 / self.repeats + 1.0 / self.seeds)

    @property
    def unit(self) -> float:
        """What ``z`` counts: a standard error (seed-spread) or one seed spread (paired)."""
        return self.spread if self.verdict == PAIRED else self.standard_error

    @property
    def allowed_delta(self) -> float:
        """The allowance in the metric's own units (for metrics): |measured − mean| may reach this
        (on the log scale: the larger of the two sides of the allowed range)."""
        low, high = self.allowed_range
        return max(self.mean - low, high - self.mean)

    @property
    def allowed_range(self) -> tuple[float, float]:
        """The values of the metric the allowance admits (for metrics)."""
        reach = self.allowance * self.unit
        if self.log_scale:
            return self.mean * math.exp(-reach), self.mean * math.exp(reach)
        return self.mean - reach, self.mean + reach

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "residuals": list(self.residuals)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Deviation:
        return cls(**{**d, "residuals": tuple(d.get("residuals", ()))})


@dataclass(frozen=True)
class SetDeviation:
    """One metric or layer over the fixture set: the images' distances, combined.

    seed-spread: the clipped per-image distances summed over their null standard deviation; paired:
    the median over images of each image's shift beyond its numeric floor (in seed spreads), which
    one chaotic image cannot move."""

    name: str
    kind: str
    images: int
    mean_z: float  # mean of the per-image values combined (its sign says the direction)
    correlation: float  # ρ used (≥ 0; seed-spread only)
    z: float  # the combined distance
    allowance: float
    per_image: dict[str, float] = field(default_factory=dict)  # image -> its value combined
    verdict: str = SEED_SPREAD

    @property
    def moved(self) -> bool:
        return (abs(self.z) if self.kind == "metric" else self.z) > self.allowance

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class MetricDrift:
    measured: float
    baseline: float
    drift: float  # |measured - baseline| (inf when either is not finite)
    allowed: float  # atol + rtol * |baseline|; judged in noise units: the allowance times the unit
    spread: float | None = None  # seed-to-seed spread used (noise units only)
    seeds: int | None = None  # baseline seeds
    z: float | None = None  # (measured - baseline) in the verdict's unit
    allowance: float | None = None  # the largest |z| allowed
    log_scale: bool = False  # judged on the log scale: ``spread`` is in log units
    verdict: str | None = None  # paired | seed-spread (None: tolerance)
    floor: float | None = None  # paired: the numeric floor, in spreads


@dataclass(frozen=True)
class AttentionDrift:
    """How far each layer's step-averaged, head-averaged key-marginals moved from the baseline's
    attention summary (JS/log 2 per part), and the marginals of the layer that moved most: what
    ``summary.attention_drift`` measures, what the judge adds the verdict's band to, what the
    drift figure draws and what travels in ``BaselineDetails.attention``."""

    layers: tuple[str, ...]
    per_part: Matrix  # (layers, parts) JS/log 2 in [0, 1]
    layer: str  # the layer that moved most (largest mean over parts)
    part: int  # the part that moved most in that layer
    baseline: Matrix  # (parts, keys) that layer's marginals in the baseline
    now: Matrix  # (parts, keys) and now
    grid: tuple[int, int] | None = None  # patch rows, columns
    #: Judged (seed-spread or paired): per layer, the drift judged (√(JS/log 2), mean over parts), the
    #: chance level (one seed's typical drift; paired: the numeric floor) and the largest drift allowed.
    judged: tuple[float, ...] | None = None
    typical: tuple[float, ...] | None = None
    band: tuple[float, ...] | None = None
    onset: str | None = None  # the first layer in depth order beyond its allowance
    #: How the drift figure draws now − baseline: ± this (attention × Nk), None: its largest |Δ|.
    delta_scale: float | None = None
    verdict: str = SEED_SPREAD  # what ``judged``/``typical``/``band`` mean

    @property
    def per_layer(self) -> list[float]:
        """Each layer's drift: the mean over its parts."""
        return [sum(row) / len(row) for row in self.per_part.rows]

    @property
    def value(self) -> float:
        return self.per_part.rows[self.layers.index(self.layer)][self.part]


@dataclass(frozen=True)
class Onset:
    """Where a paired change begins: the first (step, layer), in (step, depth) order, whose attention
    differs from the same seed's baseline run beyond the numeric floor."""

    step: int  # the recorded step's index
    layer: str
    previous: str | None  # the layer before it in depth order (None: it is the first)
    identical: bool  # every earlier layer at that step recorded exactly the baseline's attention
    distance: float  # √(JS/log 2) at (step, layer), the largest part, mean over the paired seeds
    floor: float  # the numeric floor there, same units

    def sentence(self) -> str:
        """``identical through blocks.1.attn2 at step 0; first difference at blocks.2.attn2 (...)``."""
        if self.previous is None:
            head = f"first difference at step {self.step} in the first recorded layer, {self.layer}"
            where = "the change lies at or before it (the image encoder, the embeddings or the first block)"
        else:
            same = "identical" if self.identical else "within the numeric floor"
            head = f"{same} through {self.previous} at step {self.step}; first difference at {self.layer}"
            where = f"the change lies after {self.previous} and at or before {self.layer}"
        if self.step > 0:
            where = (
                f"no layer differed beyond the floor at step 0, and a change spreads through the latents to "
                f"every later layer, so {where.replace('the change lies', 'the first visible effect lies')}"
            )
        return f"{head} (√JS {self.distance:.2g} vs floor {self.floor:.2g}): {where}"


@dataclass(frozen=True, kw_only=True)
class BaselineDetails(Details):
    """The comparison with a stored baseline (empty when none was compared: what the store did is
    ``baselines.runner.BaselineState``, beside the result)."""

    per_metric: dict[str, MetricDrift] | None = optional_key()
    missing_in_measured: list[str] | None = optional_key()
    missing_in_baseline: list[str] | None = optional_key()
    atol: float | None = optional_key()
    rtol: float | None = optional_key()
    worst_metric: str | None = optional_key()  # the metric closest to (or furthest past) its allowance
    #: Every metric and layer compared, the seeds, the runs and the rate.
    deviations: list[Deviation] | None = optional_key()
    onset: str | None = optional_key()  # first layer (depth order) that moved beyond its allowance
    seeds: int | None = optional_key()
    repeats: int | None = optional_key()
    false_alarm_rate: float | None = optional_key()
    #: The attention drift from the baseline's summary; ``attention_note`` says why there is none.
    attention: AttentionDrift | None = optional_key()
    attention_note: str | None = optional_key()
    verdict: str | None = optional_key()  # paired | seed-spread | tolerance
    verdict_note: str | None = optional_key()  # why this verdict (why not paired)
    paired_onset: Onset | None = optional_key()  # paired: where the change begins


@register
class Baseline(Check[BaselineDetails]):
    """Compare a run with its stored baseline (judged by :mod:`partattn_checks.baselines`)."""

    name = "baseline"
    label, op = "worst drift", "≤"
    thresholds_type = BaselineThresholds
    details_type = BaselineDetails
    record_check = False
    limit_label = "allowance"  # how far each metric and layer may move
    offender_note = False  # its rows say which metrics and layers moved
    set_item = "fixture-set"  # as ``baselines.fixture_set.ITEM_NAME``: the gate's baseline runner judges it

    def judge_metrics(
        self, measured: dict[str, float], baseline: dict[str, float], thresholds: Thresholds
    ) -> CheckResult:
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
            verdict=TOLERANCE,
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

    # -- report hooks: the bodies are in ``baseline_report``
    def report_rows(self, result: CheckResult, stored: float | None) -> list[list[str]]:
        """A row per metric and layer compared (``stored``, the check's own value, does not apply)."""
        from .baseline_report import rows

        return rows(_details(result))

    def failure_lines(self, result: CheckResult) -> list[str]:
        from .baseline_report import drift_lines

        return drift_lines(_details(result))

    def report_properties(self, result: CheckResult) -> list[tuple[str, object]]:
        from .baseline_report import properties

        return properties(_details(result))

    def count_verdicts(self, results: Sequence[CheckResult | None]) -> dict[str, int]:
        from .baseline_report import count_verdicts

        return count_verdicts(results)


def _details(result: CheckResult) -> BaselineDetails:
    """The details of a baseline result (``CheckResult`` makes sure they are ``BaselineDetails``)."""
    details = result.details
    assert isinstance(details, BaselineDetails)
    return details


def with_delta_scale(result: CheckResult, delta_scale: float | None) -> CheckResult:
    """``result`` whose drift figure draws now − baseline on ±``delta_scale`` (the gate's
    ``--partattn-drift-scale``); unchanged when it has no attention drift or ``delta_scale`` is None."""
    details = result.details
    if delta_scale is None or not isinstance(details, BaselineDetails) or details.attention is None:
        return result
    return replace(result, details=replace(details, attention=replace(details.attention, delta_scale=delta_scale)))


def deviation_text(d: Deviation, runs: str = "this run") -> str:
    """One deviation in words, e.g. ``separation 0.2100 vs 0.2612 ± 0.0050 over 16 seeds: 5.2
    standard errors away (allowance 4.9)``, or its paired form."""
    if d.verdict == PAIRED:
        floor = f"numeric floor {d.floor:.3f}" if d.floor is not None else "no floor measured"
        if d.kind == "metric":
            spread = f"×/÷ {math.exp(d.spread):.3f}" if d.log_scale else f"{d.spread:.4f}"
            return (
                f"{d.name} {d.measured:.5g} ({runs}) vs {d.mean:.5g} for the same seed in the baseline: "
                f"{d.z:+.2f} seed spreads (spread {spread}; {floor}; allowance ±{d.allowance:.2f})"
            )
        part = f", part {d.part} most" if d.part is not None else ""
        return (
            f"attention of {d.name} moved √(JS/log2) {d.measured:.3g} from the same seed's baseline run ({runs}"
            f"{part}; numeric floor √JS {d.mean:.2g}): {d.z:.2f} seed drifts (one seed drifts {d.spread:.3g}; "
            f"allowance {d.allowance:.2f})"
        )
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
    """Compare headline metrics with a stored baseline (``Baseline.judge_metrics``)."""
    return Baseline().judge_metrics(measured, baseline, thresholds or Thresholds())
