"""Which figures explain which check result: ``figures_for(result, record, outdir, image)``.

One builder per check, each returning ``(what, png bytes)`` pairs drawn by ``render`` on its
fixed ``A·Nk`` scale (uniform = 1); files are written atomically as ``<outdir>/<check>__<what>.png``
(``outdir`` is the image's folder under the results folder). Figures are ~512 px.

| check | files |
|---|---|
| part_separation | ``overlay`` (each part's head-averaged key-marginal, mean over steps, on the encoder's view of the image; needs the patch grid and the image), ``parts`` (the same on the bare patch grid, or as strips without a grid), ``timeline`` (separation per step, one line per layer, threshold dashed) |
| uniformity | ``heads`` (multi-head grid of the worst (step, layer, part)), ``overlay`` (the worst head's key-marginal on the image), ``entropy`` (mean normalized entropy per layer over steps) |
| collapse | ``heads``, ``overlay``, ``peak`` (max peak per layer over steps) |
| stability | ``jumps`` (worst part's JS jump from the previous step, per layer), ``entropy`` |
| nonfinite | ``entropy`` timeline (NaN shows as a gap) |
| baseline | none |

``heads`` shows full query×key maps (key 0 = CLS) when the record kept them for that
(step, layer); otherwise each head's key-marginal (mean over queries) as a one-row strip, which
is what every record has.

matplotlib and torch are imported when a figure is drawn, not when this module is imported.
"""

from __future__ import annotations

from pathlib import Path

from .atomic import atomic_write_bytes
from .checks import CheckResult, Thresholds


def figures_for(result: CheckResult, record, outdir: str | Path, image=None, *,
                thresholds: Thresholds | None = None) -> list[Path]:
    """Write the figures that explain ``result`` (from ``record``) into ``outdir``; return their paths.

    ``image``: the encoder's view of the input (PIL), for overlays; without it overlays are skipped.
    """
    builder = _BUILDERS.get(result.name)
    if builder is None or result.verdict == "skip":
        return []
    outdir = Path(outdir)
    pngs = builder(result, record, image, thresholds or Thresholds())
    return [atomic_write_bytes(outdir / f"{result.name}__{what}.png", data) for what, data in pngs]


# ----------------------------------------------------------------------------- helpers
def _layer_index(record, result: CheckResult, per_layer_score=None) -> int:
    off = result.offender
    if off is not None and off.layer in record.layers:
        return record.layers.index(off.layer)
    worst = result.details.get("worst_layer")
    if worst in record.layers:
        return record.layers.index(worst)
    if per_layer_score is not None:
        return int(per_layer_score.nan_to_num(-1.0).argmax())
    return 0


def _cell(record, result: CheckResult, li: int, score) -> tuple[int, int, int]:
    """(step position, part, head) to show: the offender's, else the highest ``score`` in layer ``li``."""
    off = result.offender
    if off is not None and off.step in record.steps and off.part is not None and off.head is not None:
        return record.step_index(off.step), int(off.part), int(off.head)
    s_score = score[:, li].nan_to_num(-1.0)  # (S, P, H)
    flat = int(s_score.flatten().argmax())
    P, H = s_score.shape[1], s_score.shape[2]
    return flat // (P * H), (flat // H) % P, flat % H


def _verdict_title(result: CheckResult, label: str, op: str) -> str:
    if result.value is None or result.threshold is None:
        return f"{result.name}: {result.verdict}"
    return f"{label} {result.value:.3g} (pass: {op} {result.threshold:g}) — {result.verdict}"


def _layer_means(t, how: str = "mean"):
    """(S, L, P, H) -> (S, L) over parts and heads."""
    t = t.float()
    return t.amax(dim=(2, 3)) if how == "max" else t.mean(dim=(2, 3))


# ----------------------------------------------------------------------------- builders
def _part_separation(result, record, image, thresholds):
    from . import metrics, render

    per_part = record.marginals_by_part()  # (S, L, P, Nk)
    sep = metrics.part_separation(per_part)  # (S, L)
    li = _layer_index(record, result, sep.mean(0))
    marg = per_part[:, li].mean(0).nan_to_num(0.0)
    marg = marg / marg.sum(-1, keepdim=True).clamp_min(1e-12)
    layer = record.layers[li]
    title = _verdict_title(result, "separation", "≥")
    out = []
    grid = record.patch_grid
    if grid is not None and image is not None:
        out.append(("overlay", render.part_panel(marg, grid, image, title=f"{title}\nmean over steps",
                                                 layer=layer)))
    out.append(("parts", render.part_panel(marg, grid, title=f"{title}\nmean over steps", layer=layer)))
    out.append(("timeline", render.timeline(sep, record.steps, record.layers, metric="part separation",
                                            threshold=thresholds.part_separation.min_separation,
                                            title=title)))
    return out


def _heads_and_overlay(result, record, image, score, what: str):
    from . import render

    li = _layer_index(record, result, score.float().amax(dim=(0, 2, 3)))
    s, p, h = _cell(record, result, li, score.float())
    step, layer = record.steps[s], record.layers[li]
    full = record.full_maps.get((step, layer))
    if full is not None:
        maps, ylabel = full[p].float(), "queries"
        note = "full maps (key 0 = CLS)"
    else:
        maps, ylabel = record.marginals[s, li, p].float()[:, None, :], None  # (H, 1, Nk) strips
        note = "per-head key-marginals (mean over queries)"
    out = [("heads", render.multi_head_grid(maps, title=f"{what}: {note}", layer=layer, step=step, part=p,
                                            ylabel=ylabel))]
    if record.patch_grid is not None and image is not None:
        marg = record.marginals[s, li, p, h].float().nan_to_num(0.0)
        marg = marg / marg.sum().clamp_min(1e-12)
        out.append(("overlay", render.overlay(marg, record.patch_grid, image, title=f"{what}: worst head",
                                              layer=layer, step=step, part=p, head=h)))
    return out


def _uniformity(result, record, image, thresholds):
    from . import render

    out = _heads_and_overlay(result, record, image, record.entropy, "uniformity")
    out.append(("entropy", render.timeline(_layer_means(record.entropy), record.steps, record.layers,
                                           metric="mean normalized entropy",
                                           threshold=thresholds.uniformity.entropy_min_uniform,
                                           title=_verdict_title(result, "near-uniform share", "≤"))))
    return out


def _collapse(result, record, image, thresholds):
    from . import render

    score = record.peak
    if result.details.get("cause") == "cls_mass":
        score = record.cls_mass
    elif result.details.get("cause") == "entropy":
        score = -record.entropy.float()
    out = _heads_and_overlay(result, record, image, score, "collapse")
    out.append(("peak", render.timeline(_layer_means(record.peak, "max"), record.steps, record.layers,
                                        metric="max peak", threshold=thresholds.collapse.peak_max,
                                        title=_verdict_title(result, "collapsed share", "≤"))))
    return out


def _stability(result, record, image, thresholds):
    from . import metrics, render

    out = []
    if record.num_steps >= 2:
        jumps = metrics.timestep_jumps(record.marginals_by_part()).amax(-1)  # (S-1, L)
        out.append(("jumps", render.timeline(jumps, record.steps[1:], record.layers,
                                             metric="max JS jump from previous step",
                                             threshold=thresholds.stability.max_jump,
                                             title=_verdict_title(result, "worst jump", "≤"))))
    out.append(("entropy", render.timeline(_layer_means(record.entropy), record.steps, record.layers,
                                           metric="mean normalized entropy", title="entropy over steps")))
    return out


def _nonfinite(result, record, image, thresholds):
    from . import render

    return [("entropy", render.timeline(_layer_means(record.entropy), record.steps, record.layers,
                                        metric="mean normalized entropy",
                                        title=f"non-finite check: {result.verdict} (gaps are NaN/Inf)"))]


_BUILDERS = {
    "part_separation": _part_separation,
    "uniformity": _uniformity,
    "collapse": _collapse,
    "stability": _stability,
    "nonfinite": _nonfinite,
}
