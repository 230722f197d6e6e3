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

Which thresholds field each check calibrates is the check's own ``Check.calibrated`` (gathered in
:data:`CALIBRATED`, a live view of the registry): the one its headline value is compared with. The
other fields of a table (e.g. ``uniformity.entropy_min_uniform``, what counts as a near-uniform map)
define the value and stay as they were. ``nonfinite`` has no threshold: any NaN/Inf fails;
calibration only reports whether its variant fails.

A variant image whose record holds NaN/Inf is judged "cannot judge" by the metric checks with a
count as its value, not a value on the check's scale: such images are left out of the
least-failing value. A healthy model that produces NaN/Inf is not known-good: calibration stops.

An image whose sidecar sets a check's calibrated field itself (``[thresholds.part_separation]
min_separation = ...``) is judged with its own value, as in the gate, and is left out of that
check's calibration: the shared threshold is not its threshold.

The graded degradations (:func:`graded_catches`) say how small a regression the calibrated
thresholds see: per check and grade, the level closest to the healthy model at which the check
fails on at least one image it passes on the healthy model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ..checks import REGISTRY, CheckResult, Thresholds
from ..errors import PartattnError
from ..model.broken import GRADES, VARIANTS
from ..runs.sidecar import ImageSpec

#: ``{image name: ImageSpec}`` of the matrix's images (``zoo.by_name``): their sidecar thresholds.
Images = Mapping[str, ImageSpec]


class _Calibrated(Mapping):
    """check -> (thresholds table, field) that calibration sets, read from each registered check's
    ``calibrated`` (a live view: a check registered later is calibrated too)."""

    def _fields(self) -> dict[str, tuple[str, str]]:
        return {name: (name, check.calibrated) for name, check in REGISTRY.items() if check.calibrated}

    def __getitem__(self, check: str) -> tuple[str, str]:
        return self._fields()[check]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields())

    def __len__(self) -> int:
        return len(self._fields())


CALIBRATED: Mapping[str, tuple[str, str]] = _Calibrated()
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
        raise CalibrationError(f"margin must be between 0 and 1 (exclusive), got {fraction}")
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
    return not result.measured


def scale_values(check: str, results: Mapping[str, CheckResult]) -> dict[str, float]:
    """``{image: value}`` of the judged, non-poisoned results (what the rule compares)."""
    return {
        image: r.value
        for image, r in results.items()
        if r.verdict != "skip" and r.value is not None and not poisoned(r)
    }


def column(matrix, model: str, check: str) -> dict[str, CheckResult]:
    return {image: checks[check] for image, checks in matrix[model].items()}


def own_threshold(check: str, image: ImageSpec | None) -> float | None:
    """The value ``image``'s sidecar gives the check's calibrated field, if it sets it."""
    if image is None or check not in CALIBRATED:
        return None
    table, key = CALIBRATED[check]
    return image.thresholds.get(table, {}).get(key)


def shared(check: str, results: Mapping[str, CheckResult], images: Images | None) -> dict[str, CheckResult]:
    """The results of the images judged with the shared threshold (not with their sidecar's own)."""
    images = images or {}
    return {i: r for i, r in results.items() if own_threshold(check, images.get(i)) is None}


def image_thresholds(thresholds: Thresholds, image: ImageSpec | None) -> Thresholds:
    """``thresholds`` with ``image``'s sidecar ``[thresholds.*]`` overrides (as the gate judges it)."""
    return thresholds if image is None else image.thresholds_over(thresholds)


def targeted(check: str) -> str | None:
    """The variant built to fail ``check`` (the check's own ``Check.broken_by``)."""
    found = REGISTRY.get(check)
    return found.broken_by if found is not None and found.broken_by in VARIANTS else None


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


def decide(matrix, base: Thresholds, fraction: float = DEFAULT_MARGIN, images: Images | None = None) -> list[Decision]:
    """One :class:`Decision` per record check, from ``matrix`` (:func:`partattn_checks.analysis.zoo.measure`)
    judged under ``base`` (the previous thresholds) and ``images``' sidecar overrides."""
    healthy_nonfinite = [i for i, r in column(matrix, "healthy", "nonfinite").items() if r.verdict == "fail"]
    if healthy_nonfinite:
        raise CalibrationError(
            f"the known-good model produces NaN/Inf on {', '.join(healthy_nonfinite)}: it cannot anchor thresholds "
            f"(try --dtype float32, or check the checkpoint)"
        )
    decisions = []
    for check in matrix_checks(matrix):
        variant = targeted(check)
        healthy = worst(check, scale_values(check, shared(check, column(matrix, "healthy", check), images)).values())
        least = None
        if variant is not None and variant in matrix:
            least = least_failing(
                check, scale_values(check, shared(check, column(matrix, variant, check), images)).values()
            )
        if check not in CALIBRATED:
            note = "not calibrated: any NaN/Inf fails"
            if variant is not None and variant in matrix:
                fails = all(r.verdict == "fail" for r in column(matrix, variant, check).values())
                note += f"; {variant} fails on every image" if fails else f"; {variant} does NOT fail on every image"
            decisions.append(Decision(check, variant, healthy, least, None, None, False, note))
            continue
        table, key = CALIBRATED[check]
        previous = getattr(base[table], key)
        _same_field(matrix, check, base, images)
        why = None
        if variant is None:
            why = f"no broken variant targets {check}"
        elif variant not in matrix:
            why = f"the {variant} variant was not run (it does not fit this model)"
        elif healthy is None:
            why = "the healthy model has no judged image for it (one part, one step, or all with their own threshold?)"
        elif least is None:
            why = f"{variant} has no judged image on the check's scale (all skipped or NaN/Inf)"
        if why is not None:
            note = f"{check}: cannot be calibrated on these images: {why}; keeping the previous threshold {previous:g}"
            decisions.append(Decision(check, variant, healthy, least, previous, previous, False, note))
            continue
        assert healthy is not None and least is not None  # else `why` said so above
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
    first: dict[str, CheckResult] = next(iter(matrix["healthy"].values()), {})
    return [c for c in REGISTRY if c in first]


def _same_field(matrix, check: str, base: Thresholds, images: Images | None) -> None:
    """Guard of :data:`CALIBRATED`: the results compared their value with exactly that field."""
    for image, checks in matrix["healthy"].items():
        r = checks[check]
        expected = threshold_of(check, image_thresholds(base, (images or {}).get(image)))
        if r.threshold is not None and (
            expected is None or not math.isclose(r.threshold, expected, rel_tol=1e-9, abs_tol=1e-12)
        ):
            table, key = CALIBRATED[check]
            raise CalibrationError(f"{check} compared its value with {r.threshold}, not {table}.{key} = {expected}")


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
    threshold = threshold_of(check, thresholds)
    if result.value is None or threshold is None:
        return result.verdict
    return "pass" if passes(check, result.value, threshold) else "fail"


def verdicts(matrix, model: str, thresholds: Thresholds, images: Images | None = None) -> dict[str, dict[str, str]]:
    """``{image: {check: verdict}}`` of ``model``'s row under ``thresholds``, each image's sidecar overrides applied."""
    images = images or {}
    out = {}
    for image, checks in matrix[model].items():
        own = image_thresholds(thresholds, images.get(image))
        out[image] = {check: rejudged(r, check, own) for check, r in checks.items()}
    return out


def summarize(matrix, thresholds: Thresholds, images: Images | None = None) -> dict[str, dict[str, dict]]:
    """``{model: {check: row}}``: worst value, threshold, failing/judged images under ``thresholds``
    (an image whose sidecar sets the field is judged with its own value, listed in ``own_thresholds``),
    margin, and every image's value."""
    own = {check: {i: own_threshold(check, s) for i, s in (images or {}).items()} for check in CALIBRATED}
    table = {}
    for model in matrix:
        rows = {}
        verdict = verdicts(matrix, model, thresholds, images)
        for check in matrix_checks(matrix):
            results = column(matrix, model, check)
            judged = {i: r for i, r in results.items() if r.verdict != "skip"}
            value = worst(check, [r.value for r in judged.values()])
            threshold = threshold_of(check, thresholds)
            failing = [i for i in judged if verdict[i][check] == "fail"]
            rows[check] = {
                "value": value,
                "threshold": threshold,
                "failing": len(failing),
                "judged": len(judged),
                "margin": margin(check, value, threshold),
                "nonfinite_images": sorted(i for i, r in judged.items() if poisoned(r)),
                "reason": next((judged[i].reason for i in failing if judged[i].verdict == "fail"), ""),
                "values": {i: r.value for i, r in results.items()},
                "own_thresholds": {i: t for i, t in own.get(check, {}).items() if t is not None and i in results},
            }
        table[model] = rows
    return table


# ---------------------------------------------------------------------------- graded degradations
@dataclass(frozen=True)
class Catch:
    """The level closest to healthy, on one side of a graded degradation, at which a check fails."""

    check: str
    grade: str
    side: str  # the grade's name, or "xattn_gain < 1" / "xattn_gain > 1" for a grade with levels on both sides
    level: float | None  # None: not caught at any level of this side
    failing: int  # images failing at that level, of the ``judged`` ones
    judged: int  # images the check judges and passes on the healthy model
    healthy_failing: int  # images the check already fails on the healthy model (not counted)
    levels: tuple[float, ...]  # this side's levels, closest to healthy first

    def to_dict(self) -> dict:
        return {**self.__dict__, "levels": list(self.levels)}


def sides(grade: str) -> list[tuple[str, tuple[float, ...]]]:
    """``[(label, levels closest to healthy first)]``: one entry per side of the grade's healthy level."""
    g = GRADES[grade]
    below = tuple(sorted((x for x in g.levels if x < g.healthy), reverse=True))
    above = tuple(sorted(x for x in g.levels if x > g.healthy))
    if below and above:
        return [(f"{grade} < {g.healthy:g}", below), (f"{grade} > {g.healthy:g}", above)]
    return [(grade, below or above)]


def graded_failing(graded, healthy: Mapping[str, Mapping[str, str]], checks) -> dict[str, dict[float, dict[str, int]]]:
    """``{grade: {level: {check: images failing}}}``, counting only the images the check passes on the
    healthy model (``healthy``: :func:`verdicts` of the matrix's healthy row under the same thresholds)."""
    return {
        grade: {
            level: {
                check: sum(
                    results[i][check].verdict == "fail" for i in results if healthy.get(i, {}).get(check) == "pass"
                )
                for check in checks
            }
            for level, results in levels.items()
        }
        for grade, levels in graded.items()
    }


def graded_catches(graded, healthy: Mapping[str, Mapping[str, str]], checks) -> list[Catch]:
    """Per check and side of each grade in ``graded`` (:func:`partattn_checks.analysis.zoo.measure_graded`, judged
    with the calibrated thresholds): the level closest to healthy at which the check fails on at least
    one image it passes on the healthy model, and on how many."""
    failing = graded_failing(graded, healthy, checks)
    out = []
    for check in checks:
        judged = sum(v.get(check) == "pass" for v in healthy.values())
        already = sum(v.get(check) == "fail" for v in healthy.values())
        for grade, levels in failing.items():
            for side, order in sides(grade):
                caught = next((x for x in order if levels.get(x, {}).get(check)), None)
                n = levels[caught][check] if caught is not None else 0
                out.append(Catch(check, grade, side, caught, n, judged, already, order))
    return out


def graded_summary(graded, matrix, thresholds: Thresholds, images: Images | None = None):
    """``(catches, failing)`` of :func:`graded_catches` and :func:`graded_failing`, the healthy verdicts
    taken from ``matrix``'s healthy row under ``thresholds`` (the ones ``graded`` was judged with)."""
    checks = matrix_checks(matrix)
    healthy = verdicts(matrix, "healthy", thresholds, images)
    return graded_catches(graded, healthy, checks), graded_failing(graded, healthy, checks)
