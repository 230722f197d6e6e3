"""Figures of training analysis: check values over training steps, headline metrics over steps,
the change between two checkpoints per (layer, head), and the in-loop monitor's curve.

Drawn at :data:`DPI` with no text under 10 pt (the project's sizing rule, docs/visualization.md);
matplotlib through ``Figure`` and the Agg canvas only. Each function writes ``path`` (atomically)
and returns it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..atomic import atomic_write_bytes

DPI = 110
FONT_PT = 10.5
TITLE_PT = 12.0
_FAIL = "#c62828"
_THRESHOLD = "#555555"


def _figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return atomic_write_bytes(Path(path), buf.getvalue())


def _style(ax, xlabel: str | None, ylabel: str | None, title: str | None) -> None:
    ax.tick_params(labelsize=FONT_PT)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=FONT_PT + 0.5)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=FONT_PT + 0.5)
    if title:
        ax.set_title(title, fontsize=TITLE_PT - 0.5)
    ax.grid(alpha=0.3)


def _x_axis(ax, xs: Sequence[float], labels: Sequence[str], by_step: bool) -> None:
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


def trend_checks(
    xs: Sequence[float],
    labels: Sequence[str],
    checks: Sequence[tuple[str, np.ndarray, list[list[str]], float | None, str]],
    path,
    *,
    by_step: bool = True,
    images: Sequence[str] = (),
) -> Path:
    """One panel per check: each image's value against the training step (thin lines), the mean
    over images (thick), the threshold (dashed) and failing points (red crosses).

    ``checks``: ``(label, values (checkpoints, images) with NaN where skipped, verdicts
    [checkpoint][image], threshold, op)``."""
    n = len(checks)
    ncols = 2 if n > 1 else 1
    nrows = math.ceil(n / ncols)
    fig = _figure(6.2 * ncols, 3.4 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    xs = np.asarray(xs, dtype=float)
    for ax, (label, values, verdicts, threshold, op) in zip(axes, checks, strict=False):
        values = np.asarray(values, dtype=float)
        for j in range(values.shape[1]):
            ax.plot(xs, values[:, j], color="#90a4ae", lw=0.9, alpha=0.8, marker=".", ms=4)
        with np.errstate(invalid="ignore"):
            counts = np.sum(np.isfinite(values), axis=1)
            mean = np.where(counts > 0, np.nansum(values, axis=1) / np.maximum(counts, 1), np.nan)
        ax.plot(xs, mean, color="#1565c0", lw=2.2, marker="o", ms=5, label="mean over images")
        fails = [(xs[i], values[i, j]) for i, row in enumerate(verdicts) for j, v in enumerate(row) if v == "fail"]
        fails = [(x, y) for x, y in fails if np.isfinite(y)]
        if fails:
            fx, fy = zip(*fails, strict=True)
            ax.scatter(fx, fy, marker="x", s=46, color=_FAIL, lw=2, zorder=5, label="failing image")
        if threshold is not None:
            ax.axhline(threshold, color=_THRESHOLD, ls="--", lw=1.4, label=f"threshold (pass: {op} {threshold:g})")
        _x_axis(ax, xs, labels, by_step)
        _style(ax, "training step" if by_step else "checkpoint", label.split(" (")[0], label)
        ax.legend(fontsize=FONT_PT - 0.5, loc="best", framealpha=0.85)
    for ax in axes[n:]:
        ax.set_visible(False)
    if images:
        fig.suptitle(f"checks over training ({len(images)} fixture images)", fontsize=TITLE_PT)
    return _save(fig, path)


def trend_metrics(
    xs: Sequence[float], labels: Sequence[str], series: dict[str, Sequence[float]], path, *, by_step: bool = True
) -> Path:
    """Headline metrics (mean over images) against the training step, one panel each."""
    names = list(series)
    ncols = min(len(names), 2) or 1
    nrows = max(1, math.ceil(len(names) / ncols))
    fig = _figure(6.2 * ncols, 3.2 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    xs = np.asarray(xs, dtype=float)
    for ax, name in zip(axes, names, strict=False):
        ax.plot(xs, np.asarray(series[name], dtype=float), color="#2e7d32", lw=2, marker="o", ms=5)
        _x_axis(ax, xs, labels, by_step)
        _style(ax, "training step" if by_step else "checkpoint", name.replace("_", " "), name.replace("_", " "))
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.suptitle("headline metrics over training (mean over images)", fontsize=TITLE_PT)
    return _save(fig, path)


def change_heatmap(change: np.ndarray, layers: Sequence[str], path, *, title: str | None = None) -> Path:
    """(layers, heads) change of the key-marginals between two checkpoints (JS/log 2, 0..max),
    each cell labelled with its value."""
    change = np.asarray(change, dtype=float)
    n_layers, n_heads = change.shape
    fig = _figure(max(4.8, 1.1 * n_heads + 3.2), max(3.2, 0.5 * n_layers + 1.6))
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


def check_bars(
    names: Sequence[str], a: Sequence[float], b: Sequence[float], path, *, title: str = "check values on A and B"
) -> Path:
    """Each check's value (mean over images) on A and on B, one small panel per check."""
    n = len(names)
    fig = _figure(2.6 * n + 0.6, 3.2)
    axes = fig.subplots(1, n, squeeze=False).ravel()
    for ax, name, va, vb in zip(axes, names, a, b, strict=True):
        ax.bar([0, 1], [va, vb], color=["#1565c0", "#ef6c00"])
        ax.set_xticks([0, 1])
        ax.set_xticklabels(["A", "B"], fontsize=FONT_PT)
        _style(ax, None, None, name.replace("_", " "))
    fig.suptitle(title, fontsize=TITLE_PT)
    return _save(fig, path)


def monitor_curve(rows: Sequence[dict], keys: Sequence[tuple[str, str]], path, *, thresholds=None) -> Path:
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
