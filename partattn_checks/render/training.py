"""Figures of training analysis: check values over training steps, headline metrics over steps,
the change between two checkpoints per (layer, head), each check on two checkpoints, and the
in-loop monitor's curve.

Honest scales: panels of values on the 0..1 scale share one y-span (:func:`shared_ranges`), so a
change is as tall in each; each check is drawn against its threshold, with its pass condition.
Drawn at ``panels.DPI`` with no text under 10 pt (the one sizing rule of every figure, docs/visualization.md);
matplotlib through ``Figure`` and the Agg canvas only. A ``*_figure`` function returns the figure
(tests read its axes); the others write ``path`` (atomically) and return it.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..base.atomic import atomic_write_bytes
from .panels import DPI, PNG_COMPRESS_LEVEL

FONT_PT = 10.5
TITLE_PT = 12.0
_FAIL = "#c62828"
_THRESHOLD = "#555555"


def _figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white", pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    return atomic_write_bytes(Path(path), buf.getvalue())


def _style(ax: Axes, xlabel: str | None, ylabel: str | None, title: str | None) -> None:
    ax.tick_params(labelsize=FONT_PT)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=FONT_PT + 0.5)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=FONT_PT + 0.5)
    if title:
        ax.set_title(title, fontsize=TITLE_PT - 0.5)
    ax.grid(alpha=0.3)


#: Check and headline values on the 0..1 scale (shares, JS / log 2, normalised entropy, peak
#: probability) share one y-span per figure; below it a change is noise, not a trend.
MIN_SPAN = 0.1


@dataclass(frozen=True)
class CheckPanel:
    """One check on a figure: ``values[row][image]`` (NaN where not measured; rows are checkpoints or
    the sides A and B), ``verdicts`` alike, the threshold and its ``op`` (the value passes when it is
    ``op`` the threshold), and whether the value is a count (non-finite values) rather than 0..1."""

    name: str
    label: str
    values: np.ndarray
    verdicts: Sequence[Sequence[str]]
    threshold: float | None
    op: str
    count: bool = False

    @property
    def title(self) -> str:
        """The check's name over what its value is (``"collapse\\ncollapsed share (worst layer)"``)."""
        name = self.name.replace("_", " ")
        return self.label if self.label == name else f"{name}\n{self.label}"

    @property
    def pass_when(self) -> str:
        """``"pass: ≤ 0.84"`` (empty without a threshold)."""
        return f"pass: {self.op} {self.threshold:g}" if self.threshold is not None else ""

    @property
    def unit(self) -> str:
        return "count" if self.count else "value (0–1 scale)"

    def unmeasured(self, xs: Sequence[float] | np.ndarray) -> list[float]:
        """The ``xs`` of rows where an image fails without a value (its record held NaN/Inf)."""
        values = np.asarray(self.values, dtype=float)
        return [
            x
            for x, row, vals in zip(xs, self.verdicts, values, strict=True)
            if any(v == "fail" and not np.isfinite(y) for v, y in zip(row, vals, strict=True))
        ]

    def fails(self) -> list[int]:
        """Failing images per row."""
        return [list(row).count("fail") for row in self.verdicts]

    def judged(self) -> list[int]:
        """Judged (not skipped) images per row."""
        return [len([v for v in row if v != "skip"]) for row in self.verdicts]


def shared_ranges(
    panels: Sequence[tuple[Sequence[float] | np.ndarray, float | None]],
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    min_span: float = MIN_SPAN,
    pad: float = 0.08,
) -> tuple[list[tuple[float, float]], float]:
    """Y-ranges of one common span for panels on the same scale, so that a change of 0.03 is as tall in
    each: ``([(low, high) per panel], span)``. ``panels``: ``(values, threshold or None)``. Each range
    holds its panel's finite values and threshold; the span is the widest extent any panel needs (at
    least ``min_span``); ``pad`` of it is added on either side, and ranges stay inside ``bounds``
    (widened by that pad) where their data allows."""
    extents = []
    for values, threshold in panels:
        v = np.asarray(values, dtype=float).ravel()
        v = v[np.isfinite(v)]
        if threshold is not None and math.isfinite(threshold):
            v = np.append(v, threshold)
        extents.append((float(v.min()), float(v.max())) if v.size else None)
    span = max([hi - lo for lo, hi in filter(None, extents)] + [min_span])
    margin = pad * span
    width = span + 2 * margin
    low_bound, high_bound = bounds[0] - margin, bounds[1] + margin
    ranges = []
    for extent in extents:
        lo, hi = extent or (bounds[0], bounds[0])
        low = (lo + hi) / 2 - width / 2
        low = min(max(low, low_bound), high_bound - width)  # inside the bounds ...
        low = max(min(low, lo - margin), hi + margin - width)  # ... unless the data lies outside them
        ranges.append((low, low + width))
    return ranges, span


def count_range(values: npt.ArrayLike, threshold: float | None = None) -> tuple[float, float]:
    """Y-range of a count panel: from 0 to at least 1 (a count of 0 sits above the floor)."""
    v = np.asarray(values, dtype=float).ravel()
    top = max([1.0, *v[np.isfinite(v)].tolist(), *([threshold] if threshold is not None else [])])
    return -0.08 * top, 1.15 * top


def x_label(xs: Sequence[float] | np.ndarray, by_step: bool) -> str:
    """What the x axis of a trend figure shows: training steps (a log scale when they span a factor of
    10 or more), else checkpoint folder names in the order given."""
    if not by_step:
        return "checkpoint folder (order given)"
    positive = [x for x in xs if x > 0]
    if len(positive) > 1 and max(positive) / min(positive) >= 10:
        return "training step (log scale)"
    return "training step"


def _x_axis(ax: Axes, xs: Sequence[float] | np.ndarray, labels: Sequence[str], by_step: bool) -> None:
    """Ticks at the checkpoints; steps spanning a factor of 10 or more go on a (sym)log axis."""
    positive = [x for x in xs if x > 0]
    if by_step and len(positive) > 1 and max(positive) / min(positive) >= 10:
        if len(positive) == len(xs):
            ax.set_xscale("log")
        else:  # a step 0 among them
            ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_xticks(list(xs))
    ax.minorticks_off()
    if by_step:
        ax.set_xticklabels([f"{int(x)}" for x in xs], fontsize=FONT_PT)
    else:
        ax.set_xticklabels(list(labels), fontsize=FONT_PT, rotation=20, ha="right")
    ax.set_xlabel(x_label(xs, by_step), fontsize=FONT_PT + 0.5)


def _free_height(ax: Axes, threshold: float | None) -> float:
    """An axes-fraction height away from the threshold line (set the y-range first)."""
    if threshold is None:
        return 0.5
    low, high = ax.get_ylim()
    return 0.25 if (threshold - low) / (high - low) > 0.5 else 0.75


def _integer_ticks(ax: Axes, panel: CheckPanel) -> None:
    if panel.count:
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))


def _threshold_line(ax: Axes, threshold: float | None, op: str, *, label: bool = True) -> None:
    """The threshold, dashed, labelled with its pass condition at the right end: on the passing side
    of the line, unless that side has no room (call after setting the y-range)."""
    if threshold is None:
        return
    ax.axhline(threshold, color=_THRESHOLD, ls="--", lw=1.4, zorder=1)
    if not label:
        return
    low, high = ax.get_ylim()
    where = (threshold - low) / (high - low)
    above = where < 0.15 or (op == "≥" and where < 0.85)
    ax.annotate(
        f"pass: {op} {threshold:g}",
        (1.0, threshold),
        xycoords=("axes fraction", "data"),
        xytext=(-4, 3 if above else -3),
        textcoords="offset points",
        ha="right",
        va="bottom" if above else "top",
        fontsize=FONT_PT - 0.5,
        color=_THRESHOLD,
        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
    )


def _panel_ranges(panels: Sequence[CheckPanel]) -> tuple[list[tuple[float, float]], float]:
    """Each panel's y-range: the 0..1 panels share one span (:func:`shared_ranges`), counts start at 0."""
    scaled = [p for p in panels if not p.count]
    shared, span = shared_ranges([(p.values, p.threshold) for p in scaled])
    by_name = dict(zip([p.name for p in scaled], shared, strict=True))
    return [by_name.get(p.name) or count_range(p.values, p.threshold) for p in panels], span


def trend_checks_figure(
    xs: Sequence[float] | np.ndarray, labels: Sequence[str], panels: Sequence[CheckPanel], *, by_step: bool = True
) -> Figure:
    """One panel per check: each image's value against the checkpoint (thin lines), the mean over
    images (thick), the threshold (dashed, with its pass condition) and failing images (red crosses).
    The 0..1 panels share one y-span, so a change is as tall in each; a count panel starts at 0."""
    n = len(panels)
    ncols = min(n, 3) or 1
    nrows = max(1, math.ceil(n / ncols))
    fig = _figure(3.6 * ncols + 0.2, 2.7 * nrows + 0.8)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    xs = np.asarray(xs, dtype=float)
    ranges, span = _panel_ranges(panels)
    for ax, panel, ylim in zip(axes, panels, ranges, strict=False):
        values = np.asarray(panel.values, dtype=float)
        for j in range(values.shape[1]):
            ax.plot(xs, values[:, j], color="#90a4ae", lw=0.9, alpha=0.8, marker=".", ms=4)
        with np.errstate(invalid="ignore"):
            counts = np.sum(np.isfinite(values), axis=1)
            mean = np.where(counts > 0, np.nansum(values, axis=1) / np.maximum(counts, 1), np.nan)
        ax.plot(xs, mean, color="#1565c0", lw=2.2, marker="o", ms=5, zorder=4)
        fails = [
            (xs[i], values[i, j]) for i, row in enumerate(panel.verdicts) for j, v in enumerate(row) if v == "fail"
        ]
        fails = [(x, y) for x, y in fails if np.isfinite(y)]
        if fails:
            fx, fy = zip(*fails, strict=True)
            ax.scatter(fx, fy, marker="x", s=46, color=_FAIL, lw=2, zorder=5)
        ax.set_ylim(*ylim)
        for x in panel.unmeasured(xs):  # failing with no value: the record held NaN/Inf
            ax.text(
                x,
                _free_height(ax, panel.threshold),
                "✗ no value\n(NaN/Inf)",
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="center",
                fontsize=FONT_PT,
                color=_FAIL,
                fontweight="bold",
                zorder=6,
            )
        _threshold_line(ax, panel.threshold, panel.op)
        _x_axis(ax, xs, labels, by_step)
        _style(ax, None, panel.unit, panel.title)
        _integer_ticks(ax, panel)
    for ax in axes[n:]:
        ax.set_visible(False)
    _legend_row(fig)
    over = "over training" if by_step else "per checkpoint"
    fig.suptitle(f"checks {over}: the 0–1 panels share one scale (each spans {span:.2g})", fontsize=TITLE_PT)
    return fig


def _legend_row(fig: Figure) -> None:
    """One legend for every panel, under the title."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color="#90a4ae", lw=0.9, marker=".", ms=4, label="one image"),
        Line2D([], [], color="#1565c0", lw=2.2, marker="o", ms=5, label="mean over images"),
        Line2D([], [], color=_FAIL, lw=0, marker="x", ms=7, mew=2, label="failing image"),
        Line2D([], [], color=_THRESHOLD, lw=1.4, ls="--", label="threshold (pass condition)"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=FONT_PT, frameon=False)


def trend_checks(
    xs: Sequence[float],
    labels: Sequence[str],
    panels: Sequence[CheckPanel],
    path: str | os.PathLike[str],
    *,
    by_step: bool = True,
) -> Path:
    """:func:`trend_checks_figure`, written to ``path``."""
    return _save(trend_checks_figure(xs, labels, panels, by_step=by_step), path)


def trend_metrics_figure(
    xs: Sequence[float] | np.ndarray,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    by_step: bool = True,
) -> Figure:
    """Headline metrics (mean over images) against the checkpoint, one panel each, all on the 0..1
    scale with one shared y-span (:func:`shared_ranges`)."""
    names = list(series)
    ncols = min(len(names), 4) or 1
    nrows = max(1, math.ceil(len(names) / ncols))
    fig = _figure(2.7 * ncols + 0.2, 2.7 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    xs = np.asarray(xs, dtype=float)
    ranges, span = shared_ranges([(series[name], None) for name in names])
    for ax, name, ylim in zip(axes, names, ranges, strict=False):
        ax.plot(xs, np.asarray(series[name], dtype=float), color="#2e7d32", lw=2, marker="o", ms=5)
        ax.set_ylim(*ylim)
        _x_axis(ax, xs, labels, by_step)
        _style(ax, None, "value (0–1 scale)", name.replace("_", " "))
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"headline metrics {'over training' if by_step else 'per checkpoint'} (mean over images): one scale, "
        f"each panel spans {span:.2g}",
        fontsize=TITLE_PT,
    )
    return fig


def trend_metrics(
    xs: Sequence[float],
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    path: str | os.PathLike[str],
    *,
    by_step: bool = True,
) -> Path:
    """:func:`trend_metrics_figure`, written to ``path``."""
    return _save(trend_metrics_figure(xs, labels, series, by_step=by_step), path)


def change_heatmap(
    change: np.ndarray, layers: Sequence[str], path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """(layers, heads) change of the key-marginals between two checkpoints (JS/log 2, 0..max),
    each cell labelled with its value."""
    change = np.asarray(change, dtype=float)
    n_layers, n_heads = change.shape
    fig = _figure(max(4.8, 0.9 * n_heads + 3.0), max(3.0, 0.42 * n_layers + 1.5))
    ax = fig.subplots()
    vmax = max(float(np.nanmax(change)) if change.size else 0.0, 1e-6)
    im = ax.imshow(change, cmap="magma_r", vmin=0.0, vmax=vmax, aspect="auto")
    for i in range(n_layers):
        for j in range(n_heads):
            v = change[i, j]
            ax.text(
                j,
                i,
                f"{v:.3f}",
                ha="center",
                va="center",
                fontsize=FONT_PT - 0.5,
                color="white" if v > 0.6 * vmax else "black",
            )
    ax.set_xticks(range(n_heads))
    ax.set_xticklabels([f"head {h}" for h in range(n_heads)], fontsize=FONT_PT)
    ax.set_yticks(range(n_layers))
    ax.set_yticklabels(list(layers), fontsize=FONT_PT)
    ax.set_xlabel("head", fontsize=FONT_PT + 0.5)
    ax.set_ylabel("cross-attention layer", fontsize=FONT_PT + 0.5)
    ax.set_title(title or "change of key-marginals A → B", fontsize=TITLE_PT - 0.5)
    bar = fig.colorbar(im, ax=ax, shrink=0.9)
    bar.set_label("JS(A, B) / log 2\n(mean over images, steps, parts)", fontsize=FONT_PT)
    bar.ax.tick_params(labelsize=FONT_PT)
    return _save(fig, path)


def check_marks(panel: CheckPanel) -> list[tuple[str, str]]:
    """Per row (side) of a check panel: ``(text, verdict)``, e.g. ``("pass", "pass")``,
    ``("fail 2/3", "fail")`` (failing images of the judged ones) or ``("not judged", "skip")``."""
    marks = []
    for fails, judged in zip(panel.fails(), panel.judged(), strict=True):
        if not judged:
            marks.append(("not judged", "skip"))
        elif fails:
            marks.append((f"fail {fails}/{judged}", "fail"))
        else:
            marks.append(("pass", "pass"))
    return marks


def bar_range(panel: CheckPanel) -> tuple[float, float]:
    """Y-range of a check's bars: from 0, holding every image's value and the threshold, with the top
    fifth left for the pass/fail marks."""
    if panel.count:
        low, high = count_range(panel.values, panel.threshold)
        return low, high / 0.8
    v = np.asarray(panel.values, dtype=float).ravel()
    top = max([*v[np.isfinite(v)].tolist(), panel.threshold or 0.0, 1e-3])
    return -0.03 * top, top / 0.78


_MARK_COLOURS = {"pass": "#17702d", "fail": _FAIL, "skip": "#7a6400"}
_SIDE_COLOURS = ("#1565c0", "#ef6c00")


def check_values_figure(panels: Sequence[CheckPanel], sides: Sequence[str] = ("A", "B"), *, title: str) -> Figure:
    """Each check on each side: a bar of the mean over images, a dot per image (red: failing), the
    threshold dashed (its pass condition under the axis), and a pass/fail mark over each bar. Bars
    start at 0; the count of non-finite values keeps its panel."""
    n = len(panels)
    fig = _figure(2.45 * n + 0.3, 3.4)
    axes = fig.subplots(1, n, squeeze=False).ravel()
    for ax, panel in zip(axes, panels, strict=True):
        values = np.asarray(panel.values, dtype=float)
        x = np.arange(len(sides), dtype=float)
        with np.errstate(invalid="ignore"):
            counts = np.sum(np.isfinite(values), axis=1)
            means = np.where(counts > 0, np.nansum(values, axis=1) / np.maximum(counts, 1), np.nan)
        ax.bar(x, np.nan_to_num(means), width=0.6, color=_SIDE_COLOURS[: len(sides)], alpha=0.75, zorder=2)
        for i, row in enumerate(panel.verdicts):
            ys = values[i]
            jitter = np.linspace(-0.16, 0.16, len(ys)) if len(ys) > 1 else np.zeros(1)
            colours = [_FAIL if v == "fail" else "#263238" for v in row]
            ax.scatter(x[i] + jitter, ys, s=16, c=colours, zorder=3, lw=0)
        ax.set_ylim(*bar_range(panel))
        _threshold_line(ax, panel.threshold, panel.op, label=False)
        for xi in panel.unmeasured(x):  # failing with no value: the record held NaN/Inf
            ax.text(
                xi,
                _free_height(ax, panel.threshold),
                "no value\n(NaN/Inf)",
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="center",
                fontsize=FONT_PT,
                color=_FAIL,
            )
        for xi, (text, verdict) in zip(x, check_marks(panel), strict=True):
            ax.text(
                xi,
                0.975,
                text,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize=FONT_PT,
                fontweight="bold",
                color=_MARK_COLOURS[verdict],
            )
        ax.set_xticks(x)
        ax.set_xticklabels(list(sides), fontsize=FONT_PT)
        ax.set_xlim(-0.6, len(sides) - 0.4)
        _style(ax, panel.pass_when, panel.unit, panel.title)
        _integer_ticks(ax, panel)
        ax.grid(axis="x", visible=False)
    fig.suptitle(
        f"{title}\nbar: mean over images · dot: one image (red: failing) · dashed: threshold", fontsize=TITLE_PT
    )
    return fig


def check_values(
    panels: Sequence[CheckPanel], path: str | os.PathLike[str], sides: Sequence[str] = ("A", "B"), *, title: str
) -> Path:
    """:func:`check_values_figure`, written to ``path``."""
    return _save(check_values_figure(panels, sides, title=title), path)


def monitor_curve(
    rows: Sequence[Mapping[str, float]],
    keys: Sequence[tuple[str, str]],
    path: str | os.PathLike[str],
    *,
    thresholds: Mapping[str, float] | None = None,
) -> Path:
    """The monitor's log: ``keys`` (``(metric name, label)``) against ``rows[i]["iteration"]``,
    one panel each (the y axis is named by the label up to its first comma), with the check threshold
    where ``thresholds[name]`` gives one."""
    thresholds = thresholds or {}
    fig = _figure(6.0 * len(keys), 4.0)
    axes = fig.subplots(1, len(keys), squeeze=False).ravel()
    it = np.asarray([r["iteration"] for r in rows], dtype=float)
    for ax, (name, label) in zip(axes, keys, strict=True):
        ys = np.asarray([r.get(name, np.nan) for r in rows], dtype=float)
        ax.plot(it, ys, color="#1565c0", lw=2, marker="o", ms=3)
        if name in thresholds:
            ax.axhline(thresholds[name], color=_THRESHOLD, ls="--", lw=1.4, label=f"threshold {thresholds[name]:g}")
            ax.legend(fontsize=FONT_PT - 0.5, loc="best")
        _style(ax, "training iteration", label.split(",")[0], label)
    return _save(fig, path)
