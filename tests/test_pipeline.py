"""The denoising loop on the tiny checkpoint (CPU): determinism, schedule, CFG, callbacks, inputs."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch
from helpers import FIXTURE_IMAGES, REPO, TINY_FIXTURE
from PIL import Image

from partattn_checks.capture.runspec import RunSpecError, resolve_device
from partattn_checks.model.pipeline import (
    MESH_DECODING_ARGS,
    DenoiseResult,
    ImageError,
    PartCrafterPipeline,
    flow_sigmas,
    open_image,
    to_rgb,
)

IMAGES = {2: "np2_circle_square.png", 3: "np3_three_shapes.png", 4: "np4_four_shapes.png"}
IMAGE = FIXTURE_IMAGES / IMAGES[2]
RGBA_IMAGE = FIXTURE_IMAGES / "np2_unseen_rgba.png"
STEPS = 3


@pytest.fixture(scope="module")
def pipe():
    return PartCrafterPipeline.from_pretrained(TINY_FIXTURE, device="cpu")


class Recorder:
    """Records what the loop does: observer calls, transformer calls and callbacks, in order."""

    def __init__(self, transformer):
        self.events = []
        self.calls = []  # (model_input, timestep, image_tokens, velocity) per transformer forward
        self._hook = transformer.register_forward_hook(self._forward, with_kwargs=True)

    def _forward(self, module, args, kwargs, output):
        self.events.append(("forward",))
        self.calls.append((args[0].clone(), args[1].clone(), args[2].clone(), output.sample.clone()))

    def begin_step(self, step, timestep):
        self.events.append(("begin", step, timestep))

    def end_step(self, step, timestep, latents):
        self.events.append(("end", step, timestep, latents.clone()))

    def callback(self, step, timestep, latents):
        self.events.append(("callback", step, timestep, latents.clone()))

    def close(self):
        self._hook.remove()


@pytest.fixture
def recorder(pipe):
    rec = Recorder(pipe.transformer)
    yield rec
    rec.close()


# --------------------------------------------------------------------------- end to end, determinism


@pytest.mark.parametrize("num_parts", [2, 3, 4])
def test_runs_end_to_end(pipe, num_parts):
    result = pipe(FIXTURE_IMAGES / IMAGES[num_parts], num_parts, steps=STEPS, seed=0)
    tokens = pipe.run_defaults["num_tokens"]
    assert result.latents.shape == (num_parts, tokens, pipe.transformer.config.in_channels)
    assert result.latents.dtype == torch.float32
    assert torch.isfinite(result.latents).all()
    assert not torch.equal(result.latents, pipe.initial_latents(num_parts, tokens, 0)), "the loop moved nothing"
    assert len(result.timesteps) == STEPS and len(result.step_seconds) == STEPS
    assert all(s > 0 for s in result.step_seconds)


def test_run_defaults_come_from_the_checkpoint(pipe):
    defaults = json.loads((TINY_FIXTURE / "partattn.json").read_text())["run_defaults"]
    assert pipe.run_defaults == defaults
    result = pipe(IMAGE, 2, seed=0)
    assert len(result.timesteps) == defaults["steps"] and result.latents.shape[1] == defaults["num_tokens"]


def test_same_seed_same_latents_different_seed_differs(pipe):
    first = pipe(IMAGE, 2, steps=STEPS, seed=0).latents
    assert torch.equal(first, pipe(IMAGE, 2, steps=STEPS, seed=0).latents)
    assert not torch.allclose(first, pipe(IMAGE, 2, steps=STEPS, seed=1).latents)


def test_seeded_latents_drawn_on_cpu_in_fp32_then_cast(pipe):
    shape = (3, 5, pipe.transformer.config.in_channels)
    expected = torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=torch.float32)
    assert torch.equal(pipe.initial_latents(3, 5, 7), expected)
    half = PartCrafterPipeline(pipe.checkpoint, dtype=torch.bfloat16)
    assert torch.equal(half.initial_latents(3, 5, 7), expected.to(torch.bfloat16))


def test_explicit_latents_are_used(pipe):
    start = pipe.initial_latents(2, 6, 11)
    assert torch.equal(
        pipe(IMAGE, 2, steps=2, num_tokens=6, seed=11).latents,
        pipe(IMAGE, 2, steps=2, latents=start.clone(), seed=999).latents,
    )


# --------------------------------------------------------------------------- schedule, CFG, Euler step


def test_flow_sigmas():
    assert flow_sigmas(4) == [1.0, 0.75, 0.5, 0.25, 0.0]
    sigmas = flow_sigmas(50)
    assert len(sigmas) == 51 and sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert sigmas[49] == pytest.approx(0.02)
    with pytest.raises(ValueError, match="at least 1"):
        flow_sigmas(0)


def test_cfg_loop_math(pipe, recorder):
    """Batch [uncond zeros, cond], t = 1000·sigma, x += (sigma_i - sigma_i+1)·(u + g·(c - u))."""
    n, steps, guidance = 2, 4, 3.5
    start = pipe.initial_latents(n, 6, 0)
    result = pipe(
        IMAGE, n, steps=steps, num_tokens=6, guidance_scale=guidance, latents=start.clone(), callback=recorder.callback
    )
    image_tokens = pipe.encode_image(IMAGE)
    sigmas = [1 - i / steps for i in range(steps)] + [0.0]
    assert len(recorder.calls) == steps
    latents = start
    for i, (model_input, timestep, tokens, velocity) in enumerate(recorder.calls):
        assert torch.equal(model_input, torch.cat([latents, latents]))
        assert torch.allclose(timestep, torch.full((2 * n,), 1000 * sigmas[i]))
        assert torch.equal(tokens[:n], torch.zeros_like(tokens[:n])), "unconditional image tokens are zeros"
        assert torch.allclose(tokens[n:], image_tokens.expand(n, -1, -1), atol=1e-6)
        uncond, cond = velocity[:n], velocity[n:]
        latents = latents + (sigmas[i] - sigmas[i + 1]) * (uncond + guidance * (cond - uncond))
    assert torch.allclose(result.latents, latents, atol=1e-6)


def test_guidance_one_runs_without_cfg(pipe, recorder):
    n, steps = 3, 2
    start = pipe.initial_latents(n, 6, 0)
    result = pipe(IMAGE, n, steps=steps, num_tokens=6, guidance_scale=1.0, latents=start.clone())
    latents = start
    for _i, (model_input, _, tokens, velocity) in enumerate(recorder.calls):
        assert model_input.shape[0] == n and tokens.shape[0] == n
        assert tokens.abs().amax(dim=(1, 2)).min() > 0, "no zero (unconditional) rows without CFG"
        latents = latents + (1 / steps) * velocity
    assert len(recorder.calls) == steps
    assert torch.allclose(result.latents, latents, atol=1e-6)


def test_callback_once_per_step_with_index_timestep_latents(pipe, recorder):
    steps = 5
    result = pipe(IMAGE, 2, steps=steps, callback=recorder.callback)
    calls = [e for e in recorder.events if e[0] == "callback"]
    assert [c[1] for c in calls] == list(range(steps))
    for _, i, t, latents in calls:
        assert t == pytest.approx(1000 * (1 - i / steps))
        assert latents.shape == result.latents.shape
    assert torch.equal(calls[-1][3], result.latents)
    assert result.timesteps == pytest.approx([1000 * (1 - i / steps) for i in range(steps)])
    assert len(result.step_seconds) == steps


def test_observers_called_in_order(pipe, recorder):
    steps = 3
    pipe(IMAGE, 2, steps=steps, observers=(recorder,), callback=recorder.callback)
    kinds = [(e[0], e[1]) if e[0] != "forward" else ("forward",) for e in recorder.events]
    expected = []
    for i in range(steps):
        expected += [("begin", i), ("forward",), ("end", i), ("callback", i)]
    assert kinds == expected
    begins = [e for e in recorder.events if e[0] == "begin"]
    assert [b[2] for b in begins] == pytest.approx([1000 * (1 - i / steps) for i in range(steps)])
    ends = [e for e in recorder.events if e[0] == "end"]
    callbacks = [e for e in recorder.events if e[0] == "callback"]
    assert all(torch.equal(e[3], c[3]) for e, c in zip(ends, callbacks, strict=False))


# --------------------------------------------------------------------------- upstream's call, diffusers' callback


def test_upstream_call_form_is_our_call(pipe):
    """Upstream's inference script's call runs unchanged and denoises exactly like ours."""
    ours = pipe(IMAGE, 2, num_tokens=6, steps=STEPS, guidance_scale=3.0, seed=13)
    with Image.open(IMAGE) as img:
        upstream = pipe(
            image=[img] * 2,
            attention_kwargs={"num_parts": 2},
            num_tokens=6,
            num_inference_steps=STEPS,
            guidance_scale=3.0,
            generator=torch.Generator(device=pipe.device).manual_seed(13),
            max_num_expanded_coords=int(1e9),  # mesh decoding: accepted, ignored
            use_flash_decoder=False,
        )
        twins = [img.copy(), img.copy()]
        copies = pipe(image=twins, num_tokens=6, num_inference_steps=STEPS, guidance_scale=3.0, seed=13)
    assert isinstance(upstream, DenoiseResult) and upstream.latents.shape == (2, 6, pipe.transformer.config.in_channels)
    assert torch.equal(upstream.latents, ours.latents)
    assert torch.equal(copies.latents, ours.latents)  # equal images need not be the same object
    assert upstream.timesteps == ours.timesteps
    assert {"max_num_expanded_coords", "use_flash_decoder", "bounds"} <= MESH_DECODING_ARGS


def test_generator_draws_the_noise(pipe):
    """A CPU generator seeded s is seed=s; the draw advances it, as upstream's does."""
    generator = torch.Generator().manual_seed(7)
    assert torch.equal(pipe.initial_latents(2, 6, generator=generator), pipe.initial_latents(2, 6, 7))
    assert not torch.equal(pipe.initial_latents(2, 6, generator=generator), pipe.initial_latents(2, 6, 7))
    generator = torch.Generator().manual_seed(7)
    first = pipe(IMAGE, 2, num_tokens=6, steps=2, generator=generator).latents
    assert torch.equal(first, pipe(IMAGE, 2, num_tokens=6, steps=2, seed=7).latents)
    assert not torch.equal(first, pipe(IMAGE, 2, num_tokens=6, steps=2, generator=generator).latents)
    start = pipe.initial_latents(2, 6, 3)  # explicit latents: the generator is not used
    assert torch.equal(
        pipe(IMAGE, 2, steps=2, latents=start.clone(), generator=torch.Generator().manual_seed(99)).latents,
        pipe(IMAGE, 2, steps=2, latents=start.clone()).latents,
    )
    with pytest.raises(TypeError, match="generator: expected one torch.Generator, got list"):
        pipe(IMAGE, 2, steps=1, generator=[torch.Generator()] * 2)


def test_one_image_without_a_part_count_is_one_part(pipe):
    assert pipe(IMAGE, steps=1).latents.shape[0] == 1
    assert pipe(IMAGE, steps=1, attention_kwargs={"num_parts": 3}).latents.shape[0] == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_parts": 2, "attention_kwargs": {"num_parts": 2}}, TypeError, "part count is given twice"),
        ({"image": [IMAGE, IMAGE], "num_parts": 2}, TypeError, "part count is given twice"),
        ({"steps": 2, "num_inference_steps": 2}, TypeError, "steps= and num_inference_steps= are the same setting"),
        ({"seed": 1, "generator": torch.Generator()}, TypeError, "seed= and generator= both give the noise"),
        ({"image": [IMAGE] * 3, "attention_kwargs": {"num_parts": 2}}, ValueError, "lists 3 images but"),
        ({"image": [IMAGE, FIXTURE_IMAGES / IMAGES[3]]}, ValueError, "the list holds different images"),
        ({"image": []}, ValueError, "an empty list"),
        ({"attention_kwargs": {"num_parts": 2, "scale": 1}}, ValueError, "only 'num_parts' is used here, got 'scale'"),
        ({"num_parts": 2, "step": 3}, TypeError, "unexpected keyword argument 'step'"),
        ({"num_parts": 2, "callback_on_step_end": print}, TypeError, "'callback_on_step_end'; it takes"),
        ({"num_parts": 2, "callback_steps": 0}, ValueError, "callback_steps must be a whole number of at least 1"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_each_setting_in_one_form(pipe, kwargs, error, message):
    kwargs = {"image": IMAGE, **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        pipe(**kwargs)


def test_legacy_callback_every_callback_steps(pipe, recorder):
    """diffusers' legacy ``callback(step, timestep, latents)`` after steps 0, k, 2k, ..."""
    steps = 5
    result = pipe(IMAGE, 2, num_inference_steps=steps, callback=recorder.callback, callback_steps=2)
    calls = [e for e in recorder.events if e[0] == "callback"]
    assert [c[1] for c in calls] == [0, 2, 4]
    assert [c[2] for c in calls] == pytest.approx([1000 * (1 - i / steps) for i in (0, 2, 4)])
    assert torch.equal(calls[-1][3], result.latents)
    assert len(result.step_seconds) == steps


# --------------------------------------------------------------------------- image inputs


def test_pil_path_and_tensor_give_the_same_latents(pipe):
    from_path = pipe(IMAGE, 2, steps=2, seed=3).latents
    with Image.open(IMAGE) as im:
        from_pil = pipe(im.copy(), 2, steps=2, seed=3).latents
    pixels = pipe.preprocess(IMAGE)
    assert pixels.ndim == 4 and pixels.shape[:2] == (1, 3)
    from_tensor = pipe(pixels, 2, steps=2, seed=3).latents
    from_3d_tensor = pipe(pixels[0], 2, steps=2, seed=3).latents
    assert torch.equal(from_path, from_pil)
    assert torch.equal(from_path, from_tensor)
    assert torch.equal(from_path, from_3d_tensor)
    assert not torch.equal(from_path, pipe(FIXTURE_IMAGES / IMAGES[4], 2, steps=2, seed=3).latents)


def composite_on_white_by_hand(rgba: np.ndarray) -> np.ndarray:
    rgb, alpha = rgba[..., :3].astype(np.float64), rgba[..., 3:].astype(np.float64) / 255
    return np.round(rgb * alpha + 255 * (1 - alpha)).astype(np.uint8)


def test_rgba_fixture_composited_on_white(pipe):
    with Image.open(RGBA_IMAGE) as im:
        assert im.mode == "RGBA"
        rgba = np.asarray(im)
    assert (rgba[..., 3] == 0).any(), "the fixture should have a transparent background"
    by_hand = composite_on_white_by_hand(rgba)
    ours = open_image(RGBA_IMAGE)
    assert ours.mode == "RGB"
    assert np.array_equal(np.asarray(ours), by_hand)
    assert not np.array_equal(np.asarray(Image.fromarray(rgba).convert("RGB")), by_hand), (
        "a plain RGB conversion would differ (black background), so this test can fail"
    )
    hand_latents = pipe(Image.fromarray(by_hand), 2, steps=2, seed=0).latents
    assert torch.equal(pipe(RGBA_IMAGE, 2, steps=2, seed=0).latents, hand_latents)


def test_partial_alpha_composited_on_white():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, size=(9, 7, 4), dtype=np.uint8)
    ours = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA"))).astype(int)
    assert np.abs(ours - composite_on_white_by_hand(rgba).astype(int)).max() <= 1
    rgb = rgba[..., :3]
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(rgb, "RGB"))), rgb)


def test_missing_image_path_names_it(pipe, tmp_path):
    missing = tmp_path / "no_such_image.png"
    with pytest.raises(FileNotFoundError, match="no_such_image.png: image not found"):
        pipe(missing, 2, steps=1)
    with pytest.raises(FileNotFoundError) as info:
        open_image(str(missing))
    assert str(missing) in str(info.value)


def test_corrupt_image_names_it(pipe, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(ValueError) as info:
        pipe(corrupt, 2, steps=1)
    assert str(corrupt) in str(info.value) and "re-export" in str(info.value)


def test_truncated_image_names_it(tmp_path):
    truncated = tmp_path / "half.png"
    data = (FIXTURE_IMAGES / "np2_circle_square.png").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as info:
        open_image(truncated)
    assert str(truncated) in str(info.value) and "not a readable image" in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "limit", [20_000, 30_000], ids=["over-twice-the-limit-pil-error", "over-the-limit-pil-warning"]
)
def test_too_large_image_is_refused_with_its_size_and_the_limit(tmp_path, monkeypatch, limit):
    """PIL raises DecompressionBombError over twice MAX_IMAGE_PIXELS and only warns over it; both are
    refused with one clear message. A small PNG under a lowered limit stands in for a huge image."""
    from PIL import Image

    image = tmp_path / "big.png"
    Image.new("RGB", (250, 200), "white").save(image)  # 50,000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's own DecompressionBombWarning must not escape either
        with pytest.raises(ImageError) as info:
            open_image(str(image))
    message = str(info.value)
    assert message.startswith(
        f"{image}: image too large: 50,000 pixels, over PIL's decompression-bomb limit of "
        f"{limit:,} pixels (PIL.Image.MAX_IMAGE_PIXELS)"
    ), message
    assert "downscale it" in message
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    assert open_image(image).size == (250, 200)  # at the limit: fine


# --------------------------------------------------------------------------- devices and sizes from configs


def test_resolve_device_without_cuda(monkeypatch):
    """One resolver (partattn_checks.capture.runspec) picks the device; the pipeline takes a concrete one."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:1"):
        with pytest.raises(RunSpecError, match="CUDA is not available here"):
            resolve_device(name)
    assert resolve_device("auto").device == "cpu"
    assert resolve_device().device == "cpu"
    assert resolve_device("cpu").device == "cpu"
    with pytest.raises(ValueError, match="CUDA is not available"):
        PartCrafterPipeline.from_pretrained(TINY_FIXTURE, device="cuda")
    with pytest.raises(ValueError, match="runspec.resolve_device"):
        PartCrafterPipeline.from_pretrained(TINY_FIXTURE, device="auto")


def test_image_tokens_and_patch_grid_from_checkpoint_configs(pipe):
    encoder = json.loads((TINY_FIXTURE / "image_encoder_dinov2/config.json").read_text())
    crop = json.loads((TINY_FIXTURE / "feature_extractor_dinov2/preprocessor_config.json").read_text())["crop_size"]
    rows, cols = crop["height"] // encoder["patch_size"], crop["width"] // encoder["patch_size"]
    assert pipe.patch_grid == (rows, cols)
    assert pipe.preprocess(IMAGE).shape == (1, 3, crop["height"], crop["width"])
    assert pipe.encode_image(IMAGE).shape == (1, 1 + rows * cols, encoder["hidden_size"])
    assert pipe.preprocessed_image(IMAGE).size == (crop["width"], crop["height"])


# --------------------------------------------------------------------------- the README's library example


def test_readme_library_example_runs_from_any_folder(tmp_path, monkeypatch, capsys):
    """The README's Python block, run from an unrelated folder with REPO pointed at this clone."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## As a library.*?```python\n(.*?)```", readme, re.S).group(1)
    assert 'REPO = Path("~/partattn-checks").expanduser()' in block
    block = block.replace('Path("~/partattn-checks").expanduser()', repr(str(REPO)).join(("Path(", ")")))
    block = block.replace('resolve_device("auto")', 'resolve_device("cpu")')
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "torch.Size([10, " in out and "part_separation" in out
