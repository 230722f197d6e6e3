"""GIFs of attention over steps, on the same fixed scale as the still figures."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from .layout import (
    _label_insets,
    _single_panel,
)
from .panels import (
    TITLE_FONT_PT,
    RenderError,
    _Frames,
    _new_figure,
    _panel_array,
    _Scale,
    _show,
    _to_numpy,
    _to_rgb,
    _wrap,
)


def _animation_frames(
    frames, *, titles=None, grid=None, image=None, vmax=8.0, scale="log", max_px=512
) -> list[Image.Image]:
    """Render every frame with ONE figure (same layout, same fixed scale) into RGB images."""
    frames = _to_numpy(frames)
    if frames.ndim not in (2, 3) or frames.shape[0] == 0:
        raise RenderError(f"frames must be (S, Q, K) maps or (S, Nk) marginals, got shape {frames.shape}")
    if titles is not None and len(titles) != len(frames):
        raise RenderError(f"got {len(titles)} titles for {len(frames)} frames")
    titles = [_wrap(t, 3.4) for t in (titles or [f"frame {i + 1}/{len(frames)}" for i in range(len(frames))])]
    lines = max(t.count("\n") + 1 for t in titles)
    titles = [t + "\n" * (lines - 1 - t.count("\n")) for t in titles]  # same height: the layout is frozen
    sc = _Scale(vmax, scale)
    rgb = None if image is None else _to_rgb(image)
    if rgb is not None and grid is None:
        raise RenderError("an image overlay needs grid=(rows, cols)")
    fig = _new_figure((5.0, 4.0 + 0.22 * lines), max_px)
    first = _panel_array(frames[0], sc, grid, rgb)
    left_in, bottom_in = _label_insets(first[1], first[0].shape)
    placed = _single_panel(
        fig, sc, title_lines=lines, left_in=left_in, bottom_in=bottom_in, square=first[1] in ("grid", "rgb")
    )
    ax = placed.axes[0]
    im = _show(ax, first, sc)
    ax.set_title(titles[0], fontsize=TITLE_FONT_PT)
    sc.colorbar(fig, placed.cax, frames.shape[-1])
    shots = _Frames(fig, [im], [ax.title])
    out = []
    for frame, text in zip(frames, titles, strict=False):
        im.set_data(_panel_array(frame, sc, grid, rgb)[0])
        ax.title.set_text(text)
        out.append(Image.fromarray(shots.rgb()))
    return out


#: Palette entries of a GIF taken along the colour map (the colour bar and every attention colour);
#: the rest (text, outlines, blends at edges) adapts to the frames.
_COLORMAP_ENTRIES = 160


def _write_gif(images: list[Image.Image], fp, fps: float, cmap) -> None:
    """One palette for all frames, so a colour means the same value in every frame: ``_COLORMAP_ENTRIES``
    evenly spaced colours of ``cmap`` (adjacent ones a few levels apart, so the colour bar and the
    smooth maps do not band) plus a median-cut palette of the colours the map does not make; each
    pixel gets its nearest palette colour, without dithering (flat areas stay flat)."""
    codes = np.stack([_codes(np.asarray(i.convert("RGB"))) for i in images])
    colours, counts = np.unique(codes, return_counts=True)
    palette, nearest = _palette(_rgb_of(colours), counts, cmap)
    lookup = np.zeros(1 << 24, dtype=np.uint8)  # colour code -> palette index (16 MB, for a moment)
    lookup[colours] = nearest
    index = lookup[codes]
    entries = palette.astype(np.uint8).ravel().tolist()
    frames = []
    for frame_index in index:
        frame = Image.fromarray(frame_index, mode="P")
        frame.putpalette(entries)
        frames.append(frame)
    frames[0].save(
        fp, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0, disposal=1
    )


#: Bits per channel of the boxes the off-map colours are pooled into before the median cut (their
#: count-weighted mean colour each): the cut then sorts ~10^3 colours instead of ~10^4 (text and outline
#: blends), for the same palette to within a level or two.
_POOL_BITS = 5
#: At most about this many pixels (the pooled colours, each repeated by its share) go to the median cut.
_CUT_PIXELS = 1 << 16


def _palette(rgb: np.ndarray, counts: np.ndarray, cmap) -> tuple[np.ndarray, np.ndarray]:
    """(256, 3) palette: ``_COLORMAP_ENTRIES`` colours along ``cmap``, then a median cut of the
    frames' other colours (``rgb``, each ``counts`` pixels); and each colour's nearest palette index."""
    along = np.round(np.asarray(cmap(np.linspace(0.0, 1.0, _COLORMAP_ENTRIES)))[:, :3] * 255)
    on_map, on_map_d2 = _closest(rgb, along)
    off = on_map_d2 > 9.0  # colours the map does not make: more than 3 levels from it
    rest = 256 - _COLORMAP_ENTRIES
    if not off.any():
        return np.concatenate([along, np.repeat(along[:1], rest, axis=0)]), on_map
    pooled, weight = _pool(rgb[off], counts[off])
    scale = max(1.0, weight.sum() / _CUT_PIXELS)  # the cut reads counts: the same shares in fewer pixels
    pixels = np.repeat(pooled, np.maximum(1, np.round(weight / scale).astype(np.int64)), axis=0)
    adaptive = Image.fromarray(pixels[None]).quantize(colors=rest, method=Image.Quantize.MEDIANCUT)
    palette = adaptive.getpalette()
    assert palette is not None  # quantize() makes a "P" image, and those have a palette
    extra = np.asarray(palette[: 3 * rest], dtype=np.float64).reshape(-1, 3)
    extra = np.concatenate([extra, np.repeat(extra[:1], rest - len(extra), axis=0)])
    other, other_d2 = _closest(rgb, extra)
    nearest = np.where(other_d2 < on_map_d2, _COLORMAP_ENTRIES + other, on_map)
    return np.concatenate([along, extra]), nearest


def _pool(rgb: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colours ``rgb`` (each ``counts`` pixels) pooled into boxes of ``_POOL_BITS`` bits per channel:
    (uint8 count-weighted mean colour, pixel count) per box."""
    q = rgb.astype(np.int64) >> (8 - _POOL_BITS)
    box = (q[:, 0] << (2 * _POOL_BITS)) | (q[:, 1] << _POOL_BITS) | q[:, 2]
    _, inverse = np.unique(box, return_inverse=True)
    weight = np.bincount(inverse, weights=counts)
    mean = np.stack([np.bincount(inverse, weights=rgb[:, c] * counts) / weight for c in range(3)], axis=1)
    return np.round(mean).astype(np.uint8), weight.astype(np.int64)


def _codes(rgb: np.ndarray) -> np.ndarray:
    """(H, W) int codes ``r << 16 | g << 8 | b`` of a uint8 RGB array."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _rgb_of(codes: np.ndarray) -> np.ndarray:
    return np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], axis=-1).astype(np.float64)


def _closest(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``a``: the index of its nearest row of ``b`` (RGB) and the squared distance."""
    partial = a @ (-2.0 * b.T)  # |a - b|^2 = |a|^2 - 2 a.b + |b|^2; |a|^2 does not change which b is nearest
    partial += (b**2).sum(1)[None, :]
    nearest = partial.argmin(axis=1)
    return nearest, partial[np.arange(len(a)), nearest] + (a**2).sum(1)


def animation(frames, path, *, fps=4, titles=None, grid=None, image=None, vmax=8.0, scale="log", max_px=512) -> Path:
    """Animated GIF of (S, Q, K) maps or (S, Nk) marginals over steps; returns ``path``.

    Marginals are drawn as strips, or on the patch grid with ``grid``, or as overlays with
    ``grid`` and ``image``. Pillow folds a frame identical to the previous one into it, so give
    distinct ``titles`` (the default numbers the frames) to keep one GIF frame per input frame.
    """
    images = _animation_frames(frames, titles=titles, grid=grid, image=image, vmax=vmax, scale=scale, max_px=max_px)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_gif(images, path, fps, _Scale(vmax, scale).cmap)
    return path


def animation_bytes(frames, *, fps=4, titles=None, grid=None, image=None, vmax=8.0, scale="log", max_px=512) -> bytes:
    """Same as :func:`animation`, returning the GIF bytes."""
    images = _animation_frames(frames, titles=titles, grid=grid, image=image, vmax=vmax, scale=scale, max_px=max_px)
    buf = io.BytesIO()
    _write_gif(images, buf, fps, _Scale(vmax, scale).cmap)
    return buf.getvalue()


def part_panel_animation(
    marginals, grid=None, image=None, *, titles=None, layer=None, fps=2, vmax=8.0, scale="log", max_px=512
) -> bytes:
    """GIF bytes of the part panel (:func:`~partattn_checks.render.grids.part_panel`) over steps:
    ``marginals`` is ``(S, parts, Nk)``, one frame per step, every frame on the same fixed scale and
    palette. ``titles``: one per frame (default: ``frame i/S``)."""
    from .grids import _part_panel_shots

    frames = _to_numpy(marginals)
    if frames.ndim != 3 or frames.shape[0] == 0:
        raise RenderError(f"part_panel_animation expects (steps, parts, Nk) key marginals, got shape {frames.shape}")
    if titles is not None and len(titles) != len(frames):
        raise RenderError(f"got {len(titles)} titles for {len(frames)} frames")
    titles = titles or [f"frame {i + 1}/{len(frames)}" for i in range(len(frames))]
    shots = _part_panel_shots(frames, grid, image, titles, layer=layer, vmax=vmax, scale=scale, max_px=max_px)
    height, width = max(s.shape[0] for s in shots), max(s.shape[1] for s in shots)
    images = []
    for shot in shots:  # a wrapped title may make one frame taller: all on one white canvas size
        canvas = np.full((height, width, 3), 255, dtype=np.uint8)
        canvas[: shot.shape[0], : shot.shape[1]] = shot
        images.append(Image.fromarray(canvas))
    buf = io.BytesIO()
    _write_gif(images, buf, fps, _Scale(vmax, scale).cmap)
    return buf.getvalue()
