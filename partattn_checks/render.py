"""Figures: heatmaps, head grids, part panels, image overlays, timelines and GIFs.

Every attention figure plots ``A * Nk`` (``Nk`` = number of keys in the plotted map) on a
FIXED colour scale on which a uniform distribution is exactly 1. The default scale is
logarithmic and symmetric around 1 (``1/vmax .. vmax``, diverging colormap), so:

* a uniform map renders as one flat neutral colour, never as "structure";
* keys attended more than uniform are warm, keys attended less are cool;
* values outside the range saturate (the colorbar shows arrows); NaN/Inf show in black.

``scale="linear"`` gives ``0 .. vmax`` on a sequential colormap instead. There is no
per-map min-max normalisation anywhere in this module, on purpose (DESIGN section 6).

Functions take numpy arrays or torch tensors and return PNG bytes, or write ``path`` and
return it as a :class:`pathlib.Path`. Figures are ``max_px`` pixels on their long side.
matplotlib is used through ``Figure`` + the Agg canvas only: no pyplot, no display.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

__all__ = [
    "heatmap",
    "multi_head_grid",
    "part_panel",
    "overlay",
    "timeline",
    "animation",
    "animation_bytes",
]

_FONT = 8.0  # points; with ~100 dpi at 512 px this is ~11 px text
_ALPHA = 0.55  # overlay opacity of the attention colours over the image
_LUMA = np.array([0.299, 0.587, 0.114])
_AXIS_LABELS = {"qk": ("keys", "queries"), "strip": ("keys", None), "grid": ("patch column", "patch row")}


# --------------------------------------------------------------------------- inputs


def _to_numpy(x, dtype=np.float64) -> np.ndarray:
    """numpy array from a numpy array, nested list or torch tensor (any device/dtype)."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()
        x = x.numpy()
    return np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)


def _to_rgb(image) -> np.ndarray:
    """Float RGB (H, W, 3) in [0, 1] from a PIL image, HxW(x1|3|4) or (1|3)xHxW array/tensor.

    A normalised encoder tensor (values outside [0, 1]) is min-max rescaled for display;
    this touches only the backdrop image, never attention values.
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    arr = _to_numpy(image, dtype=None)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image must be PIL, HxW, HxWx3 or 3xHxW; got shape {arr.shape}")
    rgb = np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr[..., :3]
    if np.issubdtype(rgb.dtype, np.integer):
        return rgb.astype(np.float64) / 255.0
    rgb = np.nan_to_num(rgb.astype(np.float64))
    lo, hi = rgb.min(), rgb.max()
    if lo < 0.0 or hi > 1.0:
        rgb = (rgb - lo) / (hi - lo) if hi > lo else np.zeros_like(rgb)
    return rgb


def _check_grid(grid, nk: int) -> tuple[int, int]:
    rows, cols = (int(g) for g in grid)
    if rows * cols != nk:
        raise ValueError(
            f"grid {rows}x{cols} has {rows * cols} cells but the map has Nk={nk} keys; "
            "pass patch keys only (no CLS) and the encoder's patch grid"
        )
    return rows, cols


def _title(title=None, layer=None, step=None, part=None, head=None) -> str | None:
    bits = [
        f"{name} {value}"
        for name, value in (("layer", layer), ("step", step), ("part", part), ("head", head))
        if value is not None
    ]
    text = " · ".join(bits)
    if title and text:
        return f"{title}\n{text}"
    return title or text or None


# --------------------------------------------------------------------------- colour scale


@dataclass(frozen=True)
class _Scale:
    """The fixed ``A * Nk`` colour scale shared by every attention panel of a figure."""

    vmax: float = 8.0
    kind: str = "log"  # "log": 1/vmax..vmax diverging around 1; "linear": 0..vmax

    def __post_init__(self):
        if self.kind not in ("log", "linear"):
            raise ValueError(f"scale must be 'log' or 'linear', got {self.kind!r}")
        if not self.vmax > 1.0:
            raise ValueError(f"vmax must be > 1 so that uniform (=1) is inside the scale, got {self.vmax}")

    @property
    def norm(self) -> Normalize:
        if self.kind == "log":
            return LogNorm(vmin=1.0 / self.vmax, vmax=self.vmax)
        return Normalize(vmin=0.0, vmax=self.vmax)

    @property
    def cmap(self):
        name = "coolwarm" if self.kind == "log" else "magma"
        return colormaps[name].with_extremes(bad="black")

    def values(self, attn: np.ndarray) -> np.ndarray:
        """``attn * Nk`` clipped into the scale; non-finite entries become NaN (drawn black)."""
        scaled = attn * attn.shape[-1]
        scaled = np.where(np.isfinite(scaled), scaled, np.nan)
        return np.clip(scaled, self.norm.vmin, self.norm.vmax)

    def rgb(self, scaled: np.ndarray) -> np.ndarray:
        return self.cmap(self.norm(scaled))[..., :3]

    def colorbar(self, fig: Figure, axes, nk: int):
        mappable = ScalarMappable(norm=self.norm, cmap=self.cmap)
        extend = "both" if self.kind == "log" else "max"
        cbar = fig.colorbar(mappable, ax=axes, extend=extend, shrink=0.9, pad=0.02)
        cbar.set_label(f"attention × Nk\n(uniform = 1, Nk = {nk})", fontsize=_FONT)
        if self.kind == "log":
            ticks = _log2_ticks(self.vmax)
            cbar.set_ticks(ticks, labels=[_fraction(t) for t in ticks])
            cbar.ax.minorticks_off()
        cbar.ax.tick_params(labelsize=_FONT - 1)
        return cbar


def _log2_ticks(vmax: float) -> list[float]:
    top = math.floor(math.log2(vmax))
    stride = max(1, math.ceil((2 * top + 1) / 9))  # at most ~9 ticks
    exps = [e for e in range(-top, top + 1) if e % stride == 0]
    return [2.0**e for e in exps]


def _fraction(t: float) -> str:
    return f"{t:g}" if t >= 1 else f"1/{1 / t:g}"


# --------------------------------------------------------------------------- figure plumbing


def _new_figure(figsize: tuple[float, float], max_px: int) -> Figure:
    if max_px < 64:
        raise ValueError(f"max_px must be at least 64, got {max_px}")
    fig = Figure(figsize=figsize, dpi=max_px / max(figsize), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _output(fig: Figure, path=None):
    """PNG bytes of ``fig``, or write them to ``path`` and return the Path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, facecolor="white")
    data = buf.getvalue()
    if path is None:
        return data
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _figure_rgb(fig: Figure) -> np.ndarray:
    """The rendered figure as an (H, W, 3) uint8 array (draws the canvas)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _axes_pixel_box(fig: Figure, ax) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixel box of ``ax`` in the rendered image (origin top-left)."""
    fig.canvas.draw()
    bbox = ax.get_window_extent()
    height = fig.canvas.get_width_height()[1]
    return (math.ceil(bbox.x0), math.ceil(height - bbox.y1), math.floor(bbox.x1), math.floor(height - bbox.y0))


def _panel_array(values: np.ndarray, scale: _Scale, grid=None, image_rgb=None):
    """What one attention panel shows, from a (Q, K) map or an (Nk,) marginal.

    Returns ``(array, kind)``: scaled values (kind "qk", "strip" or "grid", coloured by the
    scale) or an RGB overlay (kind "rgb").
    """
    scaled = scale.values(values)
    if values.ndim == 2:
        if grid is not None:
            raise ValueError("grid applies to (Nk,) key marginals, not to (queries, keys) maps")
        return scaled, "qk"
    if values.ndim != 1:
        raise ValueError(f"expected a (queries, keys) map or an (Nk,) marginal, got shape {values.shape}")
    if grid is None:
        return scaled[None, :], "strip"
    cells = scaled.reshape(_check_grid(grid, values.shape[0]))
    if image_rgb is None:
        return cells, "grid"
    height, width = image_rgb.shape[:2]
    cells_img = Image.fromarray(cells.astype(np.float32))
    up = np.asarray(cells_img.resize((width, height), Image.Resampling.BILINEAR))
    backdrop = image_rgb @ _LUMA  # grey, so that every colour on the overlay is attention
    return (1.0 - _ALPHA) * backdrop[..., None] + _ALPHA * scale.rgb(up), "rgb"


def _interpolation(ax, shape) -> str:
    """Nearest while every cell gets a pixel or more; antialiased when cells outnumber pixels."""
    fig_w, fig_h = ax.figure.get_size_inches() * ax.figure.dpi
    box = ax.get_position()
    return "antialiased" if shape[0] > box.height * fig_h or shape[1] > box.width * fig_w else "nearest"


def _show(ax, panel, scale: _Scale, *, labels: bool = True):
    """Draw ``(array, kind)`` from :func:`_panel_array` on ``ax``; returns the AxesImage."""
    arr, kind = panel
    if kind == "rgb":
        im = ax.imshow(arr, interpolation="antialiased")
        ax.set_axis_off()
        return im
    im = ax.imshow(
        arr,
        cmap=scale.cmap,
        norm=scale.norm,
        aspect="equal" if kind == "grid" else "auto",
        interpolation=_interpolation(ax, arr.shape),
        interpolation_stage="rgba",
    )
    ax.tick_params(labelsize=_FONT - 1)
    xlabel, ylabel = _AXIS_LABELS[kind]
    if not labels:
        ax.set_xticks([])
        ax.set_yticks([])
        return im
    ax.set_xlabel(xlabel, fontsize=_FONT)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=_FONT)
    else:
        ax.set_yticks([])
    return im


def _panel_grid(fig: Figure, n: int, ncols: int | None = None):
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return list(axes[:n])


# --------------------------------------------------------------------------- figures


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

    ``ylim`` is fixed by default ([0, 1], the range of every metric in DESIGN section 4) and
    only widened when data falls outside it; ``ylim=None`` lets matplotlib choose.
    """
    return _output(
        _timeline_fig(
            values, steps, layer_names, metric=metric, threshold=threshold, title=title, ylim=ylim, max_px=max_px
        ),
        path,
    )


# --------------------------------------------------------------------------- animation


def _animation_frames(
    frames, *, titles=None, grid=None, image=None, vmax=8.0, scale="log", max_px=512
) -> list[Image.Image]:
    """Render every frame with ONE figure (same layout, same fixed scale) into RGB images."""
    frames = _to_numpy(frames)
    if frames.ndim not in (2, 3) or frames.shape[0] == 0:
        raise ValueError(f"frames must be (S, Q, K) maps or (S, Nk) marginals, got shape {frames.shape}")
    if titles is not None and len(titles) != len(frames):
        raise ValueError(f"got {len(titles)} titles for {len(frames)} frames")
    titles = titles or [f"frame {i + 1}/{len(frames)}" for i in range(len(frames))]
    sc = _Scale(vmax, scale)
    rgb = None if image is None else _to_rgb(image)
    if rgb is not None and grid is None:
        raise ValueError("an image overlay needs grid=(rows, cols)")
    fig = _new_figure((5.0, 4.2), max_px)
    ax = fig.add_subplot()
    im = _show(ax, _panel_array(frames[0], sc, grid, rgb), sc)
    ax.set_title(titles[0], fontsize=_FONT + 1)
    sc.colorbar(fig, ax, frames.shape[-1])
    fig.canvas.draw()
    fig.set_layout_engine("none")  # freeze the layout: no jitter between frames
    out = []
    for frame, text in zip(frames, titles, strict=False):
        im.set_data(_panel_array(frame, sc, grid, rgb)[0])
        ax.set_title(text, fontsize=_FONT + 1)
        out.append(Image.fromarray(_figure_rgb(fig)))
    return out


def _write_gif(images: list[Image.Image], fp, fps: float) -> None:
    # One palette for all frames, so a colour means the same value in every frame
    # (built from at most ~8 sampled frames to bound the cost).
    sample = images[:: max(1, len(images) // 8)]
    strip = Image.fromarray(np.concatenate([np.asarray(i) for i in sample], axis=0))
    palette = strip.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    frames = [i.quantize(palette=palette, dither=Image.Dither.NONE) for i in images]
    frames[0].save(
        fp, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0, disposal=1
    )


def animation(frames, path, *, fps=4, titles=None, grid=None, image=None, vmax=8.0, scale="log", max_px=512) -> Path:
    """Animated GIF of (S, Q, K) maps or (S, Nk) marginals over steps; returns ``path``.

    Marginals are drawn as strips, or on the patch grid with ``grid``, or as overlays with
    ``grid`` and ``image``. Pillow folds a frame identical to the previous one into it, so give
    distinct ``titles`` (the default numbers the frames) to keep one GIF frame per input frame.
    """
    images = _animation_frames(frames, titles=titles, grid=grid, image=image, vmax=vmax, scale=scale, max_px=max_px)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_gif(images, path, fps)
    return path


def animation_bytes(frames, *, fps=4, titles=None, grid=None, image=None, vmax=8.0, scale="log", max_px=512) -> bytes:
    """Same as :func:`animation`, returning the GIF bytes."""
    images = _animation_frames(frames, titles=titles, grid=grid, image=image, vmax=vmax, scale=scale, max_px=max_px)
    buf = io.BytesIO()
    _write_gif(images, buf, fps)
    return buf.getvalue()
