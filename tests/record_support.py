"""A small saved attention record for the tests of ``partattn show`` and its output folders.

Made without a model, so showing it is the cheapest real ``show``: the record is an ordinary
``AttentionRecord``, saved and loaded as any other, only small.
"""

from __future__ import annotations

from pathlib import Path

import torch

from partattn_checks.capture.record import AttentionRecord


def saved_record(folder: Path, parts: int = 1, meta: dict | None = None) -> Path:
    """A small record saved as ``folder/record.{json,safetensors}`` (no model needed to show it). One step,
    layer and head: ``show`` draws 4 figures (2.5 s; at two steps, layers, parts and heads 9, 7 s). ``parts=2``
    adds a part's GIF and, its part separation failing, that check's figures in a subfolder (checks/).
    ``meta``: the record's metadata (a run's holds ``image`` and ``model``, which ``show`` reads)."""
    S, L, P, H, K = 1, 1, parts, 1, 4
    g = torch.Generator().manual_seed(0)
    scalars = torch.rand(S, L, P, H, generator=g)
    record = AttentionRecord(
        steps=[0],
        timesteps=[1000.0],
        layers=["blocks.0.attn2"],
        layer_kinds=["global"],
        num_parts=P,
        num_heads=H,
        num_patch_keys=K,
        has_cls=True,
        patch_grid=(2, 2),
        entropy=scalars,
        peak=scalars,
        eff_keys=scalars,
        cls_mass=scalars * 0.1,
        marginals=torch.rand(S, L, P, H, K, generator=g).softmax(-1),
        meta=dict(meta or {}),
    )
    record.save(folder / "record")
    return folder
