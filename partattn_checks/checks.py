"""Attention health checks: thresholds, results with a verdict and the worst offender.

Every default threshold lives in the dataclasses below (and nowhere else); docs/metrics.md
explains each one. Thresholds come from a TOML file (``load_thresholds``), a pyproject table
(``thresholds_from_pyproject``) or per-image overrides (``Thresholds.merged``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # torch stays unimported until a check runs
    import torch

    from .record import AttentionRecord

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

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
        parts = [f"{name} {value}" for name, value in
                 (("step", self.step), ("layer", self.layer), ("part", self.part), ("head", self.head))
                 if value is not None]
        return ", ".join(parts) if parts else "the whole record"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class CheckResult:
    """The outcome of one check. ``value``/``threshold`` are the numbers the verdict compared."""

    name: str
    verdict: str
    value: float | None
    threshold: float | None
    offender: Offender | None
    reason: str
    details: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def to_dict(self) -> dict:
        """JSON-ready form (for reports and for pytest-xdist transport)."""
        d = dataclasses.asdict(self)
        d["offender"] = self.offender.to_dict() if self.offender is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CheckResult":
        d = dict(d)
        if d.get("offender") is not None:
            d["offender"] = Offender(**d["offender"])
        return cls(**d)


# ====================================================================== thresholds
def _param(default, lo=None, hi=None, choices=None, doc=""):
    return field(default=default, metadata={"lo": lo, "hi": hi, "choices": choices, "doc": doc})


@dataclass(frozen=True)
class UniformityThresholds:
    entropy_min_uniform: float = _param(0.98, 0.0, 1.0, doc="a map with normalized entropy >= this counts as near-uniform")
    max_share: float = _param(0.85, 0.0, 1.0, doc="fail when the share of near-uniform maps (reduced over layers by layer_aggregate) exceeds this")
    layer_aggregate: str = _param("mean", choices=("mean", "max"),
                                  doc="mean: share over the whole model (one lazy layer is normal); max: the worst layer's share")


@dataclass(frozen=True)
class CollapseThresholds:
    peak_max: float = _param(0.9, 0.0, 1.0, doc="a map whose peak is >= this counts as collapsed onto one key")
    entropy_min: float = _param(0.05, 0.0, 1.0, doc="a map whose normalized entropy is <= this counts as collapsed")
    cls_mass_max: float = _param(0.9, 0.0, 1.0, doc="a map whose CLS (sink) mass is >= this counts as collapsed into CLS")
    max_share: float = _param(0.5, 0.0, 1.0, doc="fail when a layer's share of collapsed maps exceeds this")


@dataclass(frozen=True)
class PartSeparationThresholds:
    min_separation: float = _param(0.075, 0.0, 1.0, doc="fail when the aggregated part separation is below this")
    step_aggregate: str = _param("mean", choices=("mean", "min", "max"), doc="how separation is reduced over steps, per layer")
    layer_aggregate: str = _param("max", choices=("mean", "min", "max"), doc="how the per-layer values are reduced over layers")


@dataclass(frozen=True)
class StabilityThresholds:
    max_jump: float = _param(0.23, 0.0, 1.0, doc="fail when a consecutive-step JS/log 2 of a part's marginal exceeds this")


@dataclass(frozen=True)
class BaselineThresholds:
    atol: float = _param(0.02, 0.0, None, doc="absolute tolerance of a headline metric against its baseline")
    rtol: float = _param(0.1, 0.0, None, doc="relative tolerance (times |baseline|), added to atol")


_SECTIONS: dict[str, type] = {
    "uniformity": UniformityThresholds,
    "collapse": CollapseThresholds,
    "part_separation": PartSeparationThresholds,
    "stability": StabilityThresholds,
    "baseline": BaselineThresholds,
}


@dataclass(frozen=True)
class Thresholds:
    """All check thresholds, one table per check."""

    uniformity: UniformityThresholds = field(default_factory=UniformityThresholds)
    collapse: CollapseThresholds = field(default_factory=CollapseThresholds)
    part_separation: PartSeparationThresholds = field(default_factory=PartSeparationThresholds)
    stability: StabilityThresholds = field(default_factory=StabilityThresholds)
    baseline: BaselineThresholds = field(default_factory=BaselineThresholds)

    def to_dict(self) -> dict[str, dict]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "thresholds", table_prefix: str = "") -> "Thresholds":
        """Defaults overridden by ``data`` ({table: {key: value}}), validated."""
        return cls().merged(data, source=source, table_prefix=table_prefix)

    def merged(self, overrides: dict, source: str = "overrides", table_prefix: str = "") -> "Thresholds":
        """A copy with ``overrides`` ({table: {key: value}}) applied; unknown or invalid entries raise."""
        if not isinstance(overrides, dict):
            raise ValueError(f"{source}: thresholds must be a table of tables, got {type(overrides).__name__}")
        changes = {}
        for table, values in overrides.items():
            where = f"[{table_prefix}{table}]"
            if table not in _SECTIONS:
                raise ValueError(f"{source}: unknown table {where} (known: {', '.join(_SECTIONS)})")
            if not isinstance(values, dict):
                raise ValueError(f"{source}: {where} must be a table of key = value, got {values!r}")
            changes[table] = _validated(getattr(self, table), values, source, where)
        return dataclasses.replace(self, **changes)


def _validated(section, values: dict, source: str, where: str):
    known = {f.name: f for f in dataclasses.fields(section)}
    updates = {}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"{source}: {where} unknown key {key!r} (known: {', '.join(known)})")
        meta = known[key].metadata
        if meta["choices"] is not None:
            if value not in meta["choices"]:
                raise ValueError(f"{source}: {where} {key} = {value!r} is not one of {', '.join(meta['choices'])}")
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{source}: {where} {key} = {value!r} must be a finite number")
            lo, hi = meta["lo"], meta["hi"]
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                rng = f"{lo} <= value <= {hi}" if hi is not None else f"value >= {lo}"
                raise ValueError(f"{source}: {where} {key} = {value!r} is out of range (expected {rng})")
            value = float(value)
        updates[key] = value
    return dataclasses.replace(section, **updates)


def load_thresholds(path: str | os.PathLike) -> Thresholds:
    """Thresholds from a TOML file with tables [uniformity], [collapse], ... (missing keys keep defaults)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{p}: invalid TOML ({exc})") from None
    return Thresholds.from_dict(data, source=str(p))


def thresholds_from_pyproject(path: str | os.PathLike) -> Thresholds:
    """Thresholds from ``[tool.partattn.thresholds]`` of a pyproject.toml (defaults if absent)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{p}: invalid TOML ({exc})") from None
    table = data.get("tool", {}).get("partattn", {}).get("thresholds", {})
    return Thresholds.from_dict(table, source=str(p), table_prefix="tool.partattn.thresholds.")


# ====================================================================== helpers
def _pct(x: float) -> str:
    """Percent text that never rounds a non-zero share down to "0%"."""
    return f"{100 * x:.0f}%" if x == 0 or x >= 0.01 else f"{100 * x:.2g}%"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _unravel(flat_index: int, shape) -> tuple[int, ...]:
    out = []
    for size in reversed(tuple(shape)):
        out.append(flat_index % size)
        flat_index //= size
    return tuple(reversed(out))


def _nonfinite_guard(name: str, record: "AttentionRecord", tensors: dict) -> CheckResult | None:
    """A failing result when the tensors a check reads hold NaN/Inf (no judgement is possible)."""
    import torch

    first, total = None, 0
    for tname, t in tensors.items():
        bad = ~torch.isfinite(t.float())
        n = int(bad.sum())
        if n:
            total += n
            s, l = _unravel(int(bad.flatten().nonzero()[0]), t.shape)[:2]
            if first is None or (s, l) < first[:2]:
                first = (s, l, tname)
    if first is None:
        return None
    s, l, tname = first
    off = Offender(step=record.steps[s], layer=record.layers[l])
    return CheckResult(
        name, "fail", float(total), 0.0, off,
        f"cannot judge {name.replace('_', ' ')}: {_n(total, 'non-finite value')} in the recorded "
        f"{', '.join(tensors)} (first in {tname} at {off}); see the nonfinite check",
        {"nonfinite_count": total},
    )


def _layer_share(flags) -> "torch.Tensor":
    """Share of flagged (step, part, head) maps per layer: (S, L, P, H) bool -> (L,)."""
    return flags.float().mean(dim=(0, 2, 3))


def _worst_cell(score, mask) -> tuple[int, int, int]:
    """(step, part, head) position of the highest ``score`` among ``mask`` cells of one layer (S, P, H)."""
    score = score.clone()
    if bool(mask.any()):
        score[~mask] = -float("inf")
    return _unravel(int(score.flatten().argmax()), score.shape)


# ====================================================================== checks
def check_uniformity(record: "AttentionRecord", thresholds: Thresholds | None = None) -> CheckResult:
    """Fails when the share of (step, part, head) maps with Ĥ >= entropy_min_uniform exceeds max_share.

    Each layer's share is computed, then reduced over layers by ``layer_aggregate`` (default: the
    mean, i.e. the share over the whole model); the reason names the most uniform layer."""
    t = (thresholds or Thresholds()).uniformity
    name = "uniformity"
    guard = _nonfinite_guard(name, record, {"entropy": record.entropy})
    if guard is not None:
        return guard
    ent = record.entropy.float()
    flags = ent >= t.entropy_min_uniform
    shares = _layer_share(flags)
    worst = int(shares.argmax())
    share = float(shares.mean() if t.layer_aggregate == "mean" else shares[worst])
    scope = "of all heads" if t.layer_aggregate == "mean" else f"of heads in layer {record.layers[worst]}"
    mean_ent = ent.mean(dim=(0, 2, 3))
    details = {
        "per_layer": {layer: {"share": float(shares[i]), "mean_entropy": float(mean_ent[i])}
                      for i, layer in enumerate(record.layers)},
        "worst_layer": record.layers[worst],
    }
    if share > t.max_share:
        s, p, h = _worst_cell(ent[:, worst], flags[:, worst])
        off = Offender(step=record.steps[s], layer=record.layers[worst], part=p, head=h)
        value = float(ent[s, worst, p, h])
        return CheckResult(
            name, "fail", share, t.max_share, off,
            f"attention is near-uniform: {_pct(share)} {scope} have normalized entropy ≥ "
            f"{t.entropy_min_uniform:g} (allowed {_pct(t.max_share)}); most uniform layer {off.layer} "
            f"({_pct(float(shares[worst]))}), worst {value:.3f} at {off}",
            details,
        )
    return CheckResult(
        name, "pass", share, t.max_share, None,
        f"{_pct(share)} {scope} are near-uniform (allowed {_pct(t.max_share)}); most uniform layer "
        f"{record.layers[worst]} ({_pct(float(shares[worst]))})",
        details,
    )


def check_collapse(record: "AttentionRecord", thresholds: Thresholds | None = None) -> CheckResult:
    """Fails when, in some layer, the share of maps with peak >= peak_max, Ĥ <= entropy_min or
    CLS mass >= cls_mass_max exceeds max_share (default 0: any collapsed map fails)."""
    t = (thresholds or Thresholds()).collapse
    name = "collapse"
    guard = _nonfinite_guard(name, record, {"peak": record.peak, "entropy": record.entropy, "cls_mass": record.cls_mass})
    if guard is not None:
        return guard
    pk, ent, cls = record.peak.float(), record.entropy.float(), record.cls_mass.float()
    causes = {  # cause -> (flags, severity, values, comparison, threshold, label, description)
        "peak": (pk >= t.peak_max, pk, pk, "≥", t.peak_max, "peak", "attention collapsed onto one key"),
        "entropy": (ent <= t.entropy_min, -ent, ent, "≤", t.entropy_min, "normalized entropy",
                    "attention collapsed onto few keys"),
        "cls_mass": (cls >= t.cls_mass_max, cls, cls, "≥", t.cls_mass_max, "CLS mass",
                     "attention sinks into the CLS token"),
    }
    flags = causes["peak"][0] | causes["entropy"][0] | causes["cls_mass"][0]
    shares = _layer_share(flags)
    worst = int(shares.argmax())
    share = float(shares[worst])
    max_pk, min_ent, max_cls = pk.amax(dim=(0, 2, 3)), ent.amin(dim=(0, 2, 3)), cls.amax(dim=(0, 2, 3))
    details = {
        "per_layer": {layer: {"share": float(shares[i]), "max_peak": float(max_pk[i]),
                              "min_entropy": float(min_ent[i]), "max_cls_mass": float(max_cls[i])}
                      for i, layer in enumerate(record.layers)},
        "worst_layer": record.layers[worst],
        "counts": {c: int(v[0].sum()) for c, v in causes.items()},
    }
    if share > t.max_share:
        # the cause flagging most maps in the worst layer names the offender (ties: peak first)
        cause = max(causes, key=lambda c: int(causes[c][0][:, worst].sum()))
        cflags, severity, values, op, thr, label, text = causes[cause]
        s, p, h = _worst_cell(severity[:, worst], cflags[:, worst])
        off = Offender(step=record.steps[s], layer=record.layers[worst], part=p, head=h)
        details["cause"] = cause
        return CheckResult(
            name, "fail", share, t.max_share, off,
            f"{text}: {label} {float(values[s, worst, p, h]):.3f} {op} {thr:g} at {off} "
            f"({_pct(share)} of heads in that layer collapsed; allowed {_pct(t.max_share)})",
            details,
        )
    return CheckResult(
        name, "pass", share, t.max_share, None,
        f"{_pct(share)} of heads collapsed in the worst layer (allowed {_pct(t.max_share)}; max peak {float(pk.max()):.3f}, "
        f"min entropy {float(ent.min()):.3f}, max CLS mass {float(cls.max()):.3f})",
        details,
    )


def check_part_separation(record: "AttentionRecord", thresholds: Thresholds | None = None) -> CheckResult:
    """Fails when the part separation of head-averaged marginals, reduced over steps then layers,
    is below min_separation. Skipped for a single part."""
    import torch

    from . import metrics

    t = (thresholds or Thresholds()).part_separation
    name = "part_separation"
    if record.num_parts < 2:
        return CheckResult(name, "skip", None, t.min_separation, None,
                           "part separation needs at least 2 parts; this record has 1", {})
    guard = _nonfinite_guard(name, record, {"marginals": record.marginals})
    if guard is not None:
        return guard
    pair = metrics.pairwise_separation(record.marginals_by_part())  # (S, L, P, P)
    P = record.num_parts
    i, j = torch.triu_indices(P, P, offset=1)
    sep = pair[..., i, j].mean(-1)  # (S, L), equals metrics.part_separation
    per_layer_t = metrics.reduce(sep, t.step_aggregate, 0)  # (L,)
    value = float(metrics.reduce(per_layer_t, t.layer_aggregate, 0))
    # the layer that determines the value: the best one under "max", the worst otherwise
    li = int(per_layer_t.argmax() if t.layer_aggregate == "max" else per_layer_t.argmin())
    pair_layer = pair[:, li].mean(0)  # (P, P) step-mean JS in that layer
    pair_layer = pair_layer + torch.eye(P) * 2.0  # ignore the diagonal
    a, b = _unravel(int(pair_layer.argmin()), pair_layer.shape)
    closest = float(pair_layer[a, b])
    details = {
        "per_layer": {layer: float(per_layer_t[k]) for k, layer in enumerate(record.layers)},
        "per_step": [float(x) for x in sep.mean(1)],
        "aggregate": f"{t.layer_aggregate} over layers of the {t.step_aggregate} over steps",
        "closest_pair": [a, b],
        "closest_pair_js": closest,
    }
    how = f"{t.layer_aggregate} over layers of the {t.step_aggregate} over steps"
    if value < t.min_separation:
        off = Offender(layer=record.layers[li], part=a)
        which = "best" if t.layer_aggregate == "max" else "worst"
        return CheckResult(
            name, "fail", value, t.min_separation, off,
            f"parts attend to the same image regions: part separation {value:.3f} < {t.min_separation:g} "
            f"({how}; {which} layer {record.layers[li]}, closest parts {a} and {b} at {closest:.3f})",
            details,
        )
    return CheckResult(name, "pass", value, t.min_separation, None,
                       f"part separation {value:.3f} ≥ {t.min_separation:g} ({how})", details)


def check_stability(record: "AttentionRecord", thresholds: Thresholds | None = None) -> CheckResult:
    """Fails when a part's head-averaged marginal jumps (JS/log 2) by more than max_jump between
    consecutive recorded steps in any layer. Skipped with fewer than 2 steps."""
    from . import metrics

    t = (thresholds or Thresholds()).stability
    name = "stability"
    if record.num_steps < 2:
        return CheckResult(name, "skip", None, t.max_jump, None,
                           f"timestep stability needs at least 2 recorded steps; this record has {record.num_steps}", {})
    guard = _nonfinite_guard(name, record, {"marginals": record.marginals})
    if guard is not None:
        return guard
    jumps = metrics.timestep_jumps(record.marginals_by_part())  # (S-1, L, P)
    k, li, p = _unravel(int(jumps.flatten().argmax()), jumps.shape)
    value = float(jumps[k, li, p])
    per_step = jumps.mean(dim=(1, 2))
    details = {
        "per_layer": {layer: float(jumps[:, i].amax()) for i, layer in enumerate(record.layers)},
        "per_step_mean_jump": [float(x) for x in per_step],
        "step_pairs": [[a, b] for a, b in zip(record.steps, record.steps[1:])],
        "trend": float(per_step[-1] - per_step[0]) if len(per_step) > 1 else 0.0,
        "from_step": record.steps[k],
    }
    off = Offender(step=record.steps[k + 1], layer=record.layers[li], part=p)
    if value > t.max_jump:
        return CheckResult(
            name, "fail", value, t.max_jump, off,
            f"attention is unstable over steps: part {p} in layer {off.layer} jumps by JS {value:.3f} > "
            f"{t.max_jump:g} between steps {record.steps[k]} and {record.steps[k + 1]}",
            details,
        )
    return CheckResult(name, "pass", value, t.max_jump, None,
                       f"worst consecutive-step jump {value:.3f} ≤ {t.max_jump:g} (steps {record.steps[k]}→"
                       f"{record.steps[k + 1]}, layer {off.layer}, part {p})", details)


def check_nonfinite(record: "AttentionRecord", thresholds: Thresholds | None = None) -> CheckResult:
    """Fails on any NaN/Inf: events the recorder logged (attention or latents) and values in the
    record's tensors. Names the earliest step (then layer) where it started."""
    import torch

    name = "nonfinite"
    found = []  # (step, order, layer index, layer name, where)
    for e in record.nonfinite:
        layer = e.get("layer")
        li = record.layers.index(layer) if layer in record.layers else -1
        where = e.get("where", "attention")
        found.append((int(e.get("step", -1)), 0 if where == "attention" else 1, li, layer, where))
    cells = 0
    tensors = dict(record.tensors())
    for key, t in tensors.items():
        bad = ~torch.isfinite(t.float())
        n = int(bad.sum())
        if not n:
            continue
        cells += n
        if key.startswith("full/"):
            step, layer = next((s, l) for (s, l) in record.full_maps if f"full/{s}/{l}" == key)
            found.append((step, 0, record.layers.index(layer), layer, f"attention (full map {key})"))
        else:
            s, l = _unravel(int(bad.flatten().nonzero()[0]), t.shape)[:2]
            found.append((record.steps[s], 0, l, record.layers[l], f"attention (recorded {key})"))
    details = {"events": len(record.nonfinite), "nonfinite_values": cells}
    if not found:
        return CheckResult(name, "pass", 0.0, 0.0, None,
                           "no NaN/Inf in attention or latents", details)
    step, _, _, layer, where = min(found, key=lambda f: f[:3])
    off = Offender(step=step if step >= 0 else None, layer=layer)
    details["first"] = {"step": off.step, "layer": layer, "where": where}
    return CheckResult(
        name, "fail", float(cells + len(record.nonfinite)), 0.0, off,
        f"non-finite values (NaN/Inf) in {where} starting at {off} ({_n(len(record.nonfinite), 'event')} "
        f"logged by the recorder, {_n(cells, 'non-finite value')} in the record's tensors)",
        details,
    )


def check_baseline(measured: dict[str, float], baseline: dict[str, float],
                   thresholds: Thresholds | None = None) -> CheckResult:
    """Compare headline metrics with a stored baseline: a metric fails when
    |measured - baseline| > atol + rtol * |baseline|. A metric in the baseline but not measured
    fails; a measured metric absent from the baseline is reported only."""
    t = (thresholds or Thresholds()).baseline
    name = "baseline"
    if not baseline:
        return CheckResult(name, "skip", None, None, None, "no baseline stored for this image", {})
    missing = sorted(set(baseline) - set(measured))
    extra = sorted(set(measured) - set(baseline))
    per_metric, worst, worst_ratio = {}, None, -1.0
    for key in sorted(set(baseline) & set(measured)):
        m, b = float(measured[key]), float(baseline[key])
        allowed = t.atol + t.rtol * abs(b)
        drift = abs(m - b) if math.isfinite(m) and math.isfinite(b) else math.inf
        ratio = drift / allowed if allowed > 0 else (0.0 if drift == 0 else math.inf)
        per_metric[key] = {"measured": m, "baseline": b, "drift": drift, "allowed": allowed}
        if ratio > worst_ratio:
            worst, worst_ratio = key, ratio
    details = {"per_metric": per_metric, "missing_in_measured": missing, "missing_in_baseline": extra,
               "atol": t.atol, "rtol": t.rtol}
    notes = []
    if missing:
        notes.append(f"not measured: {', '.join(missing)}")
    if extra:
        notes.append(f"not in baseline: {', '.join(extra)}")
    note = f" ({'; '.join(notes)})" if notes else ""
    if worst is not None:
        w = per_metric[worst]
        drifted = worst_ratio > 1.0
        head = (f"{worst} drifted from its baseline: {w['measured']:.4f} vs {w['baseline']:.4f}, "
                f"|Δ| {w['drift']:.4f} > allowed {w['allowed']:.4f}") if drifted else \
               (f"all metrics within tolerance (closest to the limit: {worst}, |Δ| {w['drift']:.4f} "
                f"≤ allowed {w['allowed']:.4f})")
        value, threshold = w["drift"], w["allowed"]
    else:
        drifted, head, value, threshold = False, "no metric in common with the baseline", None, None
    details["worst_metric"] = worst
    if drifted or missing:
        if not drifted:
            head = "baseline metrics were not measured"
        return CheckResult(name, "fail", value, threshold, None, head + note, details)
    return CheckResult(name, "pass", value, threshold, None, head + note, details)


CHECKS: dict[str, Callable[["AttentionRecord", Thresholds], CheckResult]] = {
    "uniformity": check_uniformity,
    "collapse": check_collapse,
    "part_separation": check_part_separation,
    "stability": check_stability,
    "nonfinite": check_nonfinite,
}


def run_checks(record: "AttentionRecord", thresholds: Thresholds | None = None,
               names: list[str] | None = None) -> list[CheckResult]:
    """Run the named record checks (all of ``CHECKS`` by default) in registry order."""
    thresholds = thresholds or Thresholds()
    if names is None:
        names = list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check {unknown[0]!r} (known: {', '.join(CHECKS)})")
    return [CHECKS[n](record, thresholds) for n in CHECKS if n in names]
