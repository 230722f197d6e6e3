"""The attention summary a baseline keeps next to its metrics, and the drift between two of them.

``<baselines>/<key>/attention.safetensors`` (fp16, written atomically) holds, for the patch keys
of the image encoder (the CLS key is left out of the marginals, its mass is kept apart):

``mean``      ``(layers, parts, keys)``: per layer and part, the head-averaged key-marginal
              averaged over all recorded steps (renormalised to sum to 1)
``per_step``  ``(steps', layers, parts, keys)``: the same for at most ``MAX_STEPS`` evenly spaced
              recorded steps (first and last included; fewer when they would take more than
              ``PER_STEP_BUDGET`` bytes), listed in the metadata
``cls_mass``  ``(layers, parts)``: head- and step-averaged attention mass on the CLS key
``seed_drift`` ``(seeds, layers, parts)`` (version 2, a baseline written from several noise seeds):
              √(JS/log 2) of each seed's ``mean`` marginal from the mean of the other seeds'
              (leave-one-out): how far one run's attention lies from the baseline by chance

With several seeds, ``mean``, ``per_step`` and ``cls_mass`` are means over the seeds.

The metadata (one ``partattn`` entry, sorted JSON) names the layers, the key grid, the CLS
handling, the recorded steps, the steps kept per step and the image size. With one metadata entry
and fixed tensor names the file is byte-identical for identical values; a summary whose values
all lie within ``KEEP_ATOL`` of the stored one is not rewritten (no churn).

:func:`attention_drift` compares two summaries layer by layer: JS(baseline, now)/log 2 of each
part's step-averaged marginal, in [0, 1]; a layer's drift is the mean over its parts.

numpy and safetensors only; ``from_record`` reads a torch record.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..base.atomic import atomic_write_bytes
from ..checks.baseline import AttentionDrift
from ..checks.details import Matrix
from ..errors import PartattnError

SUMMARY_VERSION = 2
#: Versions this version reads (1: one run, no ``seed_drift``).
READABLE_VERSIONS = (1, 2)
#: At most this many evenly spaced steps are kept per step, and no more than fit in the budget:
#: at release shape (21 layers, 4 parts, 256 keys; 43 KB a step) that is 6 steps, 302 KB in all.
MAX_STEPS = 8
PER_STEP_BUDGET = 256 * 1024
#: A new summary whose values all lie within this of the stored one keeps the stored file.
KEEP_ATOL = 1e-4
_TENSORS = ("mean", "per_step", "cls_mass")
_OPTIONAL_TENSORS = ("seed_drift",)
_META_KEY = "partattn"


class SummaryError(PartattnError, ValueError):
    """An ``attention.safetensors`` that cannot be used; the message names the file."""


@dataclass(frozen=True, eq=False)
class AttentionSummary:
    layers: tuple[str, ...]
    grid: tuple[int, int] | None  # patch rows, columns (None: keys are not a grid)
    steps: tuple[int, ...]  # every recorded step (``mean`` averages them)
    step_subset: tuple[int, ...]  # the steps of ``per_step``
    image_size: tuple[int, int] | None  # (width, height) of the encoder's view, when known
    mean: np.ndarray  # float16 (L, P, K)
    per_step: np.ndarray  # float16 (S', L, P, K)
    cls_mass: np.ndarray  # float16 (L, P)
    seeds: tuple[int, ...] = ()  # the noise seeds averaged (empty: one run, seed unknown)
    seed_drift: np.ndarray | None = None  # (seeds, L, P) leave-one-out √(JS/log 2), with 2+ seeds

    def __post_init__(self) -> None:
        L, P, K = self.mean.shape
        if len(self.layers) != L or self.per_step.shape != (len(self.step_subset), L, P, K):
            raise SummaryError(
                f"summary shapes disagree: mean {self.mean.shape}, per_step {self.per_step.shape}, "
                f"{len(self.layers)} layers, {len(self.step_subset)} steps"
            )
        if self.cls_mass.shape != (L, P):
            raise SummaryError(f"cls_mass has shape {self.cls_mass.shape}, expected {(L, P)}")
        if self.grid is not None and self.grid[0] * self.grid[1] != K:
            raise SummaryError(f"grid {self.grid} does not have {K} cells")
        if self.seed_drift is not None and self.seed_drift.shape != (len(self.seeds), L, P):
            raise SummaryError(f"seed_drift has shape {self.seed_drift.shape}, expected {(len(self.seeds), L, P)}")

    @property
    def num_parts(self) -> int:
        return self.mean.shape[1]

    @property
    def num_keys(self) -> int:
        return self.mean.shape[2]

    # ------------------------------------------------------------------ from a record
    @property
    def has_spread(self) -> bool:
        return self.seed_drift is not None and len(self.seeds) >= 2

    @classmethod
    def from_record(
        cls,
        record,
        image_size: tuple[int, int] | None = None,
        max_steps: int = MAX_STEPS,
        *,
        exact: bool = False,
    ):
        """The summary of an ``AttentionRecord`` (its key-marginals, head-averaged); ``exact`` keeps
        float64 (to be combined over seeds by :meth:`combine`) instead of the stored float16."""
        store = (lambda x: np.ascontiguousarray(x, dtype=np.float64)) if exact else _f16
        by_part = record.marginals_by_part().double().numpy()  # (S, L, P, K), each row sums to 1
        S = by_part.shape[0]
        fit = PER_STEP_BUDGET // max(1, by_part[0].size * 2)  # fp16 bytes of one step
        keep = sorted({round(i) for i in np.linspace(0, S - 1, max(1, min(S, max_steps, fit)))})
        cls_mass = record.cls_mass.double().numpy().mean(axis=(0, 3))  # (L, P)
        return cls(
            layers=tuple(record.layers),
            grid=tuple(record.patch_grid) if record.patch_grid is not None else None,
            steps=tuple(record.steps),
            step_subset=tuple(record.steps[i] for i in keep),
            image_size=(int(image_size[0]), int(image_size[1])) if image_size is not None else None,
            mean=store(_renormalized(by_part.mean(axis=0))),
            per_step=store(by_part[keep]),
            cls_mass=store(cls_mass),
        )

    @classmethod
    def combine(cls, parts: list[AttentionSummary], seeds: tuple[int, ...] | list[int] = ()) -> AttentionSummary:
        """The mean of the summaries of one image's runs (same layers and steps); with ``seeds`` (one
        per part, two or more) also each seed's leave-one-out drift (``seed_drift``)."""
        first = parts[0]
        for other in parts[1:]:
            if (
                other.layers != first.layers
                or other.step_subset != first.step_subset
                or other.mean.shape != first.mean.shape
            ):
                raise SummaryError("summaries of different run shapes cannot be combined")
        means = np.stack([p.mean.astype(np.float64) for p in parts])  # (S, L, P, K)
        seed_drift = None
        if len(seeds) >= 2:
            if len(seeds) != len(parts):
                raise SummaryError(f"{len(seeds)} seeds for {len(parts)} summaries")
            total = means.sum(axis=0)
            others = (total[None] - means) / (len(parts) - 1)  # the mean of the other seeds, per seed
            seed_drift = np.sqrt(js_normalized(means, others))
        return cls(
            layers=first.layers,
            grid=first.grid,
            steps=first.steps,
            step_subset=first.step_subset,
            image_size=first.image_size,
            mean=_f16(_renormalized(means.mean(axis=0))),
            per_step=_f16(np.mean([p.per_step.astype(np.float64) for p in parts], axis=0)),
            cls_mass=_f16(np.mean([p.cls_mass.astype(np.float64) for p in parts], axis=0)),
            seeds=tuple(int(s) for s in seeds) if len(seeds) >= 2 else (),
            seed_drift=_f16(seed_drift) if seed_drift is not None else None,
        )

    # ------------------------------------------------------------------ file
    def metadata(self) -> dict:
        return {
            "schema_version": SUMMARY_VERSION,
            "layers": list(self.layers),
            "key_grid": list(self.grid) if self.grid is not None else None,
            "keys": "image patch keys only; the CLS key's mass is in cls_mass",
            "steps": list(self.steps),
            "per_step_steps": list(self.step_subset),
            "image_size": list(self.image_size) if self.image_size is not None else None,
            "seeds": list(self.seeds),
            "tensors": {
                "mean": "(layers, parts, keys) head-averaged key-marginal, mean over steps",
                "per_step": "(per_step_steps, layers, parts, keys) head-averaged key-marginal",
                "cls_mass": "(layers, parts) head- and step-averaged CLS mass",
                **(
                    {"seed_drift": "(seeds, layers, parts) sqrt(JS/log 2) of each seed's mean from the other seeds'"}
                    if self.seed_drift is not None
                    else {}
                ),
            },
        }

    def _tensors(self) -> dict[str, np.ndarray]:
        names = _TENSORS + tuple(n for n in _OPTIONAL_TENSORS if getattr(self, n) is not None)
        return {name: np.ascontiguousarray(getattr(self, name), dtype=np.float16) for name in names}

    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        meta = json.dumps(self.metadata(), sort_keys=True, separators=(",", ":"))
        return save(self._tensors(), metadata={_META_KEY: meta})

    @classmethod
    def from_bytes(cls, data: bytes, where: Path | str) -> AttentionSummary:
        from safetensors.numpy import load

        try:
            tensors = load(data)
            header_len = int.from_bytes(data[:8], "little")
            meta = json.loads(json.loads(data[8 : 8 + header_len])["__metadata__"][_META_KEY])
        except Exception as exc:  # noqa: BLE001 - any damage reads the same to the user
            raise SummaryError(f"{where}: not a readable attention summary ({type(exc).__name__}: {exc})") from None
        if meta.get("schema_version") not in READABLE_VERSIONS:
            raise SummaryError(
                f"{where}: attention summary version {meta.get('schema_version')!r}, this partattn-checks "
                f"reads versions {', '.join(map(str, READABLE_VERSIONS))}; regenerate it with --partattn-update=all"
            )
        missing = [n for n in _TENSORS if n not in tensors]
        if missing:
            raise SummaryError(f"{where}: attention summary lacks the tensor {missing[0]!r}")
        bad = [n for n in (*_TENSORS, *_OPTIONAL_TENSORS) if n in tensors and not np.isfinite(tensors[n]).all()]
        if bad:  # a NaN marginal would read as the largest drift in every layer
            raise SummaryError(
                f"{where}: attention summary holds non-finite values (NaN or inf) in {bad[0]!r}; "
                f"regenerate it with --partattn-update=all"
            )
        try:
            grid, size = meta.get("key_grid"), meta.get("image_size")
            return cls(
                layers=tuple(meta["layers"]),
                grid=tuple(grid) if grid is not None else None,
                steps=tuple(meta["steps"]),
                step_subset=tuple(meta["per_step_steps"]),
                image_size=tuple(size) if size is not None else None,
                mean=tensors["mean"],
                per_step=tensors["per_step"],
                cls_mass=tensors["cls_mass"],
                seeds=tuple(meta.get("seeds") or ()),
                seed_drift=tensors.get("seed_drift"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SummaryError(f"{where}: attention summary metadata does not fit its tensors ({exc})") from None

    @classmethod
    def read(cls, path: Path) -> AttentionSummary:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise SummaryError(f"{path}: cannot be read ({exc})") from None
        return cls.from_bytes(data, path)

    def write(self, path: Path) -> bool:
        """Write atomically unless the stored file holds the same summary (within ``KEEP_ATOL``);
        returns whether it wrote."""
        path = Path(path)
        data = self.to_bytes()
        if path.is_file():
            old = path.read_bytes()
            if old == data:
                return False
            try:
                if self.close_to(AttentionSummary.from_bytes(old, path)):
                    return False
            except SummaryError:
                pass
        atomic_write_bytes(path, data)
        return True

    def close_to(self, other: AttentionSummary) -> bool:
        """Same metadata, and every value within ``KEEP_ATOL`` (or one fp16 step, where that is larger:
        a value that merely rounds the other way is not a change)."""
        if self.metadata() != other.metadata():
            return False
        mine, theirs = self._tensors(), other._tensors()

        def near(a: np.ndarray, b: np.ndarray) -> bool:
            step = np.spacing(np.abs(b)).astype(np.float64)  # fp16 spacing at the stored value
            return bool(np.all(np.abs(a.astype(np.float64) - b) <= np.maximum(KEEP_ATOL, step)))

        return mine.keys() == theirs.keys() and all(
            mine[n].shape == theirs[n].shape and near(mine[n], theirs[n]) for n in mine
        )


# ----------------------------------------------------------------------------- drift
def js_normalized(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """JS(p, q)/log 2 along the last axis, in [0, 1]; inputs are renormalised first."""
    p, q = _renormalized(np.asarray(p, np.float64)), _renormalized(np.asarray(q, np.float64))
    m = 0.5 * (p + q)

    def kl(a):
        # m > 0 wherever a > 0, except where a is the smallest subnormal and halving it underflows to 0:
        # that term, a·log 2, is below 1e-323 and counts as 0 (not as a·log(a/0) = inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where((a > 0) & (m > 0), a * (np.log(a) - np.log(m)), 0.0)
        return terms.sum(axis=-1)

    return np.clip(0.5 * (kl(p) + kl(q)) / math.log(2.0), 0.0, 1.0)


def attention_drift(stored: AttentionSummary, now: AttentionSummary) -> AttentionDrift | str:
    """The drift of ``now`` from ``stored`` over their common layers, or why it cannot be measured
    (the seed band, ``judged``/``typical``/``band``/``onset``, is the baseline engine's to add)."""
    if stored.num_parts != now.num_parts:
        return f"the baseline's attention summary has {stored.num_parts} parts, this run {now.num_parts}"
    if stored.num_keys != now.num_keys:
        return f"the baseline's attention summary has {stored.num_keys} keys per part, this run {now.num_keys}"
    common = [name for name in stored.layers if name in now.layers]
    if not common:
        return "the baseline's attention summary has no layer in common with this run"
    a = stored.mean[[stored.layers.index(n) for n in common]].astype(np.float64)
    b = now.mean[[now.layers.index(n) for n in common]].astype(np.float64)
    per_part = js_normalized(a, b)  # (L, P)
    worst = int(np.argmax(per_part.mean(axis=1)))
    return AttentionDrift(
        layers=tuple(common),
        per_part=Matrix.of(per_part),
        layer=common[worst],
        part=int(np.argmax(per_part[worst])),
        baseline=Matrix.of(_renormalized(a[worst])),
        now=Matrix.of(_renormalized(b[worst])),
        grid=now.grid if now.grid is not None else stored.grid,
    )


@dataclass(frozen=True)
class LayerDrift:
    """One layer's attention drift from a baseline written from several seeds, and that baseline's own."""

    layer: str
    drift: float  # mean over parts of √(JS/log 2) of now from the baseline mean
    part: int  # the part that moved most
    seed_drifts: tuple[float, ...]  # per stored seed, the same quantity (leave-one-out)


def layer_drifts(stored: AttentionSummary, now: AttentionSummary) -> list[LayerDrift] | str:
    """Per common layer (in the stored depth order), the drift of ``now`` from ``stored`` and the
    stored seeds' own drifts; or why they cannot be compared."""
    if stored.seed_drift is None or not stored.has_spread:
        return "the baseline's attention summary was written from one run (no seed spread)"
    if stored.num_parts != now.num_parts or stored.num_keys != now.num_keys:
        return "the baseline's attention summary has another number of parts or keys"
    out = []
    for i, name in enumerate(stored.layers):
        if name not in now.layers:
            continue
        a = stored.mean[i].astype(np.float64)
        b = now.mean[now.layers.index(name)].astype(np.float64)
        per_part = np.sqrt(js_normalized(a, b))  # (P,)
        seed = stored.seed_drift[:, i, :].astype(np.float64).mean(axis=1)  # (K,)
        out.append(LayerDrift(name, float(per_part.mean()), int(np.argmax(per_part)), tuple(float(x) for x in seed)))
    return out or "the baseline's attention summary has no layer in common with this run"


def _renormalized(x: np.ndarray) -> np.ndarray:
    total = x.sum(axis=-1, keepdims=True)
    return np.divide(x, total, out=np.zeros_like(x), where=total > 0)


def _f16(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float16)
