"""Shared pieces of every figure: the fixed colour scale, panels, the figure canvas and output."""

from __future__ import annotations

import functools
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, overload

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from PIL import Image

from ..errors import PartattnError
from .outline import _on_image

if TYPE_CHECKING:
    import numpy.typing as npt
    import torch


class RenderError(PartattnError, ValueError):
    """A figure asked of data it cannot draw (a shape, a grid, a scale, a size); the message names the
    argument and what it should be."""


# --------------------------------------------------------------------------- what the figures take
#: Values to draw: a numpy array, nested lists or a torch tensor (any device and dtype; see ``_to_numpy``).
ArrayInput: TypeAlias = "npt.ArrayLike | torch.Tensor"
#: A backdrop image: PIL, an HxW(x1|3|4) or (1|3)xHxW array or tensor (see ``_to_rgb``).
ImageInput: TypeAlias = "Image.Image | npt.ArrayLike | torch.Tensor"
#: Where a figure goes: a PNG file, or None for the PNG bytes.
OutPath: TypeAlias = "str | os.PathLike[str] | None"
#: A layer as a title names it: its name or index.
LayerLabel: TypeAlias = "str | int | None"
#: A head as a title names it: its index, or e.g. ``"mean"``.
HeadLabel: TypeAlias = "int | str | None"


#: The colour of the image's outlines on attention overlays (``_on_image``): a green that neither
#: colour map uses, so it never reads as a value.
_AXIS_LABELS = {"qk": ("keys", "queries"), "strip": ("keys", None), "grid": ("patch column", "patch row")}


# --------------------------------------------------------------------------- readable sizes
#: The sizing rule of every figure (docs/visualization.md, "Figure sizes"): figures are drawn at
#: ``DPI`` pixels per inch or more, so a point is at least DPI/72 px; no text is smaller than
#: ``MIN_FONT_PT`` and no image panel (a map, an overlay, a head) smaller than ``MIN_PANEL_PX``,
#: whatever the number of parts or heads: panels wrap into rows of at most ``MAX_COLUMNS``.
#: ``max_px`` is the long side a figure gets when its readable layout fits in it; a figure whose
#: layout needs more (many parts or heads) is larger than ``max_px``, never smaller-texted.
DPI = 100
MIN_FONT_PT = 10.0  # ticks, legends, colorbar ticks: 10 pt = 13.9 px at DPI
LABEL_FONT_PT = 11.0  # axis labels, panel titles, colorbar label
TITLE_FONT_PT = 12.0  # figure and axes titles
MIN_PANEL_PX = 200
MAX_COLUMNS = 3
_PANEL_IN = MIN_PANEL_PX / DPI
_COLORBAR_IN = 1.35  # bar, tick labels and a two-line label beside the panels
_PANEL_TITLE_IN = 0.32  # one line of LABEL_FONT_PT above each panel
_LINE_IN = 0.26  # one line of TITLE_FONT_PT (figure title)
_MARGIN_IN = 0.25

# the former name of the body text size (points), for code that imports it
_FONT = LABEL_FONT_PT


@dataclass(frozen=True)
class PanelLayout:
    """Rows x columns of square image panels and the figure size (inches) and dpi that hold them."""

    nrows: int
    ncols: int
    figsize: tuple[float, float]
    dpi: float

    @property
    def pixels(self) -> tuple[int, int]:
        """(width, height) of the saved PNG."""
        return round(self.figsize[0] * self.dpi), round(self.figsize[1] * self.dpi)


def figure_dpi(figsize: tuple[float, float], max_px: int = 512) -> float:
    """The dpi that gives ``figsize`` a long side of ``max_px``, but never below ``DPI``."""
    if max_px < 64:
        raise RenderError(f"max_px must be at least 64, got {max_px}")
    return max(float(DPI), max_px / max(figsize))


def panel_layout(
    n_panels: int,
    *,
    ncols: int | None = None,
    max_px: int = 512,
    colorbar: bool = True,
    title_lines: int = 1,
    extra_height_in: float = 0.0,
) -> PanelLayout:
    """The layout of ``n_panels`` square image panels of at least ``MIN_PANEL_PX`` each.

    One row up to ``MAX_COLUMNS`` panels, then near-square rows of at most ``MAX_COLUMNS`` (or
    ``ncols`` per row), so the figure stays legible when a report shows it at its natural size;
    ``title_lines`` lines of figure title on top, a colorbar on the right, ``extra_height_in``
    more at the bottom (axis labels). Figures with other panels (drift, training) can use it too.
    """
    if n_panels < 1:
        raise RenderError(f"a figure needs at least one panel, got {n_panels}")
    if not ncols:  # one row up to MAX_COLUMNS, then near square (4 -> 2x2, 5 or 6 -> 2x3, ...)
        ncols = n_panels if n_panels <= MAX_COLUMNS else min(MAX_COLUMNS, math.ceil(math.sqrt(n_panels)))
    ncols = max(1, min(int(ncols), n_panels))
    nrows = math.ceil(n_panels / ncols)
    width = ncols * (_PANEL_IN + 0.12) + (_COLORBAR_IN if colorbar else 0.0) + _MARGIN_IN
    height = nrows * (_PANEL_IN + _PANEL_TITLE_IN) + title_lines * _LINE_IN + extra_height_in + _MARGIN_IN
    figsize = (round(width, 3), round(height, 3))
    return PanelLayout(nrows, ncols, figsize, figure_dpi(figsize, max_px))


#: A name and its value that a wrapped title keeps on one line ("part 0", "head 3", "layer blocks.4.attn2").
_PHRASE = re.compile(r"\b((?:part|head|layer|step|frame|seed|block)s?)[ \u00a0]+(?=\S*\d)", re.IGNORECASE)
_SEPARATOR = " · "


@functools.lru_cache(maxsize=1)
def _measuring_renderer() -> RendererAgg:
    return RendererAgg(1, 1, 72)  # at 72 dpi one pixel is one point


@functools.lru_cache(maxsize=4096)  # titles, labels and their wrapping candidates repeat across figures
def text_width_in(text: str, fontsize: float = TITLE_FONT_PT) -> float:
    """Width in inches of one line of ``text`` at ``fontsize`` points, as matplotlib draws it."""
    width, _, _ = _measuring_renderer().get_text_width_height_descent(text, FontProperties(size=fontsize), False)
    return width / 72.0


def _wrap(text: str | None, width_in: float, fontsize: float = TITLE_FONT_PT) -> str | None:
    """``text`` with each line wrapped to fit ``width_in`` inches at ``fontsize`` (so titles are never cut).

    Widths are measured with matplotlib's own text extent. Lines break at the " · " separators first
    (the separator is dropped at a break), then between words, never inside a name and its value
    ("part 0", "head 3", "layer blocks.4.attn2": a no-break space binds them); only a single word
    wider than the line is cut. The number of lines is ``text.count("\\n") + 1`` of the result.
    """
    if not text:
        return text

    def fits(line: str) -> bool:
        return text_width_in(line, fontsize) <= width_in

    def words(segment: str) -> list[str]:
        return _pack(segment.split(" "), " ", fits, lambda word: _cut(word, fits))

    out: list[str] = []
    for line in text.split("\n"):
        line = _PHRASE.sub(lambda m: m.group(1) + "\u00a0", line)
        out += _pack(line.split(_SEPARATOR), _SEPARATOR, fits, words)
    return "\n".join(out)


def _pack(pieces: list[str], joiner: str, fits, split) -> list[str]:
    """Greedy lines of ``pieces`` joined by ``joiner``; a piece too wide on its own goes to ``split``."""
    lines: list[str] = []
    current: str | None = None
    for piece in pieces:
        joined = piece if current is None else current + joiner + piece
        if fits(joined):
            current = joined
            continue
        if current is not None:
            lines.append(current)
        *full, current = [piece] if fits(piece) else split(piece)
        lines += full
    if current is not None:
        lines.append(current)
    return lines


def _cut(word: str, fits) -> list[str]:
    """The last resort: a word wider than the line, cut into the longest pieces that fit."""
    pieces = []
    while word:
        n = len(word)
        while n > 1 and not fits(word[:n]):
            n -= 1
        pieces.append(word[:n])
        word = word[n:]
    return pieces


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
        raise RenderError(f"image must be PIL, HxW, HxWx3 or 3xHxW; got shape {arr.shape}")
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
        raise RenderError(
            f"grid {rows}x{cols} has {rows * cols} cells but the map has Nk={nk} keys; "
            "pass patch keys only (no CLS) and the encoder's patch grid"
        )
    return rows, cols


def _lines(text: str | None) -> int:
    """How many lines ``text`` (a wrapped title) takes; 0 for none."""
    return 0 if not text else text.count("\n") + 1


def _title(title=None, layer=None, step=None, part=None, head=None) -> str | None:
    bits = [
        f"{name}\u00a0{value}"  # a no-break space: a wrapped title never splits "part" from its number
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
            raise RenderError(f"scale must be 'log' or 'linear', got {self.kind!r}")
        if not self.vmax > 1.0:
            raise RenderError(f"vmax must be > 1 so that uniform (=1) is inside the scale, got {self.vmax}")

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

    def colorbar(self, fig: Figure, cax, nk: int):
        """The scale's colour bar drawn in ``cax`` (placed by :func:`_place_colorbar`)."""
        mappable = ScalarMappable(norm=self.norm, cmap=self.cmap)
        extend = "both" if self.kind == "log" else "max"
        cbar = fig.colorbar(mappable, cax=cax, extend=extend)
        cbar.set_label(self.label(nk), fontsize=LABEL_FONT_PT)
        ticks = self.ticks()
        if ticks is not None:
            cbar.set_ticks(ticks, labels=[_fraction(t) for t in ticks])
            cbar.ax.minorticks_off()
        cbar.ax.tick_params(labelsize=MIN_FONT_PT)
        return cbar

    @staticmethod
    def label(nk: int) -> str:
        return f"attention × Nk\n(uniform = 1, Nk = {nk})"

    def ticks(self) -> list[float] | None:
        """The colour bar's ticks on the log scale (powers of 2); None: matplotlib's own (linear)."""
        return _log2_ticks(self.vmax) if self.kind == "log" else None


def _log2_ticks(vmax: float) -> list[float]:
    top = math.floor(math.log2(vmax))
    stride = max(1, math.ceil((2 * top + 1) / 9))  # at most ~9 ticks
    exps = [e for e in range(-top, top + 1) if e % stride == 0]
    return [2.0**e for e in exps]


def _fraction(t: float) -> str:
    return f"{t:g}" if t >= 1 else f"1/{1 / t:g}"


# --------------------------------------------------------------------------- figure plumbing


def _new_figure(figsize: tuple[float, float], max_px: int, dpi: float | None = None) -> Figure:
    """A figure of ``figsize`` inches at :func:`figure_dpi` (or ``dpi``), without a layout engine: its
    axes are placed in inches by the functions below (a savefig is then one draw; matplotlib's
    constrained layout measures every artist twice per savefig, most of a figure's time)."""
    dpi = figure_dpi(figsize, max_px) if dpi is None else dpi
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


#: zlib level of the PNGs: 3 writes an attention figure ~3x faster than Pillow's default 6, ~10 % larger.
PNG_COMPRESS_LEVEL = 3


@overload
def _output(fig: Figure, path: None = None) -> bytes: ...
@overload
def _output(fig: Figure, path: str | os.PathLike[str]) -> Path: ...
def _output(fig: Figure, path: str | os.PathLike[str] | None = None) -> bytes | Path:
    """PNG bytes of ``fig``, or write them to ``path`` and return the Path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, facecolor="white", pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    data = buf.getvalue()
    if path is None:
        return data
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _figure_rgb(fig: Figure) -> np.ndarray:
    """The rendered figure as an (H, W, 3) uint8 array (draws the canvas; Agg unless it has one)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class _Frames:
    """Frames of one figure whose images and titles change: the rest (colour bars, ticks, labels) is
    drawn once, and each frame is that background with the ``changing`` artists drawn over it, in the
    order of a full draw (an image, then its axes' frame, then titles), instead of a full draw per frame."""

    def __init__(self, fig: Figure, images: list, titles: list):
        assert isinstance(fig.canvas, FigureCanvasAgg)  # _new_figure's canvas
        self.fig, self.canvas = fig, fig.canvas
        spines = [s for im in images if im.axes.axison for s in im.axes.spines.values() if s.get_visible()]
        self.changing = [*images, *spines, *titles]
        for artist in [*images, *spines]:
            artist.set_visible(False)
        alphas = [t.get_alpha() for t in titles]
        for t in titles:  # drawn transparent, not hidden: an axes places its title from the title's extent
            t.set_alpha(0.0)
        self.canvas.draw()
        self.background = self.canvas.copy_from_bbox(fig.bbox)
        for artist in [*images, *spines]:
            artist.set_visible(True)
        for t, alpha in zip(titles, alphas, strict=True):
            t.set_alpha(alpha)

    def rgb(self) -> np.ndarray:
        """The current frame as an (H, W, 3) uint8 array."""
        self.canvas.restore_region(self.background)
        renderer = self.canvas.get_renderer()
        for artist in self.changing:
            artist.draw(renderer)
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()


def _axes_pixel_box(fig: Figure, ax, *, draw: bool = True) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixel box of ``ax`` in the rendered image (origin top-left);
    ``draw=False`` when the figure was drawn already (the layout runs at every draw)."""
    if draw:
        fig.canvas.draw()
    bbox = ax.get_window_extent()
    height = fig.canvas.get_width_height()[1]
    return (math.ceil(bbox.x0), math.ceil(height - bbox.y1), math.floor(bbox.x1), math.floor(height - bbox.y0))


def _panel_array(values: np.ndarray, scale: _Scale, grid=None, image_rgb=None):
    """What one attention panel shows, from a (Q, K) map or an (Nk,) marginal.

    Returns ``(array, kind)``: scaled values (kind "qk", "strip" or "grid", coloured by the
    scale) or, with ``image_rgb``, the attention on the image (kind "rgb", see :func:`_on_image`).
    """
    scaled = scale.values(values)
    if values.ndim == 2:
        if grid is not None:
            raise RenderError("grid applies to (Nk,) key marginals, not to (queries, keys) maps")
        return scaled, "qk"
    if values.ndim != 1:
        raise RenderError(f"expected a (queries, keys) map or an (Nk,) marginal, got shape {values.shape}")
    if grid is None:
        return scaled[None, :], "strip"
    cells = scaled.reshape(_check_grid(grid, values.shape[0]))
    if image_rgb is None:
        return cells, "grid"
    return _on_image(cells, image_rgb, scale.cmap, scale.norm), "rgb"


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
    ax.tick_params(labelsize=MIN_FONT_PT)
    xlabel, ylabel = _AXIS_LABELS[kind]
    if not labels:
        ax.set_xticks([])
        ax.set_yticks([])
        return im
    ax.set_xlabel(xlabel, fontsize=LABEL_FONT_PT)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=LABEL_FONT_PT)
    else:
        ax.set_yticks([])
    return im
