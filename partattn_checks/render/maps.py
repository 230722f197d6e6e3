"""Single-map figures: heatmap, image overlay, timeline (the head and part grids are in ``grids``)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import overload

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.ticker import MaxNLocator

from .grids import multi_head_grid as multi_head_grid
from .grids import part_panel as part_panel
from .layout import (
    _LABELPAD_IN,
    _PAD_IN,
    _TICK_IN,
    _TITLE_PAD_IN,
    _label_insets,
    _lines_in,
    _single_panel,
)
from .panels import (
    LABEL_FONT_PT,
    MIN_FONT_PT,
    TITLE_FONT_PT,
    RenderError,
    _lines,
    _new_figure,
    _output,
    _panel_array,
    _Scale,
    _show,
    _title,
    _to_numpy,
    _to_rgb,
    _wrap,
    text_width_in,
)
from .panels import ArrayInput as ArrayInput
from .panels import HeadLabel as HeadLabel
from .panels import ImageInput as ImageInput
from .panels import LayerLabel as LayerLabel
from .panels import OutPath as OutPath


def _heatmap_fig(
    A: ArrayInput,
    *,
    title: str | None = None,
    layer: LayerLabel = None,
    step: int | None = None,
    part: int | None = None,
    head: HeadLabel = None,
    vmax: float = 8.0,
    scale: str = "log",
    max_px: int = 512,
) -> Figure:
    A = _to_numpy(A)
    if A.ndim != 2:
        raise RenderError(f"heatmap expects one (queries, keys) map, got shape {A.shape}")
    sc = _Scale(vmax, scale)
    fig = _new_figure((5.0, 4.0), max_px)
    text = _wrap(_title(title, layer, step, part, head), 3.6)
    left_in, bottom_in = _label_insets("qk", A.shape)
    placed = _single_panel(fig, sc, title_lines=_lines(text), left_in=left_in, bottom_in=bottom_in, square=False)
    ax = placed.axes[0]
    _show(ax, _panel_array(A, sc), sc)
    ax.set_title(text or "", fontsize=TITLE_FONT_PT)
    sc.colorbar(fig, placed.cax, A.shape[-1])
    return fig


@overload
def heatmap(
    A: ArrayInput,
    *,
    title: str | None = None,
    layer: LayerLabel = None,
    step: int | None = None,
    part: int | None = None,
    head: HeadLabel = None,
    vmax: float = 8.0,
    scale: str = "log",
    path: None = None,
    max_px: int = 512,
) -> bytes: ...


@overload
def heatmap(
    A: ArrayInput,
    *,
    title: str | None = None,
    layer: LayerLabel = None,
    step: int | None = None,
    part: int | None = None,
    head: HeadLabel = None,
    vmax: float = 8.0,
    scale: str = "log",
    path: str | os.PathLike[str],
    max_px: int = 512,
) -> Path: ...


def heatmap(
    A: ArrayInput,
    *,
    title: str | None = None,
    layer: LayerLabel = None,
    step: int | None = None,
    part: int | None = None,
    head: HeadLabel = None,
    vmax: float = 8.0,
    scale: str = "log",
    path: OutPath = None,
    max_px: int = 512,
) -> bytes | Path:
    """One (queries, keys) attention map, plotted as A·Nk on the fixed scale."""
    return _output(
        _heatmap_fig(
            A, title=title, layer=layer, step=step, part=part, head=head, vmax=vmax, scale=scale, max_px=max_px
        ),
        path,
    )


def _overlay_fig(
    marginal: ArrayInput,
    grid: tuple[int, int],
    image: ImageInput,
    *,
    title: str | None = None,
    layer: LayerLabel = None,
    step: int | None = None,
    part: int | None = None,
    head: HeadLabel = None,
    vmax: float = 8.0,
    scale: str = "log",
    max_px: int = 512,
) -> Figure:
    marginal = _to_numpy(marginal)
    if marginal.ndim != 1:
        raise RenderError(f"overlay expects one (Nk,) key marginal, got shape {marginal.shape}")
    sc = _Scale(vmax, scale)
    text = _wrap(_title(title, layer, step, part, head), 2.9)  # the axes width: the title is centred on it
    fig = _new_figure((4.4, 3.5 + 0.22 * _lines(text)), max_px)
    placed = _single_panel(fig, sc, title_lines=_lines(text))
    ax = placed.axes[0]
    _show(ax, _panel_array(marginal, sc, grid, _to_rgb(image)), sc)
    ax.set_title(text or "", fontsize=TITLE_FONT_PT)
    sc.colorbar(fig, placed.cax, marginal.shape[0])
    return fig


@overload
def overlay(
    marginal: ArrayInput,
    grid: tuple[int, int],
    image: ImageInput,
    *,
    title: str | None = None,
    layer: LayerLabel = None,
    step: int | None = None,
    part: int | None = None,
    head: HeadLabel = None,
    vmax: float = 8.0,
    scale: str = "log",
    path: None = None,
    max_px: int = 512,
) -> bytes: ...


@overload
def overlay(
    marginal: ArrayInput,
    grid: tuple[int, int],
    image: ImageInput,
    *,
    title: str | None = None,
    layer: LayerLabel = None,
    step: int | None = None,
    part: int | None = None,
    head: HeadLabel = None,
    vmax: float = 8.0,
    scale: str = "log",
    path: str | os.PathLike[str],
    max_px: int = 512,
) -> Path: ...


def overlay(
    marginal: ArrayInput,
    grid: tuple[int, int],
    image: ImageInput,
    *,
    title: str | None = None,
    layer: LayerLabel = None,
    step: int | None = None,
    part: int | None = None,
    head: HeadLabel = None,
    vmax: float = 8.0,
    scale: str = "log",
    path: OutPath = None,
    max_px: int = 512,
) -> bytes | Path:
    """One (Nk,) patch-key distribution on the patch grid, upsampled bilinearly onto ``image``.

    ``image`` (PIL, HxWx3, or the (1,)3xHxW encoder tensor) is shown in grey under the
    attention colours, so that every colour on the figure is attention.
    """
    return _output(
        _overlay_fig(
            marginal,
            grid,
            image,
            title=title,
            layer=layer,
            step=step,
            part=part,
            head=head,
            vmax=vmax,
            scale=scale,
            max_px=max_px,
        ),
        path,
    )


def _timeline_fig(
    values: ArrayInput,
    steps: ArrayInput,
    layer_names: Sequence[str],
    *,
    metric: str = "normalized entropy",
    threshold: float | None = None,
    title: str | None = None,
    ylim: tuple[float, float] | None = None,
    judged: ArrayInput | None = None,
    judged_label: str = "",
    value: float | None = None,
    value_label: str = "",
    max_px: int = 512,
) -> Figure:
    values = _to_numpy(values)
    steps = _to_numpy(steps)
    if values.ndim != 2 or values.shape != (len(steps), len(layer_names)):
        raise RenderError(f"values must be (steps={len(steps)}, layers={len(layer_names)}), got shape {values.shape}")
    if judged is not None:
        judged = _to_numpy(judged)
        if judged.shape != (len(steps),):
            raise RenderError(f"judged must be (steps={len(steps)},), got shape {judged.shape}")
    n_layers = len(layer_names)
    colour_bar = n_layers > 10
    entries = (0 if colour_bar else n_layers) + sum(x is not None for x in (judged, value, threshold))
    legend_cols = 2 if entries > 3 else 1
    legend_rows = math.ceil(entries / legend_cols)
    fig = _new_figure((5.8, 3.6 + 0.2 * legend_rows), max_px)  # the legend goes below the axes
    ax = fig.add_axes((0.15, 0.3, 0.7, 0.6))  # placed by _place_timeline once its texts are known
    cmap = colormaps["viridis"] if colour_bar else colormaps["tab10"]
    marker = "o" if len(steps) <= 25 else None
    thin = judged is not None  # the layers are context, the judged series is the line to read
    for i, name in enumerate(layer_names):
        colour = cmap(i / max(n_layers - 1, 1)) if colour_bar else cmap(i)
        ax.plot(
            steps,
            values[:, i],
            color=colour,
            lw=0.9 if thin else 1.2,
            alpha=0.6 if thin else 1.0,
            marker=marker,
            ms=2.5,
            label="_nolegend_" if colour_bar else f"layer {name}",
        )
    if judged is not None:
        ax.plot(steps, judged, color="black", lw=2.2, marker=marker, ms=3.5, label=judged_label or "judged", zorder=3)
    if value is not None and math.isfinite(value):
        text = f"value {value:.3g}" + (f" ({value_label})" if value_label else "")
        ax.axhline(value, color="black", ls=":", lw=1.2, label=text, zorder=3)
    if threshold is not None:
        ax.axhline(threshold, color="crimson", ls="--", lw=1.2, label=f"threshold {threshold:g}", zorder=3)
    ax.set_ylim(*_y_range(values, [threshold, value], ylim))
    ax.set_xlabel("denoising step", fontsize=LABEL_FONT_PT)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(steps) == 1 and np.isfinite(steps[0]):  # one step: integer ticks around it, not ±0.05
        ax.set_xlim(steps[0] - 1, steps[0] + 1)
    elif len(steps) > 1 and np.isfinite(steps).all():  # every step, even where the values are NaN
        pad = 0.04 * (steps.max() - steps.min())
        ax.set_xlim(steps.min() - pad, steps.max() + pad)
    ylabel = _wrap(metric, 3.0, LABEL_FONT_PT) or ""
    ax.set_ylabel(ylabel, fontsize=LABEL_FONT_PT)
    ax.tick_params(labelsize=MIN_FONT_PT)
    ax.grid(alpha=0.3)
    heading = _wrap(title, 5.0) if title else None
    if heading:
        ax.set_title(heading, fontsize=TITLE_FONT_PT)
    legend = None
    if ax.get_legend_handles_labels()[1]:  # below the axes, never over the lines
        legend = ax.legend(
            fontsize=MIN_FONT_PT,
            ncols=legend_cols,
            loc="lower center",
            bbox_to_anchor=(0.5, _PAD_IN / fig.get_size_inches()[1]),
            bbox_transform=fig.transFigure,
            frameon=False,
            handlelength=1.8,
            columnspacing=1.2,
        )
    bar_labels: list[str] = []
    cax = None
    if colour_bar:
        mappable = ScalarMappable(norm=Normalize(0, n_layers - 1), cmap=cmap)
        cax = fig.add_axes((0.9, 0.3, 0.03, 0.6))
        cbar = fig.colorbar(mappable, cax=cax)
        ticks = np.unique(np.linspace(0, n_layers - 1, min(n_layers, 6)).round().astype(int)).tolist()
        bar_labels = [str(layer_names[t]) for t in ticks]
        cbar.set_ticks(ticks, labels=bar_labels)
        cbar.set_label("layer", fontsize=LABEL_FONT_PT)
        cbar.ax.tick_params(labelsize=MIN_FONT_PT)
    _place_timeline(fig, ax, legend, cax, bar_labels, _lines(heading), _lines(ylabel))
    return fig


def _place_timeline(
    fig: Figure,
    ax: Axes,
    legend: Legend | None,
    cax: Axes | None,
    bar_labels: list[str],
    title_lines: int,
    ylabel_lines: int,
) -> None:
    """Place the timeline's axes (and its colour bar) in inches: the title above, the y tick labels and
    label left, the x tick labels, label and the legend (measured) below, the colour bar right."""
    width, height = (float(x) for x in fig.get_size_inches())
    top = _PAD_IN + (_lines_in(TITLE_FONT_PT, title_lines) + _TITLE_PAD_IN if title_lines else 0.0)
    bottom = _PAD_IN + _lines_in(MIN_FONT_PT) + _TICK_IN + _lines_in(LABEL_FONT_PT) + _LABELPAD_IN
    legend_w = 0.0
    if legend is not None:
        box = legend.get_window_extent()  # on the figure's renderer
        bottom += box.height / fig.dpi + 0.08
        legend_w = box.width / fig.dpi
    right = _PAD_IN + 0.15  # half of the last x tick label
    if cax is not None:
        widest = max(text_width_in(label, MIN_FONT_PT) for label in bar_labels)
        right = _PAD_IN + 0.12 + 0.15 + _TICK_IN + widest + _LABELPAD_IN + _lines_in(LABEL_FONT_PT)
    y_label = _lines_in(LABEL_FONT_PT, max(ylabel_lines, 1)) + _LABELPAD_IN
    left, extra_top = _PAD_IN + y_label + _TICK_IN + 0.3, 0.0
    for _ in range(2):  # the y ticks follow the axes' height, the axes' width their labels
        h = height - top - extra_top - bottom
        ax.set_position((left / width, bottom / height, (width - left - right) / width, h / height))
        ticks, offset = _tick_labels(ax.yaxis)
        widest = max([text_width_in(t, MIN_FONT_PT) for t in ticks] or [0.0])
        left = _PAD_IN + y_label + _TICK_IN + widest
        extra_top = _lines_in(MIN_FONT_PT) if offset else 0.0
    h = height - top - extra_top - bottom
    ax.set_position((left / width, bottom / height, (width - left - right) / width, h / height))
    middle = (left + width - right) / 2

    def inside(half: float) -> float:  # centred on the axes, but inside the figure when wider than they are
        return min(max(middle, _PAD_IN + half), width - _PAD_IN - half) if 2 * half < width - 2 * _PAD_IN else width / 2

    if legend is not None:
        legend.set_bbox_to_anchor((inside(legend_w / 2) / width, _PAD_IN / height), fig.transFigure)
    if title_lines:
        half = max(text_width_in(line) for line in ax.get_title().split("\n")) / 2
        ax.title.set_x((inside(half) - left) / (width - left - right))
    if cax is not None:
        cax.set_position(((width - right + 0.12) / width, bottom / height, 0.15 / width, h / height))


def _tick_labels(axis: Axis) -> tuple[list[str], str]:
    """The tick labels ``axis`` will draw (in its view) and its offset text, without drawing it."""
    low, high = sorted(axis.get_view_interval())
    locs = [t for t in axis.get_major_locator()() if low - 1e-9 * abs(high - low) <= t <= high + 1e-9 * abs(high - low)]
    formatter = axis.get_major_formatter()
    return formatter.format_ticks(locs), formatter.get_offset()


def _y_range(
    values: np.ndarray, lines: Iterable[float | None], ylim: tuple[float, float] | None
) -> tuple[float, float]:
    """``ylim`` when given (widened only if the data escapes it, 2 % margin); else the range of the
    finite data and the horizontal ``lines`` (threshold, value) with an 8 % margin on each side."""
    finite = values[np.isfinite(values)]
    data = [float(finite.min()), float(finite.max())] if finite.size else []
    if ylim is not None:
        lo, hi = min([ylim[0], *data]), max([ylim[1], *data])
        return (lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo))
    points = data + [float(x) for x in lines if x is not None and math.isfinite(x)]
    if not points:
        return (0.0, 1.0)
    lo, hi = min(points), max(points)
    pad = 0.08 * (hi - lo) if hi > lo else max(0.05 * abs(hi), 0.05)
    return (lo - pad, hi + pad)


@overload
def timeline(
    values: ArrayInput,
    steps: ArrayInput,
    layer_names: Sequence[str],
    *,
    metric: str = "normalized entropy",
    threshold: float | None = None,
    title: str | None = None,
    ylim: tuple[float, float] | None = None,
    judged: ArrayInput | None = None,
    judged_label: str = "",
    value: float | None = None,
    value_label: str = "",
    path: None = None,
    max_px: int = 512,
) -> bytes: ...


@overload
def timeline(
    values: ArrayInput,
    steps: ArrayInput,
    layer_names: Sequence[str],
    *,
    metric: str = "normalized entropy",
    threshold: float | None = None,
    title: str | None = None,
    ylim: tuple[float, float] | None = None,
    judged: ArrayInput | None = None,
    judged_label: str = "",
    value: float | None = None,
    value_label: str = "",
    path: str | os.PathLike[str],
    max_px: int = 512,
) -> Path: ...


def timeline(
    values: ArrayInput,
    steps: ArrayInput,
    layer_names: Sequence[str],
    *,
    metric: str = "normalized entropy",
    threshold: float | None = None,
    title: str | None = None,
    ylim: tuple[float, float] | None = None,
    judged: ArrayInput | None = None,
    judged_label: str = "",
    value: float | None = None,
    value_label: str = "",
    path: OutPath = None,
    max_px: int = 512,
) -> bytes | Path:
    """(steps, layers) metric values over denoising steps, one line per layer.

    ``threshold`` is a dashed line; ``judged`` (steps,) a bold series (what a check's verdict
    reduces, named by ``judged_label``) drawn over thinner layer lines; ``value`` a dotted line (the
    number the verdict compares, ``value_label`` saying how it comes from the figure). The y-range
    fits the data, the threshold and the value with a margin, so the threshold is always visible
    and small values are not squeezed into a corner; ``ylim=(lo, hi)`` fixes it instead (widened
    only when data falls outside it).
    """
    return _output(
        _timeline_fig(
            values,
            steps,
            layer_names,
            metric=metric,
            threshold=threshold,
            title=title,
            ylim=ylim,
            judged=judged,
            judged_label=judged_label,
            value=value,
            value_label=value_label,
            max_px=max_px,
        ),
        path,
    )
