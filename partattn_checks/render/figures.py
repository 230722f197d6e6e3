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
    _FONT,
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
    ax.set_title(_title(title, layer, step, part, head), fontsize=_FONT + 1)
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
) -> Figure:
    maps = _to_numpy(maps)
    if maps.ndim != 3:
        raise ValueError(f"multi_head_grid expects (heads, queries, keys) maps, got shape {maps.shape}")
    sc = _Scale(vmax, scale)
    fig = _new_figure((6.0, 5.0), max_px)
    axes = _panel_grid(fig, maps.shape[0], ncols)
    for h, ax in enumerate(axes):
        _show(ax, _panel_array(maps[h], sc), sc, labels=False)
        ax.set_title(f"head {h}", fontsize=_FONT, pad=2)
    fig.supxlabel("keys", fontsize=_FONT)
    if ylabel:
        fig.supylabel(ylabel, fontsize=_FONT)
    fig.suptitle(_title(title, layer, step, part), fontsize=_FONT + 1)
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
):
    """(heads, queries, keys) maps: one panel per head, one shared fixed scale and colorbar.
    ``ylabel=None`` drops the row label (for one-row key-marginal strips)."""
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
        fig = _new_figure((6.0, 1.4 + 0.35 * n_parts), max_px)
        ax = fig.add_subplot()
        _show(ax, (sc.values(marginals), "strip"), sc)
        ax.set_yticks(range(n_parts), [f"part {p}" for p in range(n_parts)])
        ax.set_title(suptitle, fontsize=_FONT + 1)
        sc.colorbar(fig, ax, nk)
        return fig
    _check_grid(grid, nk)
    rgb = None if image is None else _to_rgb(image)
    n_panels = n_parts + (rgb is not None)
    ncols = ncols or (n_panels if n_panels <= 3 else math.ceil(math.sqrt(n_panels)))
    nrows = math.ceil(n_panels / ncols)
    fig = _new_figure((1.6 * ncols + 1.3, 1.6 * nrows + (0.4 if suptitle else 0.1)), max_px)
    axes = _panel_grid(fig, n_panels, ncols)
    if rgb is not None:
        axes[0].imshow(rgb)
        axes[0].set_axis_off()
        axes[0].set_title("input", fontsize=_FONT, pad=2)
    for p, ax in enumerate(axes[n_panels - n_parts :]):
        _show(ax, _panel_array(marginals[p], sc, grid, rgb), sc, labels=False)
        ax.set_title(f"part {p}", fontsize=_FONT, pad=2)
    if suptitle:
        fig.suptitle(suptitle, fontsize=_FONT + 1)
    sc.colorbar(fig, axes[n_panels - n_parts :], nk)
    return fig


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
    fig = _new_figure((5.0, 4.2), max_px)
    ax = fig.add_subplot()
    _show(ax, _panel_array(marginal, sc, grid, _to_rgb(image)), sc)
    ax.set_title(_title(title, layer, step, part, head), fontsize=_FONT + 1)
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
    fig = _new_figure((5.6, 3.6), max_px)
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
    ax.set_xlabel("denoising step", fontsize=_FONT)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric, fontsize=_FONT)
    ax.tick_params(labelsize=_FONT - 1)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=_FONT + 1)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=_FONT - 1, ncols=2 if n_layers > 5 and not colour_bar else 1, loc="best", framealpha=0.8)
    if colour_bar:
        mappable = ScalarMappable(norm=Normalize(0, n_layers - 1), cmap=cmap)
        cbar = fig.colorbar(mappable, ax=ax, pad=0.02)
        ticks = np.unique(np.linspace(0, n_layers - 1, min(n_layers, 6)).round().astype(int))
        cbar.set_ticks(ticks, labels=[str(layer_names[t]) for t in ticks])
        cbar.set_label("layer", fontsize=_FONT)
        cbar.ax.tick_params(labelsize=_FONT - 1)
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
