"""stability: fails when a part's attention jumps between consecutive denoising steps.

A jump is judged at the size of step it was calibrated at: the checkpoint's own step count. The
jump between recorded steps k and k' is scaled by (Δt_ref / Δt)^½, where Δt = (k' − k)/n is the
share of the schedule the step covers in a run of n steps (its size in t on PartCrafter's uniform
flow schedule, σ_i = 1 − i/n) and Δt_ref = 1/n_ref that of one step at the checkpoint's default
count n_ref (``meta["default_steps"]``). At the checkpoint's own count the factor is 1 and the value
is the raw jump; fewer, larger steps scale down, more, smaller ones up, so ``max_jump`` means the
same at any step count. The exponent ½ is measured (docs/metrics.md): it makes the healthy embedded
model's worst jump flat from 2 to 40 steps. A record that does not say its counts (saved before,
or made by hooks) is judged on raw jumps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .common import nonfinite_guard, timeline_figure, unravel
from .core import Check, CheckResult, Offender, Timeline
from .details import Details, Matrix, optional_key
from .registry import register
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


#: The power of (reference step size / step size) a jump is scaled by (measured, docs/metrics.md).
STEP_SIZE_EXPONENT = 0.5


def step_scale(record) -> list[float] | None:
    """Per recorded step pair, the factor its jump is scaled by to the checkpoint's own step size;
    None when every factor is 1 (the checkpoint's own count, or a record that does not say)."""
    n, reference = record.meta.get("steps"), record.meta.get("default_steps")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (n, reference)):
        return None
    gaps = [b - a for a, b in zip(record.steps[:-1], record.steps[1:], strict=True)]
    factors = [(n / (reference * gap)) ** STEP_SIZE_EXPONENT for gap in gaps]
    return None if all(f == 1.0 for f in factors) else factors


def scaled_jumps(record):
    """(jumps, note): the consecutive-step jumps ``(S-1, L, P)``, scaled to the checkpoint's own step
    size (:func:`step_scale`), and how the reason says so (empty when unscaled)."""
    import torch

    from ..capture import metrics

    jumps = metrics.timestep_jumps(record.marginals_by_part())  # (S-1, L, P)
    factors = step_scale(record)
    if factors is None:
        return jumps, ""
    scale = torch.tensor(factors, dtype=jumps.dtype).view(-1, *([1] * (jumps.dim() - 1)))
    n, reference = record.meta["steps"], record.meta["default_steps"]
    return jumps * scale, (
        f"; jumps of this {n}-step run scaled to the checkpoint's {reference}-step size (x{_factors(factors)})"
    )


def _factors(factors: list[float]) -> str:
    low, high = min(factors), max(factors)
    return f"{low:.3g}" if math.isclose(low, high) else f"{low:.3g} to {high:.3g}"


@register
class Stability(Check[StabilityDetails]):
    """Fails when a part's head-averaged marginal jumps (JS/log 2, scaled to the checkpoint's own
    step size) by more than max_jump between consecutive recorded steps in any layer. Skipped with
    fewer than 2 steps."""

    name = "stability"
    label, op = "worst step-to-step jump", "≤"
    calibrated = "max_jump"  # the field partattn calibrate sets
    broken_by = "unstable"  # model.broken's variant built to fail it
    thresholds_type = StabilityThresholds
    details_type = StabilityDetails

    def judge(self, record, thresholds: Thresholds) -> CheckResult:
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
        jumps, scaled = scaled_jumps(record)  # (S-1, L, P)
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
                f"{t.max_jump:g} between steps {record.steps[k]} and {record.steps[k + 1]}{scaled}",
                details,
            )
        return CheckResult(
            self.name,
            "pass",
            value,
            t.max_jump,
            None,
            f"worst consecutive-step jump {value:.3f} ≤ {t.max_jump:g} (steps {record.steps[k]}→"
            f"{record.steps[k + 1]}, layer {off.layer}, part {p}){scaled}",
            details,
        )

    def timeline(self, record, thresholds: Thresholds) -> Timeline | None:
        """The worst part's jump from the previous step, per step and layer; the judged value is its
        maximum (any point above the threshold fails). None with fewer than 2 steps."""
        if record.num_steps < 2:
            return None
        t = self.limits(thresholds)
        jumps, scaled = scaled_jumps(record)
        jumps = jumps.amax(-1)  # (S-1, L)
        at = f", at the checkpoint's {record.meta['default_steps']}-step size" if scaled else ""
        return Timeline(
            jumps,
            tuple(record.steps[1:]),
            tuple(record.layers),
            metric=f"worst part's jump from the previous step (JS / log 2{at})",
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
