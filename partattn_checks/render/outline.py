"""An attention map drawn on the input image: the map's colours everywhere, the image only as thin
green outlines of its edges (see :mod:`partattn_checks.render`)."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

OUTLINE_RGB = (0.0, 0.78, 0.25)
_OUTLINE_ALPHA = 0.9  # opacity of a full-strength edge
_OUTLINE_PX = 256  # smaller images are enlarged (by a whole factor) to about this before their edges are found
_EDGE_FULL = 0.5  # colour step (next pixel, channels in [0, 1]) of a full-strength edge
_EDGE_MIN = 0.2  # weaker edges (texture, noise) are not drawn


def _on_image(cells: np.ndarray, image_rgb: np.ndarray, cmap, norm) -> np.ndarray:
    """Patch-grid ``cells`` upsampled bilinearly onto the image, in opaque colours of ``cmap``/``norm``,
    with the image's outlines drawn over them in ``OUTLINE_RGB``.

    The image is never blended under the attention: a grey (or any) backdrop under a diverging map
    whose neutral is light grey reads as values, a dark shape as "less attention". So every pixel
    off the outlines has exactly the colour of its value on the colour bar (uniform = one flat
    neutral colour, whatever the image's brightness), and the image shows only as thin edges, in a
    green that neither colour map (coolwarm: blue-grey-red, magma: black-purple-yellow) uses.
    A small image is first enlarged to about ``_OUTLINE_PX`` so that its edges stay one pixel thin.
    """
    alpha = _edges(image_rgb)
    height, width = alpha.shape[:2]
    up = np.asarray(Image.fromarray(cells.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR))
    colours = np.asarray(cmap(norm(up)))[..., :3]
    return (1.0 - alpha) * colours + alpha * np.asarray(OUTLINE_RGB)


_EDGES: dict[tuple, np.ndarray] = {}  # the last few images' outline opacities (every panel of a figure shares one)


def _edges(image_rgb: np.ndarray) -> np.ndarray:
    """(H, W, 1) outline opacity of ``image_rgb``, enlarged first when small (see :func:`_on_image`)."""
    key = (image_rgb.shape, image_rgb.dtype.str, hashlib.blake2b(image_rgb.tobytes(), digest_size=16).digest())
    alpha = _EDGES.get(key)
    if alpha is None:
        factor = max(1, round(_OUTLINE_PX / max(image_rgb.shape[:2])))
        if factor > 1:
            image_rgb = _resize(image_rgb, (image_rgb.shape[1] * factor, image_rgb.shape[0] * factor))
        alpha = _outline(image_rgb)[..., None]
        alpha.setflags(write=False)
        while len(_EDGES) >= 4:
            _EDGES.pop(next(iter(_EDGES)))
        _EDGES[key] = alpha
    return alpha


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Float RGB resized bilinearly to ``size`` (width, height)."""
    channels = [
        Image.fromarray(c.astype(np.float32)).resize(size, Image.Resampling.BILINEAR) for c in rgb.transpose(2, 0, 1)
    ]
    return np.stack([np.asarray(c) for c in channels], axis=-1).astype(np.float64)


def _outline(image_rgb: np.ndarray) -> np.ndarray:
    """(H, W) opacity of the image's outline: its strongest colour step to the next pixel right or
    below, 0 on flat regions."""
    step = np.zeros(image_rgb.shape[:2])
    step[:, :-1] = np.abs(np.diff(image_rgb, axis=1)).max(axis=-1)
    step[:-1, :] = np.maximum(step[:-1, :], np.abs(np.diff(image_rgb, axis=0)).max(axis=-1))
    strength = np.clip(step / _EDGE_FULL, 0.0, 1.0)
    strength[strength < _EDGE_MIN] = 0.0  # texture and compression noise stay flat
    return _OUTLINE_ALPHA * strength
