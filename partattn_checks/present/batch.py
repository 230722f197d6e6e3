"""The batch of :meth:`~partattn_checks.present.visualizer.AttentionVisualizer.process_batch`: one
folder per image (record, input, figures, metrics, page) and the index page that links them all."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..capture.record import AttentionRecord
from ..checks import CHECKS, REGISTRY, CheckResult
from .pages import Cell, write_index
from .pages.run_page import render_record, save_run
from .views import safe_name

if TYPE_CHECKING:
    from .visualizer import AttentionVisualizer, ImageInput


def write_batch(
    viz: AttentionVisualizer,
    images: Sequence[ImageInput],
    counts: Sequence[int],
    out_dir: Path,
    run: Callable[[ImageInput, int], AttentionRecord],
    *,
    layer: int | str | None,
    fps: float,
) -> list[Path]:
    """Run each image (``run(image, part count)``, which leaves the encoder's view and the results on
    ``viz``), write its folder under ``out_dir`` and then ``out_dir/index.html``; return the folders."""
    folders: list[Path] = []
    rows: list[list[object]] = []
    used: set[str] = set()
    for i, (image, n) in enumerate(zip(images, counts, strict=False)):
        stem = safe_name(Path(image).stem if isinstance(image, (str, os.PathLike)) else f"image{i}")
        name, k = stem, 2
        while name in used:
            name, k = f"{stem}_{k}", k + 1
        used.add(name)
        folder = out_dir / name
        record = run(image, n)
        links = save_run(folder, record, viz.image)
        render_record(
            record,
            folder,
            image=viz.image,
            results=viz.results,
            layer=layer,
            fps=fps,
            title=str(image) if isinstance(image, (str, os.PathLike)) else name,
            thresholds=viz.thresholds,
            links=links,
        )
        folders.append(folder)
        rows.append([Cell(name, href=f"{name}/index.html"), n] + [verdict_cell(viz.results.get(c)) for c in CHECKS])
    write_index(
        out_dir / "index.html",
        f"partattn: {len(folders)} images",
        sections=[("Images", [(f.name, f"{f.name}/index.html") for f in folders])],
        tables=[("Checks", ["image", "parts", *CHECKS], rows)],
        note="Each cell: the verdict, the value the check measured and its pass condition (op threshold).",
    )
    return folders


def verdict_cell(result: CheckResult | None) -> Cell:
    """A batch table cell: ``fail · 1 (≤ 0.84)``, the verdict with the value and its pass condition."""
    if result is None:
        return Cell("")
    text = result.verdict
    if result.value is not None and result.threshold is not None and result.verdict != "skip":
        op = REGISTRY[result.name].op if result.name in REGISTRY else "vs"
        text += f" · {result.value:.3g} ({op} {result.threshold:g})"
    return Cell(text, result.verdict)
