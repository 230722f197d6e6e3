"""Where the attention figures' axes go: placed in inches from the sizes of what surrounds them
(titles, tick labels, the colour bar), measured with matplotlib's own text extents, instead of a
layout engine (matplotlib's constrained layout measures every artist twice per savefig, most of a
figure's time). The figure's size is the readable one (:func:`~.panels.panel_layout`); the panels
take what the text leaves, centred."""

from __future__ import annotations

import math
from dataclasses import dataclass

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .panels import (
    _AXIS_LABELS,
    _PANEL_TITLE_IN,
    LABEL_FONT_PT,
    MIN_FONT_PT,
    TITLE_FONT_PT,
    _fraction,
    _Scale,
    text_width_in,
)

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


def _colorbar_in(scale: _Scale, bar_in: float) -> float:
    """Width in inches of the colour bar of width ``bar_in`` of ``scale`` with its tick labels and two-line label,
    from the panels' right edge (``_CBAR_PAD_IN``) to the label's right edge."""
    ticks = scale.ticks()
    if ticks is not None:
        labels = [_fraction(t) for t in ticks]
    else:  # matplotlib's auto ticks of 0..vmax: bounded by the widest of these
        labels = [f"{t:.4g}" for t in MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10]).tick_values(0, scale.vmax)]
    widest = max(text_width_in(label, MIN_FONT_PT) for label in labels)
    return _CBAR_PAD_IN + bar_in + _TICK_IN + widest + _LABELPAD_IN + _lines_in(LABEL_FONT_PT, 2)


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
        bar = _colorbar_in(scale, _bar_in(0.9 * (nrows * side + (nrows - 1) * band)))
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
    bar = _colorbar_in(scale, _bar_in(0.9 * h))
    w = width - 2 * _PAD_IN - left_in - bar
    if square:
        w = h = min(w, h)
        bar = _colorbar_in(scale, _bar_in(0.9 * h))
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
