"""The guide's API (``AttentionVisualizer``) on our capture, and the HTML index writer.

Model: the tiny random checkpoint (``fixtures/checkpoints/tiny-random``: 5 blocks, 4 heads,
8×8 DINOv2 patches + CLS = 65 image tokens, 16 latent tokens per part) and, for "any diffusers
model", diffusers' own ``BasicTransformerBlock``. Every written PNG/GIF is opened and checked.
"""

from __future__ import annotations

import gc
import html.parser
import io
import re
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock
from helpers import more_colours_than
from PIL import Image

from partattn_checks.capture.record import AttentionRecord
from partattn_checks.capture.recorder import (
    AttentionRecorder,
    CaptureError,
    Selection,
    cross_attention_modules,
    record_attention,
)
from partattn_checks.model.pipeline import PartCrafterPipeline
from partattn_checks.present.pages import render_index, write_index
from partattn_checks.present.pages.run_page import render_record
from partattn_checks.present.visualizer import SPARSITY_FACTOR, AttentionVisualizer
from partattn_checks.render import panels as render_panels

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "fixtures" / "checkpoints" / "tiny-random"
IMAGE = REPO / "fixtures" / "images" / "np2_circle_square.png"
DOC = REPO / "docs" / "visualization.md"
LAYERS = [f"blocks.{i}.attn2" for i in range(5)]
TOKENS = 16  # latent tokens per part used below
NK = 64  # patch keys of the tiny encoder (CLS is key 0 of 65)


# ----------------------------------------------------------------------------- helpers
def assert_image(path_or_bytes, *, fmt="PNG", frames=None, max_px=512):
    """A real figure: right format, at least max_px on the long side (more when its panels need it,
    docs/visualization.md "Figure sizes"), readable on the short side, not blank; GIFs: the frame count."""
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else Path(path_or_bytes)
    with Image.open(src) as im:
        assert im.format == fmt, (src, im.format)
        assert max(im.size) >= max_px - 1, (src, im.size)
        assert min(im.size) >= render_panels.MIN_PANEL_PX, (src, im.size)
        n = getattr(im, "n_frames", 1)
        if frames is not None:
            assert n == frames, (src, n)
        for k in range(n):
            im.seek(k)
            rgb = np.asarray(im.convert("RGB")).reshape(-1, 3)
            assert more_colours_than(im, 8), f"{src} frame {k} has only a handful of colours"
            assert (rgb < 250).any(), f"{src} frame {k} is all white"
    return n


def processors(model):
    return {name: module.processor for name, module in cross_attention_modules(model)}


def hooks_on(model) -> dict[str, int]:
    """Forward hooks and pre-hooks per module that has any (``""`` is the model itself)."""
    return {
        name: len(m._forward_hooks) + len(m._forward_pre_hooks)
        for name, m in model.named_modules()
        if m._forward_hooks or m._forward_pre_hooks
    }


def cfg_inputs(pipe, num_parts, *, seed=0, image=IMAGE):
    """Latents ``(2N, T, C)`` and image tokens ``[zeros, tokens]`` as the pipeline builds them."""
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(num_parts, TOKENS, pipe.transformer.config.in_channels, generator=gen).repeat(2, 1, 1)
    tokens = pipe.encode_image(image).expand(num_parts, -1, -1)
    return latents, torch.cat([torch.zeros_like(tokens), tokens])


@pytest.fixture(scope="module")
def pipe():
    return PartCrafterPipeline.from_pretrained(CHECKPOINT, device="cpu")


@pytest.fixture
def viz(pipe):
    v = AttentionVisualizer(pipe)
    yield v
    v.clear_hooks()
    assert hooks_on(pipe.transformer) == {}


@pytest.fixture(scope="module")
def run_record(pipe):
    """One recorded 3-step run of a 2-part image, full maps of the last layer at the last step."""
    v = AttentionVisualizer(pipe)
    record = v.run(IMAGE, steps=3)
    return v, record


# ----------------------------------------------------------------------------- the guide's example
def test_guide_example_in_the_docs_runs(tmp_path, monkeypatch):
    """The fenced block of docs/visualization.md, exec'd verbatim against the tiny checkpoint."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- guide-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "docs/visualization.md lost its guide-example block"
    (tmp_path / "fixtures").symlink_to(REPO / "fixtures", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "guide_example"}
    exec(compile(match.group(1), str(DOC), "exec"), namespace)

    out = tmp_path / "viz-out"
    for name in ("parts.png", "heads.png", "heatmap.png", "heads_extracted.png", "parts_extracted.png"):
        assert_image(out / name)
    assert_image(out / "part0.gif", fmt="GIF", frames=4)  # steps=4 in the example
    assert_image(out / "heatmap_steps.gif", fmt="GIF", frames=2)
    viz, hooked = namespace["viz"], namespace["hooked"]
    assert hooked.steps == [0, 1] and len(hooked.full_maps) == 2 * len(LAYERS)
    assert set(namespace["stats"]) == set(LAYERS)
    folders = namespace["folders"]
    assert [f.name for f in folders] == ["np1_circle", "np3_three_shapes"]
    for folder, parts in zip(folders, (1, 3), strict=False):
        assert AttentionRecord.load(folder / "record").num_parts == parts
        for png in folder.glob("**/*.png"):
            if png.name != "input.png":
                assert_image(png)
        for gif in folder.glob("*.gif"):
            assert_image(gif, fmt="GIF", frames=2)
        assert_links_resolve(folder / "index.html")
    assert_links_resolve(out / "batch" / "index.html")
    assert hooks_on(viz.model) == {}


# ----------------------------------------------------------------------------- extraction
def test_extracted_weights_are_the_recorders_full_maps(pipe, viz):
    latents, context = cfg_inputs(pipe, 2)
    weights = viz.extract_attention_weights(pipe.transformer, latents, context, num_parts=2, timestep=700.0)
    assert list(weights) == LAYERS
    for name, w in weights.items():
        assert w.dtype == torch.float32
        assert w.shape == (2, 4, TOKENS, NK + 1)  # parts, heads, queries (time token dropped), CLS + patches
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, TOKENS), rtol=0, atol=2e-3)  # fp16 storage
        assert torch.equal(w, viz.record.full_maps[(0, name)].float())
    assert viz.record.timesteps == [700.0] and viz.record.patch_grid == (8, 8)

    # An independent recorder on the same inputs keeps exactly the same maps.
    with (
        torch.no_grad(),
        AttentionRecorder(pipe.transformer, num_parts=2, selection=Selection(full_maps=lambda n, s: True)) as rec,
    ):
        pipe.transformer(latents, torch.full((4,), 700.0), context, attention_kwargs={"num_parts": 2})
    reference = rec.record()
    for name in LAYERS:
        assert torch.equal(weights[name], reference.full_maps[(0, name)].float()), name

    # layer_idx: one tensor, and only that layer is recorded.
    one = viz.extract_attention_weights(pipe.transformer, latents, context, layer_idx=3, timestep=700.0)
    assert torch.equal(one, weights["blocks.3.attn2"])
    assert viz.record.layers == ["blocks.3.attn2"]
    assert torch.equal(
        viz.extract_attention_weights(pipe.transformer, latents, context, "blocks.3.attn2", timestep=700.0), one
    )
    with pytest.raises(ValueError, match="matches 5 layers"):
        viz.extract_attention_weights(pipe.transformer, latents, context, layer_idx="blocks.*")


def test_extraction_with_hooks_registered_pauses_them(pipe, viz):
    model = pipe.transformer
    originals = processors(model)
    latents, context = cfg_inputs(pipe, 2)
    assert viz.register_hooks(model) is viz
    assert hooks_on(model) == {"": 2} and processors(model) == originals  # a pre-hook and a hook; no swap
    with pytest.raises(CaptureError, match="already registered"):
        viz.register_hooks(model)
    weights = viz.extract_attention_weights(model, latents, context)
    assert weights[LAYERS[0]].shape[0] == 2  # num_parts inferred from the CFG batch
    assert viz.hooks_registered and hooks_on(model) == {"": 2}
    assert viz.record.meta["source"] == "AttentionVisualizer.extract_attention_weights"
    assert model.attention_maps == {}  # the extraction's forward was not a hooked step
    assert viz.clear_hooks() is viz.record  # never ran while hooked: nothing to finish, no error
    assert viz.record.meta["source"] == "AttentionVisualizer.extract_attention_weights"
    assert hooks_on(model) == {} and processors(model) == originals
    assert not hasattr(model, "attention_maps")
    viz.clear_hooks()  # idempotent
    assert hooks_on(model) == {}


def test_hooked_forwards_are_steps_and_outputs_unchanged(pipe, viz):
    model = pipe.transformer
    latents, context = cfg_inputs(pipe, 2, seed=1)
    with torch.no_grad():
        plain = [
            model(latents, torch.full((4,), t), context, attention_kwargs={"num_parts": 2}).sample
            for t in (1000.0, 500.0)
        ]
        with viz.register_hooks(model, layers=[0, "blocks.4.attn2"], full_maps=[(4, 1)]):
            hooked = [
                model(latents, torch.full((4,), t), context, attention_kwargs={"num_parts": 2}).sample
                for t in (1000.0, 500.0)
            ]
    assert all(torch.equal(a, b) for a, b in zip(plain, hooked, strict=False))
    record = viz.record
    assert record.steps == [0, 1] and record.layers == ["blocks.0.attn2", "blocks.4.attn2"]
    assert list(record.full_maps) == [(1, "blocks.4.attn2")]
    assert record.timesteps == [1000.0, 500.0]  # read from each forward call
    assert not viz.hooks_registered


def test_context_manager_restores_on_error(pipe, viz):
    model = pipe.transformer
    originals = processors(model)
    with pytest.raises(RuntimeError, match="boom"):
        with viz:
            assert viz.hooks_registered
            raise RuntimeError("boom")
    assert processors(model) == originals and not viz.hooks_registered
    assert hooks_on(model) == {} and not hasattr(model, "attention_maps")


def test_hooks_that_capture_nothing_fail_loudly(pipe, viz):
    """The model ran, but the selected steps never came: an error, not an empty success."""
    latents, context = cfg_inputs(pipe, 1)
    viz.register_hooks(steps=[5])
    with torch.no_grad():
        pipe.transformer(latents, torch.full((2,), 1000.0), context, attention_kwargs={"num_parts": 1})
    with pytest.raises(CaptureError, match="no cross-attention was recorded"):
        viz.clear_hooks()
    assert hooks_on(pipe.transformer) == {}


# ----------------------------------------------------------------------------- hooks during a pipeline run
def test_unbound_visualizer_binds_to_the_hooked_model(pipe):
    """``AttentionVisualizer()`` as the guide writes it: the model comes with ``register_hooks(model)``."""
    viz = AttentionVisualizer()
    assert viz.model is None and "no model yet" in repr(viz)
    with pytest.raises(TypeError, match="no model yet"):
        viz.register_hooks()
    assert viz.register_hooks(pipe) is viz
    assert viz.pipeline is pipe and viz.model is pipe.transformer and viz.patch_grid == (8, 8)
    assert viz.has_cls and viz.time_token and viz.cfg is None
    assert pipe.attention_maps == {} and pipe.transformer.attention_maps == {}  # no step yet
    assert viz.clear_hooks() is None  # nothing ran
    assert not hasattr(pipe, "attention_maps") and not hasattr(pipe.transformer, "attention_maps")

    bare = AttentionVisualizer().register_hooks(pipe.transformer)
    assert bare.model is pipe.transformer and bare.pipeline is None and bare.patch_grid is None
    bare.clear_hooks()
    with pytest.raises(TypeError, match=r"register_hooks\(pipeline\)"):
        bare.run(IMAGE)


def test_attention_maps_are_each_steps_full_maps(pipe):
    """In the pipeline's callback, ``model.attention_maps`` is exactly that step's full maps as a
    recorder driven by the pipeline keeps them, and the hooked record is that recorder's record."""
    steps = 3
    everything = Selection(full_maps=lambda name, step: True)
    _, reference = record_attention(pipe, IMAGE, 2, steps=steps, num_tokens=TOKENS, selection=everything)
    viz = AttentionVisualizer().register_hooks(pipe.transformer)
    seen = []

    def callback(step, timestep, latents):
        seen.append((step, pipe.transformer.attention_maps.copy()))

    pipe(IMAGE, 2, steps=steps, num_tokens=TOKENS, callback=callback)
    record = viz.clear_hooks()
    assert [step for step, _ in seen] == list(range(steps))
    for step, maps in seen:
        assert list(maps) == LAYERS
        for name, weights in maps.items():
            assert weights.dtype == torch.float32 and weights.shape == (2, 4, TOKENS, NK + 1)
            assert torch.equal(weights, reference.full_maps[(step, name)].float()), (step, name)
    assert not torch.equal(seen[0][1][LAYERS[-1]], seen[-1][1][LAYERS[-1]])
    assert record.steps == reference.steps and record.timesteps == pytest.approx(reference.timesteps)
    for name in ("entropy", "peak", "eff_keys", "cls_mass", "marginals"):
        assert torch.equal(getattr(record, name), getattr(reference, name)), name
    assert record.full_maps == {} and record.meta["source"] == "AttentionVisualizer.register_hooks"


def test_only_the_latest_step_is_held(pipe):
    """Each step's maps replace the previous step's, which are freed once the caller drops them."""
    viz = AttentionVisualizer().register_hooks(pipe)
    previous, alive, dicts = [], [], []

    def callback(step, timestep, latents):
        gc.collect()
        alive.append(sum(ref() is not None for ref in previous))
        previous[:] = [weakref.ref(w) for w in pipe.attention_maps.values()]
        dicts.append(id(pipe.attention_maps))

    pipe(IMAGE, 2, steps=4, num_tokens=TOKENS, callback=callback)
    assert alive == [0, 0, 0, 0] and len(set(dicts)) == 4  # a new dict each step
    assert viz.clear_hooks().full_maps == {}
    gc.collect()
    assert all(ref() is None for ref in previous)


def test_hooks_follow_the_runs_guidance(pipe):
    """Without guidance a batch is the parts alone, not [uncond, cond]: every part is kept."""
    _, reference = record_attention(pipe, IMAGE, 2, steps=2, num_tokens=TOKENS, guidance_scale=1.0)
    viz = AttentionVisualizer().register_hooks(pipe)
    pipe(IMAGE, 2, steps=2, num_tokens=TOKENS, guidance_scale=1.0)
    record = viz.clear_hooks()
    assert record.num_parts == 2 and torch.equal(record.marginals, reference.marginals)
    assert record.patch_grid == (8, 8)


def test_hooked_step_selection_and_maps_off(pipe):
    viz = AttentionVisualizer().register_hooks(pipe, steps=[1], full_maps=[(-1, 1)])
    seen = []
    pipe(IMAGE, 1, steps=3, num_tokens=TOKENS, callback=lambda i, t, x: seen.append(list(pipe.attention_maps)))
    record = viz.clear_hooks()
    assert seen == [[], LAYERS, []]  # unselected steps hold no maps
    assert record.steps == [1] and list(record.full_maps) == [(1, "blocks.4.attn2")]

    viz = AttentionVisualizer().register_hooks(pipe, attention_maps=False)
    pipe(IMAGE, 1, steps=2, num_tokens=TOKENS)
    assert not hasattr(pipe, "attention_maps") and viz.attention_maps == {}
    assert viz.clear_hooks().steps == [0, 1]


def test_a_models_own_attention_maps_attribute_is_restored(pipe):
    model = pipe.transformer
    model.attention_maps = "theirs"
    try:
        viz = AttentionVisualizer().register_hooks(model)
        assert model.attention_maps == {}
        viz.clear_hooks()
        assert model.attention_maps == "theirs"
    finally:
        del model.attention_maps


def test_hooked_forward_that_raises_then_runs_of_two_shapes(pipe):
    model = pipe.transformer
    latents, context = cfg_inputs(pipe, 2)
    viz = AttentionVisualizer().register_hooks(model)
    with pytest.raises(ValueError, match="num_parts"), torch.no_grad():
        model(latents, torch.full((4,), 1000.0), context)  # no attention_kwargs: the model refuses
    assert hooks_on(model) == {"": 2}  # that step's recorder is gone, the step dropped
    with torch.no_grad():
        model(latents, torch.full((4,), 900.0), context, attention_kwargs={"num_parts": 2})
    assert hooks_on(model) == {"": 2}
    three, three_context = cfg_inputs(pipe, 3)
    with torch.no_grad():
        model(three, torch.full((6,), 800.0), three_context, attention_kwargs={"num_parts": 3})
    with pytest.raises(CaptureError, match="differ in shape: step 1 recorded 2 parts.*step 2 3"):
        viz.clear_hooks()
    assert hooks_on(model) == {} and not hasattr(model, "attention_maps")


def test_interrupted_hooked_forward(pipe):
    """A KeyboardInterrupt skips the closing hook: the next forward refuses, clear_hooks() cleans up."""
    model = pipe.transformer
    latents, context = cfg_inputs(pipe, 1)

    def interrupt(*_):
        raise KeyboardInterrupt

    viz = AttentionVisualizer().register_hooks(model)
    handle = model.blocks[2].register_forward_hook(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt), torch.no_grad():
            model(latents, torch.full((2,), 1000.0), context, attention_kwargs={"num_parts": 1})
    finally:
        handle.remove()
    with pytest.raises(CaptureError, match="interrupted.*call clear_hooks"), torch.no_grad():
        model(latents, torch.full((2,), 1000.0), context, attention_kwargs={"num_parts": 1})
    with pytest.raises(CaptureError, match="no cross-attention was recorded"):
        viz.clear_hooks()
    assert hooks_on(model) == {}


def test_any_diffusers_model_with_cross_attention():
    torch.manual_seed(0)
    block = BasicTransformerBlock(32, 4, 8, cross_attention_dim=24).eval()
    x, context = torch.randn(3, 10, 32), torch.randn(3, 7, 24)
    viz = AttentionVisualizer(block, cfg=False)
    assert not viz.has_cls and not viz.time_token
    weights = viz.extract_attention_weights(block, x, context)
    assert list(weights) == ["attn2"] and weights["attn2"].shape == (3, 4, 10, 7)
    torch.testing.assert_close(weights["attn2"].sum(-1), torch.ones(3, 4, 10), rtol=0, atol=2e-3)
    assert_image(viz.visualize_attention_heatmap(weights, None, head=2, part=1))
    assert_image(viz.visualize_multi_head_attention(weights, None))
    assert_image(viz.visualize_part_attention(weights, 3, None))  # strips: no patch grid
    assert viz.statistics(weights)["attn2"]["cls_mass"] == 0.0


# ----------------------------------------------------------------------------- figures
def test_every_figure_method_writes_a_real_image(tmp_path, pipe, viz):
    latents, context = cfg_inputs(pipe, 2)
    weights = viz.extract_attention_weights(pipe.transformer, latents, context, image=IMAGE)
    assert viz.image is not None and viz.image.size == (112, 112)  # the encoder's view
    assert assert_image(viz.visualize_attention_heatmap(weights, tmp_path / "h.png", layer=2, head=1, part=1)) == 1
    assert_image(viz.visualize_attention_heatmap(weights, tmp_path / "hm.png", head="mean"))
    assert_image(viz.visualize_multi_head_attention(weights, tmp_path / "m.png", layer="blocks.0.attn2", part=1))
    assert_image(viz.visualize_part_attention(weights, 2, tmp_path / "p.png", title="parts"))
    png = viz.visualize_part_attention(weights, 2, None)
    assert isinstance(png, bytes) and png.startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="num_parts=3"):
        viz.visualize_part_attention(weights, 3, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="not in the weights"):
        viz.visualize_attention_heatmap(weights, tmp_path / "bad.png", layer="blocks.9.attn2")
    frames = [weights, weights]
    assert_image(viz.create_attention_animation(frames, tmp_path / "a.gif", fps=2, layer=1), fmt="GIF", frames=2)
    # a bare model has no image: extraction clears a stale one
    viz.extract_attention_weights(pipe.transformer, latents, context)
    assert viz.image is None


def test_record_figures(tmp_path, run_record):
    viz, record = run_record
    assert record.steps == [0, 1, 2] and list(record.full_maps) == [(2, "blocks.4.attn2")]
    assert_image(viz.visualize_part_attention(record, 2, tmp_path / "parts.png"))
    assert_image(viz.visualize_part_attention(record, 2, tmp_path / "parts1.png", step=1, layer=0))
    assert_image(viz.visualize_multi_head_attention(record, tmp_path / "heads.png", part=1))
    assert_image(viz.visualize_attention_heatmap(record, tmp_path / "heat.png", layer="blocks.4.attn2", step=2))
    with pytest.raises(ValueError, match="no full maps for layer blocks.0.attn2"):
        viz.visualize_attention_heatmap(record, tmp_path / "x.png", layer=0)
    for part in (0, 1):
        assert_image(
            viz.create_attention_animation(record, tmp_path / f"p{part}.gif", fps=3, part=part), fmt="GIF", frames=3
        )
    assert set(viz.results) >= {"uniformity", "collapse", "part_separation", "stability", "nonfinite"}


def test_uniform_attention_reads_and_renders_as_uniform(pipe, viz):
    """All-zero image tokens give zero keys: exactly uniform maps, flat neutral on the fixed scale."""
    latents, _ = cfg_inputs(pipe, 2)
    context = torch.zeros(4, NK + 1, pipe.transformer.config.cross_attention_dim)
    weights = viz.extract_attention_weights(pipe.transformer, latents, context)
    stats = viz.statistics(weights)
    for name in LAYERS:
        assert stats[name]["entropy"] == pytest.approx(1.0, abs=1e-3)
        assert stats[name]["sparsity"] == 0.0
        assert stats[name]["max"] == pytest.approx(1 / NK, rel=2e-3)
    png = viz.visualize_attention_heatmap(weights, None, part=1, head=3)
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    sc = render_panels._Scale()
    neutral = np.round(np.asarray(sc.cmap(sc.norm(1.0))[:3]) * 255)
    share = (np.abs(rgb - neutral).max(axis=1) <= 2).mean()
    assert share > 0.3, f"only {share:.0%} of the heatmap is the uniform colour"


def _pixels(png_or_path) -> np.ndarray:
    src = io.BytesIO(png_or_path) if isinstance(png_or_path, bytes) else png_or_path
    return np.asarray(Image.open(src).convert("RGB")).reshape(-1, 3).astype(float)


def _share_near(png_or_path, colour, tol: float = 3.0) -> float:
    """Share of a figure's pixels within ``tol`` (max over channels, 0-255) of ``colour`` (RGB in [0, 1])."""
    return float((np.abs(_pixels(png_or_path) - 255 * np.asarray(colour)).max(axis=1) <= tol).mean())


def _share_outline(png_or_path) -> float:
    """Share of pixels in the image-outline green (``outline.OUTLINE_RGB``, antialiased): green well above
    red and blue, which the attention colour maps never are."""
    rgb = _pixels(png_or_path)
    return float((rgb[:, 1] - rgb[:, [0, 2]].max(axis=1) > 50).mean())


def test_multi_head_view_draws_each_head_on_the_image(pipe, viz):
    """Uniform heads on a half-black, half-white image: every head panel shows the image's outline (the
    edge between the halves, in the outline colour) over one flat neutral colour, whatever the image's
    brightness; the raw queries x keys view of the same weights has no outline."""
    latents, _ = cfg_inputs(pipe, 2)
    context = torch.zeros(4, NK + 1, pipe.transformer.config.cross_attention_dim)
    weights = viz.extract_attention_weights(pipe.transformer, latents, context)
    halves = np.zeros((112, 112, 3), np.uint8)
    halves[:, 56:] = 255
    sc = render_panels._Scale()
    neutral = sc.cmap(sc.norm(1.0))[:3]
    on_image = viz.visualize_multi_head_attention(weights, None, part=1, image=Image.fromarray(halves))
    raw = viz.visualize_multi_head_attention(weights, None, part=1, image=Image.fromarray(halves), queries_keys=True)
    assert _share_outline(on_image) > 0.002  # the edge, in every head panel
    assert _share_outline(raw) == 0.0
    assert _share_near(on_image, neutral) > 0.3  # uniform is one flat colour on both halves
    assert_image(on_image)


def test_failure_report_heads_are_drawn_on_the_image(tmp_path, run_record):
    """The uniformity failure's ``heads`` figure shows every head on the encoder's view of the image: an
    image with a shape gives the shape's outline on the heads, a plain one none."""
    from partattn_checks.checks import Thresholds, run_checks
    from partattn_checks.present.check_figures import figures_for

    _, record = run_record
    strict = Thresholds().merged({"uniformity": {"max_share": 0.0}})  # any near-uniform head fails
    (result,) = run_checks(record, strict, names=["uniformity"])
    assert result.verdict == "fail"

    def outline_share(image, name) -> float:
        drawn = figures_for(result, record, tmp_path / name, image, thresholds=strict)
        (heads,) = [p for p in drawn if p.stem.endswith("__heads")]
        assert_image(heads)
        return _share_outline(heads)

    square = Image.new("RGB", (112, 112), (0, 0, 0))
    square.paste((255, 255, 255), (28, 28, 84, 84))
    assert outline_share(square, "square") > 0.002
    assert outline_share(Image.new("RGB", (112, 112), (255, 255, 255)), "plain") == 0.0


def test_statistics_definitions():
    """One-hot and uniform maps without CLS: the documented values."""
    block = BasicTransformerBlock(16, 2, 8, cross_attention_dim=8).eval()
    viz = AttentionVisualizer(block, cfg=False)
    k = 20
    one_hot = torch.zeros(1, 2, 5, k)
    one_hot[..., 3] = 1.0
    uniform = torch.full((1, 2, 5, k), 1.0 / k)
    stats = viz.statistics({"hot": one_hot, "flat": uniform})
    hot, flat = stats["hot"], stats["flat"]
    assert hot["entropy"] == 0.0 and hot["max"] == 1.0 and hot["peak"] == 1.0
    assert hot["sparsity"] == pytest.approx((k - 1) / k) and hot["mean"] == pytest.approx(1 / k)
    assert flat["entropy"] == pytest.approx(1.0) and flat["sparsity"] == 0.0 and flat["max"] == pytest.approx(1 / k)
    assert len(hot["heads"]) == 2 and hot["heads"][1]["head"] == 1 and hot["num_keys"] == k
    # the sparsity threshold is a tenth of uniform
    just_below = torch.full((1, 1, 1, k), 1.0 / k)
    just_below[..., 0] = SPARSITY_FACTOR / k * 0.99
    just_below[..., 1] += 1.0 / k - just_below[..., 0]
    assert viz.statistics(just_below)["attention"]["sparsity"] == pytest.approx(1 / k)


def test_batch_needs_a_part_count_and_a_pipeline(tmp_path, pipe):
    viz = AttentionVisualizer(pipe)
    unnamed = tmp_path / "chair.png"
    unnamed.write_bytes(IMAGE.read_bytes())
    with pytest.raises(ValueError, match="chair.png: no part count"):
        viz.process_batch([IMAGE, unnamed], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before any work
    with pytest.raises(TypeError, match="pipeline"):
        AttentionVisualizer(pipe.transformer).run(IMAGE)


class _Cells(html.parser.HTMLParser):
    """The text and class of every <td>."""

    def __init__(self):
        super().__init__()
        self.cells, self._open = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "td":
            self._open = [dict(attrs).get("class", ""), ""]

    def handle_data(self, data):
        if self._open is not None:
            self._open[1] += data

    def handle_endtag(self, tag):
        if tag == "td" and self._open is not None:
            self.cells.append(tuple(self._open))
            self._open = None


def test_batch_page_shows_each_verdict_with_its_value_and_threshold(tmp_path, pipe):
    from partattn_checks.checks import CHECKS

    viz = AttentionVisualizer(pipe)
    (folder,) = viz.process_batch([IMAGE], tmp_path, steps=2, full_map=None)
    parser = _Cells()
    parser.feed((tmp_path / "index.html").read_text(encoding="utf-8"))
    cells = parser.cells
    assert cells[:2] == [("", folder.name), ("num", "2")]
    for (cls, text), name in zip(cells[2:], CHECKS, strict=True):
        result = viz.results[name]
        assert cls == result.verdict  # coloured by the verdict
        assert text == f"{result.verdict} · {result.value:.3g} ({CHECKS[name].op} {result.threshold:g})"
    assert_links_resolve(tmp_path / "index.html")


def test_render_record_without_image(tmp_path, pipe):
    record = AttentionVisualizer(pipe).run(REPO / "fixtures" / "images" / "np1_circle.png", steps=2, full_map=None)
    report = render_record(record, tmp_path / "r")
    names = {Path(p).name for _, p in report["figures"]}
    assert "parts.png" in names and not any(n.startswith("overlay") for n in names)
    for _, path in report["figures"]:
        if str(path).endswith(".gif"):
            assert_image(path, fmt="GIF", frames=record.num_steps)
        else:
            assert_image(path)
    page = (tmp_path / "r" / "index.html").read_text()
    assert "overlays are skipped" in page
    assert_links_resolve(tmp_path / "r" / "index.html")


# ----------------------------------------------------------------------------- html index
class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("href", "src"):
                self.links.append(value)


def assert_links_resolve(page: Path):
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    assert parser.links, page
    from urllib.parse import unquote

    for link in parser.links:
        assert not link.startswith(("/", "file:")), link
        assert (page.parent / unquote(link)).exists(), f"{page}: broken link {link}"


class _Thumbnails(html.parser.HTMLParser):
    """(link href, img src) of every <img>, with the <a href> it sits in (None outside a link)."""

    def __init__(self):
        super().__init__()
        self.href, self.images = None, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a":
            self.href = attrs.get("href")
        elif tag == "img":
            self.images.append((self.href, attrs.get("src")))

    def handle_endtag(self, tag):
        if tag == "a":
            self.href = None


def test_run_report_thumbnails_link_to_the_full_image_at_natural_size(tmp_path, run_record):
    viz, record = run_record
    report = render_record(record, tmp_path / "r", image=viz.image, results=viz.results)
    page = tmp_path / "r" / "index.html"
    parser = _Thumbnails()
    parser.feed(page.read_text(encoding="utf-8"))
    shown = {src for _, src in parser.images}
    assert shown == {Path(p).relative_to(tmp_path / "r").as_posix() for _, p in report["figures"]}
    assert all(href == src for href, src in parser.images), parser.images  # each thumbnail opens its file
    css = re.sub(r"\s+", "", (page.read_text(encoding="utf-8")))
    assert "figure{margin:0;max-width:100%}" in css  # no fixed thumbnail width: images at 1:1 up to the page
    names = {Path(p).name for _, p in report["figures"]}
    for p in range(2):  # each head on the image, and the raw queries x keys maps
        assert {f"heads_blocks.4.attn2_step2_part{p}.png", f"qk_blocks.4.attn2_step2_part{p}.png"} <= names
    for _, path in report["figures"]:
        assert_image(path, fmt="GIF" if str(path).endswith(".gif") else "PNG", frames=None)


def test_html_index_escapes_and_writes_atomically(tmp_path):
    (tmp_path / "a b.png").write_bytes(b"png")
    page = write_index(
        tmp_path / "index.html",
        "<title & co>",
        sections=[("Figs", [("cap <1>", "a b.png"), ("data", "m.json")]), ("Empty", [])],
        metrics={"entropy": 0.91234, "nan": float("nan"), "n": 3},
        tables=[("Checks", ["check", "verdict"], [["uniformity", "fail"]])],
        links=[("record", tmp_path / "a b.png")],
        note="a < b",
    )
    text = page.read_text()
    assert "&lt;title &amp; co&gt;" in text and "cap &lt;1&gt;" in text and "a &lt; b" in text
    assert 'src="a%20b.png"' in text and 'href="m.json"' in text
    assert '<td class="fail">fail</td>' in text and "0.9123" in text
    assert "Empty" not in text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    assert oct(page.stat().st_mode & 0o777) == "0o644"
    assert render_index("t").startswith("<!DOCTYPE html>")
