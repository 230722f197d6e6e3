"""The ``partattn run``/``show`` report of one record: figures, GIFs, ``metrics.json`` and ``index.html``."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ... import render
from ...base.atomic import atomic_write_text
from ...capture import metrics
from ...capture.record import AttentionRecord
from ...checks import REGISTRY, CheckResult, Thresholds, run_checks
from ..check_figures import figures_for
from ..views import default_layer, default_layer_reason, renorm, safe_name, with_cls
from .page import Page

#: Head grids drawn at most (one per recorded full map).
MAX_HEAD_GRIDS = 16


def save_run(folder, record: AttentionRecord, image_view=None) -> list[tuple[str, Path]]:
    """Save ``record`` as ``<folder>/record.{json,safetensors}`` and the encoder's view as
    ``input.png``; return ``(label, path)`` links for the index."""
    folder = Path(folder)
    tensor_path, json_path = record.save(folder / "record")
    links = [("record (json)", json_path), ("record (tensors)", tensor_path)]
    if image_view is not None:
        folder.mkdir(parents=True, exist_ok=True)
        image_view.save(folder / "input.png")
        links.append(("input image (the encoder's view)", folder / "input.png"))
    return links


def render_record(
    record: AttentionRecord,
    out_dir,
    *,
    image=None,
    results: Mapping[str, CheckResult] | None = None,
    layer=None,
    fps: float = 2,
    title: str | None = None,
    thresholds: Thresholds | None = None,
    links: Sequence[tuple[str, str | os.PathLike]] = (),
    note: str | None = None,
    base=None,
) -> dict:
    """Write the figures of a record, ``metrics.json`` and ``index.html`` into ``out_dir``.

    Figures (A·Nk on the fixed scale): the part panel and one overlay per part (head-averaged key
    marginal of ``layer``, mean over steps; ``layer=None``: the most part-separated layer, the last
    one for a single part; the caption says why), every registered check's ``timeline`` (what it
    judges per step and layer against its own threshold: ``timeline_<stem>.png``), per part for
    every full map (at most ``MAX_HEAD_GRIDS``) a multi-head grid of each head's key marginal on the
    image (``heads_*``; with a patch grid) and one of the raw queries x keys maps (``qk_*``;
    ``heads_*`` when there is no grid), one GIF per part of its marginal over steps, and for every
    failing check the gate's failure-report figures (``figures.figures_for``, under ``checks/``).
    Overlays need ``image`` (the encoder's view) and the record's patch grid; without them the grid
    or strips are drawn. ``metrics.json`` lists the timelines (path, metric, value, op, threshold).
    ``base``: the folder the outputs end up in when ``out_dir`` is a staging folder (``links`` are
    written relative to it; default ``out_dir``).
    Returns ``{"figures": [(caption, path)], "metrics": path, "index": path}``.
    """
    out = Path(out_dir)
    base = Path(base) if base is not None else out
    out.mkdir(parents=True, exist_ok=True)
    thresholds = thresholds or Thresholds()
    results = dict(results) if results is not None else {r.name: r for r in run_checks(record, thresholds)}
    li = record.layer_index(layer) if layer is not None else default_layer(record)
    name = record.layers[li]
    grid = record.patch_grid
    image = image if grid is not None else None
    per_part = record.marginals_by_part()  # (S, L, P, Nk)
    mean_marg = renorm(per_part[:, li].mean(0))  # (P, Nk)
    span = f"steps {record.steps[0]}–{record.steps[-1]}" if record.num_steps > 1 else f"step {record.steps[0]}"
    parts_fig, steps_fig, heads_fig = [], [], []
    why = "the layer asked for" if layer is not None else default_layer_reason(record)
    separation = results.get("part_separation")
    if layer is None and separation is not None and separation.verdict == "fail":
        why += f"; still below the floor {separation.threshold:g}"

    parts_fig.append(
        (
            f"parts · layer {name}: {why} · mean over {span}",
            render.part_panel(
                mean_marg, grid, image, title=f"{why} · mean over {span}", layer=name, path=out / "parts.png"
            ),
        )
    )
    if grid is not None and image is not None:
        for p in range(record.num_parts):
            parts_fig.append(
                (
                    f"part {p} on the image",
                    render.overlay(
                        mean_marg[p],
                        grid,
                        image,
                        title=f"mean over {span}",
                        layer=name,
                        part=p,
                        path=out / f"overlay_part{p}.png",
                    ),
                )
            )

    timelines, timeline_fig = {}, []  # each check's own: what it judges per step and layer, against its threshold
    for check in REGISTRY.values():
        timeline = check.timeline(record, thresholds)
        if timeline is not None:
            path = timeline.draw(out / f"timeline_{timeline.stem}.png")
            timeline_fig.append((timeline.caption, path))
            timelines[check.name] = {
                "path": _rel(path, out),
                "metric": timeline.metric,
                "value": timeline.value,
                "value_label": timeline.value_label,
                "op": timeline.op,
                "threshold": timeline.threshold,
            }
    for p in range(record.num_parts):
        titles = [
            f"step {s}" + (f" (t={t:.0f})" if math.isfinite(t) else "") + f" · layer {name} · part {p}"
            for s, t in zip(record.steps, record.timesteps, strict=False)
        ]
        steps_fig.append(
            (
                f"part {p} over steps (GIF)",
                render.animation(
                    per_part[:, li, p], out / f"steps_part{p}.gif", fps=fps, titles=titles, grid=grid, image=image
                ),
            )
        )

    capped, grids_drawn = False, 0
    for (s, layer_name), full in record.full_maps.items():
        rows, cls = metrics.split_cls(full, has_cls=record.has_cls)
        for p in range(record.num_parts):
            if grids_drawn >= MAX_HEAD_GRIDS:
                capped = True
                break
            grids_drawn += 1
            stem = f"{safe_name(layer_name)}_step{s}_part{p}"
            where = "the image" if image is not None else "the patch grid"
            if grid is not None:  # where each head looks: its key marginal on the image
                heads_fig.append(
                    (
                        f"heads on {where} · layer {layer_name} · step {s} · part {p}",
                        render.multi_head_grid(
                            rows[p],
                            title=with_cls(f"each head's key marginal on {where}", cls[p]),
                            layer=layer_name,
                            step=s,
                            part=p,
                            grid=grid,
                            image=image,
                            path=out / f"heads_{stem}.png",
                        ),
                    )
                )
            qk_path = out / (f"qk_{stem}.png" if grid is not None else f"heads_{stem}.png")
            heads_fig.append(
                (
                    f"heads, queries x keys · layer {layer_name} · step {s} · part {p}",
                    render.multi_head_grid(
                        rows[p],
                        title=with_cls("queries x keys", cls[p]),
                        layer=layer_name,
                        step=s,
                        part=p,
                        path=qk_path,
                    ),
                )
            )

    checks_fig = []
    for result in results.values():
        if result.verdict == "fail":
            for path in figures_for(result, record, out / "checks", image, thresholds=thresholds):
                checks_fig.append((f"{result.name} failed: {path.stem.split('__', 1)[-1]}", path))

    figures = checks_fig + timeline_fig + parts_fig + steps_fig + heads_fig
    summary = record.summary()
    doc = {
        "title": title,
        "layer_shown": name,
        "layer_shown_why": why,
        "record": {
            "steps": record.steps,
            "timesteps": record.timesteps,
            "layers": record.layers,
            "layer_kinds": record.layer_kinds,
            "num_parts": record.num_parts,
            "num_heads": record.num_heads,
            "num_patch_keys": record.num_patch_keys,
            "has_cls": record.has_cls,
            "patch_grid": record.patch_grid,
            "full_maps": [list(k) for k in record.full_maps],
            "nonfinite": record.nonfinite,
            "meta": record.meta,
        },
        "summary": summary,
        "checks": {k: r.to_dict() for k, r in results.items()},
        "figures": [{"caption": c, "path": _rel(p, out)} for c, p in figures],
        "timelines": timelines,
        "files": [{"label": label, "path": _rel(p, base)} for label, p in links],
    }
    metrics_path = atomic_write_text(out / "metrics.json", json.dumps(_jsonable(doc), indent=2) + "\n")

    meta = record.meta
    bits = [
        f"{record.num_parts} part(s)",
        f"{record.num_steps} recorded step(s)",
        f"{record.num_layers} layer(s)",
        f"{record.num_heads} heads",
        f"{record.num_patch_keys} patch keys",
    ]
    for key in ("model", "repo_id", "commit", "device", "dtype", "seed", "guidance_scale"):
        if key in meta:
            bits.append(f"{key} {meta[key]}")
    notes = ["; ".join(bits) + ". Attention is plotted as A·Nk on a fixed log scale: 1 (neutral) is uniform."]
    if grid is None or image is None:
        notes.append("No input image or patch grid: overlays are skipped.")
    if capped:
        notes.append(f"Only the first {MAX_HEAD_GRIDS} (full map, part) pairs get multi-head grids.")
    if note:
        notes.append(note)
    check_rows = [
        [r.name, r.verdict, r.value, _pass_when(r), str(r.offender) if r.offender else "", r.reason]
        for r in results.values()
    ]
    page = Page(title or f"partattn: {meta.get('image', 'attention record')}", base=base)
    failed = any(r.verdict == "fail" for r in results.values())
    page.paragraph(_verdict_line(results), cls="verdict " + ("fail" if failed else "pass"))
    page.note(" ".join(notes))
    page.heading("Checks").table(["check", "verdict", "value", "pass when", "worst offender", "reason"], check_rows)
    for heading, items in (
        ("Why checks failed", checks_fig),
        ("What each check judges, per step and layer", timeline_fig),
        ("Parts", parts_fig),
        ("Over steps", steps_fig),
        ("Heads (from the full query x key maps)", heads_fig),
    ):
        if items:
            page.heading(heading).figures(_rels(items, out))
    page.heading("Metrics").table(["metric", "value"], [[k, v] for k, v in summary.items()])
    page.heading("Files").links([(label, _rel(p, base)) for label, p in links] + [("metrics (json)", "metrics.json")])
    index = page.write(out / "index.html")
    return {"figures": figures, "metrics": metrics_path, "index": index}


def _verdict_line(results: Mapping[str, CheckResult]) -> str:
    """One sentence: which checks failed, or that all judged checks passed."""
    failed = [name for name, r in results.items() if r.verdict == "fail"]
    skipped = [name for name, r in results.items() if r.verdict == "skip"]
    judged = len(results) - len(skipped)
    text = (
        f"{len(failed)} of {judged} checks failed: {', '.join(failed)}." if failed else f"All {judged} checks passed."
    )
    return text + (f" Skipped: {', '.join(skipped)}." if skipped else "")


def _pass_when(result: CheckResult) -> str:
    """``≤ 0.84``: the check's pass condition on its value."""
    if result.threshold is None:
        return ""
    check = REGISTRY.get(result.name)
    return f"{check.op if check is not None else 'vs'} {result.threshold:g}"


def _rel(path, base: Path) -> str:
    p = Path(path)
    try:
        return p.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return os.path.relpath(p.resolve(), base.resolve())


def _rels(items, base: Path):
    return [(caption, _rel(p, base)) for caption, p in items]


def _jsonable(x):
    """JSON-safe copy: NaN/Inf floats become strings, tuples lists, unknown objects their str."""
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if x is None or isinstance(x, (str, int, bool)):
        return x
    if torch.is_tensor(x):
        return _jsonable(x.tolist())
    return str(x)
