"""What the training monitor draws for a dashboard, per fixture image: the part-attention panel, each
check's timeline and the part panel animated over the denoising steps.

Each is a :class:`Picture` (PNG or GIF bytes under a tracker key) that ``trackers.WandbLogger`` and
``trackers.TensorBoardLogger`` log; :meth:`AttentionMonitor.figures
<partattn_checks.analysis.monitor.AttentionMonitor.figures>` draws them from its latest call. Keys:
``<prefix>/parts/<image stem>``, ``<prefix>/timeline/<check>/<image stem>`` and
``<prefix>/steps/<image stem>`` (the animation). The figures are the run report's (``partattn run``):
the same layer choice, the same fixed colour scale, the checks' own timelines.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..checks import REGISTRY, Thresholds

if TYPE_CHECKING:
    from PIL import Image

    from ..runs.session import CaseOutcome

#: Picture kinds: a still figure (PNG) and an animation over the denoising steps (GIF).
KINDS = ("image", "animation")


@dataclass(frozen=True)
class Picture:
    """One figure for a tracker: ``data`` is PNG bytes (``kind`` ``"image"``) or GIF bytes
    (``"animation"``), logged under ``name`` with ``caption``."""

    name: str
    data: bytes
    kind: str
    caption: str = ""

    @property
    def format(self) -> str:
        """``"png"`` or ``"gif"``."""
        return "gif" if self.kind == "animation" else "png"

    def image(self) -> Image.Image:
        """The picture as a PIL image (an animation: its first frame), RGB."""
        from PIL import Image

        return Image.open(io.BytesIO(self.data)).convert("RGB")


def draw(
    outcomes: Mapping[str, CaseOutcome],
    views: Mapping[str, Image.Image | None] | None = None,
    *,
    prefix: str = "partattn",
    checks=None,
    animate: bool = True,
    fps: float = 2,
) -> list[Picture]:
    """The pictures of ``outcomes`` (``{image name: CaseOutcome}``, as ``AttentionMonitor.last``):
    per image its part panel, the timeline of each of ``checks`` (default: every registered check
    that draws one) and, with ``animate``, its part panel over the steps. ``views``: ``{image name:
    the encoder's view (PIL)}`` for the overlays (without one, the patch grid alone)."""
    from .. import render
    from ..present.views import default_layer, default_layer_reason, renorm

    names = list(checks) if checks is not None else list(REGISTRY)
    out: list[Picture] = []
    for image, outcome in outcomes.items():
        record, stem = outcome.record, Path(image).stem
        grid = record.patch_grid
        view = (views or {}).get(image) if grid is not None else None
        li = default_layer(record)
        layer = record.layers[li]
        per_part = record.marginals_by_part()[:, li]  # (S, P, Nk)
        why = default_layer_reason(record)
        png = render.part_panel(renorm(per_part.mean(0)), grid, view, title=f"{stem} · mean over steps", layer=layer)
        out.append(Picture(f"{prefix}/parts/{stem}", png, "image", f"{stem}: layer {layer}, {why}"))
        thresholds = outcome.thresholds or Thresholds()
        for name in names:
            check = REGISTRY.get(name)
            timeline = check.timeline(record, thresholds) if check is not None else None
            if timeline is not None:
                out.append(
                    Picture(
                        f"{prefix}/timeline/{name}/{stem}",
                        timeline.draw(title=f"{stem}: {timeline.title}"),
                        "image",
                        timeline.caption,
                    )
                )
        if animate:
            titles = [
                f"{stem} · step {s}" + (f" (t={t:.0f})" if math.isfinite(t) else "")
                for s, t in zip(record.steps, record.timesteps, strict=False)
            ]
            gif = render.part_panel_animation(renorm(per_part), grid, view, titles=titles, layer=layer, fps=fps)
            out.append(Picture(f"{prefix}/steps/{stem}", gif, "animation", f"{stem}: layer {layer} over the steps"))
    return out
