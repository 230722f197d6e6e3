"""``figures_for(result, record, outdir, image, thresholds)``: the figures that explain a check result.

Each check draws its own (``Check.draw`` in ``partattn_checks/checks/<name>.py``) from its typed
details, on ``render``'s fixed ``A·Nk`` scale (uniform = 1), ~512 px or more (text >= 10 pt, panels >= 200 px:
``render.panels.panel_layout``); files are written atomically as
``<outdir>/<check>__<what>.png`` (``outdir`` is the image's folder under the results folder):

| check | files |
|---|---|
| part_separation | ``overlay`` (each part's head-averaged key-marginal, mean over steps, on the encoder's view of the image; needs the patch grid and the image), ``parts`` (the same on the bare patch grid, or as strips without a grid), ``timeline`` |
| uniformity | ``heads`` (multi-head grid of the worst (step, layer, part)), ``overlay`` (the worst head's key-marginal on the image), ``timeline`` |
| collapse | ``heads``, ``overlay``, ``timeline`` |
| stability | ``timeline`` |
| nonfinite | ``timeline`` (NaN/Inf counts per step and layer) |
| baseline | ``drift`` (per-layer JS bars; baseline, now and their difference per part for the layer that moved most; needs the attention summary stored with the baseline) |

``timeline`` is the check's own ``Check.timeline``: what it judges per step and layer against its
threshold (the judged series bold, the value the verdict compares dotted). ``heads`` shows each head's key-marginal (mean over queries, what every record has) on the image,
or on the patch grid without one; a record without a patch grid gets the full query×key maps
(key 0 = CLS) when it kept them for that (step, layer), else one-row strips. matplotlib and torch
are imported when a figure is drawn.
"""  # noqa: E501

from __future__ import annotations

from pathlib import Path

from ..checks import REGISTRY, CheckResult, Thresholds


def figures_for(
    result: CheckResult, record, outdir: str | Path, image=None, thresholds: Thresholds | None = None
) -> list[Path]:
    """Write the figures that explain ``result`` (from ``record``) into ``outdir``; return their paths.

    ``image``: the encoder's view of the input (PIL), for overlays; without it overlays are skipped.
    A check that is not registered has no figures.
    """
    check = REGISTRY.get(result.name)
    if check is None:
        return []
    return check.figures(result, record, outdir, image, thresholds)
