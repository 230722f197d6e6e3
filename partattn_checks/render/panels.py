"""Shared pieces of every figure: the fixed colour scale, panels, the figure canvas and output."""

from __future__ import annotations

import functools
import hashlib
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
from matplotlib.ticker import MaxNLocator
from PIL import Image

from ..errors import PartattnError

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
OUTLINE_RGB = (0.0, 0.78, 0.25)
_OUTLINE_ALPHA = 0.9  # opacity of a full-strength edge
_OUTLINE_PX = 256  # smaller images are enlarged (by a whole factor) to about this before their edges are found
_EDGE_FULL = 0.5  # colour step (next pixel, channels in [0, 1]) of a full-strength edge
_EDGE_MIN = 0.2  # weaker edges (texture, noise) are not drawn
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

    def colorbar_in(self, bar_in: float) -> float:
        """Width in inches of the colour bar of width ``bar_in`` with its tick labels and two-line label,
        from the panels' right edge (``_CBAR_PAD_IN``) to the label's right edge."""
        ticks = self.ticks()
        if ticks is not None:
            labels = [_fraction(t) for t in ticks]
        else:  # matplotlib's auto ticks of 0..vmax: bounded by the widest of these
            labels = [f"{t:.4g}" for t in MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10]).tick_values(0, self.vmax)]
        widest = max(text_width_in(label, MIN_FONT_PT) for label in labels)
        return _CBAR_PAD_IN + bar_in + _TICK_IN + widest + _LABELPAD_IN + _lines_in(LABEL_FONT_PT, 2)


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


def _on_image(cells: np.ndarray, image_rgb: np.ndarray, cmap, norm) -> np.ndarray:
    """Patch-grid ``cells`` upsampled bilinearly onto the image, in opaque colours of ``cmap``/``norm``,
    with the image's outlines drawn over them in ``OUTLINE_RGB``.

    The image is never blended under the attention: a grey (or any) backdrop under a diverging map
    whose neutral is light grey reads as values, a dark shape as "less attention". So every pixel
    off the outlines has exactly the colour of its value on the colour bar (uniform = one flat
    neutral colour, whatever the image's brightness), and the image shows only as thin edges, in a
    green that neither colour map (coolwarm: blue-grey-red, magma: black-purple-yellow) uses.
    A small image is first enlarged to about ``_OUTLINE_PX`` so that its edges stay one pixel thin.
    """
    alpha = _edges(image_rgb)
    height, width = alpha.shape[:2]
    up = np.asarray(Image.fromarray(cells.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR))
    colours = np.asarray(cmap(norm(up)))[..., :3]
    return (1.0 - alpha) * colours + alpha * np.asarray(OUTLINE_RGB)


_EDGES: dict[tuple, np.ndarray] = {}  # the last few images' outline opacities (every panel of a figure shares one)


def _edges(image_rgb: np.ndarray) -> np.ndarray:
    """(H, W, 1) outline opacity of ``image_rgb``, enlarged first when small (see :func:`_on_image`)."""
    key = (image_rgb.shape, image_rgb.dtype.str, hashlib.blake2b(image_rgb.tobytes(), digest_size=16).digest())
    alpha = _EDGES.get(key)
    if alpha is None:
        factor = max(1, round(_OUTLINE_PX / max(image_rgb.shape[:2])))
        if factor > 1:
            image_rgb = _resize(image_rgb, (image_rgb.shape[1] * factor, image_rgb.shape[0] * factor))
        alpha = _outline(image_rgb)[..., None]
        alpha.setflags(write=False)
        while len(_EDGES) >= 4:
            _EDGES.pop(next(iter(_EDGES)))
        _EDGES[key] = alpha
    return alpha


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Float RGB resized bilinearly to ``size`` (width, height)."""
    channels = [
        Image.fromarray(c.astype(np.float32)).resize(size, Image.Resampling.BILINEAR) for c in rgb.transpose(2, 0, 1)
    ]
    return np.stack([np.asarray(c) for c in channels], axis=-1).astype(np.float64)


def _outline(image_rgb: np.ndarray) -> np.ndarray:
    """(H, W) opacity of the image's outline: its strongest colour step to the next pixel right or
    below, 0 on flat regions."""
    step = np.zeros(image_rgb.shape[:2])
    step[:, :-1] = np.abs(np.diff(image_rgb, axis=1)).max(axis=-1)
    step[:-1, :] = np.maximum(step[:-1, :], np.abs(np.diff(image_rgb, axis=0)).max(axis=-1))
    strength = np.clip(step / _EDGE_FULL, 0.0, 1.0)
    strength[strength < _EDGE_MIN] = 0.0  # texture and compression noise stay flat
    return _OUTLINE_ALPHA * strength


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


# --------------------------------------------------------------------------- fixed layout
#: Every attention figure places its axes itself, in inches, from the sizes of what surrounds them
#: (titles, tick labels, the colour bar), measured with matplotlib's own text extents. The figure's
#: size is the readable one (``panel_layout``); the panels take what the text leaves, centred.
_PAD_IN = 0.1  # the figure's edge to any text
_GAP_IN = 0.12  # between panels side by side
_CBAR_PAD_IN = 0.15  # panels to their colour bar
_TICK_IN = 7.0 / 72  # a default tick: 3.5 pt long + 3.5 pt to its label
_INDEX_TICK_IN = 4.0 / 72  # an index tick (``grids._index_ticks``): 2.5 pt + 1.5 pt
_LABELPAD_IN = 4.0 / 72  # tick labels to the axis label
_TITLE_PAD_IN = 6.0 / 72  # an axes title's default pad


def _lines_in(fontsize: float, lines: int = 1) -> float:
    """Height in inches of ``lines`` lines of text at ``fontsize`` (matplotlib's line spacing 1.2)."""
    return lines * 1.2 * fontsize / 72.0


def _digits_in(n: int, fontsize: float = MIN_FONT_PT) -> float:
    """Width of the widest index label of ``range(n)`` (all digits are as wide in the default font)."""
    return text_width_in("0" * len(str(max(n - 1, 0))), fontsize)


def _axes_in(fig: Figure, x: float, y: float, w: float, h: float):
    """An axes at ``(x, y)`` inches from the figure's bottom-left, ``w`` x ``h`` inches."""
    width, height = fig.get_size_inches()
    return fig.add_axes((x / width, y / height, w / width, h / height))


def _bar_in(length_in: float) -> float:
    """Colour bar width for a bar ``length_in`` long: matplotlib's aspect 20, kept readable."""
    return min(max(length_in / 20.0, 0.1), 0.45)


def _place_colorbar(fig: Figure, x: float, y0: float, y1: float):
    """The colour bar's axes at ``x`` inches, 0.9 of the height ``y0``..``y1`` (inches), centred."""
    length = 0.9 * (y1 - y0)
    return _axes_in(fig, x, y0 + 0.05 * (y1 - y0), _bar_in(length), length)


@dataclass(frozen=True)
class _Placed:
    """Where :func:`_panel_grid` or :func:`_single_panel` put things (inches from the bottom-left)."""

    axes: list
    cax: object
    left: float  # the panels' left edge
    right: float  # the panels' right edge
    bottom: float  # the lowest panel's bottom
    top: float  # the top of everything (the figure title's top)


def _panel_grid(
    fig: Figure,
    n: int,
    ncols: int,
    scale: _Scale,
    *,
    title_lines: int = 0,
    left_in: float = 0.0,
    bottom_in: float = 0.0,
) -> _Placed:
    """``n`` square panels in rows of ``ncols`` (each with a one-line title band above it), a figure
    title of ``title_lines`` lines on top, ``left_in``/``bottom_in`` inches left of and under the
    panels for their tick labels and figure-level axis labels, the colour bar on the right."""
    width, height = fig.get_size_inches()
    nrows = math.ceil(n / ncols)
    band = _PANEL_TITLE_IN
    top_in = _lines_in(TITLE_FONT_PT, title_lines) + 0.06 if title_lines else 0.0
    side = (height - 2 * _PAD_IN - top_in - bottom_in) / nrows - band
    for _ in range(2):  # the bar's width follows its length, which follows the panels
        bar = scale.colorbar_in(_bar_in(0.9 * (nrows * side + (nrows - 1) * band)))
        across = (width - 2 * _PAD_IN - left_in - bar - (ncols - 1) * _GAP_IN) / ncols
        side = min(side, across)
    block_w = left_in + ncols * side + (ncols - 1) * _GAP_IN + bar
    block_h = top_in + nrows * (side + band) + bottom_in
    x0 = _PAD_IN + max(0.0, width - 2 * _PAD_IN - block_w) / 2 + left_in
    top = height - _PAD_IN - max(0.0, height - 2 * _PAD_IN - block_h) / 2
    axes = []
    for i in range(n):
        row, col = divmod(i, ncols)
        y = top - top_in - row * (side + band) - band - side
        axes.append(_axes_in(fig, x0 + col * (side + _GAP_IN), y, side, side))
    right = x0 + ncols * side + (ncols - 1) * _GAP_IN
    bottom = top - top_in - nrows * (side + band)
    cax = _place_colorbar(fig, right + _CBAR_PAD_IN, bottom, top - top_in - band)
    return _Placed(axes, cax, x0, right, bottom, top)


def _single_panel(
    fig: Figure,
    scale: _Scale,
    *,
    title_lines: int = 0,
    fontsize: float = TITLE_FONT_PT,
    left_in: float = 0.0,
    bottom_in: float = 0.0,
    square: bool = True,
) -> _Placed:
    """One panel under an axes title of ``title_lines`` lines, ``left_in``/``bottom_in`` inches for its
    tick and axis labels, the colour bar on the right; square (images, patch grids) or filling the
    room (queries x keys maps, strips)."""
    width, height = fig.get_size_inches()
    top_in = _lines_in(fontsize, title_lines) + _TITLE_PAD_IN if title_lines else 0.0
    h = height - 2 * _PAD_IN - top_in - bottom_in
    bar = scale.colorbar_in(_bar_in(0.9 * h))
    w = width - 2 * _PAD_IN - left_in - bar
    if square:
        w = h = min(w, h)
        bar = scale.colorbar_in(_bar_in(0.9 * h))
    block_w, block_h = left_in + w + bar, top_in + h + bottom_in
    x0 = _PAD_IN + max(0.0, width - 2 * _PAD_IN - block_w) / 2 + left_in
    top = height - _PAD_IN - max(0.0, height - 2 * _PAD_IN - block_h) / 2
    y0 = top - top_in - h
    ax = _axes_in(fig, x0, y0, w, h)
    cax = _place_colorbar(fig, x0 + w + _CBAR_PAD_IN, y0, y0 + h)
    return _Placed([ax], cax, x0, x0 + w, y0, top)


def _label_insets(kind: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(left, bottom) inches that :func:`_show` with ``labels=True`` needs beside a panel of ``kind``
    showing an array of ``shape``: tick labels (indices) and the axis label."""
    if kind == "rgb":
        return 0.0, 0.0
    label = _lines_in(LABEL_FONT_PT) + _LABELPAD_IN
    bottom = _lines_in(MIN_FONT_PT) + _TICK_IN + label
    left = _digits_in(shape[0]) + _TICK_IN + label if _AXIS_LABELS[kind][1] else 0.0
    return left, bottom


# --------------------------------------------------------------------------- figures
