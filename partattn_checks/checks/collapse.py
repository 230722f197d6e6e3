"""collapse: fails when heads put their attention on one key, on few keys, or into the CLS token."""

from __future__ import annotations

from dataclasses import dataclass

from .common import heads_and_overlay, map_at, nonfinite_guard, pct, step_layer_share, timeline_figure, worst_cell
from .core import Check, CheckResult, Offender, Timeline
from .details import Details, optional_key
from .registry import register
from .thresholds import Thresholds, param


@dataclass(frozen=True)
class CollapseThresholds:
    peak_max: float = param(0.9, 0.0, 1.0, doc="a map whose peak is >= this counts as collapsed onto one key")
    entropy_min: float = param(0.05, 0.0, 1.0, doc="a map whose normalized entropy is <= this counts as collapsed")
    cls_mass_max: float = param(
        0.9, 0.0, 1.0, doc="a map whose CLS (sink) mass is >= this counts as collapsed into CLS"
    )
    max_share: float = param(0.56, 0.0, 1.0, doc="fail when a layer's share of collapsed maps exceeds this")


@dataclass(frozen=True)
class LayerCollapse:
    share: float  # of collapsed (step, part, head) maps
    max_peak: float
    min_entropy: float
    max_cls_mass: float


@dataclass(frozen=True, kw_only=True)
class CollapseDetails(Details):
    per_layer: dict[str, LayerCollapse] | None = optional_key()
    worst_layer: str | None = optional_key()  # the layer with the largest collapsed share
    counts: dict[str, int] | None = optional_key()  # collapsed maps per cause: peak, entropy, cls_mass
    cause: str | None = optional_key()  # on a failure: the cause flagging most maps in the worst layer
    nonfinite_count: int | None = optional_key()  # set when the record cannot be judged
    #: The map the figures show: the offender on a failure; else the peakiest head of the worst
    #: layer (of the first layer with NaN/Inf when the record cannot be judged).
    worst_map: Offender | None = optional_key()


@register
class Collapse(Check[CollapseDetails]):
    """Fails when, in some layer, the share of maps with peak >= peak_max, Ĥ <= entropy_min or
    CLS mass >= cls_mass_max exceeds max_share."""

    name = "collapse"
    label, op = "collapsed share (worst layer)", "≤"
    calibrated = "max_share"  # the field partattn calibrate sets
    broken_by = "collapsed"  # model.broken's variant built to fail it
    thresholds_type = CollapseThresholds
    details_type = CollapseDetails

    def judge(self, record, thresholds: Thresholds) -> CheckResult:
        t = self.limits(thresholds)
        guarded = nonfinite_guard(
            self.name,
            record,
            {"peak": record.peak, "entropy": record.entropy, "cls_mass": record.cls_mass},
            lambda total, li: CollapseDetails(
                nonfinite_count=total, worst_map=map_at(record, li, worst_cell(record.peak.float()[:, li]))
            ),
        )
        if guarded is not None:
            return guarded
        pk, ent, cls = record.peak.float(), record.entropy.float(), record.cls_mass.float()
        causes = _causes(record, t)
        flags = causes["peak"][0] | causes["entropy"][0] | causes["cls_mass"][0]
        shares = step_layer_share(flags).mean(0)  # (L,)
        worst = int(shares.argmax())
        share = float(shares[worst])
        max_pk, min_ent, max_cls = pk.amax(dim=(0, 2, 3)), ent.amin(dim=(0, 2, 3)), cls.amax(dim=(0, 2, 3))
        fields = dict(
            per_layer={
                layer: LayerCollapse(float(shares[i]), float(max_pk[i]), float(min_ent[i]), float(max_cls[i]))
                for i, layer in enumerate(record.layers)
            },
            worst_layer=record.layers[worst],
            counts={c: int(v[0].sum()) for c, v in causes.items()},
        )
        if share > t.max_share:
            # the cause flagging most maps in the worst layer names the offender (ties: peak first)
            cause = max(causes, key=lambda c: int(causes[c][0][:, worst].sum()))
            cflags, severity, values, op, thr, label, text = causes[cause]
            s, p, h = worst_cell(severity[:, worst], cflags[:, worst])
            off = map_at(record, worst, (s, p, h))
            return CheckResult(
                self.name,
                "fail",
                share,
                t.max_share,
                off,
                f"{text}: {label} {float(values[s, worst, p, h]):.3f} {op} {thr:g} at {off} "
                f"({pct(share)} of heads in that layer collapsed; allowed {pct(t.max_share)})",
                CollapseDetails(**fields, cause=cause, worst_map=off),
            )
        return CheckResult(
            self.name,
            "pass",
            share,
            t.max_share,
            None,
            f"{pct(share)} of heads collapsed in the worst layer (allowed {pct(t.max_share)}; max peak "
            f"{float(pk.max()):.3f}, min entropy {float(ent.min()):.3f}, max CLS mass {float(cls.max()):.3f})",
            CollapseDetails(**fields, worst_map=map_at(record, worst, worst_cell(pk[:, worst]))),
        )

    def timeline(self, record, thresholds: Thresholds) -> Timeline:
        """Per step and layer, the share of collapsed (part, head) maps (any cause); bold: the most
        collapsed layer, whose mean over steps is the judged share."""
        t = self.limits(thresholds)
        per = step_layer_share(collapsed(record, t))  # (S, L)
        worst = int(per.mean(0).argmax())
        return Timeline(
            per,
            tuple(record.steps),
            tuple(record.layers),
            metric=f"share collapsed (peak ≥ {t.peak_max:g}, Ĥ ≤ {t.entropy_min:g} or CLS ≥ {t.cls_mass_max:g})",
            threshold=t.max_share,
            op=self.op,
            title="collapse: collapsed share per step and layer",
            stem=self.name,
            judged=per[:, worst],
            judged_label=f"layer {record.layers[worst]} (most collapsed)",
            value=float(per[:, worst].mean()),
            value_label="mean over steps of the bold line",
        )

    def draw(self, result, details: CollapseDetails, record, image, thresholds):
        """``heads`` and ``overlay`` of the worst map, ``timeline`` (the judged share over steps)."""
        return heads_and_overlay(record, details.worst_map, image, "collapse") + timeline_figure(
            self, result, record, thresholds
        )


def _causes(record, t: CollapseThresholds) -> dict:
    """cause -> (flags, severity, values, comparison, threshold, label, description), each (S, L, P, H)."""
    pk, ent, cls = record.peak.float(), record.entropy.float(), record.cls_mass.float()
    return {
        "peak": (pk >= t.peak_max, pk, pk, "≥", t.peak_max, "peak", "attention collapsed onto one key"),
        "entropy": (
            ent <= t.entropy_min,
            -ent,
            ent,
            "≤",
            t.entropy_min,
            "normalized entropy",
            "attention collapsed onto few keys",
        ),
        "cls_mass": (
            cls >= t.cls_mass_max,
            cls,
            cls,
            "≥",
            t.cls_mass_max,
            "CLS mass",
            "attention sinks into the CLS token",
        ),
    }


def collapsed(record, t: CollapseThresholds):
    """(S, L, P, H) bool: the maps that count as collapsed, for any cause."""
    flags = [f for f, *_ in _causes(record, t).values()]
    return flags[0] | flags[1] | flags[2]


def check_collapse(record, thresholds: Thresholds | None = None) -> CheckResult:
    """The collapse check as a function."""
    return Collapse()(record, thresholds)
