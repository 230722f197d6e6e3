"""GIFs of attention over steps, on the same fixed scale as the still figures."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from .panels import TITLE_FONT_PT, _figure_rgb, _new_figure, _panel_array, _Scale, _show, _to_numpy, _to_rgb, _wrap


def _animation_frames(
    frames, *, titles=None, grid=None, image=None, vmax=8.0, scale="log", max_px=512
) -> list[Image.Image]:
    """Render every frame with ONE figure (same layout, same fixed scale) into RGB images."""
    frames = _to_numpy(frames)
    if frames.ndim not in (2, 3) or frames.shape[0] == 0:
        raise ValueError(f"frames must be (S, Q, K) maps or (S, Nk) marginals, got shape {frames.shape}")
    if titles is not None and len(titles) != len(frames):
        raise ValueError(f"got {len(titles)} titles for {len(frames)} frames")
    titles = [_wrap(t, 3.4) for t in (titles or [f"frame {i + 1}/{len(frames)}" for i in range(len(frames))])]
    lines = max(t.count("\n") + 1 for t in titles)
    titles = [t + "\n" * (lines - 1 - t.count("\n")) for t in titles]  # same height: the layout is frozen
    sc = _Scale(vmax, scale)
    rgb = None if image is None else _to_rgb(image)
    if rgb is not None and grid is None:
        raise ValueError("an image overlay needs grid=(rows, cols)")
    fig = _new_figure((5.0, 4.0 + 0.22 * lines), max_px)
    ax = fig.add_subplot()
    im = _show(ax, _panel_array(frames[0], sc, grid, rgb), sc)
    ax.set_title(titles[0], fontsize=TITLE_FONT_PT)
    sc.colorbar(fig, ax, frames.shape[-1])
    fig.canvas.draw()
    fig.set_layout_engine("none")  # freeze the layout: no jitter between frames
    out = []
    for frame, text in zip(frames, titles, strict=False):
        im.set_data(_panel_array(frame, sc, grid, rgb)[0])
        ax.set_title(text, fontsize=TITLE_FONT_PT)
        out.append(Image.fromarray(_figure_rgb(fig)))
    return out


def _write_gif(images: list[Image.Image], fp, fps: float) -> None:
    # One palette for all frames, so a colour means the same value in every frame
    # (built from at most ~8 sampled frames to bound the cost).
    sample = images[:: max(1, len(images) // 8)]
    strip = Image.fromarray(np.concatenate([np.asarray(i) for i in sample], axis=0))
    palette = strip.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    frames = [i.quantize(palette=palette, dither=Image.Dither.NONE) for i in images]
    frames[0].save(
        fp, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0, disposal=1
    )


def animation(frames, path, *, fps=4, titles=None, grid=None, image=None, vmax=8.0, scale="log", max_px=512) -> Path:
    """Animated GIF of (S, Q, K) maps or (S, Nk) marginals over steps; returns ``path``.

    Marginals are drawn as strips, or on the patch grid with ``grid``, or as overlays with
    ``grid`` and ``image``. Pillow folds a frame identical to the previous one into it, so give
    distinct ``titles`` (the default numbers the frames) to keep one GIF frame per input frame.
    """
    images = _animation_frames(frames, titles=titles, grid=grid, image=image, vmax=vmax, scale=scale, max_px=max_px)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_gif(images, path, fps)
    return path


def animation_bytes(frames, *, fps=4, titles=None, grid=None, image=None, vmax=8.0, scale="log", max_px=512) -> bytes:
    """Same as :func:`animation`, returning the GIF bytes."""
    images = _animation_frames(frames, titles=titles, grid=grid, image=image, vmax=vmax, scale=scale, max_px=max_px)
    buf = io.BytesIO()
    _write_gif(images, buf, fps)
    return buf.getvalue()
