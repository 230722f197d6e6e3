"""The drift figure of a baseline failure: what moved, where, and how far.

Top: one bar per layer, how far its attention moved from the baseline (JS/log 2 between the
baseline's and this run's step- and head-averaged key-marginals, mean over parts; the layer that
moved most in red). With a baseline written from several noise seeds the bars show what is judged,
√(JS/log 2) mean over parts, inside the noise band of each layer (grey: up to the largest drift its
seeds make likely at the false-alarm rate; a tick: one seed's typical drift), and the first layer in
depth order beyond its band (where the drift starts) is named and drawn in red. Under the paired
verdict the bars are the distance from the baseline's run of the same seed, the band its allowance
and the tick the numeric floor; the layer named is where the change begins.

Below, for that layer, one row per part: baseline | now on the fixed ``attention × Nk`` scale of
every attention figure (uniform = 1), and now − baseline (× Nk) on a diverging scale centred on 0
with a symmetric range shared by all parts: the largest |Δ| of the figure ("auto"), or a fixed range
(``delta_scale``, the gate's ``--partattn-drift-scale``) so that the figures of different images
compare; the colour bar says which. Maps are drawn in opaque colours with the outlines of the
encoder's view of the image when it is given (like the overlays), else on the patch grid, else as
one-row strips.

Sizes are fixed in inches at render.panels' ``DPI``: every panel is ``PANEL_IN`` inches (≥ ``MIN_PANEL_PX``) and
every text at least ``MIN_FONT_PT`` points, whatever the number of parts. matplotlib through ``Figure`` + Agg only.
"""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from .outline import _on_image
from .panels import DPI, MIN_PANEL_PX, PNG_COMPRESS_LEVEL, RenderError, _panel_array, _Scale, _to_rgb
from .panels import MIN_FONT_PT as FONT  # the figure-size rule all figures share (render.panels)

PANEL_IN = max(2.4, MIN_PANEL_PX / DPI)  # inches per map panel: 240 px at DPI
BAR_IN = 2.6  # height of the per-layer bar chart
_DIFF_CMAP = "RdBu_r"  # red: more attention now, blue: less


def drift_figure(drift, image=None, *, path=None, delta_scale=None):
    """PNG bytes of the drift figure for ``drift`` (a ``checks.baseline.AttentionDrift``), or
    write them to ``path`` and return it. ``image``: the encoder's view of the input (PIL or array).

    ``delta_scale``: the ± range of the now − baseline colours (attention × Nk), fixed so that the
    figures of different images compare; None takes ``drift.delta_scale`` (the gate's
    ``--partattn-drift-scale``), and when that is None too the figure's own largest |Δ| ("auto").
    """
    fig = _drift_fig(drift, image, delta_scale)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white", pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    if path is None:
        return buf.getvalue()
    from pathlib import Path

    from ..base.atomic import atomic_write_bytes

    return atomic_write_bytes(Path(path), buf.getvalue())


def delta_norm(largest: float, delta_scale: float | None) -> Normalize:
    """The norm of the now − baseline colours: ±``delta_scale``, or ±``largest`` (the largest |Δ|) when None."""
    if delta_scale is None:
        span = largest if largest > 0 else 1e-3
    elif (
        isinstance(delta_scale, (int, float))
        and not isinstance(delta_scale, bool)
        and math.isfinite(delta_scale)
        and delta_scale > 0
    ):
        span = float(delta_scale)
    else:
        raise RenderError(f"delta_scale must be a positive number (or None: auto), got {delta_scale!r}")
    return Normalize(-span, span)


def _drift_fig(drift, image, delta_scale=None) -> Figure:
    delta_scale = drift.delta_scale if delta_scale is None else delta_scale
    baseline = np.asarray(drift.baseline.rows, dtype=np.float64)
    now = np.asarray(drift.now.rows, dtype=np.float64)
    parts, nk = baseline.shape
    grid = tuple(drift.grid) if drift.grid is not None else None
    image_rgb = _to_rgb(image) if image is not None and grid is not None else None

    rows_in = 0.9 + parts * (PANEL_IN + 0.25)
    fig = Figure(figsize=(3 * PANEL_IN + 2.8, BAR_IN + 0.5 + rows_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subfigures(2, 1, squeeze=False, height_ratios=[BAR_IN + 0.5, rows_in])[:, 0]
    _bars(top, drift)

    scale = _Scale(8.0, "log")
    diff = (now - baseline) * nk
    finite = np.abs(diff[np.isfinite(diff)])
    largest = float(finite.max()) if finite.size else 0.0
    diff_norm = delta_norm(largest, delta_scale)
    diff_cmap = colormaps[_DIFF_CMAP].with_extremes(bad="black")
    axes = bottom.subplots(parts, 3, squeeze=False)
    per_part = drift.per_part.rows[drift.layers.index(drift.layer)]
    for p in range(parts):
        for col, values in enumerate((baseline[p], now[p])):
            _map(axes[p, col], _panel_array(values, scale, grid, image_rgb), scale.cmap, scale.norm)
        _map(axes[p, 2], _diff_panel(diff[p], grid, image_rgb, diff_cmap, diff_norm), diff_cmap, diff_norm)
        mark = " (most)" if p == drift.part and parts > 1 else ""
        axes[p, 0].set_ylabel(f"part {p}{mark}\nJS/log2 {per_part[p]:.3f}", fontsize=FONT)
    for ax, text in zip(axes[0], ("baseline", "now", "now − baseline\n(red: more now, blue: less)"), strict=True):
        ax.set_title(text, fontsize=FONT + 1)
    bar = bottom.colorbar(ScalarMappable(scale.norm, scale.cmap), ax=axes[:, :2].ravel().tolist())
    bar.set_label(f"attention × Nk\n(uniform = 1, Nk = {nk})", fontsize=FONT)
    ticks = [t for t in (1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8)]
    bar.set_ticks(ticks, labels=[f"{t:g}" if t >= 1 else f"1/{1 / t:g}" for t in ticks])
    bar.ax.minorticks_off()
    bar.ax.tick_params(labelsize=FONT)
    dbar = bottom.colorbar(
        ScalarMappable(diff_norm, diff_cmap),
        ax=axes[:, 2].ravel().tolist(),
        extend="both" if diff_norm.vmax is not None and largest > diff_norm.vmax else "neither",  # some Δ saturate
    )
    said = "auto: this figure's largest |Δ|" if delta_scale is None else "fixed"
    dbar.set_label(f"Δ attention × Nk (now − baseline)\nscale ±{diff_norm.vmax:.3g} ({said})", fontsize=FONT)
    dbar.ax.tick_params(labelsize=FONT)
    bottom.suptitle(f"layer {drift.layer}: each part's key-marginal (mean over heads and steps)", fontsize=FONT + 1)
    return fig


def _bars(sub, drift) -> None:
    ax = sub.subplots()
    banded = drift.judged is not None
    values = list(drift.judged) if banded else drift.per_layer
    names = _short_names(list(drift.layers))
    marked = drift.layers.index(drift.onset) if banded and drift.onset in drift.layers else None
    worst = marked if marked is not None else drift.layers.index(drift.layer)
    colors = ["#c0392b" if i == worst else "#7f8c8d" for i in range(len(values))]
    x = np.arange(len(values))
    paired = drift.verdict == "paired"
    if banded:
        band = (
            "allowed (3 × the floor, at least ¼ of a seed's drift)" if paired else "noise band (allowed by the seeds)"
        )
        tick = "numeric floor (benign reruns)" if paired else "one seed's typical drift"
        ax.bar(x, drift.band, width=0.9, color="#dfe6e9", label=band)
        ax.scatter(x, drift.typical, marker="_", s=300, color="#2d3436", zorder=3, label=tick)
    beyond = [banded and v > b for v, b in zip(values, drift.band or values, strict=True)]
    edges = ["#2d3436" if b else "none" for b in beyond]  # beyond its allowance: outlined
    ax.bar(x, values, width=0.5, color=colors, edgecolor=edges, linewidth=1.5, zorder=2, label="this run")
    tilt = len(values) > 6
    ax.set_xticks(x, names, rotation=60 if tilt else 0, ha="right" if tilt else "center")
    ax.tick_params(labelsize=FONT)
    unit = "√(JS/log2) from the same seed's run" if paired else "√(JS/log2), mean over parts"
    ax.set_ylabel(unit if banded else "JS/log2, mean over parts", fontsize=FONT)
    top = max(max(values), max(drift.band) if banded else 0.0, 1e-6)
    ax.set_ylim(0, top * 1.3)
    ax.annotate(
        f"{values[worst]:.3f}", (worst, values[worst]), ha="center", va="bottom", fontsize=FONT, xytext=(0, 2),
        textcoords="offset points",
    )  # fmt: skip
    if banded:
        ax.legend(fontsize=FONT - 1, loc="upper left", frameon=False, ncol=3)
        if paired:
            start = f"the change begins at {drift.onset} (red)" if drift.onset else "no layer differs beyond the floor"
            title = f"paired with the same seed's run: {start}; outlined: beyond its allowance"
        else:
            start = f"the drift starts at {drift.onset}" if drift.onset else "every layer within its seed noise"
            title = f"attention drift against the baseline's seed noise: {start}; {drift.layer} moved most"
    else:
        title = (
            f"attention drift from the baseline: layer {drift.layer} moved most (part {drift.part}: JS/log2 "
            f"{drift.value:.3f})"
        )
    ax.set_title(title, fontsize=FONT + 1)


def _short_names(names: list[str]) -> list[str]:
    """Layer names without the suffix they all share (``blocks.3.attn2`` -> ``blocks.3``)."""
    if len(names) > 1 and all(n.endswith(".attn2") for n in names):
        return [n[: -len(".attn2")] for n in names]
    return names


def _diff_panel(diff: np.ndarray, grid, image_rgb, cmap, norm):
    """(array, kind) of a difference map, like ``panels._panel_array`` but on the diverging scale."""
    if grid is None:
        return diff[None, :], "strip"
    cells = diff.reshape(grid)
    if image_rgb is None:
        return cells, "grid"
    return _on_image(cells, image_rgb, cmap, norm), "rgb"


def _map(ax, panel, cmap, norm) -> None:
    arr, kind = panel
    if kind == "rgb":
        ax.imshow(arr, interpolation="antialiased")
    else:
        ax.imshow(arr, cmap=cmap, norm=norm, aspect="equal" if kind == "grid" else "auto", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
