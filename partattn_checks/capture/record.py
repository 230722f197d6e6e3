"""``AttentionRecord``: what a capture run recorded, indexed by (step, layer, part, head).

The record only holds data; the math lives in ``metrics`` and the judgement in ``checks``.

On disk a record is a pair of files sharing a stem: ``<stem>.safetensors`` (every tensor,
full maps under ``full/<step>/<layer>``) and ``<stem>.json`` (everything else, with
``schema_version``). See ``AttentionRecord.save`` for how paths are interpreted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..base.atomic import atomic_write
from ..model.files import RecordError, read_safetensors_header

__all__ = ["AttentionRecord", "RecordError", "RecordNotFoundError", "RECORD_SCHEMA_VERSION"]

RECORD_SCHEMA_VERSION = 1
LAYER_KINDS = ("global", "local", "standard")
SCALARS = ("entropy", "peak", "eff_keys", "cls_mass")
#: The per-map tensors, by field name: the ``(S, L, P, H)`` scalars, then the ``(S, L, P, H, Nk)`` marginals.
TENSORS = (*SCALARS, "marginals")
DEFAULT_STEM = "record"
_JSON_SUFFIX = ".json"
_TENSOR_SUFFIX = ".safetensors"
#: Entries of ``<stem>.json`` that ``load`` reads, in file order (the rest of the record is tensors).
_DOC_KEYS = (
    "steps",
    "timesteps",
    "layers",
    "layer_kinds",
    "num_parts",
    "num_heads",
    "num_patch_keys",
    "has_cls",
    "patch_grid",
    "full_maps",
    "nonfinite",
    "meta",
)


class RecordNotFoundError(RecordError, FileNotFoundError):
    """A record file that is not there (also a ``FileNotFoundError``)."""


@dataclass(eq=False)
class AttentionRecord:
    """Reduced cross-attention of one run (conditional CFG half only).

    Scalar tensors are ``(S, L, P, H)`` and ``marginals`` is ``(S, L, P, H, Nk)``; all are
    stored as float16 on CPU (other float inputs are converted on construction).
    ``full_maps[(step, layer)]`` is ``(P, H, Q, Nk + has_cls)`` with the CLS key in column 0.
    """

    steps: list[int]
    timesteps: list[float]
    layers: list[str]
    layer_kinds: list[str]
    num_parts: int
    num_heads: int
    num_patch_keys: int
    has_cls: bool
    patch_grid: tuple[int, int] | None
    entropy: torch.Tensor
    peak: torch.Tensor
    eff_keys: torch.Tensor
    cls_mass: torch.Tensor
    marginals: torch.Tensor
    full_maps: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    nonfinite: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        self.steps = [int(s) for s in self.steps]
        self.timesteps = [float(t) for t in self.timesteps]
        self.layers = [str(n) for n in self.layers]
        self.layer_kinds = [str(k) for k in self.layer_kinds]
        self.num_parts, self.num_heads = int(self.num_parts), int(self.num_heads)
        self.num_patch_keys, self.has_cls = int(self.num_patch_keys), bool(self.has_cls)
        if self.patch_grid is not None:
            self.patch_grid = (int(self.patch_grid[0]), int(self.patch_grid[1]))
        S, L = len(self.steps), len(self.layers)

        if S == 0 or L == 0:
            raise RecordError(f"an AttentionRecord needs at least one step and one layer, got {S} steps and {L} layers")
        if len(self.timesteps) != S:
            raise RecordError(f"timesteps has {len(self.timesteps)} entries but steps has {S}")
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise RecordError(f"steps must be strictly increasing, got {self.steps}")
        if len(self.layer_kinds) != L:
            raise RecordError(f"layer_kinds has {len(self.layer_kinds)} entries but layers has {L}")
        if len(set(self.layers)) != L:
            raise RecordError(f"layer names must be unique, got {self.layers}")
        bad = [k for k in self.layer_kinds if k not in LAYER_KINDS]
        if bad:
            raise RecordError(f"unknown layer kind {bad[0]!r} (known: {', '.join(LAYER_KINDS)})")
        for name, value in (
            ("num_parts", self.num_parts),
            ("num_heads", self.num_heads),
            ("num_patch_keys", self.num_patch_keys),
        ):
            if value < 1:
                raise RecordError(f"{name} must be >= 1, got {value}")
        if self.patch_grid is not None and self.patch_grid[0] * self.patch_grid[1] != self.num_patch_keys:
            raise RecordError(
                f"patch_grid {self.patch_grid} has {self.patch_grid[0] * self.patch_grid[1]} cells "
                f"but num_patch_keys is {self.num_patch_keys}"
            )

        shape = (S, L, self.num_parts, self.num_heads)
        for name in SCALARS:
            setattr(self, name, _as_f16(getattr(self, name), name, shape))
        self.marginals = _as_f16(self.marginals, "marginals", shape + (self.num_patch_keys,))

        keys_total = self.num_patch_keys + int(self.has_cls)
        maps = {}
        for key, t in dict(self.full_maps).items():
            step, layer = int(key[0]), str(key[1])
            if step not in self.steps:
                raise RecordError(f"full_maps has step {step}, which is not among the recorded steps {self.steps}")
            if layer not in self.layers:
                raise RecordError(f"full_maps has layer {layer!r}, which is not among the recorded layers")
            t = _as_f16(t, f"full_maps[{step}, {layer!r}]", None)
            if t.dim() != 4 or t.shape[:2] != (self.num_parts, self.num_heads) or t.shape[3] != keys_total:
                raise RecordError(
                    f"full_maps[{step}, {layer!r}] has shape {tuple(t.shape)}, expected "
                    f"({self.num_parts}, {self.num_heads}, Q, {keys_total}) (P, H, queries, keys incl. CLS)"
                )
            maps[(step, layer)] = t
        self.full_maps = dict(sorted(maps.items(), key=lambda kv: (kv[0][0], self.layers.index(kv[0][1]))))
        self.nonfinite = [dict(e) for e in self.nonfinite]
        self.meta = dict(self.meta)

    # ------------------------------------------------------------------ assembly
    @classmethod
    def assemble(
        cls,
        *,
        steps: Sequence[int],
        timesteps: Sequence[float],
        layers: Sequence[str],
        layer_kinds: Sequence[str],
        tensors: Mapping[str, torch.Tensor],
        has_cls: bool,
        patch_grid: tuple[int, int] | None = None,
        full_maps: Mapping[tuple[int, str], torch.Tensor] | None = None,
        nonfinite: Iterable[dict] = (),
        meta: Mapping[str, Any] | None = None,
    ) -> AttentionRecord:
        """A new record from its per-map ``tensors`` (one per name in :data:`TENSORS`, steps first);
        the part, head and patch-key counts are read from the marginals. The recorder builds its
        record here; :meth:`concat` joins records."""
        parts, heads, patch_keys = tensors["marginals"].shape[2:]
        return cls(
            steps=list(steps),
            timesteps=list(timesteps),
            layers=list(layers),
            layer_kinds=list(layer_kinds),
            num_parts=parts,
            num_heads=heads,
            num_patch_keys=patch_keys,
            has_cls=has_cls,
            patch_grid=patch_grid,
            **{name: tensors[name] for name in TENSORS},
            full_maps=dict(full_maps or {}),
            nonfinite=list(nonfinite),
            meta=dict(meta or {}),
        )

    @classmethod
    def concat(cls, records: Sequence[AttentionRecord]) -> AttentionRecord:
        """One record of the steps of ``records``, in order (their steps must increase).

        The records must have the same shape (:meth:`same_shape`); layer kinds, CLS, patch grid and
        meta are the first record's, full maps and non-finite events those of all. One record is
        returned as it is.
        """
        if not records:
            raise RecordError("AttentionRecord.concat needs at least one record")
        first = records[0]
        odd = next((r for r in records[1:] if not first.same_shape(r)), None)
        if odd is not None:
            raise RecordError(
                f"records of different shapes cannot be joined: step {first.steps[0]} has {first.num_layers} layers, "
                f"{first.num_parts} parts, {first.num_heads} heads, {first.num_patch_keys} patch keys; step "
                f"{odd.steps[0]} {odd.num_layers}, {odd.num_parts}, {odd.num_heads}, {odd.num_patch_keys}"
            )
        if len(records) == 1:
            return first
        joined: dict[str, Any] = {name: torch.cat([getattr(r, name) for r in records]) for name in TENSORS}
        return dataclasses.replace(
            first,
            steps=[s for r in records for s in r.steps],
            timesteps=[t for r in records for t in r.timesteps],
            **joined,
            full_maps={k: v for r in records for k, v in r.full_maps.items()},
            nonfinite=[e for r in records for e in r.nonfinite],
        )

    def same_shape(self, other: AttentionRecord) -> bool:
        """Whether ``other`` records the same layers, parts, heads and patch keys (so steps can be joined)."""
        return (self.layers, self.num_parts, self.num_heads, self.num_patch_keys) == (
            other.layers,
            other.num_parts,
            other.num_heads,
            other.num_patch_keys,
        )

    # ------------------------------------------------------------------ indexing
    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def step_index(self, step: int) -> int:
        """Position of a recorded denoising step (a step value, not a position)."""
        try:
            return self.steps.index(int(step))
        except ValueError:
            raise RecordError(f"step {step} was not recorded (recorded steps: {_short(self.steps)})") from None

    def layer_index(self, layer: str | int) -> int:
        """Position of a layer given by module name or by position (negative counts from the end)."""
        if isinstance(layer, str):
            try:
                return self.layers.index(layer)
            except ValueError:
                raise RecordError(
                    f"layer {layer!r} was not recorded (recorded layers: {_short(self.layers)})"
                ) from None
        i = int(layer)
        if not -len(self.layers) <= i < len(self.layers):
            raise RecordError(f"layer position {i} is out of range for {len(self.layers)} recorded layers")
        return i % len(self.layers)

    def select(
        self, step: int | None = None, layer: str | int | None = None, part: int | None = None, head: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Index every per-map tensor at once; a given coordinate drops its axis.

        Returns {"entropy", "peak", "eff_keys", "cls_mass", "marginals"}. ``step`` is a step value
        (as in ``steps``), ``layer`` a name or position, ``part``/``head`` positions.
        """
        index: list[int | slice] = [
            slice(None) if step is None else self.step_index(step),
            slice(None) if layer is None else self.layer_index(layer),
        ]
        for value, size, what in ((part, self.num_parts, "part"), (head, self.num_heads, "head")):
            if value is None:
                index.append(slice(None))
            else:
                if not 0 <= int(value) < size:
                    raise RecordError(f"{what} {value} is out of range (the record has {size})")
                index.append(int(value))
        idx = tuple(index)
        return {name: getattr(self, name)[idx] for name in TENSORS}

    def marginals_by_part(self, head_average: bool = True) -> torch.Tensor:
        """fp32 key-marginals: ``(S, L, P, Nk)`` head-averaged and renormalised, else ``(S, L, P, H, Nk)``."""
        from . import metrics

        if head_average:
            return metrics.head_averaged_marginals(self.marginals)
        return self.marginals.float()

    # ------------------------------------------------------------------ size and summary
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor under its file key (what ``save`` writes to the safetensors file)."""
        out = {name: getattr(self, name) for name in TENSORS}
        for (step, layer), t in self.full_maps.items():
            out[_full_key(step, layer)] = t
        return out

    def nbytes(self) -> int:
        """Total bytes held in tensors (scalars, marginals and full maps)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def summary(self) -> dict[str, float]:
        """Headline metrics (see ``metrics.summarize``)."""
        from . import metrics

        return metrics.summarize(self.entropy, self.peak, self.cls_mass, self.marginals, self.eff_keys)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``<stem>.safetensors`` then ``<stem>.json`` atomically; return both paths.

        ``path`` may be an existing directory (stem ``<dir>/record``), a stem, or either file
        name (its suffix is dropped). Each file is written to a temporary file in the same
        folder and moved into place with ``os.replace``; the JSON file goes last and carries a
        ``pair_id`` that the tensor file repeats, so a half-written pair is detected on load.
        """
        from safetensors.torch import save_file

        stem = _stem(path)
        stem.parent.mkdir(parents=True, exist_ok=True)
        pair_id = uuid.uuid4().hex
        tensors, seen = {}, set()
        for key, t in self.tensors().items():
            t = t.detach().cpu().contiguous()
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen and t.numel():  # safetensors refuses tensors sharing storage
                t = t.clone()
            seen.add(t.untyped_storage().data_ptr())
            tensors[key] = t
        header = {"schema_version": str(RECORD_SCHEMA_VERSION), "pair_id": pair_id}
        tensor_path = stem.with_name(stem.name + _TENSOR_SUFFIX)
        json_path = stem.with_name(stem.name + _JSON_SUFFIX)
        atomic_write(tensor_path, lambda tmp: save_file(tensors, tmp, metadata=header))
        doc = {
            "schema_version": RECORD_SCHEMA_VERSION,
            "pair_id": pair_id,
            "tensor_file": tensor_path.name,
            **{key: getattr(self, key) for key in _DOC_KEYS},
        }
        doc["patch_grid"] = list(self.patch_grid) if self.patch_grid is not None else None
        doc["full_maps"] = [[step, layer, _full_key(step, layer)] for step, layer in self.full_maps]
        text = json.dumps(doc, indent=2, default=str) + "\n"
        atomic_write(json_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return tensor_path, json_path

    @classmethod
    def load(cls, path: str | os.PathLike) -> AttentionRecord:
        """Read a record written by ``save`` (same path rules); refuses other schema versions.

        A missing file raises :class:`RecordNotFoundError` (a ``FileNotFoundError``); a damaged pair
        (invalid or truncated JSON, a truncated or foreign ``.safetensors``, a pair from two saves,
        missing entries) raises :class:`RecordError` (a ``ValueError``) naming the file and the fix.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        stem = _stem(path)
        json_path = stem.with_name(stem.name + _JSON_SUFFIX)
        tensor_path = stem.with_name(stem.name + _TENSOR_SUFFIX)
        for p in (json_path, tensor_path):
            if not p.is_file():
                raise RecordNotFoundError(
                    f"attention record file {p} does not exist (a record is a .json + .safetensors pair)"
                )

        def damaged(where: Path, what: str) -> RecordError:
            return RecordError(f"{where}: not a valid attention record ({what}); {RecordError.fix}.")

        try:
            doc = json.loads(json_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise damaged(json_path, f"not valid JSON: {exc}") from None
        found = doc.get("schema_version") if isinstance(doc, dict) else None
        if found != RECORD_SCHEMA_VERSION:
            raise RecordError(
                f"{json_path}: attention record schema version {found!r}, but this version of "
                f"partattn-checks reads version {RECORD_SCHEMA_VERSION}; re-record it with this version "
                f"(or use the partattn-checks release that wrote it)"
            )
        header = read_safetensors_header(tensor_path, error=RecordError)
        if (header.get("__metadata__") or {}).get("pair_id") != doc.get("pair_id"):
            raise RecordError(
                f"{tensor_path} does not belong to {json_path} (pair ids differ: the pair was "
                f"written by two different saves or one was replaced); save the record again"
            )
        try:
            tensors = load_file(str(tensor_path))
        except (SafetensorError, OSError) as exc:
            raise damaged(tensor_path, f"unreadable tensors: {exc}") from None
        try:
            full_maps = {(int(step), str(layer)): tensors[key] for step, layer, key in doc["full_maps"]}
            # read in field order: of two missing entries, the first field's is named
            fields: dict[str, Any] = {
                f.name: tensors[f.name] if f.name in TENSORS else doc[f.name]
                for f in dataclasses.fields(cls)
                if f.name != "full_maps"
            }
            fields["full_maps"] = full_maps
            if fields["patch_grid"] is not None:
                fields["patch_grid"] = tuple(fields["patch_grid"])
        except KeyError as exc:
            key = exc.args[0] if exc.args else "?"
            if key in _DOC_KEYS:
                raise damaged(json_path, f"entry {key!r} is missing") from None
            raise damaged(tensor_path, f"tensor {key!r} is missing") from None
        except (TypeError, ValueError) as exc:
            raise damaged(json_path, f"malformed entry: {exc}") from None
        try:
            return cls(**fields)
        except (TypeError, ValueError) as exc:
            raise damaged(json_path, str(exc)) from None

    def __repr__(self) -> str:
        return (
            f"AttentionRecord(steps={len(self.steps)}, layers={len(self.layers)}, parts={self.num_parts}, "
            f"heads={self.num_heads}, patch_keys={self.num_patch_keys}, has_cls={self.has_cls}, "
            f"full_maps={len(self.full_maps)}, nonfinite={len(self.nonfinite)})"
        )


def _as_f16(t, name: str, shape: tuple | None) -> torch.Tensor:
    t = torch.as_tensor(t)
    if not t.is_floating_point():
        raise RecordError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise RecordError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)} (S, L, P, H[, Nk])")
    return t.detach().to(device="cpu", dtype=torch.float16)


def _full_key(step: int, layer: str) -> str:
    return f"full/{step}/{layer}"


def _short(items: list, n: int = 8) -> str:
    text = ", ".join(str(x) for x in items[:n])
    return text + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _stem(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        return p / DEFAULT_STEM
    if p.suffix in (_JSON_SUFFIX, _TENSOR_SUFFIX):
        return p.with_suffix("")
    return p
