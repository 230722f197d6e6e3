"""Figures: heatmaps, head grids, part panels, image overlays, timelines and GIFs.

Every attention figure plots ``A * Nk`` (``Nk`` = number of keys in the plotted map) on a
FIXED colour scale on which a uniform distribution is exactly 1. The default scale is
logarithmic and symmetric around 1 (``1/vmax .. vmax``, diverging colormap), so:

* a uniform map renders as one flat neutral colour, never as "structure";
* keys attended more than uniform are warm, keys attended less are cool;
* values outside the range saturate (the colorbar shows arrows); NaN/Inf show in black;
* on an image (overlays, part panels and head grids with ``image``, GIF frames) the attention is
  drawn opaque and the image only as green outlines (``outline.OUTLINE_RGB``), never as a grey
  backdrop whose brightness would read as attention.

``scale="linear"`` gives ``0 .. vmax`` on a sequential colormap instead. There is no
per-map min-max normalisation anywhere in this module, on purpose (docs/visualization.md).

Functions take numpy arrays or torch tensors and return PNG bytes, or write ``path`` and
return it as a :class:`pathlib.Path`. Figures are ``max_px`` pixels on their long side, or
larger when their panels need it: text is never below ``panels.MIN_FONT_PT`` at
``panels.DPI`` or more, and image panels never below ``panels.MIN_PANEL_PX``, whatever the
number of parts or heads (``panels.panel_layout`` is the shared sizing rule).
matplotlib is used through ``Figure`` + the Agg canvas only: no pyplot, no display.
"""

from .gif import animation, animation_bytes, part_panel_animation
from .grids import multi_head_grid, part_panel
from .maps import heatmap, overlay, timeline

__all__ = [
    "heatmap",
    "multi_head_grid",
    "part_panel",
    "overlay",
    "timeline",
    "animation",
    "animation_bytes",
    "part_panel_animation",
]
