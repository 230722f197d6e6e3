"""What of a record the figures show by default: shared by the visualizer and the run report."""

from __future__ import annotations

import re

import torch

from ..capture import metrics
from ..capture.record import AttentionRecord


def default_layer(record: AttentionRecord) -> int:
    """The most part-separated layer (what the separation check judges), else the last layer."""
    if record.num_parts >= 2:
        per_layer = metrics.part_separation(record.marginals_by_part()).mean(0)  # (L,)
        per_layer = torch.nan_to_num(per_layer, nan=-1.0)
        return int(per_layer.argmax())
    return record.num_layers - 1


def default_layer_reason(record: AttentionRecord) -> str:
    """Why :func:`default_layer` picks its layer, in words for a caption."""
    if record.num_parts >= 2:
        return "the most part-separated layer (mean over steps), the best the model does"
    return "the last layer (one part: no separation to rank the layers by)"


def renorm(x: torch.Tensor) -> torch.Tensor:
    s = x.sum(-1, keepdim=True)
    return x / torch.where(s > 0, s, torch.ones_like(s))


def with_cls(title, cls) -> str | None:
    cls = torch.as_tensor(cls).float()
    if not bool((cls > 0).any()):
        return title
    text = f"CLS mass {float(cls.mean()):.3f}"
    return f"{title} · {text}" if title else text


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_") or "image"
