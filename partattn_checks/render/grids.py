"""Panel grids on one shared fixed scale: one panel per head (``multi_head_grid``) or per part (``part_panel``)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, cast, overload

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .layout import (
    _INDEX_TICK_IN,
    _TICK_IN,
    _digits_in,
    _label_insets,
    _lines_in,
    _panel_grid,
    _single_panel,
)
from .panels import (
    LABEL_FONT_PT,
    MIN_FONT_PT,
    TITLE_FONT_PT,
    ArrayInput,
    HeadLabel,
    ImageInput,
    LayerLabel,
    OutPath,
    RenderError,
    _check_grid,
    _figure_rgb,
    _Frames,
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
    figure_dpi,
    panel_layout,
    text_width_in,
)


def _multi_head_fig(
    maps: ArrayInput,
    *,
    title: str | None = None,
    layer: LayerLabel = None,
    step: int | None = None,
    part: int | None = None,
    vmax: float = 8.0,
    scale: str = "log",
    ncols: int | None = None,
    max_px: int = 512,
    ylabel: str | None = "queries",
    grid: tuple[int, int] | None = None,
    image: ImageInput | None = None,
) -> Figure:
    maps = _to_numpy(maps)
    sc = _Scale(vmax, scale)
    if grid is not None:  # each head's key marginal on the patch grid (on the image when given)
        if maps.ndim == 3:
            maps = cast("np.ndarray", maps.mean(axis=-2))  # (H, Q, Nk) -> (H, Nk): mean over queries
        if maps.ndim != 2:
            raise RenderError(
                f"multi_head_grid with grid expects (heads, queries, keys) maps or (heads, keys) marginals, "
                f"got shape {maps.shape}"
            )
        _check_grid(grid, maps.shape[-1])
    elif maps.ndim != 3:
        raise RenderError(f"multi_head_grid expects (heads, queries, keys) maps, got shape {maps.shape}")
    rgb = None if image is None or grid is None else _to_rgb(image)
    n_heads = maps.shape[0]
    probe = panel_layout(n_heads, ncols=ncols or math.ceil(math.sqrt(n_heads)))
    suptitle = _wrap(_title(title, layer, step, part), probe.figsize[0] - 0.3)
    labels = grid is None
    layout = panel_layout(
        n_heads,
        ncols=probe.ncols,
        max_px=max_px,
        title_lines=suptitle.count("\n") + 1 if suptitle else 0,
        extra_height_in=0.3 if labels else 0.0,
    )
    figsize = layout.figsize
    if labels:  # room for the index ticks left of and below the panels
        figsize = (figsize[0] + _TICKS_IN, figsize[1] + _TICKS_IN)
    fig = _new_figure(figsize, max_px, figure_dpi(figsize, max_px))
    left_in = bottom_in = 0.0
    if labels:  # index labels (left column, bottom row) and the figure's axis labels
        tick_row = _lines_in(MIN_FONT_PT) + _INDEX_TICK_IN
        bottom_in = tick_row + 0.06 + _lines_in(LABEL_FONT_PT)
        if maps.shape[1] > 1:
            left_in = _digits_in(maps.shape[1]) + _INDEX_TICK_IN + 0.06
        if ylabel:
            left_in += _lines_in(LABEL_FONT_PT) + 0.04
    placed = _panel_grid(
        fig, n_heads, layout.ncols, sc, title_lines=_lines(suptitle), left_in=left_in, bottom_in=bottom_in
    )
    axes = placed.axes
    for h, ax in enumerate(axes):
        _show(ax, _panel_array(maps[h], sc, grid, rgb), sc, labels=False)
        ax.set_title(f"head {h}", fontsize=LABEL_FONT_PT, pad=3)
        if labels:
            _index_ticks(ax, maps[h].shape, left=h % layout.ncols == 0, bottom=h + layout.ncols >= n_heads)
    width, height = figsize
    if labels:
        middle, low = (placed.left + placed.right) / 2 / width, (placed.bottom - bottom_in) / height
        fig.supxlabel("key index", fontsize=LABEL_FONT_PT, x=middle, y=low, va="bottom")
        if ylabel:
            fig.supylabel(
                "query index" if ylabel == "queries" else ylabel,
                fontsize=LABEL_FONT_PT,
                x=(placed.left - left_in) / width,
                y=(placed.bottom + placed.top - _title_in(suptitle)) / 2 / height,
                ha="left",
            )
    if suptitle:
        fig.suptitle(suptitle, fontsize=TITLE_FONT_PT, y=placed.top / height, va="top")
    sc.colorbar(fig, placed.cax, maps.shape[-1])
    return fig


def _title_in(suptitle: str | None) -> float:
    """Height of a figure title (and its gap to the panels' title band) in inches."""
    return _lines_in(TITLE_FONT_PT, _lines(suptitle)) + 0.06 if suptitle else 0.0


#: Inches added to a bare heads grid for its index ticks.
_TICKS_IN = 0.35


def _index_ticks(ax: Axes, shape: tuple[int, ...], *, left: bool, bottom: bool) -> None:
    """Integer index ticks on a (queries, keys) panel: key indices on every panel's x axis (labelled
    on the bottom row), query indices on the y axis (labelled in the left column; none on a strip)."""
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    ax.tick_params(axis="x", labelbottom=bottom, labelsize=MIN_FONT_PT, length=2.5, pad=1.5)
    if shape[0] > 1:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
        ax.tick_params(axis="y", labelleft=left, labelsize=MIN_FONT_PT, length=2.5, pad=1.5)
    else:
        ax.set_yticks([])


@overload
def multi_head_grid(
    maps: ArrayInput,
    *,
    title: str | None = None,
    layer: LayerLabel = None,
    step: int | None = None,
    part: int | None = None,
    vmax: float = 8.0,
    scale: str = "log",
    ncols: int | None = None,
    path: None = None,
    max_px: int = 512,
    ylabel: str | None = "queries",
    grid: tuple[int, int] | None = None,
    image: ImageInput | None = None,
) -> bytes: ...


@overload
def multi_head_grid(
    maps: ArrayInput,
    *,
    title: str | None = None,
    layer: LayerLabel = None,
    step: int | None = None,
    part: int | None = None,
    vmax: float = 8.0,
    scale: str = "log",
    ncols: int | None = None,
    path: str | os.PathLike[str],
    max_px: int = 512,
    ylabel: str | None = "queries",
    grid: tuple[int, int] | None = None,
    image: ImageInput | None = None,
) -> Path: ...


def multi_head_grid(
    maps: ArrayInput,
    *,
    title: str | None = None,
    layer: LayerLabel = None,
    step: int | None = None,
    part: int | None = None,
    vmax: float = 8.0,
    scale: str = "log",
    ncols: int | None = None,
    path: OutPath = None,
    max_px: int = 512,
    ylabel: str | None = "queries",
    grid: tuple[int, int] | None = None,
    image: ImageInput | None = None,
) -> bytes | Path:
    """(heads, queries, keys) maps: one panel per head, one shared fixed scale and colorbar.

    Without ``grid``, each panel is the head's queries x keys map (``ylabel=None`` drops the row
    label, for one-row key-marginal strips). With ``grid=(rows, cols)`` (the encoder's patch grid;
    patch keys only, no CLS), each panel is the head's key marginal (mean over queries; ``maps``
    may also be ``(heads, Nk)`` marginals) reshaped onto the grid, and with ``image`` too it is
    blended over a grey copy of the image, so one sees where every head looks."""
    return _output(
        _multi_head_fig(
            maps,
            title=title,
            layer=layer,
            step=step,
            part=part,
            vmax=vmax,
            scale=scale,
            ncols=ncols,
            max_px=max_px,
            ylabel=ylabel,
            grid=grid,
            image=image,
        ),
        path,
    )


def _part_panel_fig(
    marginals: ArrayInput,
    grid: tuple[int, int] | None = None,
    image: ImageInput | None = None,
    *,
    title: str | None = None,
    layer: LayerLabel = None,
    step: int | None = None,
    head: HeadLabel = None,
    vmax: float = 8.0,
    scale: str = "log",
    ncols: int | None = None,
    max_px: int = 512,
) -> Figure:
    marginals = _to_numpy(marginals)
    if marginals.ndim != 2:
        raise RenderError(f"part_panel expects (parts, Nk) key marginals, got shape {marginals.shape}")
    sc = _Scale(vmax, scale)
    n_parts, nk = marginals.shape
    suptitle = _part_panel_title(n_parts, grid, image is not None, ncols, _title(title, layer, step, None, head))
    if grid is None:  # strips: one row per part
        width = _STRIPS_IN
        fig = _new_figure((width, 1.5 + 0.4 * n_parts + 0.25 * _lines(suptitle)), max_px)
        names = [f"part {p}" for p in range(n_parts)]
        _, bottom_in = _label_insets("strip", (n_parts, nk))
        left_in = max(text_width_in(name, MIN_FONT_PT) for name in names) + _TICK_IN
        placed = _single_panel(
            fig, sc, title_lines=_lines(suptitle), left_in=left_in, bottom_in=bottom_in, square=False
        )
        ax = placed.axes[0]
        _show(ax, (sc.values(marginals), "strip"), sc)
        ax.set_yticks(range(n_parts), names)
        ax.set_title(suptitle or "", fontsize=TITLE_FONT_PT)
        sc.colorbar(fig, placed.cax, nk)
        return fig
    _check_grid(grid, nk)
    rgb = None if image is None else _to_rgb(image)
    n_panels = n_parts + (rgb is not None)
    layout = panel_layout(n_panels, ncols=ncols, max_px=max_px, title_lines=_lines(suptitle))
    fig = _new_figure(layout.figsize, max_px, layout.dpi)
    placed = _panel_grid(fig, n_panels, layout.ncols, sc, title_lines=_lines(suptitle))
    axes = placed.axes
    if rgb is not None:
        axes[0].imshow(rgb)
        axes[0].set_axis_off()
        axes[0].set_title("input", fontsize=LABEL_FONT_PT, pad=3)
    for p, ax in enumerate(axes[n_panels - n_parts :]):
        _show(ax, _panel_array(marginals[p], sc, grid, rgb), sc, labels=False)
        ax.set_title(f"part {p}", fontsize=LABEL_FONT_PT, pad=3)
    if suptitle:
        fig.suptitle(suptitle, fontsize=TITLE_FONT_PT, y=placed.top / layout.figsize[1], va="top")
    sc.colorbar(fig, placed.cax, nk)
    return fig


#: Width of a part panel of strips (no patch grid), inches.
_STRIPS_IN = 6.0


def _part_panel_title(
    n_parts: int, grid: tuple[int, int] | None, has_image: bool, ncols: int | None, text: str | None
) -> str | None:
    """The part panel's title ``text`` wrapped to the figure's width."""
    if grid is None:
        return _wrap(text, _STRIPS_IN - 1.6)
    return _wrap(text, panel_layout(n_parts + has_image, ncols=ncols).figsize[0] - 0.3)


def _part_panel_shots(
    frames: np.ndarray,
    grid: tuple[int, int] | None,
    image: ImageInput | None,
    titles: list[str],
    *,
    layer: LayerLabel,
    vmax: float,
    scale: str,
    max_px: int,
) -> list[np.ndarray]:
    """Each (parts, Nk) frame's part panel titled ``titles[i]``, as (H, W, 3) uint8 arrays. Frames whose
    titles wrap to as many lines share one layout: one figure, its images and title updated per frame."""
    n_parts = frames.shape[1]

    def draw(frame: np.ndarray, title: str) -> Figure:
        return _part_panel_fig(frame, grid, image, title=title, layer=layer, vmax=vmax, scale=scale, max_px=max_px)

    wrapped = [_part_panel_title(n_parts, grid, image is not None, None, _title(t, layer)) for t in titles]
    if len({_lines(w) for w in wrapped}) > 1:  # the layouts differ: one figure each
        return [_figure_rgb(draw(f, t)) for f, t in zip(frames, titles, strict=True)]
    fig = draw(frames[0], titles[0])
    sc = _Scale(vmax, scale)
    rgb = None if image is None or grid is None else _to_rgb(image)
    panels = fig.axes[:-1][-n_parts:] if grid is not None else fig.axes[:1]  # the last axes: the colour bar
    images = [ax.get_images()[0] for ax in panels]
    title = cast("Any", fig)._suptitle if grid is not None else panels[0].title
    shots = _Frames(fig, images, [title] if title is not None else [])
    out = []
    for frame, text in zip(frames, wrapped, strict=True):
        if grid is None:
            images[0].set_data(sc.values(frame))
        else:
            for im, row in zip(images, frame, strict=True):
                im.set_data(_panel_array(row, sc, grid, rgb)[0])
        if title is not None:
            title.set_text(text or "")
        out.append(shots.rgb())
    return out


@overload
def part_panel(
    marginals: ArrayInput,
    grid: tuple[int, int] | None = None,
    image: ImageInput | None = None,
    *,
    title: str | None = None,
    layer: LayerLabel = None,
    step: int | None = None,
    head: HeadLabel = None,
    vmax: float = 8.0,
    scale: str = "log",
    ncols: int | None = None,
    path: None = None,
    max_px: int = 512,
) -> bytes: ...


@overload
def part_panel(
    marginals: ArrayInput,
    grid: tuple[int, int] | None = None,
    image: ImageInput | None = None,
    *,
    title: str | None = None,
    layer: LayerLabel = None,
    step: int | None = None,
    head: HeadLabel = None,
    vmax: float = 8.0,
    scale: str = "log",
    ncols: int | None = None,
    path: str | os.PathLike[str],
    max_px: int = 512,
) -> Path: ...


def part_panel(
    marginals: ArrayInput,
    grid: tuple[int, int] | None = None,
    image: ImageInput | None = None,
    *,
    title: str | None = None,
    layer: LayerLabel = None,
    step: int | None = None,
    head: HeadLabel = None,
    vmax: float = 8.0,
    scale: str = "log",
    ncols: int | None = None,
    path: OutPath = None,
    max_px: int = 512,
) -> bytes | Path:
    """(parts, Nk) key marginals: one panel per part on the shared fixed scale.

    With ``grid=(rows, cols)`` each marginal is reshaped row-major onto the patch grid; with
    ``image`` too, it is blended over a grey copy of the image and a first panel shows the
    input. Without ``grid``, one strip per part.
    """
    return _output(
        _part_panel_fig(
            marginals,
            grid,
            image,
            title=title,
            layer=layer,
            step=step,
            head=head,
            vmax=vmax,
            scale=scale,
            ncols=ncols,
            max_px=max_px,
        ),
        path,
    )
