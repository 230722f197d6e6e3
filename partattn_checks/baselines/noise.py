"""The seed-spread verdict: how far a metric moves by chance, and whether a run moved further.

A baseline holds, per headline metric, the values of ``K`` runs under different noise seeds; its
attention summary holds, per seed, how far that seed's key-marginals lie from the mean of the others
(leave-one-out). This verdict judges a run that is **not** paired with the baseline's runs (another
seed, another experiment, an old baseline: ``judge.pairing`` says why) as a draw from that seed
distribution; a run whose seeds are among the baseline's is judged against the others (leave-out).
The statistics (docs/plugin.md, "The seed-spread verdict"):

* **which metrics**: :data:`JUDGED_METRICS`, the means and aggregates whose seed distributions
  are close to normal. The extremes (``entropy_min``, ``entropy_max``, ``cls_mass_max``: one map
  out of thousands decides them) are stored and shown but not judged: over 300 healthy runs of the
  embedded model they reached 5–7 standard errors by chance (docs/diagnostic-power.md); gross
  changes in them are what the uniformity and collapse checks judge. ``peak_mean`` and
  ``stability_max_jump`` (positive, skewed to the right) are judged on the log scale.
* **spread** of a metric on one image: the seed-to-seed standard deviation ``s`` of its ``K``
  values, raised toward the spread pooled over the baseline folder's images when it is smaller,
  ``σ = max(s, √((s² + s_pool²) / 2))``: an image whose seeds happened to agree does not get a spread
  of nearly 0, and an image whose spread is really larger than the folder's keeps all of it (images
  differ: np2_circle_square's seed spread is twice the folder's, and shrinking it toward the folder's
  gave 4 % false alarms on that image); never below ``RESOLUTION`` (the stored rounding).
* **distance** in spreads: ``z = (x − mean) / (σ·√(1/R + 1/K))``, the standard error of the
  difference between a mean of ``R`` new runs and the mean of ``K`` stored ones.
* **attention drift** of a layer: ``log`` of the mean over parts of √JS(now, baseline mean)
  against the same quantity for each stored seed (leave-one-out), one-sided (only moving away
  counts); ``log`` because these distances are skewed to the right. A layer's log-spread is raised
  toward the larger of its image's layers' pooled log-spread and the folder's (every layer of every
  image): one fixture image's 16 seeds gave every layer half the folder's log-spread, and 6 % of
  new seeds failed it.
* **allowance**: the Student-t quantile with ``K − 1`` degrees of freedom (the image's own; the
  pooled spread only raises a spread, it earns no degrees of freedom) at ``α / M`` (two-sided for
  metrics, one-sided for layers): ``α`` the false-alarm rate of one item
  (``--partattn-false-alarm-rate``), ``M`` the number of metrics and layers compared (Bonferroni).
  Over 200 seeds per fixture image of the embedded model the per-comparison rate beyond the
  allowance is 0.9 × the nominal ``α / M`` (it was 8.7 × with the shrunk spread and ``2(K − 1)``).
* **tails**: every allowance is widened by the folder's tail factor (:func:`tail_factor`): the
  stored seeds' leave-one-out distances (each seed against the others, the gate's statistic) pooled
  over the folder's images, and the largest ratio of their 90/95/99 % quantiles to Student's t with
  ``K − 2`` degrees of freedom, at least 1. A folder whose seeds show a rare mode or a skew gets wider
  allowances (the committed baselines: 1.06 for metrics, 1.11 for layers).
* **the fixture set**: per metric and layer, the sum of the images' distances (each clipped to
  ±``CLIP``, so one image in an unusual mode cannot carry the set) over its null standard deviation
  ``√(n + n(n−1)·ρ)``, where ``ρ ≥ 0`` is the mean correlation between images of the stored
  per-seed values (the images share their noise seeds); normal quantile at ``α / M``.

Standard library only: the plugin's controller judges the fixture set without numpy or torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist

from ..checks.baseline import Deviation, SetDeviation
from ..errors import PartattnError

#: Stored metrics are rounded to 5 decimals: no spread is smaller than that.
RESOLUTION = 1e-5
#: Per-image distances are clipped to ±CLIP before they are combined over the fixture set.
CLIP = 3.0
#: The key of the layers' pooled log-spread in a folder's pooled spreads (``store.pooled_spreads``).
LAYERS_POOLED = "attention layers (log drift)"
#: The keys of the folder's tail factors in its pooled spreads: metrics (two-sided) and layers (one-sided).
TAIL_METRICS = "tail factor (metrics)"
TAIL_LAYERS = "tail factor (layers)"
#: The quantiles whose empirical-to-Student ratio is the tail factor.
TAIL_QUANTILES = (0.9, 0.95, 0.99)
#: The headline metrics a baseline judges (see the module docstring), and those judged on the log scale.
JUDGED_METRICS = ("entropy_mean", "peak_mean", "eff_keys_mean", "separation", "stability_max_jump")
LOG_SCALE = frozenset({"peak_mean", "stability_max_jump"})


class NoiseError(PartattnError, ValueError):
    """A noise-model setting out of range (a false-alarm rate, a tail probability); the message names it."""


# ----------------------------------------------------------------------------- Student t
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for num in (
            m * (b - m) * x / ((a + m2 - 1) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, dof: float) -> float:
    """P(T > t) for Student's t with ``dof`` degrees of freedom."""
    if math.isinf(dof):
        return 1.0 - NormalDist().cdf(t)
    tail = 0.5 * _betainc(dof / 2.0, 0.5, dof / (dof + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_quantile(p: float, dof: float) -> float:
    """The ``t`` with P(T > t) = ``p`` (0 < p < 1/2): bisection on :func:`t_sf`."""
    if not 0.0 < p < 0.5:
        raise NoiseError(f"upper-tail probability must lie in (0, 0.5), got {p}")
    if math.isinf(dof):
        return NormalDist().inv_cdf(1.0 - p)
    lo, hi = 0.0, 1.0
    while t_sf(hi, dof) > p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_sf(mid, dof) > p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def critical(alpha: float, tests: int, dof: float, two_sided: bool) -> float:
    """The distance (in spreads) one of ``tests`` comparisons may reach at family-wise rate ``alpha``."""
    if not 0.0 < alpha < 1.0:
        raise NoiseError(f"the false-alarm rate must lie in (0, 1), got {alpha}")
    per_test = alpha / max(1, tests) / (2.0 if two_sided else 1.0)
    return t_quantile(per_test, dof)


# ----------------------------------------------------------------------------- distributions
def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof`` 1; 0 for a single value)."""
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def pooled_sd(sds: Sequence[float]) -> float | None:
    """The root-mean-square of per-image spreads (each from the same number of seeds), or None."""
    sds = [s for s in sds if s is not None and math.isfinite(s)]
    return math.sqrt(math.fsum(s * s for s in sds) / len(sds)) if sds else None


def shrunk(sd: float, seeds: int, pooled: float | None) -> float:
    """An image's spread, raised toward the folder's ``pooled`` one when it is smaller (never lowered):
    ``max(sd, √((sd² + pooled²) / 2))``, at least ``RESOLUTION``."""
    if pooled is None or seeds < 2:
        return max(sd, RESOLUTION)
    return max(sd, math.sqrt((sd * sd + pooled * pooled) / 2.0), RESOLUTION)


def metric_deviation(
    name: str,
    measured: float,
    samples: Sequence[float],
    *,
    pooled: float | None,
    repeats: int,
    allowance: float,
) -> Deviation:
    """``measured`` (the mean of ``repeats`` runs) against the ``samples`` of the baseline's seeds;
    ``pooled`` is the folder's spread in the same units (log units for :data:`LOG_SCALE` metrics)."""
    log = name in LOG_SCALE
    scale = (lambda x: math.log(max(x, RESOLUTION))) if log else (lambda x: x)
    values = [scale(v) for v in samples]
    mean = mean_sd(values)[0]
    spread = spread_of(name, samples, pooled)
    k = len(values)
    finite = math.isfinite(measured)
    z = (scale(measured) - mean) / (spread * math.sqrt(1.0 / repeats + 1.0 / k)) if finite else math.inf
    residuals = tuple(round((v - mean) / spread, 4) for v in values)
    center = math.exp(mean) if log else mean
    return Deviation(name, "metric", measured, center, spread, k, repeats, z, allowance, residuals, None, log)


def judged_spread(name: str, samples: Sequence[float]) -> float:
    """The seed-to-seed spread of a metric in the units it is judged in (log units on the log scale)."""
    values = [math.log(max(v, RESOLUTION)) for v in samples] if name in LOG_SCALE else list(samples)
    return mean_sd(values)[1]


def spread_of(name: str, samples: Sequence[float], pooled: float | None) -> float:
    """The spread a metric is judged against: its own seed spread shrunk toward the folder's ``pooled``."""
    return shrunk(judged_spread(name, samples), len(samples), pooled)


def layer_deviation(
    name: str,
    drift: float,
    seed_drifts: Sequence[float],
    *,
    pooled: float | None,
    repeats: int,
    allowance: float,
    part: int | None = None,
) -> Deviation:
    """A layer's attention drift (√JS from the baseline mean, mean over parts) against the stored
    leave-one-out drifts of the baseline's seeds, on the log scale. A mean of ``R`` runs drifts
    less than one run: its drift is scaled to one run's before the comparison."""
    k = len(seed_drifts)
    logs = _logs(seed_drifts)
    mean, sd = mean_sd(logs)
    spread = shrunk(sd, k, pooled)
    # expected squared drift of a mean of R runs from the mean of K, over that of one seed from the other K-1
    scale = (1.0 / repeats + 1.0 / k) / (1.0 + 1.0 / max(1, k - 1))
    now = math.log(max(drift, 1e-12)) - 0.5 * math.log(scale) if math.isfinite(drift) else math.inf
    z = (now - mean) / (spread * math.sqrt(1.0 + 1.0 / k))
    residuals = tuple(round((v - mean) / spread, 4) for v in logs)
    return Deviation(name, "layer", drift, math.exp(mean), spread, k, repeats, z, allowance, residuals, part)


def _logs(drifts: Sequence[float]) -> list[float]:
    return [math.log(max(d, 1e-12)) for d in drifts]


def log_spread(drifts: Sequence[float]) -> float:
    """The spread of a layer's seed drifts on the log scale (what :func:`layer_deviation` shrinks)."""
    return mean_sd(_logs(drifts))[1]


def layer_band(d: Deviation) -> tuple[float, float]:
    """(typical, largest allowed) drift of a layer deviation, in the units of ``d.measured``: the
    band a drift figure draws (for the mean of ``d.repeats`` runs)."""
    k = d.seeds
    scale = math.sqrt((1.0 / d.repeats + 1.0 / k) / (1.0 + 1.0 / max(1, k - 1)))
    upper = math.exp(math.log(d.mean) + d.allowance * d.spread * math.sqrt(1.0 + 1.0 / k))
    return d.mean * scale, upper * scale


# ----------------------------------------------------------------------------- one image
def allowances(alpha: float, tests: int, seeds: int, tails: tuple[float, float] = (1.0, 1.0)) -> tuple[float, float]:
    """(two-sided metric allowance, one-sided layer allowance) for ``tests`` comparisons, with the
    ``K − 1`` degrees of freedom of the image's own spread, times the folder's tail factors."""
    dof = max(1, seeds - 1)
    return critical(alpha, tests, dof, True) * tails[0], critical(alpha, tests, dof, False) * tails[1]


def leave_one_out(values: Sequence[float]) -> list[float]:
    """Each value's distance from the others, in the verdict's units: ``(v_k − mean) / (sd·√(1 + 1/(K−1)))``
    over the other ``K − 1`` (what the gate computes for a new seed, on the stored ones)."""
    out = []
    for k, v in enumerate(values):
        others = [x for i, x in enumerate(values) if i != k]
        mean, sd = mean_sd(others)
        if sd > 0:
            out.append((v - mean) / (sd * math.sqrt(1.0 + 1.0 / len(others))))
    return out


def tail_factor(distances: Sequence[float], seeds: int, two_sided: bool) -> float:
    """How much heavier than Student's t the folder's leave-one-out distances are: the largest ratio of
    their empirical quantile to t's with ``K − 2`` degrees of freedom at :data:`TAIL_QUANTILES`, at
    least 1. Seed distributions with a tail the normal model misses (a rare mode, a skew) widen every
    allowance of the folder by it."""
    values = sorted(abs(z) if two_sided else z for z in distances)
    if len(values) < 50 or seeds < 4:
        return 1.0
    ratios = []
    for q in TAIL_QUANTILES:
        empirical = values[min(len(values) - 1, int(q * len(values)))]
        reference = t_quantile((1.0 - q) / (2.0 if two_sided else 1.0), seeds - 2)
        ratios.append(empirical / reference)
    return max(1.0, *ratios)


# ----------------------------------------------------------------------------- the fixture set
def mean_correlation(residuals: Sequence[Sequence[float]]) -> float:
    """Mean pairwise correlation of the images' per-seed residuals (aligned by seed), at least 0."""
    rows = [r for r in residuals if len(r) >= 3]
    if len(rows) < 2 or len({len(r) for r in rows}) != 1:
        return 0.0
    std = []
    for r in rows:
        m, s = mean_sd(r)
        if s > 0:
            std.append([(v - m) / s for v in r])
    pairs = [
        math.fsum(a * b for a, b in zip(std[i], std[j], strict=True)) / (len(std[i]) - 1)
        for i in range(len(std))
        for j in range(i + 1, len(std))
    ]
    return max(0.0, math.fsum(pairs) / len(pairs)) if pairs else 0.0


def combine(per_image: Mapping[str, Sequence[Deviation]], alpha: float) -> list[SetDeviation]:
    """Combine per-image deviations (``{image: deviations}``) per metric and layer name."""
    by_name: dict[str, list[tuple[str, Deviation]]] = {}
    for image, deviations in per_image.items():
        for d in deviations:
            if math.isfinite(d.z):
                by_name.setdefault(d.name, []).append((image, d))
    tests = len(by_name)
    out = []
    for name, entries in by_name.items():
        kind = entries[0][1].kind
        n = len(entries)
        clipped = {image: max(-CLIP, min(CLIP, d.z)) for image, d in entries}
        rho = mean_correlation([d.residuals for _, d in entries])
        z = math.fsum(clipped.values()) / math.sqrt(n + n * (n - 1) * rho)
        two_sided = kind == "metric"
        allowance = critical(alpha, tests, math.inf, two_sided)
        out.append(SetDeviation(name, kind, n, math.fsum(clipped.values()) / n, rho, z, allowance, clipped))
    return out
