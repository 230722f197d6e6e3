"""uniformity: fails when too many heads attend near-uniformly (look at nothing in particular)."""

from __future__ import annotations

from dataclasses import dataclass

from .common import heads_and_overlay, map_at, nonfinite_guard, pct, step_layer_share, timeline_figure, worst_cell
from .core import Check, CheckResult, Offender, Timeline
from .details import Details, optional_key
from .registry import register
from .thresholds import Thresholds, param


@dataclass(frozen=True)
class UniformityThresholds:
    entropy_min_uniform: float = param(
        0.98, 0.0, 1.0, doc="a map with normalized entropy >= this counts as near-uniform"
    )
    max_share: float = param(
        0.84,
        0.0,
        1.0,
        doc="fail when the share of near-uniform maps (reduced over layers by layer_aggregate) exceeds this",
    )
    layer_aggregate: str = param(
        "mean",
        choices=("mean", "max"),
        doc="mean: share over the whole model (one lazy layer is normal); max: the worst layer's share",
    )


@dataclass(frozen=True)
class LayerUniformity:
    share: float  # of (step, part, head) maps with Ĥ >= entropy_min_uniform
    mean_entropy: float


@dataclass(frozen=True, kw_only=True)
class UniformityDetails(Details):
    per_layer: dict[str, LayerUniformity] | None = optional_key()
    worst_layer: str | None = optional_key()  # the most uniform layer
    nonfinite_count: int | None = optional_key()  # set when the record cannot be judged
    #: The map the figures show: the most uniform head of the most uniform layer (when the record
    #: cannot be judged: the highest-entropy head of the first layer with NaN/Inf).
    worst_map: Offender | None = optional_key()


@register
class Uniformity(Check[UniformityDetails]):
    """Fails when the share of (step, part, head) maps with Ĥ >= entropy_min_uniform exceeds max_share.

    Each layer's share is computed, then reduced over layers by ``layer_aggregate`` (default: the
    mean, i.e. the share over the whole model); the reason names the most uniform layer."""

    name = "uniformity"
    label, op = "near-uniform share", "≤"
    calibrated = "max_share"  # the field partattn calibrate sets
    broken_by = "uniform"  # model.broken's variant built to fail it
    thresholds_type = UniformityThresholds
    details_type = UniformityDetails

    def judge(self, record, thresholds: Thresholds) -> CheckResult:
        t = self.limits(thresholds)
        guarded = nonfinite_guard(
            self.name,
            record,
            {"entropy": record.entropy},
            lambda total, li: UniformityDetails(
                nonfinite_count=total, worst_map=map_at(record, li, worst_cell(record.entropy.float()[:, li]))
            ),
        )
        if guarded is not None:
            return guarded
        ent = record.entropy.float()
        flags = ent >= t.entropy_min_uniform
        shares = step_layer_share(flags).mean(0)  # (L,)
        worst = int(shares.argmax())
        share = float(shares.mean() if t.layer_aggregate == "mean" else shares[worst])
        scope = "of all heads" if t.layer_aggregate == "mean" else f"of heads in layer {record.layers[worst]}"
        mean_ent = ent.mean(dim=(0, 2, 3))
        shown = map_at(record, worst, worst_cell(ent[:, worst], flags[:, worst]))
        details = UniformityDetails(
            per_layer={
                layer: LayerUniformity(float(shares[i]), float(mean_ent[i])) for i, layer in enumerate(record.layers)
            },
            worst_layer=record.layers[worst],
            worst_map=shown,
        )
        if share > t.max_share:
            value = float(ent[record.step_index(shown.step), worst, shown.part, shown.head])
            return CheckResult(
                self.name,
                "fail",
                share,
                t.max_share,
                shown,
                f"attention is near-uniform: {pct(share)} {scope} have normalized entropy ≥ "
                f"{t.entropy_min_uniform:g} (allowed {pct(t.max_share)}); most uniform layer {shown.layer} "
                f"({pct(float(shares[worst]))}), worst {value:.3f} at {shown}",
                details,
            )
        return CheckResult(
            self.name,
            "pass",
            share,
            t.max_share,
            None,
            f"{pct(share)} {scope} are near-uniform (allowed {pct(t.max_share)}); most uniform layer "
            f"{record.layers[worst]} ({pct(float(shares[worst]))})",
            details,
        )

    def timeline(self, record, thresholds: Thresholds) -> Timeline:
        """Per step and layer, the share of (part, head) maps with Ĥ >= entropy_min_uniform; bold: the
        series whose mean over steps is the judged share (all layers, or the most uniform one)."""
        t = self.limits(thresholds)
        per = step_layer_share(record.entropy.float() >= t.entropy_min_uniform)  # (S, L)
        if t.layer_aggregate == "mean":
            judged, label = per.mean(1), "all layers (mean)"
        else:
            worst = int(per.mean(0).argmax())
            judged, label = per[:, worst], f"layer {record.layers[worst]} (most uniform)"
        return Timeline(
            per,
            tuple(record.steps),
            tuple(record.layers),
            metric=f"share of maps with Ĥ ≥ {t.entropy_min_uniform:g}",
            threshold=t.max_share,
            op=self.op,
            title="uniformity: near-uniform share per step and layer",
            stem=self.name,
            judged=judged,
            judged_label=label,
            value=float(judged.mean()),
            value_label="mean over steps of the bold line",
        )

    def draw(self, result, details: UniformityDetails, record, image, thresholds):
        """``heads`` and ``overlay`` of the most uniform map, ``timeline`` (the judged share over steps)."""
        return heads_and_overlay(record, details.worst_map, image, "uniformity") + timeline_figure(
            self, result, record, thresholds
        )


def check_uniformity(record, thresholds: Thresholds | None = None) -> CheckResult:
    """The uniformity check as a function."""
    return Uniformity()(record, thresholds)
