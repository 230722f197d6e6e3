"""The synthetic part task: coloured shapes on a plain background, one shape per part.

A tiny PartCrafter-format model is trained on this task (by the training script) so that a
healthy model's cross-attention for part k must look at part k's region of the image. This
module draws the scenes (image, per-part masks, per-part targets x0) and the fixture images are
drawn from it by ``scripts/make_fixture_images.py``. numpy + Pillow only; everything is
deterministic given a ``numpy.random.Generator``.

Colour is tied to the part-embedding id
    PartCrafter gives part i of the transformer batch the embedding id ``i`` (``arange(batch)``).
    Under classifier-free guidance the batch is ``cat([uncond, cond])`` of 2N parts, so the
    unconditional parts get ids 0..N-1 and the *conditional* parts get ids N..2N-1 (an upstream
    quirk that we reproduce). The only thing that tells conditional part k which shape is "its"
    shape is its embedding id N+k, so a scene with N parts paints part k in ``PALETTE[N + k]``:
    the trained model learns "embedding id i -> look at the region painted in PALETTE[i]".
    Consequently ``2 * N <= max_num_parts`` (= ``len(PALETTE)``, 8 by default), i.e. N <= 4.
    Training must use the same CFG batch layout (conditional part k at batch index N+k) for this
    tie to hold.

Geometry
    A layout is sampled in base pixels (``image_size``, default 112) and rendered at
    ``image_size * scale`` pixels (``scale=2`` gives the 224 px fixture PNGs), so scale changes
    resolution only: layout and targets are identical for every scale. Shapes sit well inside
    the image (a margin of 6 % of the size) and their bounding boxes never overlap (gap of 4 % of
    the size); placement is rejection sampling that raises ``LayoutError`` (a ``RuntimeError``) when it fails.
    Rendering is not anti-aliased, so every image pixel is either the background colour or
    exactly its part's palette colour, and ``masks[k]`` equals "pixel has colour PALETTE[N+k]".
    ``size`` of a shape is its half-extent (circle radius; half the side of the axis-aligned
    square; circumradius of the upward equilateral triangle).

Targets x0, shape (N, T, C) float32
    Token t of part k is the point at arc length t/T along shape k's outline, starting at the top
    (the 12 o'clock point: top of the circle, middle of the square's top edge, top vertex of the
    triangle) and going clockwise on screen. With C = 8 the channels are

    ====  ============================================================
    0, 1  x, y of the point in [-1, 1] (x right, y down; -1/+1 = image edges)
    2-4   shape type over ``SHAPES`` (circle, square, triangle): +1 for the type, -1 otherwise
          (all -1 for an unseen type such as ring or star)
    5-7   the part's colour, RGB mapped from 0..255 to [-1, 1]
    ====  ============================================================

    With C < 8 the first C channels are kept; with C > 8 channel c repeats channel c mod 8, so
    every channel stays at unit scale and carries part information.

Unseen types
    ``UNSEEN_SHAPES`` (ring, star) can be rendered for fixture images the model never saw in
    training; they are never drawn unless asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from ..errors import PartattnError

__all__ = [
    "SceneError",
    "LayoutError",
    "PALETTE",
    "SHAPES",
    "UNSEEN_SHAPES",
    "BACKGROUND",
    "Scene",
    "draw_scene",
    "sample_batch",
    "masks_to_patch_grid",
]

#: Colour of part-embedding id i (saturated, far apart, far from white and light grey).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (220, 20, 30),  # 0 red
    (20, 150, 40),  # 1 green
    (30, 60, 220),  # 2 blue
    (255, 140, 0),  # 3 orange
    (130, 30, 190),  # 4 purple
    (0, 185, 200),  # 5 cyan
    (235, 40, 180),  # 6 magenta
    (150, 210, 20),  # 7 lime
)
#: Shape types of the training task; their order fixes target channels 2-4.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Renderable types the model never sees in training (for "unseen" fixture images).
UNSEEN_SHAPES: tuple[str, ...] = ("ring", "star")
BACKGROUND: tuple[int, int, int] = (255, 255, 255)

NUM_BASE_CHANNELS = 8
_MARGIN = 0.06  # free border, fraction of image size
_GAP = 0.04  # minimum gap between bounding boxes, fraction of image size
_SIZE_RANGE = (0.10, 0.18)  # half-extent, fraction of image size
_MAX_TRIES = 2000  # placement attempts per shape
_MAX_LAYOUTS = 20  # fresh layouts tried before giving up
_RING_INNER = 0.55  # inner / outer radius of a ring
_STAR_INNER = 0.45  # inner / outer radius of a star


class SceneError(PartattnError, ValueError):
    """A scene that cannot be drawn as asked (a part count, a shape type, a size); the message says why."""


class LayoutError(SceneError, RuntimeError):
    """Shapes that could not be placed without overlap (also a ``RuntimeError``): fewer parts or a larger
    image fit."""


@dataclass
class Scene:
    """One drawn scene: the image and, per part k, its mask, targets and shape description."""

    image: Image.Image  # RGB, (image_size * scale) px square
    masks: np.ndarray  # (N, H, W) bool, H = W = image_size * scale
    targets: np.ndarray  # (N, T, C) float32
    shapes: list[dict] = field(default_factory=list)  # per part: see draw_scene

    @property
    def num_parts(self) -> int:
        return int(self.masks.shape[0])


def _outline(kind: str, cx: float, cy: float, r: float) -> np.ndarray | None:
    """Closed polygon (V, 2) of a polygonal outline, starting at the top, clockwise on screen.

    Returns None for round outlines (circle, ring), which are handled analytically.
    """
    if kind in ("circle", "ring"):
        return None
    if kind == "square":
        pts = [(0, -1), (1, -1), (1, 1), (-1, 1), (-1, -1)]
        return np.array([(cx + r * x, cy + r * y) for x, y in pts], dtype=np.float64)
    if kind == "triangle":
        angles = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, r)
    elif kind == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * _STAR_INNER)
    else:
        raise SceneError(f"unknown shape type {kind!r}; known: {SHAPES + UNSEEN_SHAPES}")
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def _outline_points(kind: str, cx: float, cy: float, r: float, n: int) -> np.ndarray:
    """n points (n, 2) evenly spaced by arc length along the (outer) outline, top first."""
    frac = np.arange(n, dtype=np.float64) / n
    poly = _outline(kind, cx, cy, r)
    if poly is None:
        theta = -np.pi / 2 + 2 * np.pi * frac  # increasing angle = clockwise with y down
        return np.stack([cx + r * np.cos(theta), cy + r * np.sin(theta)], axis=1)
    closed = np.vstack([poly, poly[:1]])
    seg = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    s = frac * cum[-1]
    return np.stack([np.interp(s, cum, closed[:, 0]), np.interp(s, cum, closed[:, 1])], axis=1)


def _shape_mask(kind: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Filled (size, size) bool mask of one shape, geometry given in final pixels.

    Continuous coordinate u (pixel i covers [i, i+1)) is Pillow coordinate u - 0.5.
    """
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    x, y = cx - 0.5, cy - 0.5
    poly = _outline(kind, x, y, r)
    if poly is None:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
        if kind == "ring":
            ri = r * _RING_INNER
            draw.ellipse([x - ri, y - ri, x + ri, y + ri], fill=0)
    else:
        draw.polygon([tuple(p) for p in poly], fill=255)
    return np.asarray(img) > 0


def _place(rng: np.random.Generator, n: int, image_size: int) -> list[tuple[float, float, float]]:
    """Sample n (cx, cy, r) in base pixels with disjoint, gapped boxes inside the margin.

    A layout whose early shapes leave no room for a later one is started over (up to
    ``_MAX_LAYOUTS`` times) instead of failing: training draws thousands of 4-part scenes.
    """
    for _ in range(_MAX_LAYOUTS):
        placed = _try_layout(rng, n, image_size)
        if len(placed) == n:
            return placed
    raise LayoutError(
        f"could not place shape {len(placed) + 1} of {n} without overlap after {_MAX_LAYOUTS} layouts of "
        f"{_MAX_TRIES} tries each (image_size={image_size}); use fewer parts or a larger image"
    )


def _try_layout(rng: np.random.Generator, n: int, image_size: int) -> list[tuple[float, float, float]]:
    """Place shapes one by one; stop early (returning fewer) when one does not fit."""
    margin, gap = _MARGIN * image_size, _GAP * image_size
    lo, hi = (f * image_size for f in _SIZE_RANGE)
    placed: list[tuple[float, float, float]] = []
    for _ in range(n):
        for _ in range(_MAX_TRIES):
            r = rng.uniform(lo, hi)
            cx, cy = rng.uniform(margin + r, image_size - margin - r, size=2)
            if all(abs(cx - px) >= r + pr + gap or abs(cy - py) >= r + pr + gap for px, py, pr in placed):
                placed.append((float(cx), float(cy), float(r)))
                break
        else:
            return placed
    return placed


def _part_channels(
    kind: str, colour: tuple[int, int, int], points: np.ndarray, image_size: float, channels: int
) -> np.ndarray:
    """(T, channels) targets of one part from its outline points in base pixels."""
    xy = 2.0 * points / image_size - 1.0
    onehot = np.array([1.0 if kind == s else -1.0 for s in SHAPES])
    rgb = np.asarray(colour, dtype=np.float64) / 127.5 - 1.0
    per_part = np.concatenate([onehot, rgb])
    base = np.concatenate([xy, np.broadcast_to(per_part, (len(points), per_part.size))], axis=1)
    return base[:, np.arange(channels) % NUM_BASE_CHANNELS].astype(np.float32)


def draw_scene(
    rng: np.random.Generator,
    num_parts: int,
    *,
    image_size: int = 112,
    num_tokens: int = 16,
    channels: int = 8,
    shapes: Sequence[str] = SHAPES,
    max_num_parts: int = 8,
    scale: int = 1,
    types: Sequence[str] | None = None,
    background: tuple[int, int, int] = BACKGROUND,
) -> Scene:
    """Draw one scene of ``num_parts`` non-overlapping shapes; part k is painted PALETTE[N + k].

    Shape types are drawn uniformly from ``shapes`` unless ``types`` fixes them per part
    (it may name ``UNSEEN_SHAPES``). ``scale`` multiplies the rendered resolution only.
    ``Scene.shapes[k]`` holds ``part``, ``type``, ``colour`` (palette index), ``rgb``,
    ``centre`` (x, y) and ``size`` (half-extent), both in rendered pixels.
    """
    n = int(num_parts)
    if n < 1:
        raise SceneError(f"num_parts must be >= 1, got {num_parts}")
    if max_num_parts > len(PALETTE):
        raise SceneError(f"max_num_parts={max_num_parts} exceeds the {len(PALETTE)} palette colours")
    if 2 * n > max_num_parts:
        raise SceneError(
            f"num_parts={n} needs part-embedding ids up to 2*N-1={2 * n - 1}, but max_num_parts="
            f"{max_num_parts}: under classifier-free guidance the CFG batch has 2N parts with ids "
            f"arange(2N), conditional part k uses id N+k and colour PALETTE[N+k]; "
            f"use num_parts <= {max_num_parts // 2}"
        )
    if num_tokens < 1 or channels < 1 or scale < 1 or image_size < 8:
        raise SceneError(
            f"need num_tokens, channels, scale >= 1 and image_size >= 8; got {num_tokens}, "
            f"{channels}, {scale}, {image_size}"
        )
    if types is None:
        if not shapes:
            raise SceneError("shapes must name at least one type")
        types = [shapes[i] for i in rng.integers(0, len(shapes), size=n)]
    types = list(types)
    if len(types) != n:
        raise SceneError(f"types has {len(types)} entries for num_parts={n}")
    for kind in types:
        if kind not in SHAPES + UNSEEN_SHAPES:
            raise SceneError(f"unknown shape type {kind!r}; known: {SHAPES + UNSEEN_SHAPES}")

    layout = _place(rng, n, image_size)
    size = image_size * scale
    masks = np.zeros((n, size, size), dtype=bool)
    targets = np.empty((n, num_tokens, channels), dtype=np.float32)
    pixels = np.empty((size, size, 3), dtype=np.uint8)
    pixels[...] = background
    info = []
    for k, (kind, (cx, cy, r)) in enumerate(zip(types, layout, strict=False)):
        colour_id = n + k
        colour = PALETTE[colour_id]
        masks[k] = _shape_mask(kind, cx * scale, cy * scale, r * scale, size)
        pixels[masks[k]] = colour
        points = _outline_points(kind, cx, cy, r, num_tokens)
        targets[k] = _part_channels(kind, colour, points, image_size, channels)
        info.append(
            {
                "part": k,
                "type": kind,
                "colour": colour_id,
                "rgb": colour,
                "centre": (cx * scale, cy * scale),
                "size": r * scale,
            }
        )
    return Scene(image=Image.fromarray(pixels, "RGB"), masks=masks, targets=targets, shapes=info)


def sample_batch(rng: np.random.Generator, batch_size: int, num_parts: int, **kw) -> list[Scene]:
    """``batch_size`` independent scenes of ``num_parts`` parts (keywords as in draw_scene)."""
    return [draw_scene(rng, num_parts, **kw) for _ in range(batch_size)]


def _pool_weights(pixels: int, cells: int) -> np.ndarray:
    """(cells, pixels) fraction of each pixel [i, i+1) inside cell j's interval, per cell length."""
    edges = np.arange(cells + 1) * (pixels / cells)
    lo = np.maximum(edges[:-1, None], np.arange(pixels)[None, :])
    hi = np.minimum(edges[1:, None], np.arange(pixels)[None, :] + 1)
    return np.clip(hi - lo, 0.0, None) / (pixels / cells)


def masks_to_patch_grid(masks: np.ndarray, grid: tuple[int, int] = (8, 8)) -> np.ndarray:
    """Fraction of each patch covered by each mask: (N, H, W) -> (N, gh * gw), row-major.

    Row-major patch order matches the DINOv2 patch tokens (CLS excluded). Exact area weighting,
    so H and W need not be multiples of the grid. Assumes the encoder sees the whole image
    (resized, not cropped); crop the masks first if the preprocessor crops.
    """
    m = np.asarray(masks)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise SceneError(f"masks must be (N, H, W), got shape {m.shape}")
    gh, gw = grid
    wy = _pool_weights(m.shape[1], gh)
    wx = _pool_weights(m.shape[2], gw)
    pooled = np.einsum("ih,nhw,jw->nij", wy, m.astype(np.float64), wx)
    return pooled.reshape(m.shape[0], gh * gw)
