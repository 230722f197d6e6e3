"""Thresholds from a known-good checkpoint and its broken variants (``partattn calibrate``).

The rule, per check (docs/own-checkpoint.md):

* the **healthy worst** is the healthy model's value on its worst fixture image (the largest
  value for a ceiling check, ``op`` ``≤``; the smallest for a floor check, ``≥``);
* the **least-failing** value is the targeted variant's value on the image closest to passing
  (the other end of its range);
* when the two do not overlap, the threshold is ``healthy + margin × (variant − healthy)``:
  ``margin`` 0.5 (the default) is the midpoint, smaller values give the healthy model less room.
  It is then rounded to the fewest decimals (at least 2) that move it by at most 5 % of the gap and
  keep it strictly between the two sides, so the healthy model passes and the variant fails on
  every image of the calibration set;
* when they overlap (or touch), the check cannot be calibrated on these images: it keeps its
  previous threshold, and the refusal says so with both numbers.

Which thresholds field each check calibrates (:data:`CALIBRATED`): the one its headline value is
compared with. The other fields of a table (e.g. ``uniformity.entropy_min_uniform``, what counts as
a near-uniform map) define the value and stay as they were. ``nonfinite`` has no threshold: any
NaN/Inf fails; calibration only reports whether its variant fails.

A variant image whose record holds NaN/Inf is judged "cannot judge" by the metric checks with a
count as its value, not a value on the check's scale: such images are left out of the
least-failing value. A healthy model that produces NaN/Inf is not known-good: calibration stops.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .checks import REGISTRY, CheckResult, Thresholds
from .errors import PartattnError
from .model.broken import VARIANTS

#: check -> (thresholds table, field) that calibration sets: the field the headline value is compared with.
CALIBRATED: dict[str, tuple[str, str]] = {
    "uniformity": ("uniformity", "max_share"),  # share of near-uniform maps (whole model)
    "collapse": ("collapse", "max_share"),  # share of collapsed maps (worst layer)
    "part_separation": ("part_separation", "min_separation"),  # aggregated part separation
    "stability": ("stability", "max_jump"),  # worst consecutive-step JS jump
}
DEFAULT_MARGIN = 0.5
#: Rounding may move a threshold by at most this share of the gap between the two sides.
ROUNDING_SLACK = 0.05


class CalibrationError(PartattnError, ValueError):
    """Calibration cannot run on this model or these images (the message says why)."""


# ---------------------------------------------------------------------------- the rule
def is_ceiling(check: str) -> bool:
    """The check's value must stay at or below its threshold (``op`` ``≤``); else at or above."""
    return REGISTRY[check].op == "≤"


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def worst(check: str, values) -> float | None:
    """The value furthest to the failing side (``None`` without values)."""
    values = _finite(values)
    if not values:
        return None
    return max(values) if is_ceiling(check) else min(values)


def least_failing(check: str, values) -> float | None:
    """The value closest to passing: the other end of the range from :func:`worst`."""
    values = _finite(values)
    if not values:
        return None
    return min(values) if is_ceiling(check) else max(values)


def margin(check: str, value: float | None, threshold: float | None) -> float | None:
    """Distance of ``value`` from ``threshold`` on the passing side (negative: on the failing side)."""
    if value is None or threshold is None or not math.isfinite(value):
        return None
    return threshold - value if is_ceiling(check) else value - threshold


def passes(check: str, value: float, threshold: float) -> bool:
    return value <= threshold if is_ceiling(check) else value >= threshold


def pick_threshold(ceiling: bool, healthy: float, variant: float, fraction: float = DEFAULT_MARGIN) -> float | None:
    """The threshold between ``healthy`` (the healthy worst) and ``variant`` (the least-failing
    value), ``fraction`` of the gap from the healthy side, rounded; ``None`` when they overlap."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"margin must be between 0 and 1 (exclusive), got {fraction}")
    if not (math.isfinite(healthy) and math.isfinite(variant)):
        return None
    if (ceiling and not healthy < variant) or (not ceiling and not variant < healthy):
        return None
    exact = healthy + fraction * (variant - healthy)
    lo, hi = min(healthy, variant), max(healthy, variant)
    for decimals in range(2, 16):
        rounded = round(exact, decimals)
        if lo < rounded < hi and abs(rounded - exact) <= ROUNDING_SLACK * (hi - lo):
            return rounded
    return exact if lo < exact < hi else None  # a gap below float resolution


# ---------------------------------------------------------------------------- the matrix
def poisoned(result: CheckResult) -> bool:
    """A metric check that could not judge because of NaN/Inf: its value is a count."""
    details = result.details
    count = (
        details.get("nonfinite_count") if isinstance(details, Mapping) else getattr(details, "nonfinite_count", None)
    )
    return count is not None


def scale_values(check: str, results: Mapping[str, CheckResult]) -> dict[str, float]:
    """``{image: value}`` of the judged, non-poisoned results (what the rule compares)."""
    return {
        image: r.value
        for image, r in results.items()
        if r.verdict != "skip" and r.value is not None and not poisoned(r)
    }


def column(matrix, model: str, check: str) -> dict[str, CheckResult]:
    return {image: checks[check] for image, checks in matrix[model].items()}


def targeted(check: str) -> str | None:
    """The variant built to fail ``check`` (the first registered)."""
    return next((name for name, v in VARIANTS.items() if v.target == check), None)


@dataclass(frozen=True)
class Decision:
    """What calibration did for one check."""

    check: str
    variant: str | None
    healthy_worst: float | None
    variant_least: float | None
    previous: float | None
    threshold: float | None  # the new one; the previous one when not calibrated
    calibrated: bool
    note: str  # the rule applied, or why not

    @property
    def field(self) -> str | None:
        table_key = CALIBRATED.get(self.check)
        return f"{table_key[0]}.{table_key[1]}" if table_key else None

    def to_dict(self) -> dict:
        return {**self.__dict__, "field": self.field}


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.4g}"


def decide(matrix, base: Thresholds, fraction: float = DEFAULT_MARGIN) -> list[Decision]:
    """One :class:`Decision` per record check, from ``matrix`` (:func:`partattn_checks.zoo.measure`)
    judged under ``base`` (the previous thresholds)."""
    healthy_nonfinite = [i for i, r in column(matrix, "healthy", "nonfinite").items() if r.verdict == "fail"]
    if healthy_nonfinite:
        raise CalibrationError(
            f"the known-good model produces NaN/Inf on {', '.join(healthy_nonfinite)}: it cannot anchor thresholds "
            f"(try --dtype float32, or check the checkpoint)"
        )
    decisions = []
    for check in matrix_checks(matrix):
        variant = targeted(check)
        healthy = worst(check, scale_values(check, column(matrix, "healthy", check)).values())
        least = None
        if variant in matrix:
            least = least_failing(check, scale_values(check, column(matrix, variant, check)).values())
        if check not in CALIBRATED:
            note = "not calibrated: any NaN/Inf fails"
            if variant in matrix:
                fails = all(r.verdict == "fail" for r in column(matrix, variant, check).values())
                note += f"; {variant} fails on every image" if fails else f"; {variant} does NOT fail on every image"
            decisions.append(Decision(check, variant, healthy, least, None, None, False, note))
            continue
        table, key = CALIBRATED[check]
        previous = getattr(base[table], key)
        _same_field(matrix, check, previous)
        why = None
        if variant is None:
            why = f"no broken variant targets {check}"
        elif variant not in matrix:
            why = f"the {variant} variant was not run (it does not fit this model)"
        elif healthy is None:
            why = "the healthy model has no judged image for it (one part, or one step?)"
        elif least is None:
            why = f"{variant} has no judged image on the check's scale (all skipped or NaN/Inf)"
        if why is not None:
            note = f"{check}: cannot be calibrated on these images: {why}; keeping the previous threshold {previous:g}"
            decisions.append(Decision(check, variant, healthy, least, previous, previous, False, note))
            continue
        new = pick_threshold(is_ceiling(check), healthy, least, fraction)
        if new is None:
            note = (
                f"{check}: cannot be calibrated on these images: healthy worst {_fmt(healthy)}, {variant} "
                f"least-failing {_fmt(least)} overlap; keeping the previous threshold {previous:g}"
            )
            decisions.append(Decision(check, variant, healthy, least, previous, previous, False, note))
            continue
        note = (
            f"{table}.{key} = {new:g}: {fraction:g} of the way from the healthy worst {_fmt(healthy)} "
            f"to {variant}'s least-failing {_fmt(least)} (was {previous:g})"
        )
        decisions.append(Decision(check, variant, healthy, least, previous, new, True, note))
    return decisions


def matrix_checks(matrix) -> list[str]:
    first = next(iter(matrix["healthy"].values()), {})
    return [c for c in REGISTRY if c in first]


def _same_field(matrix, check: str, previous: float) -> None:
    """Guard of :data:`CALIBRATED`: the results compared their value with exactly that field."""
    for checks in matrix["healthy"].values():
        r = checks[check]
        if r.threshold is not None and not math.isclose(r.threshold, previous, rel_tol=1e-9, abs_tol=1e-12):
            table, key = CALIBRATED[check]
            raise CalibrationError(f"{check} compared its value with {r.threshold}, not {table}.{key} = {previous}")


def calibrated(base: Thresholds, decisions: list[Decision]) -> Thresholds:
    """``base`` with the calibrated fields replaced."""
    changes: dict[str, dict] = {}
    for d in decisions:
        if d.calibrated:
            table, key = CALIBRATED[d.check]
            changes.setdefault(table, {})[key] = d.threshold
    return base.merged(changes, source="calibration")


def threshold_of(check: str, thresholds: Thresholds) -> float | None:
    if check not in CALIBRATED:
        return 0.0 if check == "nonfinite" else None
    table, key = CALIBRATED[check]
    return getattr(thresholds[table], key)


def rejudged(result: CheckResult, check: str, thresholds: Thresholds) -> str:
    """The verdict of ``result`` under ``thresholds``: the calibrated field does not change the
    value (see :data:`CALIBRATED`), so this is a comparison, not a re-run."""
    if result.verdict == "skip" or check not in CALIBRATED or poisoned(result):
        return result.verdict
    return "pass" if passes(check, result.value, threshold_of(check, thresholds)) else "fail"


def summarize(matrix, thresholds: Thresholds) -> dict[str, dict[str, dict]]:
    """``{model: {check: row}}``: worst value, threshold, failing/judged images under ``thresholds``,
    margin, and every image's value."""
    table = {}
    for model in matrix:
        rows = {}
        for check in matrix_checks(matrix):
            results = column(matrix, model, check)
            judged = {i: r for i, r in results.items() if r.verdict != "skip"}
            verdicts = {i: rejudged(r, check, thresholds) for i, r in judged.items()}
            value = worst(check, [r.value for r in judged.values()])
            threshold = threshold_of(check, thresholds)
            failing = [i for i, v in verdicts.items() if v == "fail"]
            rows[check] = {
                "value": value,
                "threshold": threshold,
                "failing": len(failing),
                "judged": len(judged),
                "margin": margin(check, value, threshold),
                "nonfinite_images": sorted(i for i, r in judged.items() if poisoned(r)),
                "reason": next((judged[i].reason for i in failing if judged[i].verdict == "fail"), ""),
                "values": {i: r.value for i, r in results.items()},
            }
        table[model] = rows
    return table
