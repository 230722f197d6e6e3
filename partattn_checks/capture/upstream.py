"""Run an upstream-style PartCrafter pipeline (upstream's own, or a fork of it) under the gate, the
``partattn`` command and the recorder, without changing a line of it.

Upstream's pipeline is called ``pipe(image=[img] * N, attention_kwargs={"num_parts": N},
num_tokens=T, num_inference_steps=S, guidance_scale=G, generator=torch.Generator().manual_seed(s))``,
runs one transformer forward per step (the CFG batch ``[uncond, cond]`` concatenated) and then
decodes meshes. :class:`UpstreamPipeline` wraps such an object and offers what the gate and
``record_attention`` use (``transformer``, ``run_defaults``, ``patch_grid``, ``checkpoint.path``,
``device``, ``dtype``, ``__call__(image, num_parts, *, steps, seed, guidance_scale, num_tokens,
observers)``):

* **steps and timesteps** are read from the transformer's forward calls (a pre-hook: the n-th call
  is step n, its ``timestep`` argument the step's timestep), and the observers (the recorder) are
  told around each call; ``end_step`` gets the transformer's output (the pipeline's latents are
  inside its loop), which is what the non-finite check reads;
* **no mesh is decoded**: after the last step's forward the adapter stops the pipeline (an
  exception of its own, raised from a hook and caught here), so a gate run costs the denoising only;
* the **noise** comes from ``generator=torch.Generator().manual_seed(seed)``: a seed means what
  it means for upstream's pipeline;
* CFG layout, patch grid (from the feature extractor and the image encoder's patch size) and run
  defaults (the checkpoint's ``partattn.json``, else upstream's 50 steps, 1024 tokens, 7.0).

:func:`load_factory` resolves ``--partattn-pipeline=module:factory`` / ``partattn --pipeline``.
"""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import PartattnError


class PipelineError(PartattnError, ValueError):
    """A pipeline factory or object that cannot be used; the message names it and the fix."""


class _Denoised(PartattnError):
    """Raised from the transformer's forward hook after the last step: stops before mesh decoding
    (caught by :class:`UpstreamPipeline`; never reaches a user)."""


@dataclass
class _Source:
    path: Path  # what the record's meta and the baseline fingerprint name


class UpstreamPipeline:
    """An upstream-style PartCrafter pipeline, as the gate and the recorder call pipelines."""

    def __init__(self, pipe, *, model: str | Path | None = None, run_defaults: dict | None = None):
        from ..model.files import RUN_DEFAULTS, read_run_defaults

        transformer = getattr(pipe, "transformer", None)
        if transformer is None or not callable(pipe):
            raise PipelineError(
                f"{type(pipe).__name__} is not a PartCrafter pipeline: it needs a .transformer and a __call__ "
                f"(upstream's signature: pipe(image=[img] * N, attention_kwargs={{'num_parts': N}}, ...))"
            )
        self.pipe = pipe
        self.transformer = transformer
        param = next(transformer.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.checkpoint = _Source(Path(model) if model is not None else Path(f"<{type(pipe).__name__}>"))
        if run_defaults is None:
            run_defaults = read_run_defaults(model) if model is not None else dict(RUN_DEFAULTS)
        self.run_defaults = dict(run_defaults)
        self.feature_extractor = _first_attr(pipe, "feature_extractor_dinov2", "feature_extractor")
        self.image_encoder = _first_attr(pipe, "image_encoder_dinov2", "image_encoder")

    @property
    def patch_grid(self) -> tuple[int, int] | None:
        """Rows and columns of the image encoder's patch grid, when the pipeline has both parts."""
        fe, encoder = self.feature_extractor, self.image_encoder
        patch = getattr(getattr(encoder, "config", None), "patch_size", None)
        if fe is None or patch is None:
            return None
        crop = fe.crop_size if getattr(fe, "do_center_crop", False) else fe.size
        if "height" not in crop:
            return None
        return crop["height"] // patch, crop["width"] // patch

    def preprocessed_image(self, image):
        """The encoder's view of the image (PIL), for overlays; None without a feature extractor."""
        from ..model.pipeline import open_image, pixels_to_image

        if self.feature_extractor is None:
            return None
        pixels = self.feature_extractor(open_image(image), return_tensors="pt").pixel_values
        return pixels_to_image(pixels[0], self.feature_extractor)

    def __call__(
        self,
        image,
        num_parts: int,
        *,
        steps: int | None = None,
        seed: int = 0,
        guidance_scale: float | None = None,
        num_tokens: int | None = None,
        observers=(),
        callback=None,
        latents=None,
    ):
        import torch

        from ..model.files import ModelTypeError
        from ..model.pipeline import DenoiseResult, open_image
        from .recorder import timestep_value

        if latents is not None:
            raise ModelTypeError(
                "an upstream-style pipeline draws its own noise from generator=: pass seed=, not latents="
            )
        d = self.run_defaults
        steps = int(d["steps"] if steps is None else steps)
        num_tokens = int(d["num_tokens"] if num_tokens is None else num_tokens)
        guidance_scale = float(d["guidance_scale"] if guidance_scale is None else guidance_scale)
        picture = open_image(image)
        timesteps: list[float] = []
        last = {}

        def before(_module, args, kwargs):
            step = len(timesteps)
            if step >= steps:
                raise PipelineError(
                    f"{type(self.pipe).__name__} called its transformer more than {steps} times for "
                    f"{steps} steps; the adapter expects one forward per step (CFG batch concatenated)"
                )
            timesteps.append(timestep_value(kwargs.get("timestep", args[1] if len(args) > 1 else None)))
            for observer in observers:
                observer.begin_step(step, timesteps[-1])

        def after(_module, _args, _kwargs, output):
            step, t = len(timesteps) - 1, timesteps[-1]
            sample = output.sample if hasattr(output, "sample") else output[0]
            last["sample"] = sample
            for observer in observers:
                observer.end_step(step, t, sample)
            if callback is not None:
                callback(step, t, sample)
            if step == steps - 1:
                raise _Denoised

        handles = [
            self.transformer.register_forward_pre_hook(before, with_kwargs=True),
            self.transformer.register_forward_hook(after, with_kwargs=True),
        ]
        try:
            self.pipe(
                image=[picture] * num_parts,
                attention_kwargs={"num_parts": num_parts},
                num_tokens=num_tokens,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                generator=torch.Generator().manual_seed(int(seed)),
            )
        except _Denoised:
            pass
        else:
            raise PipelineError(
                f"{type(self.pipe).__name__} returned after {len(timesteps)} transformer calls, not {steps}: "
                f"num_inference_steps={steps} was not honoured"
            )
        finally:
            for handle in handles:
                handle.remove()
        return DenoiseResult(latents=last["sample"], timesteps=timesteps)


def _first_attr(obj, *names):
    return next((getattr(obj, n) for n in names if getattr(obj, n, None) is not None), None)


class WithRunDefaults:
    """A pipeline of the user's that runs with given default run settings (the ones the gate shows),
    everything else its own."""

    def __init__(self, inner, run_defaults: dict):
        self.inner = inner
        self.run_defaults = dict(run_defaults)

    def __getattr__(self, name: str):
        if name == "inner":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def as_pipeline(obj, model: str | Path | None = None, run_defaults: dict | None = None):
    """``obj`` as the gate calls pipelines: ours (or anything with ``run_defaults`` and
    ``checkpoint``) as it is, an upstream-style pipeline through :class:`UpstreamPipeline`.
    ``run_defaults``: the settings a run takes when nothing else sets them (default: the pipeline's
    own, else ``model``'s ``partattn.json``, else upstream's)."""
    if hasattr(obj, "run_defaults") and hasattr(obj, "checkpoint") and hasattr(obj, "patch_grid"):
        if run_defaults is None or dict(obj.run_defaults) == dict(run_defaults):
            return obj
        return WithRunDefaults(obj, run_defaults)
    return UpstreamPipeline(obj, model=model, run_defaults=run_defaults)


#: ``module:factory`` (dotted names on both sides).
FACTORY_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def factory_problem(spec: str) -> str | None:
    """What is wrong with the form of a ``module:factory`` value, else None (nothing is imported)."""
    if FACTORY_PATTERN.match(spec.strip()):
        return None
    return "expected module:factory (dotted Python names), e.g. my_project.pipelines:load_partcrafter"


def load_factory(spec: str, rootdir: str | Path, what: str = "--partattn-pipeline"):
    """The callable ``module:factory`` names, imported with ``rootdir`` first on ``sys.path``."""
    wrong = factory_problem(spec)
    if wrong:
        raise PipelineError(f"{what} {spec}: {wrong}")
    module_name, _, attr = spec.strip().partition(":")
    root = str(Path(rootdir).resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - the user's module: any error on import is told, with its type
        raise PipelineError(
            f"{what} {spec}: cannot import {module_name} from {root} ({type(err).__name__}: {err})"
        ) from None
    factory: object = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise PipelineError(f"{what} {spec}: {module_name} has no {attr}")
    if not callable(factory):
        raise PipelineError(f"{what} {spec}: {attr} is not callable (expected factory(model, device, dtype))")
    return factory


def build_pipeline(
    spec: str, rootdir, model, device: str, dtype: str, what: str = "--partattn-pipeline", run_defaults=None
):
    """``factory(model, device, dtype)`` of ``spec``, as the gate calls pipelines (``run_defaults``:
    see :func:`as_pipeline`)."""
    pipe = load_factory(spec, rootdir, what)(str(model) if model is not None else None, str(device), dtype)
    if pipe is None:
        raise PipelineError(f"{what} {spec}: the factory returned None")
    return as_pipeline(pipe, model, run_defaults)
