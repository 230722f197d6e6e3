"""Figures: sizes, legibility basics, and the fixed A*Nk colour scale (uniform = 1)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import more_colours_than
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from partattn_checks import render
from partattn_checks.render import gif as render_gif
from partattn_checks.render import grids as render_grids
from partattn_checks.render import maps as render_figures
from partattn_checks.render import panels as render_panels
from partattn_checks.render.outline import OUTLINE_RGB
from partattn_checks.render.panels import _Scale

GRID = (16, 16)
NK = GRID[0] * GRID[1]


# --------------------------------------------------------------------------- helpers


def _assert_figure(png_or_path, *, max_px=512, fmt="PNG"):
    """Right format, at least max_px on the long side and readable on the short one, not blank."""
    src = png_or_path if isinstance(png_or_path, Path) else io.BytesIO(png_or_path)
    with Image.open(src) as im:
        assert im.format == fmt
        assert max(im.size) >= max_px - 1, im.size
        assert min(im.size) >= render_panels.MIN_PANEL_PX, im.size
        rgb = np.asarray(im.convert("RGB")).reshape(-1, 3)
        assert more_colours_than(im, 8), "figure has only a handful of colours"
    assert (rgb < 250).any(), "figure is all white"


def _axes_pixels(fig, ax, inset=3, rgb=None) -> np.ndarray:
    """RGB pixels strictly inside ``ax`` (spines excluded) of the rendered figure. ``rgb``: the figure
    drawn already (``_figure_rgb``), for several axes of one figure; else it is drawn here, once (every
    draw runs the constrained layout again): the box is read from the draw that gave the pixels."""
    rgb = render_panels._figure_rgb(fig) if rgb is None else rgb
    left, top, right, bottom = render_panels._axes_pixel_box(fig, ax, draw=False)
    return rgb[top + inset : bottom - inset, left + inset : right - inset]


def _scale_colour(value, scale="log", vmax=8.0) -> np.ndarray:
    sc = _Scale(vmax, scale)
    return np.round(np.asarray(sc.cmap(sc.norm(value))[:3]) * 255)


def _distinct(pixels: np.ndarray) -> np.ndarray:
    return np.unique(pixels.reshape(-1, 3), axis=0)


def _uniform(q, k) -> np.ndarray:
    return np.full((q, k), 1.0 / k)


def _blobs(n_parts=3) -> np.ndarray:
    """(parts, NK) key marginals, each a Gaussian blob at a different place on GRID."""
    yy, xx = np.mgrid[: GRID[0], : GRID[1]]
    centres = [(4, 4), (4, 11), (11, 4), (11, 11)][:n_parts]
    blobs = np.stack([np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0).ravel() for cy, cx in centres])
    return blobs / blobs.sum(axis=1, keepdims=True)


@pytest.fixture
def picture() -> Image.Image:
    """A colourful 224x224 'preprocessed input' image."""
    arr = np.full((224, 224, 3), 230, np.uint8)
    arr[20:100, 20:100] = (200, 40, 40)
    arr[20:100, 124:204] = (40, 160, 40)
    arr[124:204, 20:100] = (40, 40, 200)
    return Image.fromarray(arr)


# --------------------------------------------------------------------------- heatmap


def test_heatmap_png_bytes_and_path(tmp_path):
    A = torch.softmax(torch.randn(64, NK) * 2, dim=-1)
    _assert_figure(render.heatmap(A, title="t", layer=3, step=10, part=0, head=5))
    out = render.heatmap(A, path=tmp_path / "sub" / "h.png", max_px=300)
    assert out == tmp_path / "sub" / "h.png"
    _assert_figure(out, max_px=300)


def test_heatmap_title_names_layer_step_part_head():
    fig = render_figures._heatmap_fig(_uniform(4, 8), title="uniform", layer="blocks.3", step=7, part=1, head=2)
    title = fig.axes[0].get_title()
    assert title.startswith("uniform")
    for bit in ("layer blocks.3", "step 7", "part 1", "head 2"):  # joined by no-break spaces: wrapping keeps them
        assert bit.replace(" ", "\u00a0") in title
    long = render_figures._heatmap_fig(_uniform(4, 8), title="x" * 30, layer="blocks.20.attn2", step=49, part=3, head=9)
    lines = long.axes[0].get_title().split("\n")
    assert len(lines) >= 3 and not any(line.endswith(("layer", "step", "part", "head")) for line in lines)
    assert fig.axes[0].get_xlabel() == "keys" and fig.axes[0].get_ylabel() == "queries"


#: A name and its value: what a wrapped title must keep on one line.
_PHRASE = re.compile(r"\b(?:part|head|layer|step)s?[ \u00a0]\S*\d\S*")
_VOCABULARY = [
    "part 0", "head 12", "layer blocks.20.attn2", "step 49", "parts 0–3", "mean", "over", "steps", "the",
    "part_separation", "0.0123", "(pass:", ">=", "0.1)", "—", "fail:", "attend", "to", "same", "keys", "·",
]  # fmt: skip


def _flat(text: str) -> str:
    """``text`` with line breaks, no-break spaces and " · " separators as single spaces."""
    return re.sub(r"[\s\u00a0·]+", " ", text).strip()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(_VOCABULARY), min_size=1, max_size=16),
    st.floats(2.5, 6.0),
    st.sampled_from([render_panels.LABEL_FONT_PT, render_panels.TITLE_FONT_PT]),
)
def test_wrapped_titles_keep_each_name_with_its_value_and_fit(words, width, fontsize):
    groups = " ".join(words).split("·")
    text = " · ".join(g.strip() for g in groups if g.strip()) or "mean"  # "·" only between words
    wrapped = render_panels._wrap(text, width, fontsize)
    lines = wrapped.split("\n")
    for line in lines:
        assert render_panels.text_width_in(line, fontsize) <= width, (line, width)
        assert not line.strip().startswith("· ") and not line.strip().endswith(" ·"), line
    for phrase in _PHRASE.findall(text):  # each "part 0", "layer blocks.20.attn2" whole on one line
        assert any(phrase in line.replace("\u00a0", " ") for line in lines), (phrase, lines)
    assert _flat(wrapped) == _flat(text)  # nothing lost but spaces and separators


def test_wrapping_breaks_at_separators_not_inside_a_phrase():
    title = render_panels._title("mean over steps 0–9 of 10", "blocks.4.attn2", 9, 0, 0)
    assert render_panels._wrap(title, 3.0).replace("\u00a0", " ").split("\n") == [
        "mean over steps 0–9 of 10",
        "layer blocks.4.attn2 · step 9",
        "part 0 · head 0",
    ]
    assert render_panels._wrap("step 0 of 10 · layer blocks.4.attn2 · part 0", 3.0).split("\n")[-1] == "part\u00a00"
    cut = render_panels._wrap("a" * 80, 1.0)  # one word wider than the line: the only cut
    assert cut.replace("\n", "") == "a" * 80 and all(render_panels.text_width_in(x) <= 1.0 for x in cut.split("\n"))


@pytest.mark.parametrize("n_parts", [1, 4])
def test_wrapped_suptitle_lines_get_their_room(picture, n_parts):
    """The figure is as tall as its layout for the number of lines the title wrapped to, and the
    title's lines neither leave the figure nor cover a panel title."""
    title = "part_separation 0.0123 (pass: >= 0.1) — fail: the parts attend to the same keys\nmean over steps"
    fig = render_grids._part_panel_fig(_blobs(n_parts), GRID, picture, title=title, layer="blocks.20.attn2", head=3)
    text = fig._suptitle.get_text()
    layout = render_panels.panel_layout(n_parts + 1, title_lines=text.count("\n") + 1)
    assert fig.canvas.get_width_height() == pytest.approx(layout.pixels, abs=2)
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    box = fig._suptitle.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= fig.canvas.get_width_height()[0]
    for ax in (ax for ax in fig.axes if ax.get_visible() and ax.get_title()):
        assert box.y0 >= ax.title.get_window_extent(renderer).y1 - 1, ax.get_title()
    for phrase in ("layer blocks.20.attn2", "head 3"):
        assert any(phrase in line.replace("\u00a0", " ") for line in text.split("\n"))


def test_colorbar_label_states_the_scale():
    fig = render_figures._heatmap_fig(_uniform(4, 8))
    label = fig.axes[1].get_ylabel()
    assert "attention × Nk" in label and "uniform = 1" in label and "Nk = 8" in label


@pytest.mark.parametrize("scale", ["log", "linear"])
@pytest.mark.parametrize("shape", [(64, 256), (1024, 257), (3, 5)])
def test_uniform_map_renders_flat_at_the_colour_of_one(scale, shape):
    fig = render_figures._heatmap_fig(_uniform(*shape), scale=scale)
    colours = _distinct(_axes_pixels(fig, fig.axes[0]))
    assert len(colours) == 1, colours[:5]
    assert np.abs(colours[0] - _scale_colour(1.0, scale)).max() <= 1


def test_uniform_fp16_tensor_is_flat_too():
    A = torch.full((32, 257), 1.0 / 257, dtype=torch.float16)
    fig = render_figures._heatmap_fig(A)
    colours = _distinct(_axes_pixels(fig, fig.axes[0]))
    assert len(colours) == 1
    assert np.abs(colours[0] - _scale_colour(1.0)).max() <= 3


def test_one_hot_map_is_not_flat():
    A = np.zeros((16, 64))
    A[:, 7] = 1.0
    fig = render_figures._heatmap_fig(A)
    colours = _distinct(_axes_pixels(fig, fig.axes[0]))
    assert len(colours) >= 2
    # the scale saturates at vmax (hot) and at 1/vmax (cold); both ends show
    for value in (8.0, 1 / 8.0):
        assert (np.abs(colours - _scale_colour(value)).max(axis=1) <= 1).any()


def test_scale_is_fixed_not_min_max():
    """A map at 2x uniform on half its keys shows the colour of 2 and of 0 (cold end)."""
    A = np.zeros((8, 16))
    A[:, :8] = 1.0 / 8
    fig = render_figures._heatmap_fig(A)
    colours = _distinct(_axes_pixels(fig, fig.axes[0]))
    assert len(colours) == 2
    for value in (2.0, 1 / 8.0):
        assert (np.abs(colours - _scale_colour(value)).max(axis=1) <= 1).any()


def test_non_finite_entries_show_black():
    A = _uniform(8, 16)
    A[:, 3] = np.nan
    A[:, 9] = np.inf
    fig = render_figures._heatmap_fig(A)
    colours = _distinct(_axes_pixels(fig, fig.axes[0]))
    assert (colours == 0).all(axis=1).any()


@pytest.mark.parametrize("bad", [np.ones(5), np.ones((2, 3, 4))])
def test_heatmap_rejects_wrong_rank(bad):
    with pytest.raises(ValueError, match="queries, keys"):
        render.heatmap(bad)


@pytest.mark.parametrize(
    "kwargs, match", [({"vmax": 1.0}, "vmax"), ({"scale": "sqrt"}, "scale"), ({"max_px": 10}, "max_px")]
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        render.heatmap(_uniform(4, 4), **kwargs)


@settings(max_examples=6, deadline=None)
@given(q=st.integers(1, 300), k=st.integers(2, 600))
def test_any_uniform_map_is_flat(q, k):
    fig = render_figures._heatmap_fig(_uniform(q, k))
    colours = _distinct(_axes_pixels(fig, fig.axes[0]))
    assert len(colours) == 1
    assert np.abs(colours[0] - _scale_colour(1.0)).max() <= 1


# --------------------------------------------------------------------------- multi-head grid


def test_multi_head_grid(tmp_path):
    maps = torch.softmax(torch.randn(16, 32, 64) * 2, dim=-1)
    _assert_figure(render.multi_head_grid(maps, layer=4, step=10, part=1, path=tmp_path / "g.png"))
    fig = render_grids._multi_head_fig(maps)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 16 + 1  # 16 panels, one shared colorbar
    assert [ax.get_title() for ax in visible[:3]] == ["head 0", "head 1", "head 2"]


def test_multi_head_grid_shares_the_fixed_scale():
    """Head 0 uniform, head 1 one-hot: head 0 still renders flat at the colour of 1."""
    maps = np.stack([_uniform(8, 32), np.eye(8, 32)])
    fig = render_grids._multi_head_fig(maps)
    colours = _distinct(_axes_pixels(fig, fig.axes[0], inset=2))
    assert len(colours) == 1
    assert np.abs(colours[0] - _scale_colour(1.0)).max() <= 1


# --------------------------------------------------------------------------- part panel / overlay


def test_part_panel_with_grid_and_image(tmp_path, picture):
    _assert_figure(render.part_panel(_blobs(3), GRID, picture, layer=4, step=25, path=tmp_path / "p.png"))
    fig = render_grids._part_panel_fig(_blobs(3), GRID, picture)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles[:4] == ["input", "part 0", "part 1", "part 2"]


def test_part_panel_grid_without_image_and_strips(tmp_path):
    _assert_figure(render.part_panel(_blobs(4), grid=GRID, path=tmp_path / "grid.png"))
    half = torch.tensor(_blobs(4), dtype=torch.float16)
    _assert_figure(render.part_panel(half, path=tmp_path / "strip.png"))
    strips = render_grids._part_panel_fig(_blobs(4))
    assert [t.get_text() for t in strips.axes[0].get_yticklabels()] == [f"part {p}" for p in range(4)]


def test_part_panel_grid_must_match_nk():
    with pytest.raises(ValueError, match=r"15x17.*255.*Nk=256"):
        render.part_panel(_blobs(2), grid=(15, 17))


def test_overlay_accepts_pil_and_tensors(tmp_path, picture):
    m = _blobs(1)[0]
    _assert_figure(render.overlay(m, GRID, picture, layer=4, step=25, part=0, path=tmp_path / "o.png"))
    chw = (torch.from_numpy(np.array(picture)).permute(2, 0, 1).float() / 255 - 0.45) / 0.226
    _assert_figure(render.overlay(torch.from_numpy(m), GRID, chw[None]))  # (1, 3, H, W) encoder input
    _assert_figure(render.overlay(m, GRID, np.asarray(picture)[..., 0]))  # grey HxW uint8


def test_overlay_grid_mismatch_names_both_numbers(picture):
    with pytest.raises(ValueError) as err:
        render.overlay(np.full(257, 1 / 257), GRID, picture)
    assert "256" in str(err.value) and "257" in str(err.value)


def _panel_and_edges(fig, ax, image: Image.Image, inset=3, rgb=None) -> tuple[np.ndarray, np.ndarray]:
    """The pixels inside ``ax`` and where ``image`` has an edge there (widened by a few pixels).
    ``rgb``: as for :func:`_axes_pixels`."""
    from PIL import ImageFilter

    rgb_fig = render_panels._figure_rgb(fig) if rgb is None else rgb
    left, top, right, bottom = render_panels._axes_pixel_box(fig, ax, draw=False)
    rgb = np.asarray(image.convert("RGB"), dtype=float)
    step = np.zeros(rgb.shape[:2])
    step[:, :-1] = np.abs(np.diff(rgb, axis=1)).max(-1)
    step[:-1, :] = np.maximum(step[:-1, :], np.abs(np.diff(rgb, axis=0)).max(-1))
    edges = Image.fromarray(((step > 10) * 255).astype(np.uint8)).resize((right - left, bottom - top))
    edges = np.asarray(edges.filter(ImageFilter.MaxFilter(7))) > 0
    pixels = rgb_fig[top:bottom, left:right].astype(int)
    return pixels[inset:-inset, inset:-inset], edges[inset:-inset, inset:-inset]


def _green(pixels: np.ndarray) -> np.ndarray:
    """Pixels where green clearly dominates: the outline colour, or a blend of it."""
    pixels = pixels.astype(int)
    return pixels[..., 1] - np.maximum(pixels[..., 0], pixels[..., 2]) > 20


def test_uniform_overlay_is_neutral_with_the_image_as_green_outlines(picture):
    """Uniform attention is one flat neutral colour wherever the image has no edge; the image shows
    only as outlines, in a green that neither colour map uses."""
    fig = render_figures._overlay_fig(np.full(NK, 1.0 / NK), GRID, picture)
    pixels, edges = _panel_and_edges(fig, fig.axes[0], picture)
    off_neutral = np.abs(pixels - _scale_colour(1.0)).max(-1) > 2
    assert not (off_neutral & ~edges).any(), "colour off the neutral away from the image's edges"
    assert 0.005 < off_neutral.mean() < 0.2  # the outlines are drawn, and thin
    assert _green(pixels)[off_neutral].mean() > 0.6
    assert OUTLINE_RGB[1] > 2 * max(OUTLINE_RGB[0], OUTLINE_RGB[2])


@pytest.mark.parametrize("scale", ["log", "linear"])
def test_attention_over_a_black_and_a_white_image_has_the_same_colours(scale):
    """Image brightness never reads as attention: the same marginal over a black and a white image
    (no edges) draws the same pixels, and uniform attention is exactly the neutral colour."""
    black, white = Image.new("RGB", (224, 224), (0, 0, 0)), Image.new("RGB", (224, 224), (255, 255, 255))
    for marginal, colours in ((np.full(NK, 1.0 / NK), 1), (_blobs(1)[0], 100)):
        drawn = [render_figures._overlay_fig(marginal, GRID, im, scale=scale) for im in (black, white)]
        on_black, on_white = (_axes_pixels(f, f.axes[0]).astype(int) for f in drawn)
        assert np.abs(on_black - on_white).max() <= 1
        assert (len(_distinct(on_black)) == 1) == (colours == 1)  # uniform: one colour; the blob: many
    assert np.abs(on_black[0, 0] - _scale_colour(_blobs(1)[0][0] * NK, scale)).max() <= 3  # the corner cell's value
    uniform = render_grids._part_panel_fig(np.full((2, NK), 1.0 / NK), GRID, black, scale=scale)
    rgb = render_panels._figure_rgb(uniform)
    for ax in uniform.axes[1:3]:
        colours = _distinct(_axes_pixels(uniform, ax, rgb=rgb))
        assert len(colours) == 1 and np.abs(colours[0] - _scale_colour(1.0, scale)).max() <= 1


def test_overlay_puts_the_hot_colour_where_attention_is(picture):
    fig = render_figures._overlay_fig(_blobs(1)[0], GRID, picture)  # blob in the top-left quarter
    pixels = _axes_pixels(fig, fig.axes[0]).astype(int)
    h, w = pixels.shape[:2]
    warmth = pixels[..., 0] - pixels[..., 2]  # red minus blue
    assert warmth[: h // 2, : w // 2].mean() > 40 > warmth[h // 2 :, w // 2 :].mean()


# --------------------------------------------------------------------------- readable sizes


def _texts(fig):
    """Every visible, non-empty text of the drawn figure (titles, labels, ticks, legends, colorbars)."""
    from matplotlib.text import Text

    fig.canvas.draw()
    owner = {id(t): ax for ax in fig.axes for t in ax.findobj(Text)}  # tick labels have no .axes

    def shown(t) -> bool:
        ax = owner.get(id(t))
        if ax is None:
            return True  # figure-level text: suptitle, supxlabel, ...
        if not ax.get_visible():
            return False
        return ax.axison or t is ax.title  # tick labels of an axis-off image panel are not drawn

    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and shown(t)]


def _image_panels(fig):
    """Pixel (width, height) of every axes that shows an image (not the colorbar), in the figure as
    :func:`_texts` drew it (not drawn again: every draw runs the constrained layout again)."""
    shown = [ax for ax in fig.axes if ax.get_images() and ax.get_visible()]
    boxes = [render_panels._axes_pixel_box(fig, ax, draw=False) for ax in shown]
    return [(right - left, bottom - top) for left, top, right, bottom in boxes]


def _every_kind(picture, n_parts, grid=GRID):
    """One figure of every kind at ``n_parts`` parts on ``grid`` (16x16 = the release's 224 px crop)."""
    nk = grid[0] * grid[1]
    rng = np.random.default_rng(n_parts)
    marg = rng.dirichlet(np.ones(nk), size=n_parts)
    maps = rng.dirichlet(np.ones(nk), size=(4 * n_parts, 16))
    long_title = "part_separation 0.0123 (pass: >= 0.1) — fail: the parts attend to the same keys\nmean over steps"
    return {
        "part panel": render_grids._part_panel_fig(marg, grid, picture, title=long_title, layer="blocks.20.attn2"),
        "part grid": render_grids._part_panel_fig(marg, grid, title=long_title, layer="blocks.20.attn2"),
        "part strips": render_grids._part_panel_fig(marg, title=long_title, layer="blocks.20.attn2"),
        "heads on image": render_grids._multi_head_fig(maps, grid=grid, image=picture, title=long_title, layer=3),
        "heads qk": render_grids._multi_head_fig(maps, title=long_title, layer="blocks.20.attn2", step=49, part=0),
        "overlay": render_figures._overlay_fig(
            marg[-1], grid, picture, title=long_title, layer="blocks.20.attn2", step=49, part=n_parts - 1, head=15
        ),
        "heatmap": render_figures._heatmap_fig(maps[0], title=long_title, layer="blocks.20.attn2", step=49, head=3),
        "timeline": render_figures._timeline_fig(
            rng.uniform(size=(10, 21)), np.arange(10), [f"blocks.{i}.attn2" for i in range(21)], title=long_title
        ),
    }


@pytest.mark.parametrize("n_parts", [1, 2, 4])
def test_every_figure_kind_is_readable(picture, n_parts):
    """Text at >= MIN_FONT_PT at >= DPI, image panels >= ~MIN_PANEL_PX, whatever the part count."""
    for kind, fig in _every_kind(picture, n_parts).items():
        assert fig.dpi >= render_panels.DPI, kind
        sizes = {t.get_text(): t.get_fontsize() for t in _texts(fig)}  # draws the figure
        small = {text: size for text, size in sizes.items() if size < render_panels.MIN_FONT_PT}
        assert not small, (kind, small)
        assert any(size >= render_panels.TITLE_FONT_PT for size in sizes.values()), kind
        width, height = fig.canvas.get_width_height()
        assert min(width, height) >= render_panels.MIN_PANEL_PX, (kind, width, height)
        for w, h in _image_panels(fig):
            if kind != "part strips" and kind != "heatmap":  # square image panels
                assert min(w, h) >= 0.95 * render_panels.MIN_PANEL_PX, (kind, w, h)
        titles = [ax.title for ax in fig.axes if ax.get_visible()] + [fig._suptitle]
        renderer = fig.canvas.get_renderer()
        for t in (t for t in titles if t is not None and t.get_text()):  # wrapped to fit, never cut
            box = t.get_window_extent(renderer)
            assert box.x0 >= -1 and box.x1 <= width + 1, (kind, t.get_text())


@pytest.mark.parametrize("n_parts", [1, 2, 4])
def test_part_panel_grows_with_parts_instead_of_shrinking(picture, n_parts):
    png = render.part_panel(_blobs(n_parts), GRID, picture, title="parts")
    with Image.open(io.BytesIO(png)) as im:
        width, height = im.size
    layout = render_panels.panel_layout(n_parts + 1, title_lines=1)
    assert (width, height) == pytest.approx(layout.pixels, abs=2)
    columns = min(n_parts + 1, render_panels.MAX_COLUMNS)
    rows = -(-(n_parts + 1) // columns)
    assert width >= columns * render_panels.MIN_PANEL_PX and height >= rows * render_panels.MIN_PANEL_PX


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), ncols=st.one_of(st.none(), st.integers(1, 8)), max_px=st.integers(64, 3000))
def test_panel_layout_keeps_minimums(n, ncols, max_px):
    layout = render_panels.panel_layout(n, ncols=ncols, max_px=max_px)
    assert layout.nrows * layout.ncols >= n > (layout.nrows - 1) * layout.ncols
    assert layout.ncols <= (ncols or render_panels.MAX_COLUMNS)
    assert layout.dpi >= render_panels.DPI
    width, height = layout.pixels
    assert width >= layout.ncols * render_panels.MIN_PANEL_PX
    assert height >= layout.nrows * render_panels.MIN_PANEL_PX
    assert max(width, height) >= max_px - 1  # max_px is met when the minimums fit in it ...
    natural = max(layout.figsize) * render_panels.DPI
    if natural >= max_px:  # ... and exceeded only by what the minimums need
        assert layout.dpi == render_panels.DPI


def test_panel_layout_rejects_nonsense():
    with pytest.raises(ValueError, match="at least one panel"):
        render_panels.panel_layout(0)
    with pytest.raises(ValueError, match="max_px"):
        render_panels.figure_dpi((4.0, 3.0), 10)


def test_multi_head_grid_on_the_image_shows_the_image_outlines(picture):
    """Uniform heads on the image: neutral everywhere but the image's green outlines; on the bare
    grid (no image) the same heads are one flat colour."""
    maps = np.full((4, 8, NK), 1.0 / NK)
    fig = render_grids._multi_head_fig(maps, grid=GRID, image=picture)
    rgb = render_panels._figure_rgb(fig)
    for ax in fig.axes[:4]:
        panel, edges = _panel_and_edges(fig, ax, picture, rgb=rgb)
        off_neutral = np.abs(panel - _scale_colour(1.0)).max(-1) > 2
        assert not (off_neutral & ~edges).any()
        assert off_neutral.mean() > 0.005 and _green(panel)[off_neutral].mean() > 0.6
    flat = render_grids._multi_head_fig(maps, grid=GRID)
    assert len(_distinct(_axes_pixels(flat, flat.axes[0], inset=3))) == 1


def test_multi_head_grid_on_the_image_puts_each_head_where_it_looks(picture):
    blobs = _blobs(4)  # head h looks at quadrant h
    fig = render_grids._multi_head_fig(np.repeat(blobs[:, None, :], 3, axis=1), grid=GRID, image=picture)
    rgb = render_panels._figure_rgb(fig)
    for h, (qy, qx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        pixels = _axes_pixels(fig, fig.axes[h], rgb=rgb).astype(int)
        hh, ww = pixels.shape[0] // 2, pixels.shape[1] // 2
        warmth = pixels[..., 0] - pixels[..., 2]
        quarters = {(y, x): warmth[y * hh : (y + 1) * hh, x * ww : (x + 1) * ww].mean() for y in (0, 1) for x in (0, 1)}
        assert max(quarters, key=quarters.get) == (qy, qx), (h, quarters)
    assert [ax.get_title() for ax in fig.axes[:4]] == ["head 0", "head 1", "head 2", "head 3"]


def test_multi_head_grid_with_grid_checks_the_key_count(picture):
    with pytest.raises(ValueError, match="Nk=255"):
        render.multi_head_grid(np.full((2, 3, 255), 1 / 255), grid=GRID, image=picture)
    with pytest.raises(ValueError, match="marginals"):
        render.multi_head_grid(np.full((2, 3, 4, NK), 1 / NK), grid=GRID)


# --------------------------------------------------------------------------- timeline


@pytest.mark.parametrize("n_layers", [4, 21])
def test_timeline(tmp_path, n_layers):
    rng = np.random.default_rng(0)
    values = np.clip(rng.normal(0.6, 0.1, (50, n_layers)), 0, 1)
    names = [f"blocks.{i}" for i in range(n_layers)]
    _assert_figure(render.timeline(values, np.arange(50), names, threshold=0.98, path=tmp_path / "t.png"))
    fig = render_figures._timeline_fig(values, np.arange(50), names, threshold=0.98)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "normalized entropy" and ax.get_xlabel() == "denoising step"
    assert len(ax.get_lines()) == n_layers + 1  # one line per layer + the threshold
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "threshold 0.98" in legend
    assert ("layer blocks.0" in legend) == (n_layers <= 10)  # many layers: colorbar instead


def test_timeline_axis_given_is_fixed_unless_data_escapes():
    """``ylim`` given: that axis, widened only by data outside it (the default fits the data and the
    threshold instead: tests/test_timelines.py)."""
    fig = render_figures._timeline_fig(np.full((5, 2), 0.5), range(5), ["a", "b"], ylim=(0.0, 1.0))
    lo, hi = fig.axes[0].get_ylim()
    assert lo < 0.0 < 1.0 < hi < 1.1
    fig = render_figures._timeline_fig(np.full((5, 2), 3.0), range(5), ["a", "b"], metric="N_eff", ylim=(0.0, 1.0))
    assert fig.axes[0].get_ylim()[1] >= 3.0


def test_timeline_of_one_step_has_integer_ticks():
    fig = render_figures._timeline_fig(np.array([[0.5, 0.7]]), [0], ["a", "b"])
    fig.canvas.draw()
    ticks = [t for t in fig.axes[0].get_xticks() if fig.axes[0].get_xlim()[0] <= t <= fig.axes[0].get_xlim()[1]]
    assert 0 in ticks and all(float(t).is_integer() for t in ticks)


@pytest.mark.parametrize("n_layers", [5, 21])
def test_timeline_text_stays_inside_the_figure(n_layers):
    """The timeline places its axes, legend and colour bar itself (no layout engine): every text,
    a long legend entry and a wrapped title included, lies inside the figure (a legend entry of the
    run page was once cut at the right edge)."""
    values = np.linspace(0.1, 0.2, 10 * n_layers).reshape(10, n_layers)
    names = [f"blocks.{i}.attn2" for i in range(n_layers)]
    fig = render_figures._timeline_fig(
        values, range(10), names, metric="part separation (JS / log 2)", threshold=0.084,
        title="part separation per step and layer, " * 3, judged=values.max(axis=1),
        judged_label="max over layers", value=0.155, value_label="max over steps and layers",
    )  # fmt: skip
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.axes[0].get_legend()
    assert any("value 0.155 (max over steps and layers)" in t.get_text() for t in legend.get_texts())
    width, height = fig.get_size_inches()
    drawn = fig.get_tightbbox(renderer)  # inches: every drawn artist (ticks outside the view are not drawn)
    assert drawn.x0 >= -0.01 and drawn.y0 >= -0.01 and drawn.x1 <= width + 0.01 and drawn.y1 <= height + 0.01, (
        f"drawn {drawn.bounds} outside the figure's {width:.2f} x {height:.2f} inches"
    )
    box = legend.get_window_extent(renderer)
    assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1


def test_timeline_shape_mismatch():
    with pytest.raises(ValueError, match="steps=5, layers=3"):
        render.timeline(np.zeros((5, 2)), range(5), ["a", "b", "c"])


# --------------------------------------------------------------------------- animation


def _gif_frames(path_or_bytes) -> list[np.ndarray]:
    src = path_or_bytes if isinstance(path_or_bytes, Path) else io.BytesIO(path_or_bytes)
    frames = []
    with Image.open(src) as im:
        assert im.format == "GIF" and im.info.get("loop") == 0
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB")))
    return frames


def test_animation_torch_maps(tmp_path):
    frames = torch.softmax(torch.randn(5, 32, 64) * 2, dim=-1)
    out = render.animation(frames, tmp_path / "a.gif", fps=5)
    assert out == tmp_path / "a.gif"
    gif = _gif_frames(out)
    assert len(gif) == 5
    _assert_figure(out, fmt="GIF")
    with Image.open(out) as im:
        assert im.info["duration"] == 200


def test_animation_overlay_marginals_and_bytes(picture):
    a = np.linspace(0, 1, 6)[:, None]
    frames = torch.from_numpy((1 - a) * _blobs(4)[0] + a * _blobs(4)[3]).half()
    data = render.animation_bytes(frames, grid=GRID, image=picture, titles=[f"step {s}" for s in range(6)])
    assert len(_gif_frames(data)) == 6
    assert len(_gif_frames(render.animation_bytes(_blobs(3)))) == 3  # strips, no grid


def test_animation_frames_share_the_fixed_scale():
    """A uniform frame next to a one-hot frame still renders flat at the colour of 1."""
    frames = np.stack([_uniform(8, 32), np.eye(8, 32)])
    first = np.asarray(render_gif._animation_frames(frames)[0])
    h, w = first.shape[:2]
    centre = first[h // 2 - 40 : h // 2 + 40, w // 2 - 60 : w // 2 + 20]  # well inside the axes
    colours = _distinct(centre)
    assert len(colours) == 1
    assert np.abs(colours[0] - _scale_colour(1.0)).max() <= 1


def _colour_bar(frame: np.ndarray, cmap) -> tuple[int, np.ndarray]:
    """(column, rows) of the colour bar in a rendered frame: the middle column of those in the
    right half whose pixels lie on the colour map's curve, and its rows on that curve."""
    curve = np.round(np.asarray(cmap(np.linspace(0, 1, 256)))[:, :3] * 255)
    height, width = frame.shape[:2]

    def off_curve(pixels):
        return np.sqrt(((pixels[:, None, :] - curve[None]) ** 2).sum(-1).min(1))

    columns = [
        x
        for x in range(width // 2, width)
        if len(_distinct(frame[height // 4 : 3 * height // 4, x])) > 100
        and off_curve(frame[height // 4 : 3 * height // 4, x].astype(float)).max() <= 2
    ]
    assert columns, "no colour bar found"
    x = columns[len(columns) // 2]
    rows = np.flatnonzero((off_curve(frame[:, x].astype(float)) <= 2) & (frame[:, x].sum(-1) < 760))
    return x, rows


@pytest.mark.parametrize("scale", ["log", "linear"])
def test_gif_keeps_the_colour_bar_smooth(picture, scale):
    """The GIF's palette holds enough colours along the colour map that the colour bar does not band:
    measured against the RGB frames it was made from (a median-cut palette gave about 100 of the
    bar's 256 colours and errors of 40+ levels on it)."""
    a = np.linspace(0, 1, 4)[:, None]
    frames = (1 - a) * _blobs(4)[0] + a * _blobs(4)[3]
    kwargs = {"grid": GRID, "image": picture, "scale": scale, "titles": [f"step {s}" for s in range(4)]}
    drawn = [np.asarray(f).astype(int) for f in render_gif._animation_frames(frames, **kwargs)]
    stored = [f.astype(int) for f in _gif_frames(render.animation_bytes(frames, **kwargs))]
    x, rows = _colour_bar(drawn[0], _Scale(8.0, scale).cmap)
    assert len(rows) > 250 and len(_distinct(drawn[0][rows, x])) >= 250
    assert len(_distinct(stored[0][rows, x])) >= 150
    assert np.abs(drawn[0][rows, x] - stored[0][rows, x]).max() <= 4
    error = np.abs(np.stack(drawn) - np.stack(stored)).max(-1)
    print(f"{scale}: mean {error.mean():.2f}, 99th percentile {np.percentile(error, 99):.0f}")
    assert error.mean() < 1.5 and np.percentile(error, 99) <= 16


@pytest.mark.parametrize(
    "kwargs, match", [({"titles": ["a"]}, "1 titles for 2 frames"), ({"image": np.zeros((8, 8, 3))}, "grid")]
)
def test_animation_errors(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        render.animation(_blobs(2), tmp_path / "x.gif", **kwargs)


def test_part_panel_animation_is_the_part_panel_per_step(picture):
    """Frame k is the still part panel of step k (same layout, same fixed scale), to GIF precision."""
    a = np.linspace(0, 1, 3)[:, None, None]
    frames = (1 - a) * _blobs(3)[None] + a * _blobs(3)[::-1][None]  # (steps, parts, Nk): the parts swap places
    titles = [f"step {s}" for s in range(3)]
    data = render.part_panel_animation(frames, GRID, picture, titles=titles, layer="blocks.4.attn2", fps=4)
    gif = _gif_frames(data)
    assert len(gif) == 3
    for k in (0, 2):
        still = Image.open(
            io.BytesIO(render.part_panel(frames[k], GRID, picture, title=titles[k], layer="blocks.4.attn2"))
        )
        still = np.asarray(still.convert("RGB")).astype(int)
        assert still.shape == gif[k].shape
        assert np.abs(still - gif[k].astype(int)).max(-1).mean() < 1.5
    assert not np.array_equal(gif[0], gif[2])
    assert len(_gif_frames(render.part_panel_animation(frames))) == 3  # strips, no grid


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((_blobs(2),), {}, "expects \\(steps, parts, Nk\\)"),
        ((np.stack([_blobs(2)] * 2),), {"titles": ["a"]}, "1 titles for 2"),
    ],
)
def test_part_panel_animation_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        render.part_panel_animation(*args, **kwargs)


# --------------------------------------------------------------------------- hygiene


def test_render_never_touches_pyplot():
    code = (
        "import sys, matplotlib; import partattn_checks.render as r, numpy as np; "
        "r.heatmap(np.full((4, 4), 0.25)); "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
