"""The figure and statistics methods of :class:`~partattn_checks.present.visualizer.AttentionVisualizer`.

A mixin: it reads the visualizer's ``record``, ``patch_grid``, ``image`` and ``num_parts``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import render
from ..capture import metrics
from ..capture.record import AttentionRecord
from ..errors import PartattnError
from .views import default_layer, renorm, with_cls

#: ``statistics``: an entry counts as "sparse" when it is below this fraction of uniform (1/Nk).
SPARSITY_FACTOR = 0.1


class VisualizerError(PartattnError, ValueError):
    """The visualizer asked for something its weights or record do not hold (a layer, a step, a part
    count, a map shape); the message names it and what there is."""


class VisualizerTypeError(VisualizerError, TypeError):
    """The visualizer used without what the call needs (no model, no pipeline, a missing argument);
    also a ``TypeError``."""


class FigureMethods:
    """Heatmaps, head grids, part panels, animations and statistics of recorded attention."""

    # What the figures read of the visualizer (AttentionVisualizer sets them).
    has_cls: bool
    patch_grid: tuple[int, int] | None
    image: Any  # the encoder's view (PIL) of the last image run

    # ------------------------------------------------------------------ figures
    def visualize_attention_heatmap(
        self, weights, path=None, layer=None, head=0, part=0, *, step=None, title=None, **render_kwargs
    ):
        """One queries x keys map (``head="mean"`` averages heads) via :func:`render.heatmap`.

        ``weights``: extracted weights, a record with full maps, or a tensor (P,H,Q,K)/(H,Q,K)/(Q,K).
        Patch keys are renormalised (CLS mass in the title). Returns ``path`` (or PNG bytes).
        """
        _need(weights, "visualize_attention_heatmap")
        name, step, maps = self._pick_maps(weights, layer, step)
        rows, cls = self._patch_rows(_index(maps, part=part, head=head))
        return render.heatmap(
            rows,
            title=with_cls(title, cls),
            layer=name,
            step=step,
            part=part if maps.dim() >= 4 else None,
            head=head if maps.dim() >= 3 else None,
            path=path,
            **render_kwargs,
        )

    def visualize_multi_head_attention(
        self,
        weights,
        path=None,
        layer=None,
        part=0,
        *,
        step=None,
        title=None,
        image=None,
        queries_keys: bool = False,
        **render_kwargs,
    ):
        """Every head of one layer (and part) on one fixed scale, via :func:`render.multi_head_grid`.

        When the patch grid is known (the record's or the visualizer's, matching the key count),
        each panel is the head's key marginal (mean over queries) on the image (``image`` or the
        last run's; on the bare patch grid without one), so one sees where each head looks.
        ``queries_keys=True`` (or no grid) draws the raw queries x keys maps instead.
        """
        _need(weights, "visualize_multi_head_attention")
        name, step, maps = self._pick_maps(weights, layer, step)
        if maps.dim() == 4:
            maps = maps[_check_index(part, maps.shape[0], "part")]
        if maps.dim() != 3:
            raise VisualizerError(f"multi-head view needs (heads, queries, keys) maps, got shape {tuple(maps.shape)}")
        rows, cls = self._patch_rows(maps)
        grid = None
        if not queries_keys:
            record_grid = weights.patch_grid if isinstance(weights, AttentionRecord) else None
            grid, image = self._grid_image(rows.shape[-1], image, record_grid)
        if grid is not None:
            title = title or ("each head's key marginal on the image" if image is not None else "on the patch grid")
        return render.multi_head_grid(
            rows,
            title=with_cls(title, cls),
            layer=name,
            step=step,
            part=part,
            path=path,
            grid=grid,
            image=image,
            **render_kwargs,
        )

    def visualize_part_attention(
        self,
        weights,
        num_parts: int | None = None,
        path=None,
        *,
        title=None,
        layer=None,
        step=None,
        image=None,
        **render_kwargs,
    ):
        """Head-averaged key marginal of every part, side by side, via :func:`render.part_panel`.

        From extracted weights (mean over queries of the patch-renormalised rows) or from a record
        (its streamed marginals; ``step=None`` averages the recorded steps; ``layer=None`` picks the
        most part-separated layer). Drawn on the image when the patch grid and an image are known
        (``image`` or the last run's), on the patch grid otherwise, else as strips.
        """
        _need(weights, "visualize_part_attention")
        name, step, marginals = self._part_marginals(weights, layer, step)
        if num_parts is not None and int(num_parts) != marginals.shape[0]:
            raise VisualizerError(f"num_parts={num_parts} but the attention holds {marginals.shape[0]} parts")
        record_grid = weights.patch_grid if isinstance(weights, AttentionRecord) else None
        grid, image = self._grid_image(marginals.shape[-1], image, record_grid)
        if title is None and step is None and isinstance(weights, AttentionRecord) and weights.num_steps > 1:
            title = f"mean over steps {weights.steps[0]}–{weights.steps[-1]}"
        return render.part_panel(marginals, grid, image, title=title, layer=name, step=step, path=path, **render_kwargs)

    def create_attention_animation(
        self, sequence, path, fps: float = 4, *, layer=None, part: int = 0, head="mean", image=None, **render_kwargs
    ) -> Path:
        """GIF of attention over steps via :func:`render.animation`.

        ``sequence``: a record (one part's head-averaged key marginal per step, on the image when
        possible), a list of extracted weights / maps (one queries x keys heatmap per item), or a
        tensor of frames (S, Q, K) / (S, Nk) (already patch keys only).
        """
        _need(sequence, "create_attention_animation")
        if isinstance(sequence, AttentionRecord):
            li = sequence.layer_index(layer) if layer is not None else default_layer(sequence)
            name = sequence.layers[li]
            part = _check_index(part, sequence.num_parts, "part")
            frames = sequence.marginals_by_part()[:, li, part]
            titles = [
                f"step {s}" + (f" (t={t:.0f})" if math.isfinite(t) else "") + f" · layer {name} · part {part}"
                for s, t in zip(sequence.steps, sequence.timesteps, strict=False)
            ]
            grid, image = self._grid_image(frames.shape[-1], image, sequence.patch_grid)
            return render.animation(frames, path, fps=fps, titles=titles, grid=grid, image=image, **render_kwargs)
        if torch.is_tensor(sequence):
            return render.animation(sequence, path, fps=fps, **render_kwargs)
        rows_per_frame: list[torch.Tensor] = []
        titles = []
        for i, item in enumerate(sequence):
            name, _, maps = self._pick_maps(item, layer, None)
            rows, _ = self._patch_rows(_index(maps, part=part, head=head))
            rows_per_frame.append(rows)
            titles.append(f"frame {i + 1}/{len(sequence)}" + (f" · layer {name}" if name else "") + f" · part {part}")
        if not rows_per_frame:
            raise VisualizerError("create_attention_animation needs at least one frame")
        if len({tuple(f.shape) for f in rows_per_frame}) != 1:
            raise VisualizerError(f"frames differ in shape: {sorted({tuple(f.shape) for f in rows_per_frame})}")
        return render.animation(torch.stack(rows_per_frame), path, fps=fps, titles=titles, **render_kwargs)

    # ------------------------------------------------------------------ statistics
    def statistics(self, weights, *, layer=None, step=None) -> dict[str, dict]:
        """The guide's statistics per layer and head, over parts and queries (patch keys renormalised).

        ``{layer: {"mean", "max", "sparsity", "entropy", "peak", "cls_mass", "heads": [{...}, ...]}}``:
        ``mean``/``max`` of the attention entries (``mean`` is 1/Nk for any row-stochastic map; kept
        for the guide's API), ``sparsity`` the share of entries below ``SPARSITY_FACTOR``/Nk (a tenth
        of uniform), ``entropy`` the normalized entropy (``metrics.normalized_entropy``: 0 one-hot,
        1 uniform), ``peak`` the mean row maximum, ``cls_mass`` the mean CLS mass (0 without CLS).
        Layer values average the heads, except ``max`` (the maximum). ``layer`` limits to one layer.
        """
        _need(weights, "statistics")
        if isinstance(weights, Mapping):
            names = [self._pick_maps(weights, layer, step)[0]] if layer is not None else list(weights)
            items = [(n, weights[n]) for n in names]
        elif isinstance(weights, AttentionRecord):
            names = (
                [layer]
                if layer is not None
                else [n for n in weights.layers if any(k[1] == n for k in weights.full_maps)]
            )
            if not names:
                raise VisualizerError(
                    "the record has no full maps; statistics need them (record with full_maps=...), "
                    "or use record.summary() for the streamed metrics"
                )
            items = [self._pick_maps(weights, n, step)[::2] for n in names]
        else:
            items = [(None, _as_tensor(weights))]
        out = {}
        for name, maps in items:
            maps = maps.float()
            while maps.dim() < 4:
                maps = maps.unsqueeze(0)
            rows, cls = self._patch_rows(maps)  # (P, H, Q, Nk), (P, H)
            nk = rows.shape[-1]
            per_head = []
            for h in range(rows.shape[1]):
                a = rows[:, h]
                per_head.append(
                    {
                        "head": h,
                        "mean": float(a.mean()),
                        "max": float(a.amax()),
                        "sparsity": float((a < SPARSITY_FACTOR / nk).float().mean()),
                        "entropy": float(metrics.normalized_entropy(a).mean()),
                        "peak": float(metrics.peak(a).mean()),
                        "cls_mass": float(cls[:, h].mean()),
                    }
                )
            layer_stats: dict[str, Any] = {
                k: sum(d[k] for d in per_head) / len(per_head)
                for k in ("mean", "sparsity", "entropy", "peak", "cls_mass")
            }
            layer_stats["max"] = max(d["max"] for d in per_head)
            layer_stats["num_keys"] = nk
            layer_stats["heads"] = per_head
            out[name if name is not None else "attention"] = layer_stats
        return out

    # ------------------------------------------------------------------ internals of the figures
    def _pick_maps(self, weights, layer, step):
        """(layer name or None, step or None, maps tensor) from weights, a record or a tensor."""
        if isinstance(weights, AttentionRecord):
            li = weights.layer_index(layer if layer is not None else -1)
            name = weights.layers[li]
            have = [s for (s, n) in weights.full_maps if n == name]
            if not have:
                pairs = ", ".join(f"({s}, {n})" for s, n in weights.full_maps) or "none"
                raise VisualizerError(
                    f"the record has no full maps for layer {name} (it has: {pairs}); record them with "
                    f"full_maps=[(layer, step)] or pass extracted weights"
                )
            step = have[-1] if step is None else int(step)
            if (step, name) not in weights.full_maps:
                raise VisualizerError(
                    f"the record has no full map for step {step} of layer {name} (steps with one: {have})"
                )
            return name, step, weights.full_maps[(step, name)].float()
        if isinstance(weights, Mapping):
            names = list(weights)
            if not names:
                raise VisualizerError("no attention weights (empty dict)")
            key = -1 if layer is None else layer
            if isinstance(key, int):
                name = names[_check_index(key, len(names), "layer", allow_negative=True)]
            elif key in weights:
                name = key
            else:
                raise VisualizerError(f"layer {key!r} is not in the weights (layers: {', '.join(names)})")
            return name, step, torch.as_tensor(weights[name]).float()
        return None, step, _as_tensor(weights)

    def _patch_rows(self, maps: torch.Tensor):
        """Patch-key rows (renormalised) and CLS mass of maps ``(..., Q, K)``."""
        return metrics.split_cls(maps, has_cls=self.has_cls)

    def _part_marginals(self, weights, layer, step):
        """(layer name, step, (P, Nk) head-averaged key marginals)."""
        if isinstance(weights, AttentionRecord):
            li = weights.layer_index(layer) if layer is not None else default_layer(weights)
            per_part = weights.marginals_by_part()[:, li]  # (S, P, Nk)
            if step is None:
                marg = renorm(per_part.mean(0))
            else:
                marg = per_part[weights.step_index(step)]
            return weights.layers[li], step, marg
        name, step, maps = self._pick_maps(weights, layer, step)
        if maps.dim() == 3:  # (H, Q, K): one part
            maps = maps.unsqueeze(0)
        if maps.dim() != 4:
            raise VisualizerError(
                f"part attention needs (parts, heads, queries, keys) maps, got shape {tuple(maps.shape)}"
            )
        rows, _ = self._patch_rows(maps)
        return name, step, metrics.head_averaged_marginals(metrics.key_marginal(rows))

    def _grid_image(self, nk: int, image, grid=None):
        grid = grid or self.patch_grid
        if grid is None or grid[0] * grid[1] != nk:
            return None, None
        return grid, image if image is not None else self.image


def _need(weights, method: str) -> None:
    """``weights`` of a figure or statistics method is there (``viz.record`` is None before any run)."""
    if weights is None:
        raise VisualizerTypeError(
            f"{method}: no weights yet: run or extract first (viz.run(image), viz.extract_attention_weights(...) "
            f"or hooks around a forward fill viz.record; pass it, extracted weights or a tensor)"
        )


def _as_tensor(weights) -> torch.Tensor:
    """Weights given as a tensor (or anything torch reads as one), float."""
    try:
        return torch.as_tensor(weights).float()
    except (TypeError, ValueError, RuntimeError) as err:
        raise VisualizerTypeError(
            f"cannot read a {type(weights).__name__} as attention weights ({err}); pass a record, extracted weights "
            f"(a dict of layer -> maps) or a tensor (P, H, Q, K), (H, Q, K) or (Q, K)"
        ) from None


def _check_index(i, size: int, what: str, allow_negative: bool = False) -> int:
    i = int(i)
    lo = -size if allow_negative else 0
    if not lo <= i < size:
        raise VisualizerError(f"{what} {i} is out of range (there are {size})")
    return i % size


def _index(maps: torch.Tensor, *, part, head) -> torch.Tensor:
    """One (Q, K) map from (P, H, Q, K) / (H, Q, K) / (Q, K); ``head="mean"`` or ``None`` averages heads."""
    if maps.dim() == 4:
        maps = maps[_check_index(part, maps.shape[0], "part")]
    if maps.dim() == 3:
        if head is None or head == "mean":
            maps = maps.mean(0)
        else:
            maps = maps[_check_index(head, maps.shape[0], "head")]
    if maps.dim() != 2:
        raise VisualizerError(f"expected (P, H, Q, K), (H, Q, K) or (Q, K) attention, got shape {tuple(maps.shape)}")
    return maps
