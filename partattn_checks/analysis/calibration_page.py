"""What ``partattn calibrate`` writes: the thresholds TOML with its provenance, the model matrix as
markdown and JSON, the smallest graded degradation each check catches, and a figure of every
check's values per model with the chosen threshold."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import platform
from pathlib import Path

from ..checks import Thresholds
from ..model.broken import GRADES
from .calibrate import CALIBRATED, Catch, Decision, is_ceiling, margin
from .zoo import targets

FINGERPRINT_NOTE = "sha256 of every file's relative path and size, safetensors headers and JSON files' bytes"


def model_fingerprint(model: str | Path) -> str:
    """A cheap fingerprint of a checkpoint folder: no tensor data is read (a multi-GB release
    checkpoint takes milliseconds); any change of a tensor's name, shape, dtype, file size, config
    or run defaults changes it. Equal fingerprints with edited tensor *values* are possible."""
    root = Path(model)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        size = path.stat().st_size
        digest.update(f"{rel}\0{size}\0".encode())
        if path.suffix == ".safetensors":
            with open(path, "rb") as fh:
                head = fh.read(8)
                digest.update(head + fh.read(int.from_bytes(head, "little") if len(head) == 8 else 0))
        elif path.suffix == ".json":
            digest.update(path.read_bytes())
    return digest.hexdigest()


def provenance(model: Path, images: list[str], settings: dict, fraction: float, base_source: str) -> dict:
    from .. import __version__

    try:
        import torch

        torch_version = str(torch.__version__)
    except ImportError:  # pragma: no cover - calibration always has torch
        torch_version = "?"
    return {
        "model": str(model),
        "fingerprint": model_fingerprint(model),
        "fingerprint_of": FINGERPRINT_NOTE,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "images": images,
        "settings": settings,
        "margin": fraction,
        "rule": f"threshold = healthy worst + {fraction:g} x (variant least-failing - healthy worst), rounded; "
        "refused when the two overlap",
        "previous_thresholds": base_source,
        "versions": {"partattn-checks": __version__, "torch": torch_version, "python": platform.python_version()},
        "machine": f"{platform.machine()} {platform.system()}",
    }


# ---------------------------------------------------------------------------- TOML
def _toml_value(value) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(float(value))


def thresholds_toml(thresholds: Thresholds, decisions: list[Decision], prov: dict) -> str:
    """Every table and key of ``thresholds`` (a complete file: ``--partattn-thresholds``, or the body
    of ``[tool.partattn.thresholds]`` with each table prefixed), with the provenance as comments."""
    s = prov["settings"]
    lines = [
        "# Thresholds calibrated by `partattn calibrate` (docs/own-checkpoint.md).",
        f"# model: {prov['model']}",
        f"# fingerprint: {prov['fingerprint']} ({prov['fingerprint_of']})",
        f"# date: {prov['date']}",
        f"# images ({len(prov['images'])}): {', '.join(prov['images'])}",
        "# settings: " + ", ".join(f"{k} {v}" for k, v in s.items()),
        f"# rule: {prov['rule']}",
        f"# previous thresholds: {prov['previous_thresholds']}",
        "# versions: " + ", ".join(f"{k} {v}" for k, v in prov["versions"].items()),
        "",
    ]
    notes = {CALIBRATED[d.check]: d for d in decisions if d.check in CALIBRATED}
    for name, table in thresholds.items():
        lines.append(f"[{name}]")
        for f in dataclasses.fields(table):
            decision = notes.get((name, f.name))
            comment = ""
            if decision is not None:
                comment = "  # calibrated" if decision.calibrated else "  # NOT calibrated: kept (see the matrix)"
            lines.append(f"{f.name} = {_toml_value(getattr(table, f.name))}{comment}")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- matrix
def _fmt(x) -> str:
    return "—" if x is None or x != x else f"{x:.3f}"


def _range(row) -> str:
    values = [v for v in row["values"].values() if v is not None and v == v]
    if not values:
        return "—"
    lo, hi = min(values), max(values)
    return f"{lo:.3f}" if abs(hi - lo) < 5e-4 else f"{lo:.3f}–{hi:.3f}"


def markdown(table: dict, decisions: list[Decision]) -> str:
    """The matrix (one row per model, one cell per check) and the calibration table with margins."""
    checks = list(next(iter(table.values())))
    expected = targets()
    lines = ["| model | " + " | ".join(checks) + " |", "|---|" + "---|" * len(checks)]
    for model, rows in table.items():
        cells = []
        for check in checks:
            row = rows[check]
            verdict = "pass" if row["failing"] == 0 else f"**FAIL {row['failing']}/{row['judged']}**"
            target = " ◀" if check in expected.get(model, ()) else ""
            cells.append(f"{_range(row)} vs {_fmt(row['threshold'])}: {verdict}{target}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    ceilings = ", ".join(c for c in checks if is_ceiling(c))
    floors = ", ".join(c for c in checks if not is_ceiling(c))
    lines += [
        "",
        "Each cell: the range of the check's value over the fixture images, the calibrated threshold, and how "
        f"many images fail under it. ◀ marks the check a model is built to fail. Ceilings (the value must stay "
        f"at or below): {ceilings}; floor (at or above): {floors}. A model whose record holds NaN/Inf gets "
        'counts of non-finite values instead (every check fails on it: "cannot judge").',
        *_own_thresholds_note(table),
        "",
        "## Calibration and margins",
        "",
        "| check | field | healthy, worst image | built-to-fail model, least failing image | threshold | "
        "healthy margin | broken margin | previous |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in decisions:
        threshold = 0.0 if d.check == "nonfinite" else d.threshold
        variant = f"{d.variant}: {_fmt(d.variant_least)}" if d.variant else "—"
        healthy_margin = margin(d.check, d.healthy_worst, threshold)
        broken = margin(d.check, d.variant_least, threshold)
        status = "" if d.calibrated else (" (fixed)" if d.check not in CALIBRATED else " **(kept: not calibrated)**")
        lines.append(
            f"| {d.check} | {d.field or '—'} | {_fmt(d.healthy_worst)} | {variant} | {_fmt(threshold)}{status} | "
            f"{_fmt(healthy_margin)} | {_fmt(-broken if broken is not None else None)} | {_fmt(d.previous)} |"
        )
    lines += ["", "Notes:", ""] + [f"- {d.note}" for d in decisions]
    return "\n".join(lines)


def _own_thresholds_note(table: dict) -> list[str]:
    """A line naming the images judged with their sidecar's own value of a calibrated field, if any."""
    own = {
        (i, check, t)
        for rows in table.values()
        for check, row in rows.items()
        for i, t in row["own_thresholds"].items()
    }
    if not own:
        return []
    listed = ", ".join(f"{i} ({'.'.join(CALIBRATED[check])} {t:g})" for i, check, t in sorted(own))
    return [
        "",
        f"Judged with their sidecar's own threshold (and left out of that check's calibration): {listed}.",
    ]


def matrix_json(
    table: dict, decisions: list[Decision], thresholds: Thresholds, prov: dict, graded: dict | None = None
) -> str:
    """The matrix document; ``graded`` (:func:`graded_doc`) is added under its key when measured."""
    doc = {
        "provenance": prov,
        "calibrated": {d.field: d.threshold for d in decisions if d.calibrated},
        "thresholds": thresholds.to_dict(),
        "decisions": [d.to_dict() for d in decisions],
        "matrix": table,
    }
    if graded is not None:
        doc["graded"] = graded
    return json.dumps(doc, indent=1) + "\n"


# ---------------------------------------------------------------------------- graded degradations
GRADED_TITLE = "## Smallest graded degradation caught"


def _levels(levels) -> str:
    return ", ".join(f"{x:g}" for x in levels)


def _caught(c: Catch) -> str:
    return "not caught" if c.level is None else f"{c.level:g} ({c.failing}/{c.judged})"


def graded_markdown(catches: list[Catch]) -> str:
    """One row per check, one column per side of each grade: the smallest level caught, n/N images."""
    columns = list(dict.fromkeys(c.side for c in catches))
    cell = {(c.check, c.side): c for c in catches}
    checks = list(dict.fromkeys(c.check for c in catches))
    lines = [
        GRADED_TITLE,
        "",
        "Every level of each graded degradation (a weight edit made in memory, like the variants) on the fixture "
        "images, judged with the calibrated thresholds. Each cell: the level closest to the healthy model at which "
        "the check fails on at least one image, and on how many of the images it passes on the healthy model "
        '(n/N); "not caught" when no level fails it.',
        "",
        "| check | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    lines += [f"| {check} | " + " | ".join(_caught(cell[check, side]) for side in columns) + " |" for check in checks]
    lines.append("")
    for grade in dict.fromkeys(c.grade for c in catches):
        g = GRADES[grade]
        lines.append(f"- {grade}: {g.summary}; levels {_levels(g.levels)} (healthy: {g.healthy:g})")
    for c in {c.check: c for c in catches if c.healthy_failing}.values():
        lines.append(
            f"- {c.check}: {c.healthy_failing} image(s) fail already on the healthy model, not counted "
            "(a threshold kept uncalibrated, or a sidecar's own)"
        )
    return "\n".join(lines)


def graded_doc(catches: list[Catch], failing: dict) -> dict:
    """The ``graded`` key of model-matrix.json: the grades, each check's smallest caught level per side
    (``null``: not caught) and every level's failing-image counts (``graded_failing``)."""
    caught: dict[str, dict] = {}
    for c in catches:
        caught.setdefault(c.check, {})[c.side] = {
            "grade": c.grade,
            "level": c.level,
            "failing": c.failing,
            "judged": c.judged,
            "healthy_failing": c.healthy_failing,
        }
    return {
        "judged_with": "the calibrated thresholds, each image's sidecar overrides applied",
        "grades": {
            name: {"summary": GRADES[name].summary, "healthy": GRADES[name].healthy, "levels": list(levels)}
            for name, levels in failing.items()
        },
        "caught": caught,
        "failing": {
            name: {f"{level:g}": counts for level, counts in levels.items()} for name, levels in failing.items()
        },
    }


# ---------------------------------------------------------------------------- figure
def figure(table: dict, decisions: list[Decision], title: str = "") -> bytes:
    """One panel per calibrated check: each model's per-image values (dots), the healthy worst and
    the least-failing variant image (rings), the threshold (solid) and the previous one (dashed).
    Images that could not be judged for NaN/Inf are left out (their count is in the label)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [d for d in decisions if d.check in CALIBRATED]
    models = list(table)
    fig = Figure(figsize=(4.2 * len(shown), 3.6 + 0.12 * len(models)), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(shown), squeeze=False)[0]
    for ax, d in zip(axes, shown, strict=True):
        for y, model in enumerate(models):
            row = table[model][d.check]
            bad = set(row["nonfinite_images"])
            values = [v for i, v in row["values"].items() if v is not None and i not in bad]
            target = model == d.variant
            colour = "tab:green" if model == "healthy" else ("tab:red" if target else "tab:gray")
            ax.scatter(values, [y] * len(values), s=18, color=colour, alpha=0.8, zorder=3)
            if model == "healthy" and d.healthy_worst is not None:
                ax.scatter([d.healthy_worst], [y], s=90, facecolors="none", edgecolors="black", zorder=4)
            if target and d.variant_least is not None:
                ax.scatter([d.variant_least], [y], s=90, facecolors="none", edgecolors="black", zorder=4)
            if bad:
                ax.annotate(
                    f"{len(bad)} NaN/Inf",
                    (1.0, y),
                    xycoords=("axes fraction", "data"),
                    ha="right",
                    va="center",
                    fontsize=7,
                    color="purple",
                )
        if d.previous is not None and d.previous != d.threshold:
            ax.axvline(d.previous, color="gray", ls="--", lw=1, label=f"previous {d.previous:g}")
        if d.threshold is not None:
            ax.axvline(
                d.threshold, color="crimson", lw=1.5, label=f"{'new' if d.calibrated else 'kept'} {d.threshold:g}"
            )
        ax.set_yticks(range(len(models)), models, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(-0.02, 1.02)
        side = "≤" if is_ceiling(d.check) else "≥"
        state = "calibrated" if d.calibrated else "NOT calibrated (overlap)"
        ax.set_title(f"{d.check} ({side})\n{d.field}: {state}", fontsize=9)
        ax.set_xlabel("value per fixture image", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize=7, loc="best", framealpha=0.8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()


__all__ = [
    "figure",
    "model_fingerprint",
    "graded_doc",
    "graded_markdown",
    "markdown",
    "matrix_json",
    "provenance",
    "thresholds_toml",
]
