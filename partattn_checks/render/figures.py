"""Still figures: heatmap, multi-head grid, part panel, image overlay, timeline."""

from __future__ import annotations

import math

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .panels import (
    LABEL_FONT_PT,
    MIN_FONT_PT,
    TITLE_FONT_PT,
    _check_grid,
    _new_figure,
    _output,
    _panel_array,
    _panel_grid,
    _Scale,
    _show,
    _title,
    _to_numpy,
    _to_rgb,
    _wrap,
    panel_layout,
)


def _heatmap_fig(
    A, *, title=None, layer=None, step=None, part=None, head=None, vmax=8.0, scale="log", max_px=512
) -> Figure:
    A = _to_numpy(A)
    if A.ndim != 2:
        raise ValueError(f"heatmap expects one (queries, keys) map, got shape {A.shape}")
    sc = _Scale(vmax, scale)
    fig = _new_figure((5.0, 4.0), max_px)
    ax = fig.add_subplot()
    _show(ax, _panel_array(A, sc), sc)
    ax.set_title(_wrap(_title(title, layer, step, part, head), 3.6), fontsize=TITLE_FONT_PT)
    sc.colorbar(fig, ax, A.shape[-1])
    return fig


def heatmap(
    A, *, title=None, layer=None, step=None, part=None, head=None, vmax=8.0, scale="log", path=None, max_px=512
):
    """One (queries, keys) attention map, plotted as A·Nk on the fixed scale."""
    return _output(
        _heatmap_fig(
            A, title=title, layer=layer, step=step, part=part, head=head, vmax=vmax, scale=scale, max_px=max_px
        ),
        path,
    )


def _multi_head_fig(
    maps,
    *,
    title=None,
    layer=None,
    step=None,
    part=None,
    vmax=8.0,
    scale="log",
    ncols=None,
    max_px=512,
    ylabel="queries",
    grid=None,
    image=None,
) -> Figure:
    maps = _to_numpy(maps)
    sc = _Scale(vmax, scale)
    if grid is not None:  # each head's key marginal on the patch grid (on the image when given)
        if maps.ndim == 3:
            maps = maps.mean(axis=-2)  # (H, Q, Nk) -> (H, Nk): mean over queries
        if maps.ndim != 2:
            raise ValueError(
                f"multi_head_grid with grid expects (heads, queries, keys) maps or (heads, keys) marginals, "
                f"got shape {maps.shape}"
            )
        _check_grid(grid, maps.shape[-1])
    elif maps.ndim != 3:
        raise ValueError(f"multi_head_grid expects (heads, queries, keys) maps, got shape {maps.shape}")
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
    fig = _new_figure(layout.figsize, max_px, layout.dpi)
    axes = _panel_grid(fig, n_heads, layout.ncols)
    for h, ax in enumerate(axes):
        _show(ax, _panel_array(maps[h], sc, grid, rgb), sc, labels=False)
        ax.set_title(f"head {h}", fontsize=LABEL_FONT_PT, pad=3)
    if labels:
        fig.supxlabel("keys", fontsize=LABEL_FONT_PT)
        if ylabel:
            fig.supylabel(ylabel, fontsize=LABEL_FONT_PT)
    if suptitle:
        fig.suptitle(suptitle, fontsize=TITLE_FONT_PT)
    sc.colorbar(fig, axes, maps.shape[-1])
    return fig


def multi_head_grid(
    maps,
    *,
    title=None,
    layer=None,
    step=None,
    part=None,
    vmax=8.0,
    scale="log",
    ncols=None,
    path=None,
    max_px=512,
    ylabel="queries",
    grid=None,
    image=None,
):
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
    marginals,
    grid=None,
    image=None,
    *,
    title=None,
    layer=None,
    step=None,
    head=None,
    vmax=8.0,
    scale="log",
    ncols=None,
    max_px=512,
) -> Figure:
    marginals = _to_numpy(marginals)
    if marginals.ndim != 2:
        raise ValueError(f"part_panel expects (parts, Nk) key marginals, got shape {marginals.shape}")
    sc = _Scale(vmax, scale)
    n_parts, nk = marginals.shape
    suptitle = _title(title, layer, step, None, head)
    if grid is None:  # strips: one row per part
        width = 6.0
        suptitle = _wrap(suptitle, width - 1.6)
        fig = _new_figure((width, 1.5 + 0.4 * n_parts + 0.25 * _lines(suptitle)), max_px)
        ax = fig.add_subplot()
        _show(ax, (sc.values(marginals), "strip"), sc)
        ax.set_yticks(range(n_parts), [f"part {p}" for p in range(n_parts)])
        ax.set_title(suptitle, fontsize=TITLE_FONT_PT)
        sc.colorbar(fig, ax, nk)
        return fig
    _check_grid(grid, nk)
    rgb = None if image is None else _to_rgb(image)
    n_panels = n_parts + (rgb is not None)
    probe = panel_layout(n_panels, ncols=ncols)
    suptitle = _wrap(suptitle, probe.figsize[0] - 0.3)
    layout = panel_layout(n_panels, ncols=probe.ncols, max_px=max_px, title_lines=_lines(suptitle))
    fig = _new_figure(layout.figsize, max_px, layout.dpi)
    axes = _panel_grid(fig, n_panels, layout.ncols)
    if rgb is not None:
        axes[0].imshow(rgb)
        axes[0].set_axis_off()
        axes[0].set_title("input", fontsize=LABEL_FONT_PT, pad=3)
    for p, ax in enumerate(axes[n_panels - n_parts :]):
        _show(ax, _panel_array(marginals[p], sc, grid, rgb), sc, labels=False)
        ax.set_title(f"part {p}", fontsize=LABEL_FONT_PT, pad=3)
    if suptitle:
        fig.suptitle(suptitle, fontsize=TITLE_FONT_PT)
    sc.colorbar(fig, axes[n_panels - n_parts :], nk)
    return fig


def _lines(text: str | None) -> int:
    return 0 if not text else text.count("\n") + 1


def part_panel(
    marginals,
    grid=None,
    image=None,
    *,
    title=None,
    layer=None,
    step=None,
    head=None,
    vmax=8.0,
    scale="log",
    ncols=None,
    path=None,
    max_px=512,
):
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


def _overlay_fig(
    marginal, grid, image, *, title=None, layer=None, step=None, part=None, head=None, vmax=8.0, scale="log", max_px=512
) -> Figure:
    marginal = _to_numpy(marginal)
    if marginal.ndim != 1:
        raise ValueError(f"overlay expects one (Nk,) key marginal, got shape {marginal.shape}")
    sc = _Scale(vmax, scale)
    text = _wrap(_title(title, layer, step, part, head), 2.9)  # the axes width: the title is centred on it
    fig = _new_figure((4.4, 3.5 + 0.22 * _lines(text)), max_px)
    ax = fig.add_subplot()
    _show(ax, _panel_array(marginal, sc, grid, _to_rgb(image)), sc)
    ax.set_title(text, fontsize=TITLE_FONT_PT)
    sc.colorbar(fig, ax, marginal.shape[0])
    return fig


def overlay(
    marginal,
    grid,
    image,
    *,
    title=None,
    layer=None,
    step=None,
    part=None,
    head=None,
    vmax=8.0,
    scale="log",
    path=None,
    max_px=512,
):
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
    values, steps, layer_names, *, metric="normalized entropy", threshold=None, title=None, ylim=(0.0, 1.0), max_px=512
) -> Figure:
    values = _to_numpy(values)
    steps = _to_numpy(steps)
    if values.ndim != 2 or values.shape != (len(steps), len(layer_names)):
        raise ValueError(f"values must be (steps={len(steps)}, layers={len(layer_names)}), got shape {values.shape}")
    n_layers = len(layer_names)
    fig = _new_figure((5.8, 4.0), max_px)
    ax = fig.add_subplot()
    colour_bar = n_layers > 10
    cmap = colormaps["viridis"] if colour_bar else colormaps["tab10"]
    marker = "o" if len(steps) <= 25 else None
    for i, name in enumerate(layer_names):
        colour = cmap(i / max(n_layers - 1, 1)) if colour_bar else cmap(i)
        ax.plot(
            steps,
            values[:, i],
            color=colour,
            lw=1.2,
            marker=marker,
            ms=2.5,
            label="_nolegend_" if colour_bar else f"layer {name}",
        )
    if threshold is not None:
        ax.axhline(threshold, color="crimson", ls="--", lw=1.0, label=f"threshold {threshold:g}")
    if ylim is not None:  # fixed axis, widened only if the data escapes it
        finite = values[np.isfinite(values)]
        lo = min(ylim[0], finite.min()) if finite.size else ylim[0]
        hi = max(ylim[1], finite.max()) if finite.size else ylim[1]
        pad = 0.02 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("denoising step", fontsize=LABEL_FONT_PT)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(steps) == 1 and np.isfinite(steps[0]):  # one step: integer ticks around it, not ±0.05
        ax.set_xlim(steps[0] - 1, steps[0] + 1)
    ax.set_ylabel(_wrap(metric, 3.0, LABEL_FONT_PT), fontsize=LABEL_FONT_PT)
    ax.tick_params(labelsize=MIN_FONT_PT)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(_wrap(title, 5.0), fontsize=TITLE_FONT_PT)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=MIN_FONT_PT, ncols=2 if n_layers > 5 and not colour_bar else 1, loc="best", framealpha=0.8)
    if colour_bar:
        mappable = ScalarMappable(norm=Normalize(0, n_layers - 1), cmap=cmap)
        cbar = fig.colorbar(mappable, ax=ax, pad=0.02)
        ticks = np.unique(np.linspace(0, n_layers - 1, min(n_layers, 6)).round().astype(int))
        cbar.set_ticks(ticks, labels=[str(layer_names[t]) for t in ticks])
        cbar.set_label("layer", fontsize=LABEL_FONT_PT)
        cbar.ax.tick_params(labelsize=MIN_FONT_PT)
    return fig


def timeline(
    values,
    steps,
    layer_names,
    *,
    metric="normalized entropy",
    threshold=None,
    title=None,
    ylim=(0.0, 1.0),
    path=None,
    max_px=512,
):
    """(steps, layers) metric values over denoising steps, one line per layer.

    ``ylim`` is fixed by default ([0, 1], the range of every metric in docs/metrics.md) and
    only widened when data falls outside it; ``ylim=None`` lets matplotlib choose.
    """
    return _output(
        _timeline_fig(
            values, steps, layer_names, metric=metric, threshold=threshold, title=title, ylim=ylim, max_px=max_px
        ),
        path,
    )


# --------------------------------------------------------------------------- animation
