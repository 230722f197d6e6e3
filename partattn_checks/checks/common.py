"""Pieces the record checks share: wording, indexing, the non-finite guard and figure helpers.

torch, metrics and render are imported inside the functions, when a check runs or draws.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .core import Check, CheckResult, Offender
from .details import Details

if TYPE_CHECKING:
    import torch

    from ..capture.record import AttentionRecord


# ----------------------------------------------------------------------------- wording and indexing
def pct(x: float) -> str:
    """Percent text that never rounds a non-zero share down to "0%"."""
    return f"{100 * x:.0f}%" if x == 0 or x >= 0.01 else f"{100 * x:.2g}%"


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def unravel(flat_index: int, shape) -> tuple[int, ...]:
    out = []
    for size in reversed(tuple(shape)):
        out.append(flat_index % size)
        flat_index //= size
    return tuple(reversed(out))


def step_layer_share(flags) -> torch.Tensor:
    """Share of flagged (part, head) maps per step and layer: (S, L, P, H) bool -> (S, L)."""
    return flags.float().mean(dim=(2, 3))


def layer_share(flags) -> torch.Tensor:
    """Share of flagged (step, part, head) maps per layer: (S, L, P, H) bool -> (L,), the mean over
    steps of :func:`step_layer_share` (what the timelines draw)."""
    return step_layer_share(flags).mean(0)


def worst_cell(score, mask=None) -> tuple[int, int, int]:
    """(step, part, head) position of the highest ``score`` (NaN counts as -1) among ``mask`` cells
    of one layer (S, P, H); all cells when ``mask`` is None or empty."""
    score = score.nan_to_num(-1.0)
    if mask is not None and bool(mask.any()):
        score[~mask] = -float("inf")
    s, p, h = unravel(int(score.flatten().argmax()), score.shape)
    return s, p, h


def map_at(record: AttentionRecord, layer: int, cell: tuple[int, int, int]) -> Offender:
    """The Offender naming one (step, layer, part, head) map, from positions."""
    s, p, h = cell
    return Offender(step=record.steps[s], layer=record.layers[layer], part=int(p), head=int(h))


# ----------------------------------------------------------------------------- non-finite guard
def nonfinite_guard(
    name: str, record: AttentionRecord, tensors: dict, details: Callable[[int, int], Details]
) -> CheckResult | None:
    """When the tensors a check reads hold NaN/Inf, no judgement is possible: a failing result whose
    details are ``details(count of NaN/Inf, position of the first layer holding one)``. Else None."""
    import torch

    first, total = None, 0
    for tname, t in tensors.items():
        bad = ~torch.isfinite(t.float())
        n = int(bad.sum())
        if n:
            total += n
            s, li = unravel(int(bad.flatten().nonzero()[0]), t.shape)[:2]
            if first is None or (s, li) < first[:2]:
                first = (s, li, tname)
    if first is None:
        return None
    s, li, tname = first
    off = Offender(step=record.steps[s], layer=record.layers[li])
    return CheckResult(
        name,
        "fail",
        float(total),
        0.0,
        off,
        f"cannot judge {name.replace('_', ' ')}: {count(total, 'non-finite value')} in the recorded "
        f"{', '.join(tensors)} (first in {tname} at {off}); see the nonfinite check",
        details(total, li),
    )


# ----------------------------------------------------------------------------- figures
def verdict_title(result: CheckResult, label: str, op: str) -> str:
    """``label value (pass: op threshold) — verdict``: a figure title in the check's own words (a
    record the check could not judge for NaN/Inf says so)."""
    if result.reason.startswith("cannot judge"):  # nonfinite_guard: value is the NaN/Inf count
        return f"{result.name}: cannot judge, {count(int(result.value or 0), 'non-finite value')} — {result.verdict}"
    if result.value is None or result.threshold is None:
        return f"{result.name}: {result.verdict}"
    return f"{label} {result.value:.3g} (pass: {op} {result.threshold:g}) — {result.verdict}"


def timeline_figure(check: Check, result: CheckResult, record: AttentionRecord, thresholds) -> list[tuple[str, bytes]]:
    """The check's own timeline as its ``timeline`` failure figure, titled with the verdict; [] when
    the check draws none for this record."""
    timeline = check.timeline(record, thresholds)
    if timeline is None:
        return []
    return [("timeline", timeline.draw(title=verdict_title(result, check.label, check.op)))]


def heads_and_overlay(record: AttentionRecord, shown: Offender | None, image, what: str) -> list[tuple[str, bytes]]:
    """The ``heads`` grid of the map ``shown`` names (each head's key-marginal on the patch grid, on
    the image when given; without a grid its full maps when recorded, else strips) and the
    ``overlay`` of its head's key-marginal on the image; none when ``shown`` names no single map."""
    from .. import render

    if shown is None or shown.step is None or shown.layer is None or shown.part is None or shown.head is None:
        return []

    s, li, p, h = record.step_index(shown.step), record.layers.index(shown.layer), shown.part, shown.head
    step, layer = shown.step, shown.layer
    full = record.full_maps.get((step, layer))
    grid = record.patch_grid
    if grid is not None:
        maps, ylabel = record.marginals[s, li, p].float().nan_to_num(0.0), None  # (H, Nk) on the grid
        note = "per-head key-marginals" + (" on the image" if image is not None else " on the patch grid")
    elif full is not None:
        maps, ylabel = full[p].float(), "queries"
        note = "full maps (key 0 = CLS)"
    else:
        maps, ylabel = record.marginals[s, li, p].float()[:, None, :], None  # (H, 1, Nk) strips
        note = "per-head key-marginals (mean over queries)"
    drawn = render.multi_head_grid(
        maps,
        title=f"{what}: {note}",
        layer=layer,
        step=step,
        part=p,
        ylabel=ylabel,
        grid=grid,
        image=image if grid is not None else None,
    )
    out = [("heads", drawn)]
    if record.patch_grid is not None and image is not None:
        marg = record.marginals[s, li, p, h].float().nan_to_num(0.0)
        marg = marg / marg.sum().clamp_min(1e-12)
        out.append(
            (
                "overlay",
                render.overlay(
                    marg, record.patch_grid, image, title=f"{what}: worst head", layer=layer, step=step, part=p, head=h
                ),
            )
        )
    return out
