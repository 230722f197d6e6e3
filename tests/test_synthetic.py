"""Tests of the synthetic part task (partattn_checks.model.synthetic) and its fixture images."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from partattn_checks.model.synthetic import (
    PALETTE,
    SHAPES,
    UNSEEN_SHAPES,
    draw_scene,
    masks_to_patch_grid,
    sample_batch,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "make_fixture_images.py"
FIXTURES = REPO / "fixtures" / "images"


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _scene(seed: int, n: int, **kw):
    return draw_scene(np.random.default_rng(seed), n, **kw)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_same_seed_same_scene(n):
    a, b = _scene(7, n), _scene(7, n)
    assert _png(a.image) == _png(b.image)
    np.testing.assert_array_equal(a.targets, b.targets)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert a.shapes == b.shapes
    assert _png(_scene(8, n).image) != _png(a.image)


def test_shapes_and_dtypes_follow_parameters():
    s = _scene(0, 3, image_size=98, num_tokens=5, channels=11, scale=3)
    assert s.image.mode == "RGB" and s.image.size == (294, 294)
    assert s.masks.shape == (3, 294, 294) and s.masks.dtype == bool
    assert s.targets.shape == (3, 5, 11) and s.targets.dtype == np.float32
    assert s.num_parts == 3
    default = _scene(0, 2)
    assert default.image.size == (112, 112) and default.targets.shape == (2, 16, 8)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 4), scale=st.sampled_from([1, 2]))
def test_colours_masks_and_pixels_agree(seed, n, scale):
    """Part k is PALETTE[N+k]; masks are disjoint, non-empty and are exactly its colour pixels."""
    s = _scene(seed, n, scale=scale)
    px = np.asarray(s.image)
    assert s.masks.sum(axis=0).max() == 1  # disjoint and something drawn
    for k, info in enumerate(s.shapes):
        assert info["colour"] == n + k and info["rgb"] == PALETTE[n + k]
        assert info["type"] in SHAPES
        assert s.masks[k].any()
        np.testing.assert_array_equal((px == PALETTE[n + k]).all(-1), s.masks[k])
    assert (px[~s.masks.any(0)] == 255).all()
    # well inside: nothing touches the border
    border = np.ones(s.masks.shape[1:], bool)
    border[2:-2, 2:-2] = False
    assert not s.masks[:, border].any()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 4))
def test_targets_lie_on_outline_and_encode_type_and_colour(seed, n):
    s = _scene(seed, n, scale=2)
    size = s.masks.shape[1]
    assert np.abs(s.targets).max() <= 1.0
    for k, info in enumerate(s.shapes):
        t = s.targets[k]
        onehot = -np.ones(3, np.float32)
        onehot[SHAPES.index(info["type"])] = 1.0
        np.testing.assert_array_equal(t[:, 2:5], np.broadcast_to(onehot, (16, 3)))
        rgb = np.array(PALETTE[n + k]) / 127.5 - 1
        np.testing.assert_allclose(t[:, 5:8], np.broadcast_to(rgb, (16, 3)), atol=1e-6)
        # every token point has both inside and outside pixels within 2 px: it is on the outline
        xy = (t[:, :2] + 1) / 2 * size
        for x, y in xy:
            i, j = int(y), int(x)
            window = s.masks[k, max(i - 2, 0) : i + 3, max(j - 2, 0) : j + 3]
            assert window.any() and not window.all(), (info, x, y)
        # the first token is the top of the shape, the rest go clockwise (x increases first)
        cx, cy = info["centre"]
        assert abs(xy[0, 0] - cx) < 1e-3 and xy[0, 1] < cy
        assert xy[1, 0] > xy[0, 0]


def test_circle_points_evenly_spaced_on_radius():
    s = _scene(3, 1, types=["circle"], num_tokens=12)
    (info,) = s.shapes
    xy = (s.targets[0, :, :2].astype(np.float64) + 1) / 2 * 112
    d = np.linalg.norm(xy - np.array(info["centre"]), axis=1)
    np.testing.assert_allclose(d, info["size"], rtol=1e-5)
    steps = np.linalg.norm(np.diff(np.vstack([xy, xy[:1]]), axis=0), axis=1)
    np.testing.assert_allclose(steps, steps[0], rtol=1e-5)


def test_layout_and_targets_do_not_depend_on_scale():
    a, b = _scene(11, 3, scale=1), _scene(11, 3, scale=2)
    np.testing.assert_array_equal(a.targets, b.targets)
    assert [s["type"] for s in a.shapes] == [s["type"] for s in b.shapes]
    pa, pb = masks_to_patch_grid(a.masks), masks_to_patch_grid(b.masks)
    np.testing.assert_allclose(pa, pb, atol=0.15)


def test_channel_truncation_and_repetition():
    base = _scene(5, 2).targets
    np.testing.assert_array_equal(_scene(5, 2, channels=3).targets, base[..., :3])
    wide = _scene(5, 2, channels=20).targets
    np.testing.assert_array_equal(wide, base[..., np.arange(20) % 8])


def test_unseen_types_render_with_all_minus_one_type_channels():
    s = _scene(2, 2, types=list(UNSEEN_SHAPES), scale=2)
    assert [i["type"] for i in s.shapes] == ["ring", "star"]
    assert (s.targets[:, :, 2:5] == -1).all()
    ring = s.masks[0]
    cx, cy = (int(round(v)) for v in s.shapes[0]["centre"])
    assert ring.any() and not ring[cy, cx]  # hole in the middle


def test_types_drawn_from_given_shapes():
    for s in sample_batch(np.random.default_rng(0), 20, 3, shapes=("square",)):
        assert {i["type"] for i in s.shapes} == {"square"}


def test_sample_batch_matches_sequential_draws():
    batch = sample_batch(np.random.default_rng(4), 3, 2, num_tokens=4)
    rng = np.random.default_rng(4)
    for scene in batch:
        np.testing.assert_array_equal(scene.targets, draw_scene(rng, 2, num_tokens=4).targets)


def test_patch_grid_pooling_conserves_area():
    s = _scene(9, 4)
    pooled = masks_to_patch_grid(s.masks, (8, 8))
    assert pooled.shape == (4, 64)
    assert pooled.min() >= 0 and pooled.max() <= 1 + 1e-12
    assert pooled.sum(axis=0).max() <= 1 + 1e-12
    np.testing.assert_allclose(pooled.sum(axis=1) * (112 / 8) ** 2, s.masks.sum(axis=(1, 2)))
    # non-divisible size: still exact area
    m = np.random.default_rng(0).random((2, 50, 37)) > 0.5
    p = masks_to_patch_grid(m, (8, 8))
    np.testing.assert_allclose(p.sum(axis=1) * (50 / 8) * (37 / 8), m.sum(axis=(1, 2)))
    full = masks_to_patch_grid(np.ones((1, 50, 37), bool), (8, 8))
    np.testing.assert_allclose(full, 1.0)


def test_patch_grid_is_row_major():
    m = np.zeros((1, 16, 16), bool)
    m[0, 0:2, 14:16] = True  # top-right patch of a 8x8 grid
    p = masks_to_patch_grid(m, (8, 8))
    assert p[0, 7] == 1.0 and p[0].sum() == 1.0


@pytest.mark.parametrize("n, limit", [(5, 8), (3, 4), (2, 3)])
def test_refuses_too_many_parts(n, limit):
    with pytest.raises(ValueError, match=r"max_num_parts.*classifier-free guidance"):
        _scene(0, n, max_num_parts=limit)


def test_refuses_bad_arguments():
    with pytest.raises(ValueError):
        _scene(0, 0)
    with pytest.raises(ValueError, match="unknown shape type"):
        _scene(0, 1, types=["hexagon"])
    with pytest.raises(ValueError, match="types has"):
        _scene(0, 2, types=["circle"])


def test_placement_failure_is_clear(monkeypatch):
    import partattn_checks.model.synthetic as synthetic

    monkeypatch.setattr(synthetic, "_SIZE_RANGE", (0.4, 0.44))  # two such shapes cannot fit
    with pytest.raises(RuntimeError, match="could not place shape 2 of 2"):
        _scene(0, 2)


def test_fixture_images_are_up_to_date():
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_fixture_check_detects_a_changed_file(tmp_path):
    import shutil

    for p in FIXTURES.glob("np*.png"):
        shutil.copy(p, tmp_path / p.name)
    victim = tmp_path / "np2_circle_square.png"
    Image.new("RGB", (224, 224), "white").save(victim)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "np2_circle_square.png" in result.stderr


def test_fixture_images_names_and_content():
    paths = sorted(FIXTURES.glob("*"))
    assert paths and all(p.suffix == ".png" for p in paths)  # no sidecars
    for p in paths:
        n = int(re.match(r"np(\d)_", p.name).group(1))
        with Image.open(p) as im:
            assert im.size == (224, 224)
            px = np.asarray(im)
        assert p.stat().st_size < 8000
        if "rgba" in p.name:
            assert im.mode == "RGBA" and (px[..., 3] == 0).any() and (px[..., 3] == 255).any()
            px = px[px[..., 3] == 255][:, :3]
        colours = {tuple(c) for c in px.reshape(-1, 3)}
        for k in range(n):
            assert PALETTE[n + k] in colours, (p.name, k)
