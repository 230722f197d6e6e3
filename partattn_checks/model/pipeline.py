"""PartCrafter's denoising loop (no mesh decoding), written for observation.

image -> DINOv2 image tokens -> CFG batch ``[uncond (zeros), cond]`` -> rectified-flow schedule
``sigma_i = 1 - i/n`` (then 0), model timestep ``t = 1000 * sigma`` -> Euler step
``x <- x + (sigma_i - sigma_{i+1}) * v`` with the guided velocity ``v = u + g * (c - u)``.

Upstream's pipeline ignores ``latents`` and breaks ``callback_on_step_end``; this loop keeps the
same math and adds what observation needs: seeded latents, per-step callbacks and timings, and
step hooks that a recorder uses to know which step a forward belongs to. It also takes upstream's
call (``image=[img] * N, attention_kwargs={"num_parts": N}, num_inference_steps=, generator=``)
and diffusers' legacy ``callback=`` / ``callback_steps=`` (see :meth:`PartCrafterPipeline.__call__`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from ..base.seeds import DEFAULT_SEED
from .files import ImageError, ImageNotFoundError, ModelError, ModelTypeError
from .loading import Checkpoint, check_num_parts, load_checkpoint

#: Upstream's mesh-decoding arguments: accepted so upstream calls run unchanged, and ignored (this
#: pipeline stops at the latents; it decodes no meshes).
MESH_DECODING_ARGS = frozenset(
    {
        "bounds",
        "dense_octree_depth",
        "hierarchical_octree_depth",
        "max_num_expanded_coords",
        "flash_octree_depth",
        "use_flash_decoder",
    }
)


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

    A missing path raises :class:`ImageNotFoundError` (a ``FileNotFoundError``); a file PIL cannot
    read (not an image, truncated) or an image over PIL's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``; PIL only warns below twice the limit, this refuses both) raises
    :class:`ImageError` naming the file and the fix.
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
        raise ImageNotFoundError(f"{path}: image not found") from None
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
        raise ModelError(f"steps must be at least 1, got {steps}")
    return [1.0 - i / steps for i in range(steps)] + [0.0]


def as_device(device: str | torch.device) -> torch.device:
    """A concrete device (``cpu``, ``cuda``, ``cuda:N``) as a ``torch.device``; ``cuda`` without CUDA
    is an error that says so. Choosing one (``auto``, one GPU per xdist worker) is the run layer's
    job: ``partattn_checks.capture.runspec.resolve_device``."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(
            f"device {device!r}: not a device; pass cpu, cuda or cuda:N (to pick one for 'auto', "
            f"use partattn_checks.capture.runspec.resolve_device)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(
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

    def initial_latents(
        self, num_parts: int, num_tokens: int, seed: int = DEFAULT_SEED, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Noise ``(N, T, C)`` in fp32, then cast to the pipeline's device and dtype.

        From ``seed``: drawn on the CPU with ``torch.Generator().manual_seed(seed)``, so a seed means
        the same noise on every device. From ``generator`` (upstream's way): drawn from it, on its
        device, advancing its state; a CPU generator seeded ``s`` gives exactly the noise of ``seed=s``.
        """
        if generator is None:
            generator = torch.Generator().manual_seed(int(seed))
        elif not isinstance(generator, torch.Generator):
            raise ModelTypeError(
                f"generator: expected one torch.Generator, got {type(generator).__name__} (a list of generators, "
                f"one per part, is not supported: pass one, or seed=)"
            )
        shape = (num_parts, num_tokens, self.transformer.config["in_channels"])
        noise = torch.randn(shape, generator=generator, dtype=torch.float32, device=generator.device)
        return noise.to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def __call__(
        self,
        image,
        num_parts: int | None = None,
        *,
        num_tokens: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        latents: torch.Tensor | None = None,
        callback: Callable[[int, float, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        observers: tuple[StepObserver, ...] = (),
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
        attention_kwargs: dict | None = None,
        **mesh_decoding,
    ) -> DenoiseResult:
        """Denoise the part latents of ``image`` (a path, PIL image or preprocessed pixel tensor).

        Our form: ``pipe(image, num_parts, steps=, seed=, guidance_scale=, num_tokens=)``. Upstream's:
        ``pipe(image=[img] * N, attention_kwargs={"num_parts": N}, num_inference_steps=, generator=, ...)``:
        the list's length is the part count (every item must be the same image), ``num_inference_steps``
        is ``steps`` and ``generator`` draws the noise (:meth:`initial_latents`). One image without a
        part count is one part, as upstream. Giving one setting in both forms is a
        :class:`ModelTypeError` (a ``TypeError``). Unset settings are the checkpoint's
        (``run_defaults``). ``latents``: the starting noise (then ``seed``/``generator`` are not used).
        ``callback(step, timestep, latents)`` (diffusers' legacy signature) runs after steps 0,
        ``callback_steps``, 2·``callback_steps``, ...; ``observers`` are told of every step. Upstream's
        mesh-decoding arguments (:data:`MESH_DECODING_ARGS`) are ignored: the result is the latents
        (:class:`DenoiseResult`), never meshes.
        """
        unknown = sorted(set(mesh_decoding) - MESH_DECODING_ARGS)
        if unknown:
            raise ModelTypeError(
                f"PartCrafterPipeline got an unexpected keyword argument {unknown[0]!r}; it takes num_parts, steps "
                f"(or num_inference_steps), seed (or generator), guidance_scale, num_tokens, latents, callback, "
                f"callback_steps, observers and attention_kwargs={{'num_parts': N}}"
            )
        image, num_parts = self._image_and_parts(image, num_parts, attention_kwargs)
        steps = _one_form("steps", steps, "num_inference_steps", num_inference_steps)
        if seed is not None and generator is not None:
            raise ModelTypeError(
                "seed= and generator= both give the noise: pass one (a CPU generator seeded s is seed=s)"
            )
        if isinstance(callback_steps, bool) or not isinstance(callback_steps, int) or callback_steps < 1:
            raise ModelError(f"callback_steps must be a whole number of at least 1, got {callback_steps!r}")
        defaults = self.run_defaults  # unset settings: the checkpoint's
        num_tokens = int(defaults["num_tokens"] if num_tokens is None else num_tokens)
        steps = int(defaults["steps"] if steps is None else steps)
        if num_tokens < 1:
            raise ModelError(f"num_tokens must be at least 1, got {num_tokens}")
        guidance_scale = float(defaults["guidance_scale"] if guidance_scale is None else guidance_scale)
        cfg = guidance_scale > 1.0
        check_num_parts(self.transformer.config, num_parts, cfg=cfg)

        image_tokens = self.encode_image(image).repeat_interleave(num_parts, dim=0)
        if cfg:
            image_tokens = torch.cat([torch.zeros_like(image_tokens), image_tokens])
        if latents is None:
            seed = DEFAULT_SEED if seed is None else seed
            latents = self.initial_latents(num_parts, num_tokens, seed, generator=generator)
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
            if callback is not None and i % callback_steps == 0:
                callback(i, t, latents)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            result.step_seconds.append(time.perf_counter() - start)
        result.latents = latents
        return result

    def _image_and_parts(self, image, num_parts, attention_kwargs):
        """One image and the part count, from our form ``(image, num_parts)`` or upstream's
        ``(image=[img] * N, attention_kwargs={"num_parts": N})``."""
        attention_kwargs = dict(attention_kwargs or {})
        extra = sorted(set(attention_kwargs) - {"num_parts"})
        if extra:
            raise ModelError(f"attention_kwargs: only 'num_parts' is used here, got {extra[0]!r}")
        upstream = attention_kwargs.get("num_parts")
        listed = isinstance(image, (list, tuple))
        if num_parts is not None and (listed or upstream is not None):
            raise ModelTypeError(
                "the part count is given twice: pass pipe(image, num_parts) or upstream's "
                "pipe(image=[img] * N, attention_kwargs={'num_parts': N}), not both"
            )
        if not listed:
            return image, int(num_parts if num_parts is not None else upstream if upstream is not None else 1)
        if not image:
            raise ImageError("image: an empty list; pass [img] * N for N parts")
        if upstream is not None and int(upstream) != len(image):
            raise ImageError(
                f"image lists {len(image)} images but attention_kwargs={{'num_parts': {upstream}}}: "
                f"repeat the image once per part"
            )
        first = image[0]
        pixels = None
        for other in image[1:]:
            if other is not first:
                pixels = self.preprocess(first) if pixels is None else pixels
                if not torch.equal(self.preprocess(other), pixels):
                    raise ImageError(
                        "image: the list holds different images; every part is conditioned on one image "
                        "here, so pass the same image once per part ([img] * N)"
                    )
        return first, len(image)


def _one_form(name: str, value, upstream_name: str, upstream_value):
    """A setting given in our form or upstream's, not both."""
    if value is not None and upstream_value is not None:
        raise ModelTypeError(f"{name}= and {upstream_name}= are the same setting: pass one")
    return value if value is not None else upstream_value


def converted(pipeline: PartCrafterPipeline, dtype: str) -> PartCrafterPipeline:
    """A copy of ``pipeline`` with its weights in ``dtype`` (the numeric floor's dtype runs; the
    loader casts every float tensor alike, so this equals loading the checkpoint in ``dtype``)."""
    import copy

    if not isinstance(pipeline, PartCrafterPipeline):
        raise ModelTypeError(
            f"cannot make a {dtype} copy of a {type(pipeline).__name__}: give the session a loader for other dtypes"
        )
    target = getattr(torch, dtype)
    copied = copy.deepcopy(pipeline)
    for module in (copied.transformer, copied.image_encoder):  # nn.Module's own: diffusers' .to() warns of
        torch.nn.Module.to(module, target)  # fp32-only modules, and PartCrafter's keep none
    copied.dtype = target
    return copied
