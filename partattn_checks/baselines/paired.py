"""The paired verdict: the same noise seeds as the baseline, judged against the numeric floor.

A run is reproducible: rerunning a baseline's seed gives its stored run again, so the difference of
a gate run from the stored run of the *same* seed is the change under test, standing on the numeric
floor (``floor``: what the same seeds gave under perturbations that must not count, measured when
the baseline was written), not on the seed-to-seed spread. Per image:

* **metric** ``n`` (log scale for ``noise.LOG_SCALE``): ``Δ = mean_r(now_r − stored_r)`` over the R
  paired seeds, in units of the metric's seed spread ``σ`` (the same shrunk spread the seed-spread
  verdict uses); the floor ``F`` is the largest ``|mean_r(floor_r − stored_r)|`` over the conditions
  that apply to the run; it moved when ``|Δ/σ| > max(FLOOR_FACTOR · F/σ, MIN_SHIFT)``.
* **layer** ``l``: ``D = mean over seeds, kept steps and parts of √(JS/log 2)`` between the run's and
  the stored run's head-averaged key-marginals (both at the stored fp16 precision), in units of the
  layer's seed drift ``σ_l`` (the same distance between two seeds of the baseline, over √2); the
  floor is the same distance for the floor's runs; one-sided: moved when
  ``D/σ_l > max(FLOOR_FACTOR · F/σ_l, MIN_SHIFT)``.
* **onset**: the first (step, layer), in (step, depth) order, where the largest part's distance
  exceeds ``FLOOR_FACTOR`` × its floor + ``ONSET_RESOLUTION``. At step 0 every layer before a change
  records bit-identical attention, so that layer is where the change begins.
* **fixture set**: per metric and layer, each image's shift beyond ``FLOOR_FACTOR`` × its floor (in
  seed spreads); the set moved when the **median** over images exceeds ``SET_MIN_SHIFT``: a change
  every image shares, which one chaotic pair cannot fake.

The attention part (``paired.safetensors``, the layers' distances and the onset) is
:mod:`.paired_attention` (numpy); this module is the standard library only, so that the fixture set
is judged without numpy.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..checks.baseline import PAIRED, Deviation, Onset, SetDeviation
from ..errors import PartattnError
from .floor import Condition
from .noise import LOG_SCALE, RESOLUTION

if TYPE_CHECKING:
    from .paired_attention import PairedAttention
    from .sample import SeedSample

#: The floor is one measurement of a perturbation's effect: a run may show up to this many times it.
FLOOR_FACTOR = 3.0
#: The smallest shift an item calls a change, in seed spreads (whatever the floor): a reordered sum
#: never fails a gate. docs/diagnostic-power.md measures the choice.
MIN_SHIFT = 0.25
#: The smallest median shift over the fixture set's images that fails the set, in seed spreads.
SET_MIN_SHIFT = 0.1
#: √(JS/log 2) below which two fp16-stored marginals count as the same (one fp16 step of a key's share
#: moves √JS by about 3e-4 at 64 keys).
ONSET_RESOLUTION = 1e-3
#: Bytes of fp16 marginals kept per paired seed: every step when they fit, else step 0 and evenly
#: spaced steps (release shape, 21 layers × 4 parts × 256 keys: 12 of 50 steps).
PAIRED_BUDGET = 512 * 1024


class PairedError(PartattnError, ValueError):
    """A ``paired.safetensors`` that cannot be used; the message names the file."""


@dataclass(frozen=True, eq=False)
class PairedBaseline:
    """A baseline's paired part: its paired seeds (the first of its seeds), the floor's conditions and
    their runs' metrics (``metrics.json``'s ``paired`` table) and the attention (``paired.safetensors``)."""

    seeds: tuple[int, ...]
    conditions: tuple[Condition, ...]
    floor_metrics: dict[str, dict[str, list[float]]]  # condition -> metric -> its shift, one per paired seed
    attention: PairedAttention | None = None
    attention_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "seeds": list(self.seeds),
            "conditions": [{**c.to_dict(), "shifts": self.floor_metrics.get(c.name, {})} for c in self.conditions],
        }


@dataclass(frozen=True)
class PairedJudgement:
    deviations: list[Deviation]
    onset: Onset | None
    note: str | None = None  # e.g. why the layers were not compared


def judge_paired(
    stored_seeds: Sequence[int],
    stored_samples: Mapping[str, Sequence[float]],
    paired: PairedBaseline,
    measured: SeedSample,
    spreads: Mapping[str, float],
    run_dtype: str,
    metrics: Sequence[str],
) -> PairedJudgement:
    """The paired deviations of ``measured`` (runs of some of ``paired.seeds``) from the stored runs of
    the same seeds. ``spreads``: each metric's seed spread in judged units; ``metrics``: those judged."""
    conditions = [c for c in paired.conditions if c.applies(run_dtype)]
    slots = [paired.seeds.index(s) for s in measured.seeds]
    repeats, k = len(slots), len(stored_seeds)
    now = measured.samples
    deviations = []
    for name in metrics:
        if name not in now or name not in stored_samples or name not in spreads:
            continue
        scale = _log if name in LOG_SCALE else _identity
        ref = [stored_samples[name][stored_seeds.index(s)] for s in measured.seeds]
        delta = _mean([scale(a) - scale(b) for a, b in zip(now[name], ref, strict=True)])
        floors = [
            abs(
                _mean(
                    [
                        scale(r + paired.floor_metrics[c.name][name][i]) - scale(r)
                        for i, r in zip(slots, ref, strict=True)
                    ]
                )
            )
            for c in conditions
            if name in paired.floor_metrics.get(c.name, {})
        ]
        sigma = spreads[name]
        floor_z = max(floors, default=0.0) / sigma
        shown = math.exp(_mean([_log(r) for r in ref])) if name in LOG_SCALE else _mean(ref)
        z = delta / sigma if math.isfinite(delta) else math.inf
        deviations.append(
            Deviation(
                name,
                "metric",
                _mean(now[name]),
                shown,
                sigma,
                k,
                repeats,
                z,
                max(FLOOR_FACTOR * floor_z, MIN_SHIFT),
                log_scale=name in LOG_SCALE,
                verdict=PAIRED,
                floor=floor_z,
            )
        )
    from .paired_attention import judge_layers

    layers, onset, note = judge_layers(paired, measured, slots, conditions, k)
    return PairedJudgement(deviations + layers, onset, note)


def excess(d: Deviation) -> float:
    """A paired deviation's shift beyond ``FLOOR_FACTOR`` × its floor, in seed spreads (signed for a metric)."""
    beyond = max(0.0, abs(d.z) - FLOOR_FACTOR * (d.floor or 0.0))
    return math.copysign(beyond, d.z) if d.two_sided else beyond


def combine_paired(per_image: Mapping[str, Sequence[Deviation]]) -> list[SetDeviation]:
    """Per metric and layer, the median over images of each image's shift beyond its floor."""
    by_name: dict[str, list[tuple[str, Deviation]]] = {}
    for image, deviations in per_image.items():
        for d in deviations:
            if math.isfinite(d.z):
                by_name.setdefault(d.name, []).append((image, d))
    out = []
    for name, entries in by_name.items():
        values = {image: excess(d) for image, d in entries}
        out.append(
            SetDeviation(
                name,
                entries[0][1].kind,
                len(entries),
                _mean(list(values.values())),
                0.0,
                statistics.median(values.values()),
                SET_MIN_SHIFT,
                values,
                PAIRED,
            )
        )
    return out


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _log(x: float) -> float:
    return math.log(max(x, RESOLUTION))


def _identity(x: float) -> float:
    return x
