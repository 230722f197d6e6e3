"""``AttentionVisualizer``: the API of the cross-attention visualization guide, on our exact capture.

The guide promised ``register_hooks`` / ``extract_attention_weights`` / ``visualize_*`` /
``create_attention_animation`` / ``clear_hooks`` plus statistics and batch processing. Its known
implementations hook modules in ways that capture nothing (or the wrong heads); this one is a thin
layer over :class:`~partattn_checks.capture.recorder.AttentionRecorder` (hooks that read what each layer's
own processor computes, PartCrafter's head split, conditional CFG half, time token dropped, CLS key
kept in column 0) and :mod:`~partattn_checks.render` (A·Nk on a fixed scale, uniform = 1). See
docs/visualization.md; tests/test_guide.py runs the guide's code blocks.

Vocabulary used below:

* *weights*: what :meth:`AttentionVisualizer.extract_attention_weights` returns, a dict
  ``layer name -> (P, H, Q, K)`` fp32 softmax probabilities (parts, heads, queries, keys); when the
  model has an image CLS token (PartCrafter) key 0 is CLS, and figures show the patch keys
  renormalised, with the CLS ("sink") mass in the title.
* *record*: an :class:`~partattn_checks.capture.record.AttentionRecord` (streamed per-step reductions, full
  maps only where opted in). Every method that draws also accepts a record.
* *attention maps*: while hooks are registered, ``model.attention_maps`` is the latest hooked
  step's weights (``{layer name: (P, H, Q, K)}``), what the guide's step callback reads.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import torch

from ..capture.record import AttentionRecord
from ..capture.recorder import AttentionRecorder, CaptureError, Selection, cross_attention_modules
from ..capture.runspec import for_pipeline, resolve_device
from ..capture.step_hooks import StepHooks, cfg_for_batch
from ..checks import CheckResult, Thresholds
from ..model.pipeline import encoder_view
from ..runs.session import run_case
from ..runs.sidecar import parts_from_name
from .batch import verdict_cell as verdict_cell
from .batch import write_batch
from .visualizer_methods import SPARSITY_FACTOR, FigureMethods, VisualizerError, VisualizerTypeError, _check_index

__all__ = ["AttentionVisualizer", "encoder_view", "SPARSITY_FACTOR"]

_PARTCRAFTER_TIMESTEP = 1000.0  # first step of the schedule (sigma = 1)

if TYPE_CHECKING:
    from PIL.Image import Image

#: An image to run: a path, a PIL image or a preprocessed pixel tensor (as the pipeline takes it).
ImageInput: TypeAlias = "str | os.PathLike[str] | Image | torch.Tensor"


class PipelineLike(Protocol):
    """What the visualizer binds to as a pipeline: a callable object with a ``transformer`` (a
    :class:`~partattn_checks.model.pipeline.PartCrafterPipeline`, an upstream adapter)."""

    @property
    def transformer(self) -> torch.nn.Module: ...

    def __call__(self, *args: Any, **kwargs: Any) -> object: ...


#: A model to hook or record: a torch/diffusers model, or a pipeline (its transformer is used).
ModelOrPipeline: TypeAlias = "torch.nn.Module | PipelineLike"


# ====================================================================== the guide's API
class AttentionVisualizer(FigureMethods):
    """Record and draw a model's cross-attention.

    ``model_or_pipeline``: a :class:`~partattn_checks.model.pipeline.PartCrafterPipeline` (or any
    object with a ``transformer`` and the same call signature), a checkpoint folder (loaded with
    ``device``, ``auto`` by default, and ``dtype``), a ``PartCrafterDiTModel``, or any diffusers
    model whose cross-attention modules use standard diffusers or PartCrafter/TripoSG processors.
    Left out (``AttentionVisualizer()``, as the guide writes it), the visualizer binds to the model
    or pipeline first given to :meth:`register_hooks`.

    ``num_parts``: default part count (a pipeline run takes it from the ``np<N>_`` file-name prefix
    when not given). ``cfg``: whether model inputs are the batch ``[uncond, cond]``, of which only
    the conditional half is kept; ``None`` (default) decides per call: a PartCrafter batch of exactly
    ``num_parts`` rows has no CFG half, any other batch is ``[uncond, cond]`` (pipeline runs decide
    from the guidance scale). ``has_cls`` / ``time_token``: whether key 0 is an image CLS token and
    query 0 a time token (default: true for PartCrafter and before binding, false for other
    models). ``patch_grid``: (rows, cols) of the image patch keys, for drawing on the image
    (default: the pipeline's encoder grid).
    """

    def __init__(
        self,
        model_or_pipeline: ModelOrPipeline | str | os.PathLike[str] | None = None,
        num_parts: int | None = None,
        cfg: bool | None = None,
        *,
        has_cls: bool | None = None,
        time_token: bool | None = None,
        patch_grid: tuple[int, int] | None = None,
        device: str | torch.device = "auto",
        dtype: torch.dtype = torch.float32,
        thresholds: Thresholds | None = None,
    ):
        if isinstance(model_or_pipeline, (str, os.PathLike)):
            from ..model.pipeline import PartCrafterPipeline

            model_or_pipeline = PartCrafterPipeline.from_pretrained(
                model_or_pipeline, dtype=dtype, device=resolve_device(str(device)).device
            )
        if num_parts is not None and int(num_parts) < 1:
            raise VisualizerError(f"num_parts must be at least 1, got {num_parts}")
        self.num_parts = None if num_parts is None else int(num_parts)
        self.cfg = None if cfg is None else bool(cfg)
        self._settings: dict[str, Any] = {"has_cls": has_cls, "time_token": time_token, "patch_grid": patch_grid}
        self.pipeline: Any = None  # a PartCrafterPipeline or one called like it; None for a bare model
        self.model: torch.nn.Module | None = None
        self.has_cls = True if has_cls is None else bool(has_cls)
        self.time_token = True if time_token is None else bool(time_token)
        self.patch_grid = (int(patch_grid[0]), int(patch_grid[1])) if patch_grid else None
        if model_or_pipeline is not None:
            self._bind(model_or_pipeline)
        self.thresholds = thresholds or Thresholds()
        self.record: AttentionRecord | None = None  # the last record made by any method
        self.results: dict[str, CheckResult] = {}  # checks of the last pipeline run
        self.image = None  # the encoder's view (PIL) of the last image run, for overlays
        self._hooks: StepHooks | None = None

    def _bind(self, model_or_pipeline: ModelOrPipeline) -> None:
        """Take ``model_or_pipeline`` as this visualizer's model; PartCrafter decides the defaults."""
        from ..model.transformer import PartCrafterDiTModel

        if isinstance(model_or_pipeline, torch.nn.Module):
            self.pipeline, self.model = None, model_or_pipeline
        elif isinstance(getattr(model_or_pipeline, "transformer", None), torch.nn.Module) and callable(
            model_or_pipeline
        ):
            self.pipeline, self.model = model_or_pipeline, model_or_pipeline.transformer
        else:
            raise VisualizerTypeError(
                f"AttentionVisualizer needs a PartCrafterPipeline, a checkpoint folder or a torch/diffusers model, "
                f"got {type(model_or_pipeline).__name__}"
            )
        partcrafter = isinstance(self.model, PartCrafterDiTModel)
        has_cls, time_token, grid = (self._settings[k] for k in ("has_cls", "time_token", "patch_grid"))
        self.has_cls = partcrafter if has_cls is None else bool(has_cls)
        self.time_token = partcrafter if time_token is None else bool(time_token)
        if grid is None and self.pipeline is not None:
            grid = getattr(self.pipeline, "patch_grid", None)
        self.patch_grid = (int(grid[0]), int(grid[1])) if grid else None

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str | torch.device = "auto",
        dtype: torch.dtype = torch.float32,
        **kwargs: Any,
    ) -> AttentionVisualizer:
        """Load a PartCrafter checkpoint folder into a pipeline and wrap it (``device``: ``auto``,
        ``cpu``, ``cuda`` or ``cuda:N``, resolved by :func:`partattn_checks.capture.runspec.resolve_device`)."""
        from ..model.pipeline import PartCrafterPipeline

        device = resolve_device(str(device)).device
        return cls(PartCrafterPipeline.from_pretrained(path, device=device, dtype=dtype), **kwargs)

    def __repr__(self) -> str:
        what = type(self.pipeline or self.model).__name__ if self.model is not None else "no model yet"
        state = "hooks registered" if self._hooks is not None else "no hooks"
        return (
            f"AttentionVisualizer({what}, num_parts={self.num_parts}, cfg={self.cfg}, {state}, record={self.record!r})"
        )

    # ------------------------------------------------------------------ hooks
    @property
    def hooks_registered(self) -> bool:
        return self._hooks is not None

    @property
    def attention_maps(self) -> dict[str, torch.Tensor]:
        """The latest hooked step's weights, ``{layer: (P, H, Q, K)}`` (``{}`` without hooks or before a step)."""
        return self._hooks.maps if self._hooks is not None else {}

    def register_hooks(
        self,
        model: ModelOrPipeline | None = None,
        layers: int | str | Iterable[int | str] | Callable[[str], bool] | None = None,
        steps: int | Iterable[int] | None = None,
        full_maps: bool | Iterable[tuple[int | str, int]] | Callable[[str, int], bool] = False,
        *,
        every: int | None = None,
        attention_maps: bool = True,
    ) -> AttentionVisualizer:
        """Start recording ``model`` (default: this visualizer's; an unbound visualizer binds to it).

        ``model``: a torch/diffusers model or a pipeline (its transformer is hooked). Until
        :meth:`clear_hooks`, every forward call of the model is one recorded step, its timestep read
        from the call. ``layers``: indices, module names, glob patterns or a callable; ``steps``:
        step indices and/or ``every=k``; ``full_maps``: ``True`` (every selected layer and step:
        memory!), ``False``, (layer, step) pairs or a callable ``(name, step) -> bool``: the full maps
        kept in the record. ``attention_maps``: while hooks are registered, ``model.attention_maps``
        (on the object given here and on the hooked model) is the latest step's weights
        ``{layer: (P, H, Q, K)}`` fp32, replaced by a new dict at every step (``{}`` before the first
        step and after an unselected one); only that one step is held. Registering twice is refused.
        Returns ``self``.
        """
        if self._hooks is not None:
            raise CaptureError("hooks are already registered on this visualizer; call clear_hooks() first")
        if model is not None and self.model is None:
            self._bind(model)
        target = self._target(model)
        holders = [target] if model is None or model is target else [model, target]
        self._hooks = StepHooks(
            self,
            target,
            holders,
            layers=layers,
            steps=steps,
            every=every,
            full_maps=full_maps,
            attention_maps=bool(attention_maps),
            meta={"source": "AttentionVisualizer.register_hooks"},
        )
        return self

    def clear_hooks(self) -> AttentionRecord | None:
        """Remove the hooks and ``attention_maps`` (idempotent); the hooked steps become ``self.record``.

        Every hooked step was already checked as the recorder checks a run (captures, counts, NaN/Inf
        raise from the forward). If hooked forwards ran but no step was recorded (``steps`` selected
        none) this raises; if none ran, the hooks are just removed. Returns ``self.record``.
        """
        hooks, self._hooks = self._hooks, None
        record = hooks.finish() if hooks is not None else None
        if record is not None:
            self.record = self._attach_grid(record)
        return self.record

    def __enter__(self) -> AttentionVisualizer:
        if self._hooks is None:
            self.register_hooks()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.clear_hooks()
        elif self._hooks is not None:
            hooks, self._hooks = self._hooks, None
            hooks.remove()  # the exception propagates; nothing is finished

    def _paused(self) -> contextlib.AbstractContextManager[None]:
        """Methods that run their own recorder pause registered hooks (nested recorders are refused):
        forwards meanwhile are not hooked steps."""
        return self._hooks.pause() if self._hooks is not None else contextlib.nullcontext()

    # ------------------------------------------------------------------ extraction
    @torch.no_grad()
    def extract_attention_weights(
        self,
        model: ModelOrPipeline | None = None,
        hidden_states: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        layer_idx: int | str | None = None,
        *,
        timestep: float | torch.Tensor | None = None,
        num_parts: int | None = None,
        cfg: bool | None = None,
        image: ImageInput | None = None,
        **forward_kwargs: Any,
    ) -> dict[str, torch.Tensor] | torch.Tensor:
        """Run ONE forward of ``model`` with capture and full maps on; return its attention probabilities.

        Returns ``{layer name: (P, H, Q, K) fp32}`` (conditional CFG half, time-token row dropped,
        CLS key in column 0 when ``has_cls``), or one such tensor when ``layer_idx`` (index, name or
        pattern matching one layer) is given; only that layer is then recorded. The rows sum to 1 and
        are exactly the recorder's full maps (``self.record.full_maps``, fp16 on the CPU).

        ``hidden_states``/``encoder_hidden_states`` are the model's inputs, with the CFG batch
        ``[uncond, cond]`` when ``cfg`` (default: the visualizer's, else true unless the batch holds
        exactly ``num_parts`` rows). For a PartCrafter transformer
        ``num_parts`` defaults to the batch's part count and ``timestep`` to 1000 (sigma 1); other
        models get ``timestep`` only when given. ``image``: the image the encoder tokens came from (a
        path or PIL image; with a pipeline it is preprocessed like the encoder's input), kept in
        ``self.image`` for overlays; without it ``self.image`` is cleared, since the tokens' source is
        unknown. ``forward_kwargs`` go to the model unchanged.
        Registered hooks are paused around the call: this forward is not one of their steps.
        """
        from ..model.transformer import PartCrafterDiTModel

        if hidden_states is None or encoder_hidden_states is None:
            raise VisualizerTypeError("extract_attention_weights needs hidden_states and encoder_hidden_states")
        target = self._target(model)
        names = [n for n, _ in cross_attention_modules(target)]
        layers: list[str] | None = None
        if layer_idx is not None:
            layers = Selection(layers=[layer_idx]).pick_layers(names)
            if len(layers) != 1:
                raise VisualizerError(
                    f"layer_idx {layer_idx!r} matches {len(layers)} layers ({', '.join(layers)}); "
                    f"give one index or name, or leave it out for all layers"
                )
        elif self._hooks is not None:
            layers = self._hooks.layers
        param = next(target.parameters(), None)
        if param is not None:
            hidden_states = hidden_states.to(device=param.device, dtype=param.dtype)
            encoder_hidden_states = encoder_hidden_states.to(device=param.device, dtype=param.dtype)
        batch = hidden_states.shape[0]
        partcrafter = isinstance(target, PartCrafterDiTModel)
        cfg = cfg_for_batch(self.cfg if cfg is None else cfg, batch, self.num_parts if num_parts is None else num_parts)
        if num_parts is None:
            num_parts = self.num_parts or (batch // 2 if cfg else batch)
        kwargs = dict(forward_kwargs)
        kwargs["encoder_hidden_states"] = encoder_hidden_states
        if partcrafter:
            kwargs.setdefault("attention_kwargs", {"num_parts": int(num_parts)})
            if timestep is None:
                timestep = _PARTCRAFTER_TIMESTEP
        if timestep is not None and "timestep" in inspect.signature(target.forward).parameters:
            if not torch.is_tensor(timestep):
                timestep = torch.full((batch,), float(timestep), device=hidden_states.device, dtype=hidden_states.dtype)
            kwargs["timestep"] = timestep
        recorder = AttentionRecorder(
            target,
            num_parts=int(num_parts),
            cfg=cfg,
            time_token=self.time_token,
            has_cls=self.has_cls,
            selection=Selection(layers=layers, full_maps=lambda name, step: True),
            meta={"source": "AttentionVisualizer.extract_attention_weights"},
        )
        with self._paused():
            with recorder:
                target(hidden_states, **kwargs)
        record = self._attach_grid(recorder.record())
        t = kwargs.get("timestep")
        if t is not None:
            t = t.flatten()[0] if torch.is_tensor(t) else t
            record.timesteps = [float(t)]
        self.record = record
        if image is not None and self.pipeline is not None and not torch.is_tensor(image):
            image = self.pipeline.preprocessed_image(image)
        self.image = image
        weights = {name: record.full_maps[(record.steps[0], name)].float() for name in record.layers}
        return weights[record.layers[0]] if layer_idx is not None else weights

    # ------------------------------------------------------------------ pipeline runs
    def run(
        self,
        image: ImageInput,
        num_parts: int | None = None,
        *,
        steps: int | None = None,
        seed: int = 0,
        guidance_scale: float | None = None,
        num_tokens: int | None = None,
        selection: Selection | None = None,
        full_map: tuple[int | str, int] | None = (-1, -1),
        callback: Callable[[int, float, torch.Tensor], None] | None = None,
    ) -> AttentionRecord:
        """Denoise ``image`` with the pipeline while recording; return the record (also ``self.record``).

        The run and its checks are those of the pytest plugin (``session.run_case``); the results are
        in ``self.results`` and the encoder's view of the image in ``self.image``. ``num_parts``:
        argument, else the ``np<N>_`` file-name prefix, else the visualizer's. ``full_map``: one
        (layer, step) pair whose query x key maps are kept (negative indices count from the end;
        default: last layer, last step); ``None`` keeps none. ``selection`` overrides both.
        ``callback(step, timestep, latents)`` is called after every step (a progress bar).
        """
        pipeline = self._need_pipeline("run")
        n = self._parts_for(image, num_parts)
        spec = for_pipeline(
            pipeline,
            call={
                "num_parts": n,
                "steps": steps,
                "seed": seed,
                "guidance_scale": guidance_scale,
                "num_tokens": num_tokens,
            },
        )
        if selection is None:
            selection = Selection(full_maps=self._full_map_pairs(full_map, spec.steps))
        with self._paused():
            outcome = run_case(pipeline, image, spec, self.thresholds, selection=selection, callback=callback)
        self.record, self.results = outcome.record, outcome.results
        self.image = pipeline.preprocessed_image(image) if not torch.is_tensor(image) else None
        return self.record

    def process_batch(
        self,
        images: Iterable[ImageInput],
        out_dir: str | os.PathLike[str],
        num_parts: int | None = None,
        *,
        steps: int | None = None,
        seed: int = 0,
        guidance_scale: float | None = None,
        num_tokens: int | None = None,
        full_map: tuple[int | str, int] | None = (-1, -1),
        layer: int | str | None = None,
        fps: float = 2,
        callback: Callable[[int, float, torch.Tensor], None] | None = None,
    ) -> list[Path]:
        """Run every image and write, per image, ``<out_dir>/<image stem>/``: the record
        (``record.json`` + ``record.safetensors``), ``input.png`` (the encoder's view), the figures
        of :func:`render_record`, ``metrics.json`` and ``index.html``; plus ``<out_dir>/index.html``
        linking them all. Returns the per-image folders, in input order. ``num_parts`` applies to
        every image; else each image's ``np<N>_`` prefix or the visualizer's default is used (a
        missing count is an error that names the image, raised before anything runs)."""
        images = list(images)
        counts = [self._parts_for(image, num_parts) for image in images]  # fail before any work

        def run_one(image: ImageInput, n: int) -> AttentionRecord:
            return self.run(
                image,
                n,
                steps=steps,
                seed=seed,
                guidance_scale=guidance_scale,
                num_tokens=num_tokens,
                full_map=full_map,
                callback=callback,
            )

        return write_batch(self, images, counts, Path(out_dir), run_one, layer=layer, fps=fps)

    # ------------------------------------------------------------------ internals
    def _target(self, model: ModelOrPipeline | None) -> torch.nn.Module:
        if model is None:
            if self.model is None:
                raise VisualizerTypeError(
                    "this AttentionVisualizer has no model yet: pass one, register_hooks(model), or build it "
                    "with AttentionVisualizer(pipeline_or_model)"
                )
            return self.model
        if isinstance(model, torch.nn.Module):
            return model
        transformer = getattr(model, "transformer", None)
        if isinstance(transformer, torch.nn.Module):
            return transformer
        raise VisualizerTypeError(f"expected a torch model or a pipeline, got {type(model).__name__}")

    def _need_pipeline(self, what: str) -> Any:  # self.pipeline's type
        if self.pipeline is None:
            raise VisualizerTypeError(
                f"{what}() runs images through a pipeline; build the visualizer from a "
                f"PartCrafterPipeline or a checkpoint folder (or register_hooks(pipeline)), not from a bare model"
            )
        return self.pipeline

    def _parts_for(self, image: ImageInput, num_parts: int | None) -> int:
        n = num_parts
        if n is None and isinstance(image, (str, os.PathLike)):
            n = parts_from_name(image)
        if n is None:
            n = self.num_parts
        if n is None:
            raise VisualizerError(
                f"{image if isinstance(image, (str, os.PathLike)) else 'image'}: no part count; "
                f"pass num_parts or name the file np<N>_<name>.png"
            )
        if int(n) < 1:
            raise VisualizerError(f"num_parts must be at least 1, got {n}")
        return int(n)

    def _full_map_pairs(self, full_map: tuple[int | str, int] | None, steps: int) -> Sequence[tuple[str, int]]:
        """``(layer, step)`` with negative indices resolved, validated against the model and the run."""
        if full_map is None:
            return ()
        layer, step = full_map
        names = [n for n, _ in cross_attention_modules(self._target(None))]
        if isinstance(layer, int):
            layer = names[_check_index(layer, len(names), "full-map layer", allow_negative=True)]
        elif layer not in names:
            raise VisualizerError(
                f"full-map layer {layer!r} is not a cross-attention module (known: {', '.join(names)})"
            )
        step = _check_index(step, steps, "full-map step", allow_negative=True)
        return [(layer, step)]

    def _attach_grid(self, record: AttentionRecord) -> AttentionRecord:
        """Give a hooked/extracted record this visualizer's patch grid when the key count fits."""
        grid = self.patch_grid
        if record.patch_grid is None and grid is not None and grid[0] * grid[1] == record.num_patch_keys:
            record.patch_grid = grid
        return record
