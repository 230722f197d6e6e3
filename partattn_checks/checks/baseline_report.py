"""How the ``baseline`` check shows in the gate's reports (its report hooks, :class:`.baseline.Baseline`).

Its table has a row per metric and per layer compared (measured, allowance, baseline and the
distance with ``ok``/``DRIFT``), its failure text says where the attention drifted, its JUnit
properties name the verdict (paired, seed-spread, tolerance) and the summary counts the images each
verdict judged. No torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .baseline import PAIRED, BaselineDetails, MetricDrift
from .core import CheckResult
from .reporting import fmt

#: How the summary counts an image whose baseline item compared nothing (no usable baseline, written, not run).
NOT_COMPARED = "not compared"


def rows(details: BaselineDetails) -> list[list[str]]:
    """(metric, measured, allowance, baseline, verdict): every metric, then every layer compared,
    then the stored metrics not measured."""
    out = []
    paired = details.verdict == PAIRED
    for name, m in (details.per_metric or {}).items():
        ok = m.drift <= m.allowed
        if paired and m.z is not None and m.allowance is not None:  # in seed spreads, against the numeric floor
            ok = abs(m.z) <= m.allowance
            floor = f", floor {m.floor:.2f}σ" if m.floor is not None else ""
            out.append(
                [
                    name,
                    fmt(m.measured),
                    f"±{fmt(m.allowed, 3)} ({m.allowance:.2f}σ{floor})",
                    f"{fmt(m.baseline)} (same seed)",
                    f"{m.z:+.2f}σ {'ok' if ok else 'DRIFT'}",
                ]
            )
        elif m.z is not None and m.allowance is not None:  # judged in units of seed noise (as Deviation.moved)
            ok = abs(m.z) <= m.allowance
            out.append(
                [
                    name,
                    fmt(m.measured),
                    f"±{fmt(m.allowed, 3)} ({m.allowance:.1f} se)",
                    f"{fmt(m.baseline)} {_spread_text(m)} ({m.seeds} seeds)",
                    f"{m.z:+.1f} se {'ok' if ok else 'DRIFT'}",
                ]
            )
        else:
            out.append([name, fmt(m.measured), f"±{fmt(m.allowed, 3)}", fmt(m.baseline), "ok" if ok else "DRIFT"])
    for d in details.deviations or []:
        if d.kind == "layer" and paired:
            out.append(
                [
                    f"attention {d.name}",
                    f"√JS {fmt(d.measured, 3)}",
                    f"{d.allowance:.2f}σ (floor {fmt(d.floor, 2)}σ)",
                    f"same seed; σ {fmt(d.spread, 3)}",
                    f"{d.z:+.2f}σ {'DRIFT' if d.moved else 'ok'}",
                ]
            )
        elif d.kind == "layer":
            moved = d.z > d.allowance
            out.append(
                [
                    f"attention {d.name}",
                    f"√JS {fmt(d.measured, 3)}",
                    f"{d.allowance:.1f} spreads",
                    f"typical {fmt(d.mean, 3)} ({d.seeds} seeds)",
                    f"{d.z:+.1f} {'DRIFT' if moved else 'ok'}",
                ]
            )
    for name in details.missing_in_measured or []:
        out.append([name, "not measured", "", "stored", "MISSING"])
    return out


def _spread_text(m: MetricDrift) -> str:
    """``± 0.005``, or ``×/÷ 1.29`` for a metric judged on the log scale."""
    spread = m.spread if m.spread is not None else math.nan
    return f"×/÷ {math.exp(spread):.3g}" if m.log_scale else f"± {fmt(spread, 2)}"


def drift_lines(details: BaselineDetails) -> list[str]:
    """What the attention drift says: the layer and part that moved most."""
    drift = details.attention
    if drift is None:
        return []
    moved = drift.per_layer[drift.layers.index(drift.layer)]
    return [
        f"attention drift: layer {drift.layer} moved most (JS/log2 {moved:.3f}, mean over parts), "
        f"part {drift.part} most of all ({drift.value:.3f})"
    ]


def properties(details: BaselineDetails) -> list[tuple[str, object]]:
    """The verdict that judged the image (paired | seed-spread | tolerance), when one did."""
    return [("partattn_baseline_verdict", details.verdict)] if details.verdict is not None else []


def count_verdicts(results: Sequence[CheckResult | None]) -> dict[str, int]:
    """How many images each verdict judged, then how many were not compared (last)."""
    out: dict[str, int] = {}
    for result in results:
        details = result.details if result is not None else None
        kind = details.verdict if isinstance(details, BaselineDetails) and details.verdict else NOT_COMPARED
        out[kind] = out.get(kind, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: kv[0] == NOT_COMPARED))
