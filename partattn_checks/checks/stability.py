"""stability: fails when a part's attention jumps between consecutive denoising steps."""

from __future__ import annotations

from dataclasses import dataclass

from .common import nonfinite_guard, timeline_figure, unravel
from .core import Check, CheckResult, Offender, Timeline, register
from .details import Details, Matrix, optional_key
from .thresholds import Thresholds, param


@dataclass(frozen=True)
class StabilityThresholds:
    max_jump: float = param(
        0.25, 0.0, 1.0, doc="fail when a consecutive-step JS/log 2 of a part's marginal exceeds this"
    )


@dataclass(frozen=True, kw_only=True)
class StabilityDetails(Details):
    per_layer: dict[str, float] | None = optional_key()  # worst jump of the layer
    per_step_mean_jump: list[float] | None = optional_key()  # per step pair, mean over layers and parts
    step_pairs: list[tuple[int, int]] | None = optional_key()  # the recorded steps each jump is between
    trend: float | None = optional_key()  # last minus first per_step_mean_jump
    from_step: int | None = optional_key()  # the step the worst jump starts from
    nonfinite_count: int | None = optional_key()  # set when the record cannot be judged
    jumps: Matrix | None = optional_key()  # (step pair, layer): the worst part's jump


@register
class Stability(Check[StabilityDetails]):
    """Fails when a part's head-averaged marginal jumps (JS/log 2) by more than max_jump between
    consecutive recorded steps in any layer. Skipped with fewer than 2 steps."""

    name = "stability"
    label, op = "worst step-to-step jump", "≤"
    calibrated = "max_jump"  # the field partattn calibrate sets
    broken_by = "unstable"  # model.broken's variant built to fail it
    thresholds_type = StabilityThresholds
    details_type = StabilityDetails

    def judge(self, record, thresholds: Thresholds) -> CheckResult:
        from ..capture import metrics

        t = self.limits(thresholds)
        if record.num_steps < 2:
            return CheckResult(
                self.name,
                "skip",
                None,
                t.max_jump,
                None,
                f"timestep stability needs at least 2 recorded steps; this record has {record.num_steps}",
                StabilityDetails(),
            )
        jumps = metrics.timestep_jumps(record.marginals_by_part())  # (S-1, L, P)
        guarded = nonfinite_guard(
            self.name,
            record,
            {"marginals": record.marginals},
            lambda total, _: StabilityDetails(nonfinite_count=total, jumps=Matrix.of(jumps.amax(-1))),
        )
        if guarded is not None:
            return guarded
        k, li, p = unravel(int(jumps.flatten().argmax()), jumps.shape)
        value = float(jumps[k, li, p])
        per_step = jumps.mean(dim=(1, 2))
        details = StabilityDetails(
            per_layer={layer: float(jumps[:, i].amax()) for i, layer in enumerate(record.layers)},
            per_step_mean_jump=[float(x) for x in per_step],
            step_pairs=list(zip(record.steps[:-1], record.steps[1:], strict=True)),
            trend=float(per_step[-1] - per_step[0]) if len(per_step) > 1 else 0.0,
            from_step=record.steps[k],
            jumps=Matrix.of(jumps.amax(-1)),
        )
        off = Offender(step=record.steps[k + 1], layer=record.layers[li], part=p)
        if value > t.max_jump:
            return CheckResult(
                self.name,
                "fail",
                value,
                t.max_jump,
                off,
                f"attention is unstable over steps: part {p} in layer {off.layer} jumps by JS {value:.3f} > "
                f"{t.max_jump:g} between steps {record.steps[k]} and {record.steps[k + 1]}",
                details,
            )
        return CheckResult(
            self.name,
            "pass",
            value,
            t.max_jump,
            None,
            f"worst consecutive-step jump {value:.3f} ≤ {t.max_jump:g} (steps {record.steps[k]}→"
            f"{record.steps[k + 1]}, layer {off.layer}, part {p})",
            details,
        )

    def timeline(self, record, thresholds: Thresholds) -> Timeline | None:
        """The worst part's jump from the previous step, per step and layer; the judged value is its
        maximum (any point above the threshold fails). None with fewer than 2 steps."""
        from ..capture import metrics

        if record.num_steps < 2:
            return None
        t = self.limits(thresholds)
        jumps = metrics.timestep_jumps(record.marginals_by_part()).amax(-1)  # (S-1, L)
        return Timeline(
            jumps,
            tuple(record.steps[1:]),
            tuple(record.layers),
            metric="worst part's jump from the previous step (JS / log 2)",
            threshold=t.max_jump,
            op=self.op,
            title="stability: step-to-step jump per step and layer",
            stem=self.name,
            value=float(jumps.max()),
            value_label="max over steps and layers",
        )

    def draw(self, result, details: StabilityDetails, record, image, thresholds):
        """``timeline`` (the worst part's jump from the previous step, per layer, against the threshold)."""
        return timeline_figure(self, result, record, thresholds)


def check_stability(record, thresholds: Thresholds | None = None) -> CheckResult:
    """The stability check as a function."""
    return Stability()(record, thresholds)
