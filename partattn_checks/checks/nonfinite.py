"""nonfinite: fails on any NaN/Inf in attention or latents and says where it started."""

from __future__ import annotations

from dataclasses import dataclass

from .common import count, timeline_figure, unravel
from .core import Check, CheckResult, Offender, Timeline
from .details import Details, optional_key
from .registry import register
from .thresholds import Thresholds


@dataclass(frozen=True)
class FirstNonfinite:
    step: int | None
    layer: str | None
    where: str  # "attention", "latents" or "attention (recorded <tensor>)"


@dataclass(frozen=True, kw_only=True)
class NonfiniteDetails(Details):
    events: int = 0  # NaN/Inf events the recorder logged
    nonfinite_values: int = 0  # NaN/Inf values in the record's tensors
    first: FirstNonfinite | None = optional_key()  # on a failure: where it started


@register
class Nonfinite(Check[NonfiniteDetails]):
    """Fails on any NaN/Inf: events the recorder logged (attention or latents) and values in the
    record's tensors. Names the earliest step (then layer) where it started."""

    name = "nonfinite"
    label, op = "non-finite values", "≤"
    broken_by = "nonfinite"  # model.broken's variant built to fail it (no threshold to calibrate)
    details_type = NonfiniteDetails

    def judge(self, record, thresholds: Thresholds) -> CheckResult:
        import torch

        found = []  # (step, order, layer index, layer name, where)
        for e in record.nonfinite:
            layer = e.get("layer")
            li = record.layers.index(layer) if layer in record.layers else -1
            where = e.get("where", "attention")
            found.append((int(e.get("step", -1)), 0 if where == "attention" else 1, li, layer, where))
        cells = 0
        for key, t in dict(record.tensors()).items():
            bad = ~torch.isfinite(t.float())
            n = int(bad.sum())
            if not n:
                continue
            cells += n
            if key.startswith("full/"):
                step, layer = next((s, name) for (s, name) in record.full_maps if f"full/{s}/{name}" == key)
                found.append((step, 0, record.layers.index(layer), layer, f"attention (full map {key})"))
            else:
                s, li = unravel(int(bad.flatten().nonzero()[0]), t.shape)[:2]
                found.append((record.steps[s], 0, li, record.layers[li], f"attention (recorded {key})"))
        events = len(record.nonfinite)
        if not found:
            return CheckResult(
                self.name,
                "pass",
                0.0,
                0.0,
                None,
                "no NaN/Inf in attention or latents",
                NonfiniteDetails(events=events, nonfinite_values=cells),
            )
        step, _, _, layer, where = min(found, key=lambda f: f[:3])
        off = Offender(step=step if step >= 0 else None, layer=layer)
        return CheckResult(
            self.name,
            "fail",
            float(cells + events),
            0.0,
            off,
            f"non-finite values (NaN/Inf) in {where} starting at {off} ({count(events, 'event')} "
            f"logged by the recorder, {count(cells, 'non-finite value')} in the record's tensors)",
            NonfiniteDetails(events=events, nonfinite_values=cells, first=FirstNonfinite(off.step, layer, where)),
        )

    def timeline(self, record, thresholds: Thresholds) -> Timeline | None:
        """NaN/Inf values in the record's tensors (per-map statistics, marginals, full maps) per step
        and layer, against 0 (their sum, with the recorder's events, is the judged count; it is in
        the title, not a line, so the per-step counts keep their scale). None when there are none."""
        import torch

        counts = torch.zeros(record.num_steps, record.num_layers)
        for key, t in record.tensors().items():
            if not key.startswith("full/"):  # (S, L, ...) per-map tensors
                counts += (~torch.isfinite(t.float())).flatten(2).sum(-1)
        for (step, layer), t in record.full_maps.items():
            counts[record.step_index(step), record.layers.index(layer)] += int((~torch.isfinite(t.float())).sum())
        if not bool(counts.any()):
            return None
        return Timeline(
            counts,
            tuple(record.steps),
            tuple(record.layers),
            metric="NaN/Inf values in the record",
            threshold=0.0,
            op=self.op,
            title="nonfinite: NaN/Inf values per step and layer",
            stem=self.name,
        )

    def draw(self, result, details: NonfiniteDetails, record, image, thresholds):
        """``timeline`` (NaN/Inf values per step and layer; none when only the recorder's events saw them)."""
        return timeline_figure(self, result, record, thresholds)


def check_nonfinite(record, thresholds: Thresholds | None = None) -> CheckResult:
    """The non-finite check as a function."""
    return Nonfinite()(record, thresholds)
