"""``record_attention``: one pipeline run recorded by an :class:`~partattn_checks.capture.recorder.AttentionRecorder`,
and what it needs of the pipeline (:class:`RecordablePipeline`). Re-exported by ``capture.recorder``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import torch

from .record import AttentionRecord
from .runspec import RUN_KEYS, LoadedPipeline, RunSpec, dtype_name, for_pipeline, run_meta
from .selection import Selection

if TYPE_CHECKING:
    from ..model.pipeline import DenoiseResult, StepObserver


class RecordablePipeline(LoadedPipeline, Protocol):
    """What :func:`record_attention` runs: a loaded pipeline (ours, an upstream one's adapter) that tells
    observers of its steps and returns a :class:`~partattn_checks.model.pipeline.DenoiseResult`."""

    @property
    def patch_grid(self) -> tuple[int, int] | None: ...

    def __call__(
        self,
        image: object,
        num_parts: int,
        /,
        *,
        steps: int = ...,
        seed: int = ...,
        guidance_scale: float = ...,
        num_tokens: int = ...,
        observers: tuple[StepObserver, ...] = ...,
        callback: Callable[[int, float, torch.Tensor], None] | None = ...,
        latents: torch.Tensor | None = ...,
    ) -> DenoiseResult: ...


def record_attention(
    pipeline: RecordablePipeline,
    image: object,
    num_parts: int | None = None,
    *,
    spec: RunSpec | None = None,
    selection: Selection | None = None,
    nonfinite: str = "raise",
    meta: Mapping[str, Any] | None = None,
    **run_kwargs: Any,
) -> tuple[DenoiseResult, AttentionRecord]:
    """Run ``pipeline`` on ``image`` while recording; return ``(DenoiseResult, AttentionRecord)``.

    ``spec``: the run's resolved :class:`~partattn_checks.capture.runspec.RunSpec`. Without one,
    ``num_parts`` and the run settings among ``run_kwargs`` (``steps``, ``seed``,
    ``guidance_scale``, ``num_tokens``; unset: the checkpoint's) are resolved into one. Other
    ``run_kwargs`` (``callback``, ``latents``) go to the pipeline call as they are.
    """
    from .recorder import AttentionRecorder, RecorderError, RecorderTypeError

    settings = {k: run_kwargs.pop(k) for k in RUN_KEYS if k in run_kwargs}
    if spec is None:
        spec = for_pipeline(pipeline, call={"num_parts": num_parts, **settings})
    elif num_parts is not None or settings:
        raise RecorderTypeError("record_attention: pass either spec= or num_parts and the run settings, not both")
    elif (spec.device, spec.dtype) != (str(pipeline.device), dtype_name(pipeline.dtype)):
        raise RecorderError(
            f"the run spec is for {spec.device} {spec.dtype}, but the pipeline runs on "
            f"{pipeline.device} {dtype_name(pipeline.dtype)}; resolve it with runspec.for_pipeline"
        )
    recorder = AttentionRecorder(
        pipeline.transformer,
        num_parts=spec.num_parts,
        cfg=spec.cfg,
        selection=selection,
        has_cls=True,
        patch_grid=pipeline.patch_grid,
        nonfinite=nonfinite,
        meta={**run_meta(pipeline, image, spec), **(meta or {})},
    )
    with recorder:
        result = pipeline(image, spec.num_parts, observers=(recorder,), **spec.run_kwargs(), **run_kwargs)
    return result, recorder.record()
