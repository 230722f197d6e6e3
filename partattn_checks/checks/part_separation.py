"""part_separation: fails when the parts attend to the same image regions."""

from __future__ import annotations

from dataclasses import dataclass

from .common import nonfinite_guard, timeline_figure, unravel, verdict_title
from .core import Check, CheckResult, Offender, Timeline
from .details import Details, Matrix, optional_key
from .registry import register
from .thresholds import Thresholds, param


@dataclass(frozen=True)
class PartSeparationThresholds:
    min_separation: float = param(0.084, 0.0, 1.0, doc="fail when the aggregated part separation is below this")
    step_aggregate: str = param(
        "mean", choices=("mean", "min", "max"), doc="how separation is reduced over steps, per layer"
    )
    layer_aggregate: str = param(
        "max", choices=("mean", "min", "max"), doc="how the per-layer values are reduced over layers"
    )


@dataclass(frozen=True, kw_only=True)
class PartSeparationDetails(Details):
    per_layer: dict[str, float] | None = optional_key()  # reduced over steps with step_aggregate
    per_step: list[float] | None = optional_key()  # mean over layers
    aggregate: str | None = optional_key()  # how the value was reduced, in words
    closest_pair: tuple[int, int] | None = optional_key()  # in the layer that sets the value
    closest_pair_js: float | None = optional_key()
    nonfinite_count: int | None = optional_key()  # set when the record cannot be judged
    #: The layer the figures show: the one that sets the value on a failure, the most separated one
    #: (mean over steps) on a pass, the first one with NaN/Inf when the record cannot be judged.
    shown_layer: str | None = optional_key()
    shown_why: str | None = optional_key()  # why that layer, in words (figure titles)
    separation: Matrix | None = optional_key()  # (step, layer) part separation


@register
class PartSeparation(Check[PartSeparationDetails]):
    """Fails when the part separation of head-averaged marginals, reduced over steps then layers,
    is below min_separation. Skipped for a single part."""

    name = "part_separation"
    label, op = "part separation", "≥"
    calibrated = "min_separation"  # the field partattn calibrate sets
    broken_by = "merged_parts"  # model.broken's variant built to fail it
    thresholds_type = PartSeparationThresholds
    details_type = PartSeparationDetails

    def judge(self, record, thresholds: Thresholds) -> CheckResult:
        import torch

        from ..capture import metrics

        t = self.limits(thresholds)
        if record.num_parts < 2:
            return CheckResult(
                self.name,
                "skip",
                None,
                t.min_separation,
                None,
                "part separation needs at least 2 parts; this record has 1",
                PartSeparationDetails(),
            )
        guarded = nonfinite_guard(
            self.name,
            record,
            {"marginals": record.marginals},
            lambda total, li: PartSeparationDetails(
                nonfinite_count=total,
                shown_layer=record.layers[li],
                shown_why="the first layer with NaN/Inf",
                separation=Matrix.of(metrics.part_separation(record.marginals_by_part())),
            ),
        )
        if guarded is not None:
            return guarded
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
        a, b = unravel(int(pair_layer.argmin()), pair_layer.shape)
        closest = float(pair_layer[a, b])
        how = f"{t.layer_aggregate} over layers of the {t.step_aggregate} over steps"
        failed = value < t.min_separation
        shown = li if failed else int(sep.mean(0).argmax())
        if not failed:
            why = "the most separated layer (mean over steps)"
        elif t.layer_aggregate == "max":
            why = "the most separated layer, which sets the value: the best the model does, still below the floor"
        else:
            why = f"the least separated layer, which sets the {t.layer_aggregate} over layers"
        details = PartSeparationDetails(
            per_layer={layer: float(per_layer_t[k]) for k, layer in enumerate(record.layers)},
            per_step=[float(x) for x in sep.mean(1)],
            aggregate=how,
            closest_pair=(a, b),
            closest_pair_js=closest,
            shown_layer=record.layers[shown],
            shown_why=why,
            separation=Matrix.of(sep),
        )
        if failed:
            off = Offender(layer=record.layers[li], part=a)
            which = "best" if t.layer_aggregate == "max" else "worst"
            return CheckResult(
                self.name,
                "fail",
                value,
                t.min_separation,
                off,
                f"parts attend to the same image regions: part separation {value:.3f} < {t.min_separation:g} "
                f"({how}; {which} layer {record.layers[li]}, closest parts {a} and {b} at {closest:.3f})",
                details,
            )
        return CheckResult(
            self.name,
            "pass",
            value,
            t.min_separation,
            None,
            f"part separation {value:.3f} ≥ {t.min_separation:g} ({how})",
            details,
        )

    def timeline(self, record, thresholds: Thresholds) -> Timeline | None:
        """Part separation per step and layer; bold: the series whose ``step_aggregate`` over steps is
        the judged value (the layer that sets it, or the mean over layers). None for a single part."""
        from ..capture import metrics

        if record.num_parts < 2:
            return None
        t = self.limits(thresholds)
        sep = metrics.part_separation(record.marginals_by_part())  # (S, L)
        per_layer = metrics.reduce(sep, t.step_aggregate, 0)  # (L,)
        value = float(metrics.reduce(per_layer, t.layer_aggregate, 0))
        exact = f"{t.step_aggregate} over steps of the bold line"
        if t.layer_aggregate == "mean":
            judged, label = sep.mean(1), "mean over layers"
            how = exact if t.step_aggregate == "mean" else f"mean over layers of their {t.step_aggregate} over steps"
        else:
            ranked = per_layer.nan_to_num(-1.0 if t.layer_aggregate == "max" else 2.0)
            li = int(ranked.argmax() if t.layer_aggregate == "max" else ranked.argmin())
            word = "most" if t.layer_aggregate == "max" else "least"
            judged, label, how = sep[:, li], f"layer {record.layers[li]} ({word} separated)", exact
        return Timeline(
            sep,
            tuple(record.steps),
            tuple(record.layers),
            metric="part separation (JS / log 2)",
            threshold=t.min_separation,
            op=self.op,
            title="part separation per step and layer",
            stem=self.name,
            judged=judged,
            judged_label=label,
            value=value,
            value_label=how,
        )

    def draw(self, result, details: PartSeparationDetails, record, image, thresholds):
        """``overlay`` (each part's head-averaged key-marginal of the shown layer, mean over steps, on
        the encoder's view of the image), ``parts`` (the same on the bare patch grid, or strips),
        ``timeline`` (separation per step and layer against the floor, the judged series bold).
        The titles say why that layer is shown."""
        from .. import render

        layer = details.shown_layer
        marg = record.marginals_by_part()[:, record.layers.index(layer)].mean(0).nan_to_num(0.0)
        marg = marg / marg.sum(-1, keepdim=True).clamp_min(1e-12)
        title = verdict_title(result, self.label, self.op)
        why = f" — {details.shown_why}" if details.shown_why else ""
        shown = f"{title}\nlayer\u00a0{layer}{why} · mean over steps"
        out = []
        grid = record.patch_grid
        if grid is not None and image is not None:
            out.append(("overlay", render.part_panel(marg, grid, image, title=shown)))
        out.append(("parts", render.part_panel(marg, grid, title=shown)))
        return out + timeline_figure(self, result, record, thresholds)


def check_part_separation(record, thresholds: Thresholds | None = None) -> CheckResult:
    """The part separation check as a function."""
    return PartSeparation()(record, thresholds)
