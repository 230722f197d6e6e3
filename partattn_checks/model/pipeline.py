"""PartCrafter's denoising loop (no mesh decoding), written for observation.

image -> DINOv2 image tokens -> CFG batch ``[uncond (zeros), cond]`` -> rectified-flow schedule
``sigma_i = 1 - i/n`` (then 0), model timestep ``t = 1000 * sigma`` -> Euler step
``x <- x + (sigma_i - sigma_{i+1}) * v`` with the guided velocity ``v = u + g * (c - u)``.

Upstream's pipeline ignores ``latents`` and breaks ``callback_on_step_end``; this loop keeps the
same math and adds what observation needs: seeded latents, per-step callbacks and timings, and
step hooks that a recorder uses to know which step a forward belongs to.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from .files import ImageError
from .loading import Checkpoint, check_num_parts, load_checkpoint


class StepObserver(Protocol):
    """What the loop tells an observer (for example a capture recorder) around each model call."""

    def begin_step(self, step: int, timestep: float) -> None: ...

    def end_step(self, step: int, timestep: float, latents: torch.Tensor) -> None: ...


@dataclass
class DenoiseResult:
    latents: torch.Tensor  # (N, T, C) final latents of the N parts
    timesteps: list[float]
    step_seconds: list[float] = field(default_factory=list)


def to_rgb(image):
    """PIL image -> RGB, compositing transparency on white (as the upstream examples expect)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(image):
    """Accept a path or a PIL image; return an RGB PIL image.

    A missing path raises ``FileNotFoundError``; a file PIL cannot read (not an image, truncated)
    or an image over PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``; PIL only warns
    below twice the limit, this refuses both) raises :class:`ImageError` naming the file and the fix.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    if not isinstance(image, (str, Path)):
        return to_rgb(image)
    path = Path(image)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.load()
                return to_rgb(opened)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise too_large(path, err) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: not a readable image ({err}); re-export it as PNG or JPEG") from None


def too_large(path, err: Exception) -> ImageError:
    """The ``ImageError`` for an image PIL refuses as a possible decompression bomb."""
    from PIL import Image

    found = re.search(r"\((\d+) pixels\)", str(err))
    size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    limit = Image.MAX_IMAGE_PIXELS
    return ImageError(
        f"{path}: image too large: {size}, over PIL's decompression-bomb limit of "
        f"{limit:,} pixels (PIL.Image.MAX_IMAGE_PIXELS); downscale it (for example to 1024 px on the long "
        f"side): the encoder resizes it to its small input crop anyway"
    )


def pixels_to_image(pixels: torch.Tensor, feature_extractor):
    """Preprocessed pixel values ``(3, H, W)`` -> the PIL image the encoder sees (normalisation undone)."""
    from PIL import Image

    mean = torch.tensor(feature_extractor.image_mean).view(3, 1, 1)
    std = torch.tensor(feature_extractor.image_std).view(3, 1, 1)
    array = ((pixels.float().cpu() * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def encoder_view(feature_extractor, image):
    """An image (path or PIL) as the encoder sees it: resized, cropped, as a PIL image."""
    return pixels_to_image(feature_extractor(open_image(image), return_tensors="pt").pixel_values[0], feature_extractor)


def flow_sigmas(steps: int) -> list[float]:
    """``[1 - i/steps for i in range(steps)] + [0]``."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return [1.0 - i / steps for i in range(steps)] + [0.0]


def as_device(device: str | torch.device) -> torch.device:
    """A concrete device (``cpu``, ``cuda``, ``cuda:N``) as a ``torch.device``; ``cuda`` without CUDA
    is an error that says so. Choosing one (``auto``, one GPU per xdist worker) is the run layer's
    job: ``partattn_checks.runspec.resolve_device``."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device {device!r}: not a device; pass cpu, cuda or cuda:N (to pick one for 'auto', "
            f"use partattn_checks.runspec.resolve_device)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device '{device}' requested but CUDA is not available here (torch {torch.__version__}); use 'cpu'"
        )
    return device


class PartCrafterPipeline:
    """Runs the PartCrafter denoising loop on a loaded checkpoint."""

    def __init__(
        self, checkpoint: Checkpoint, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ):
        self.checkpoint = checkpoint
        self.transformer = checkpoint.transformer
        self.image_encoder = checkpoint.image_encoder
        self.feature_extractor = checkpoint.feature_extractor
        self.device = torch.device(device)
        self.dtype = dtype
        self.num_train_timesteps = float(checkpoint.scheduler_config.get("num_train_timesteps", 1000))

    @classmethod
    def from_pretrained(
        cls, path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> PartCrafterPipeline:
        """Load a checkpoint folder onto ``device`` (concrete, see :func:`as_device`) in ``dtype``."""
        device = as_device(device)
        return cls(load_checkpoint(path, dtype=dtype, device=device), device=device, dtype=dtype)

    @property
    def run_defaults(self) -> dict:
        """The checkpoint's default run settings (its ``partattn.json``; ``files.RUN_DEFAULTS`` without one)."""
        return self.checkpoint.run_defaults

    @property
    def patch_grid(self) -> tuple[int, int]:
        """Rows and columns of the image encoder's patch grid, from the checkpoint's configs."""
        extractor = self.feature_extractor
        crop = extractor.crop_size if extractor.do_center_crop else extractor.size
        patch = self.image_encoder.config.patch_size
        return crop["height"] // patch, crop["width"] // patch

    def preprocess(self, image) -> torch.Tensor:
        """Image (PIL or path) -> pixel values ``(1, 3, H, W)``; a tensor is taken as already preprocessed."""
        if isinstance(image, torch.Tensor):
            return image if image.ndim == 4 else image.unsqueeze(0)
        return self.feature_extractor(open_image(image), return_tensors="pt").pixel_values

    def preprocessed_image(self, image):
        """The encoder's view of the image as a PIL image (for overlays of patch attention)."""
        return pixels_to_image(self.preprocess(image)[0], self.feature_extractor)

    @torch.no_grad()
    def encode_image(self, image) -> torch.Tensor:
        pixels = self.preprocess(image).to(device=self.device, dtype=self.dtype)
        return self.image_encoder(pixels).last_hidden_state

    def initial_latents(self, num_parts: int, num_tokens: int, seed: int) -> torch.Tensor:
        """Seeded noise ``(N, T, C)``, drawn on the CPU so a seed means the same noise on every device."""
        generator = torch.Generator().manual_seed(int(seed))
        shape = (num_parts, num_tokens, self.transformer.config.in_channels)
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def __call__(
        self,
        image,
        num_parts: int,
        *,
        num_tokens: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int = 0,
        latents: torch.Tensor | None = None,
        callback: Callable[[int, float, torch.Tensor], None] | None = None,
        observers: tuple[StepObserver, ...] = (),
    ) -> DenoiseResult:
        defaults = self.run_defaults  # unset settings: the checkpoint's
        num_tokens = int(defaults["num_tokens"] if num_tokens is None else num_tokens)
        steps = int(defaults["steps"] if steps is None else steps)
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be at least 1, got {num_tokens}")
        guidance_scale = float(defaults["guidance_scale"] if guidance_scale is None else guidance_scale)
        cfg = guidance_scale > 1.0
        check_num_parts(self.transformer.config, num_parts, cfg=cfg)

        image_tokens = self.encode_image(image).repeat_interleave(num_parts, dim=0)
        if cfg:
            image_tokens = torch.cat([torch.zeros_like(image_tokens), image_tokens])
        if latents is None:
            latents = self.initial_latents(num_parts, num_tokens, seed)
        latents = latents.to(device=self.device, dtype=self.dtype)

        sigmas = flow_sigmas(steps)
        timesteps = [self.num_train_timesteps * s for s in sigmas[:-1]]
        result = DenoiseResult(latents=latents, timesteps=timesteps)
        attention_kwargs = {"num_parts": num_parts}
        for i, t in enumerate(timesteps):
            start = time.perf_counter()
            for observer in observers:
                observer.begin_step(i, t)
            model_input = torch.cat([latents, latents]) if cfg else latents
            timestep = torch.full((model_input.shape[0],), t, device=self.device, dtype=self.dtype)
            velocity = self.transformer(model_input, timestep, image_tokens, attention_kwargs=attention_kwargs).sample
            velocity = velocity.to(self.dtype)
            if cfg:
                uncond, cond = velocity.chunk(2)
                velocity = uncond + guidance_scale * (cond - uncond)
            latents = latents + (sigmas[i] - sigmas[i + 1]) * velocity
            for observer in observers:
                observer.end_step(i, t, latents)
            if callback is not None:
                callback(i, t, latents)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            result.step_seconds.append(time.perf_counter() - start)
        result.latents = latents
        return result
