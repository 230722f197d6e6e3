"""The paired verdict's attention: per-step marginals of the paired seeds, their numeric floor and
the layers' paired distances (numpy and safetensors; :mod:`.paired` has the statistics and the text).

``paired.safetensors`` (:class:`PairedAttention`) holds, for the paired seeds, each seed's
head-averaged key-marginals per (kept step, layer, part) at fp16 (the precision a run's are compared
at: identical attention gives identical values, distance exactly 0), each floor condition's
√(JS/log 2) from them, and σ_l, one seed's typical distance from another over √2.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..base.atomic import atomic_write_bytes
from ..checks.baseline import PAIRED, Deviation, Onset
from .floor import Condition
from .paired import FLOOR_FACTOR, MIN_SHIFT, ONSET_RESOLUTION, PAIRED_BUDGET, PairedBaseline, PairedError
from .summary import js_normalized

if TYPE_CHECKING:
    from .sample import SeedSample

PAIRED_VERSION = 1
_META_KEY = "partattn"


@dataclass(frozen=True, eq=False)
class StepMarginals:
    """One run's head-averaged key-marginals per (kept step, layer, part), at the stored fp16 precision."""

    layers: tuple[str, ...]
    steps: tuple[int, ...]  # recorded step values kept
    values: np.ndarray  # (S, L, P, K) float16

    @classmethod
    def from_record(cls, record: Any, budget: int = PAIRED_BUDGET) -> StepMarginals:
        m = record.marginals_by_part().numpy()  # (S, L, P, K) float32
        keep = kept_steps(m.shape[0], m[0].size * 2, budget)
        return cls(
            tuple(record.layers), tuple(record.steps[i] for i in keep), np.ascontiguousarray(m[keep], np.float16)
        )


def kept_steps(total: int, step_bytes: int, budget: int) -> list[int]:
    """Step positions kept: all when they fit in ``budget``, else the first, the last and evenly spaced."""
    count = max(1, min(total, budget // max(1, step_bytes)))
    return sorted({round(x) for x in np.linspace(0, total - 1, count)})


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """√(JS/log 2) along the last axis (exactly 0 for identical rows)."""
    return np.sqrt(js_normalized(a.astype(np.float64), b.astype(np.float64)))


@dataclass(frozen=True, eq=False)
class PairedAttention:
    """``paired.safetensors``: the paired seeds' marginals and the floor's distances from them."""

    seeds: tuple[int, ...]
    layers: tuple[str, ...]
    steps: tuple[int, ...]
    conditions: tuple[Condition, ...]
    marginals: np.ndarray  # (P, S, L, parts, K) float16
    floor: np.ndarray  # (C, P, S, L, parts) float32: √(JS/log 2) of each condition's run from the stored run
    scale: np.ndarray  # (L,) float32: σ_l, one seed's typical distance from another, over √2

    def __post_init__(self) -> None:
        P, S, L, parts, _ = self.marginals.shape
        expected = {
            "marginals": ((len(self.seeds), len(self.steps), len(self.layers)), self.marginals.shape[:3]),
            "floor": ((len(self.conditions), P, S, L, parts), self.floor.shape),
            "scale": ((L,), self.scale.shape),
        }
        for name, (want, got) in expected.items():
            if tuple(want) != tuple(got):
                raise PairedError(f"paired {name} has shape {tuple(got)}, expected {tuple(want)}")

    def metadata(self) -> dict[str, Any]:
        return {
            "schema_version": PAIRED_VERSION,
            "seeds": list(self.seeds),
            "layers": list(self.layers),
            "steps": list(self.steps),
            "conditions": [c.to_dict() for c in self.conditions],
            "tensors": {
                "marginals": "(seeds, steps, layers, parts, keys) head-averaged key-marginals of the paired seeds",
                "floor": "(conditions, seeds, steps, layers, parts) sqrt(JS/log 2) of each floor run from the stored",
                "scale": "(layers,) one seed's typical sqrt(JS/log 2) from another seed, over sqrt(2)",
            },
        }

    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        tensors: dict[str, np.ndarray] = {
            "marginals": np.ascontiguousarray(self.marginals, np.float16),
            "floor": np.ascontiguousarray(self.floor, np.float32),
            "scale": np.ascontiguousarray(self.scale, np.float32),
        }
        meta = json.dumps(self.metadata(), sort_keys=True, separators=(",", ":"))
        return save(tensors, metadata={_META_KEY: meta})

    @classmethod
    def read(cls, path: Path) -> PairedAttention:
        from safetensors.numpy import load

        try:
            data = Path(path).read_bytes()
            tensors = load(data)
            header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
            meta = json.loads(header["__metadata__"][_META_KEY])
        except Exception as exc:  # noqa: BLE001 - any damage reads the same to the user
            raise PairedError(f"{path}: not a readable paired summary ({type(exc).__name__}: {exc})") from None
        if meta.get("schema_version") != PAIRED_VERSION:
            raise PairedError(
                f"{path}: paired summary version {meta.get('schema_version')!r}, expected {PAIRED_VERSION}"
            )
        if not all(np.isfinite(tensors[n]).all() for n in ("marginals", "floor", "scale") if n in tensors):
            raise PairedError(f"{path}: the paired summary holds non-finite values")
        try:
            return cls(
                seeds=tuple(int(s) for s in meta["seeds"]),
                layers=tuple(meta["layers"]),
                steps=tuple(int(s) for s in meta["steps"]),
                conditions=tuple(Condition.from_dict(c) for c in meta["conditions"]),
                marginals=tensors["marginals"],
                floor=tensors["floor"],
                scale=tensors["scale"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PairedError(f"{path}: the paired summary's metadata does not fit its tensors ({exc})") from None

    def write(self, path: Path) -> bool:
        """Write atomically unless the file already holds these bytes; returns whether it wrote."""
        data = self.to_bytes()
        if Path(path).is_file() and Path(path).read_bytes() == data:
            return False
        atomic_write_bytes(Path(path), data)
        return True


def paired_baseline(
    sample: SeedSample, floor_runs: Mapping[Condition, SeedSample], paired: int, decimals: int
) -> PairedBaseline:
    """What a baseline written from ``sample`` (its K seeds) stores for pairing its first ``paired``
    seeds, with the floor's runs of those seeds under each condition: each metric's shift from the stored
    run of the same seed (rounded to ``decimals``) and the attention's distances."""
    refs = sample.runs[:paired]
    seeds = tuple(r.seed for r in refs)
    conditions = tuple(floor_runs)
    floor_metrics = {
        c.name: {
            n: [round(float(v) - refs[i].metrics[n], decimals) for i, v in enumerate(values)]
            for n, values in runs.samples.items()
            if all(n in r.metrics for r in refs)
        }
        for c, runs in floor_runs.items()
    }
    attention = None
    if all(r.steps is not None for r in sample.runs) and all(
        r.steps is not None for runs in floor_runs.values() for r in runs.runs
    ):
        ref = np.stack([r.steps.values for r in refs if r.steps is not None])  # (P, S, L, parts, K)
        floor = np.zeros((len(conditions), *ref.shape[:-1]), np.float32)
        for ci, c in enumerate(conditions):
            for pi, run in enumerate(floor_runs[c].runs):
                assert run.steps is not None
                floor[ci, pi] = distances(run.steps.values, ref[pi])
        first = refs[0].steps
        assert first is not None
        attention = PairedAttention(
            seeds, first.layers, first.steps, conditions, ref, floor, _seed_scale(sample, paired)
        )
    return PairedBaseline(seeds, conditions, floor_metrics, attention)


def _seed_scale(sample: SeedSample, paired: int) -> np.ndarray:
    """σ_l: per layer, the median over (paired seed, other seed) of their mean distance, over √2."""
    per_layer = []
    for p in sample.runs[:paired]:
        for other in sample.runs:
            if other is p or other.steps is None or p.steps is None:
                continue
            per_layer.append(distances(other.steps.values, p.steps.values).mean(axis=(0, 2)))  # (L,)
    if not per_layer:
        raise PairedError("a paired baseline needs at least two seeds with attention")
    return np.maximum(np.median(np.stack(per_layer), axis=0) / math.sqrt(2.0), 1e-6).astype(np.float32)


def judge_layers(
    paired: PairedBaseline, measured: SeedSample, slots: list[int], conditions: list[Condition], k: int
) -> tuple[list[Deviation], Onset | None, str | None]:
    stored = paired.attention
    if stored is None:
        why = paired.attention_error or "the baseline holds no paired attention"
        return [], None, f"layers not compared: {why}"
    runs = [r.steps for r in measured.runs]
    if any(s is None for s in runs):
        return [], None, "layers not compared: this run recorded no per-step marginals"
    first = runs[0]
    assert first is not None
    if first.steps != stored.steps or not set(stored.layers) <= set(first.layers):
        return [], None, "layers not compared: this run recorded other steps or layers than the baseline"
    order = [first.layers.index(name) for name in stored.layers]
    now = np.stack([r.values[:, order] for r in runs if r is not None])  # (R, S, L, parts, K)
    if now.shape[1:] != stored.marginals.shape[1:]:
        return [], None, f"layers not compared: {now.shape[1:]} marginals now, {stored.marginals.shape[1:]} stored"
    d = distances(now, stored.marginals[slots])  # (R, S, L, parts)
    ci = [stored.conditions.index(c) for c in conditions if c in stored.conditions]
    floor = stored.floor[ci][:, slots] if ci else np.zeros((1, *d.shape), np.float32)  # (C, R, S, L, parts)
    deviations = []
    for li, name in enumerate(stored.layers):
        sigma = float(stored.scale[li])
        value = float(d[:, :, li].mean())
        floor_d = float(floor[:, :, :, li].mean(axis=(1, 2, 3)).max())
        deviations.append(
            Deviation(
                name,
                "layer",
                value,
                floor_d,
                sigma,
                k,
                len(slots),
                value / sigma,
                max(FLOOR_FACTOR * floor_d / sigma, MIN_SHIFT),
                part=int(np.argmax(d[:, :, li].mean(axis=(0, 1)))),
                verdict=PAIRED,
                floor=floor_d / sigma,
            )
        )
    return deviations, _onset(d, floor, stored), None


def _onset(d: np.ndarray, floor: np.ndarray, stored: PairedAttention) -> Onset | None:
    """The first (step, layer) in (step, depth) order whose largest part's distance exceeds its floor."""
    worst = d.max(axis=3).mean(axis=0)  # (S, L)
    limit = FLOOR_FACTOR * floor.max(axis=4).mean(axis=1).max(axis=0) + ONSET_RESOLUTION  # (S, L)
    for si in range(worst.shape[0]):
        for li in range(worst.shape[1]):
            if worst[si, li] > limit[si, li]:
                return Onset(
                    step=int(stored.steps[si]),
                    layer=stored.layers[li],
                    previous=stored.layers[li - 1] if li > 0 else None,
                    identical=bool(np.all(worst[si, :li] == 0.0)),
                    distance=float(worst[si, li]),
                    floor=float(limit[si, li] - ONSET_RESOLUTION) / FLOOR_FACTOR,
                )
    return None
