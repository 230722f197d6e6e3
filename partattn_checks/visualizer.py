"""``AttentionVisualizer``: the API of the cross-attention visualization guide, on our exact capture.

The guide promised ``register_hooks`` / ``extract_attention_weights`` / ``visualize_*`` /
``create_attention_animation`` / ``clear_hooks`` plus statistics and batch processing. Its known
implementations hook modules in ways that capture nothing (or the wrong heads); this one is a thin
layer over :class:`~partattn_checks.capture.AttentionRecorder` (processor swaps, PartCrafter's
head split, conditional CFG half, time token dropped, CLS key kept in column 0) and
:mod:`~partattn_checks.render` (A·Nk on a fixed scale, uniform = 1). See docs/visualization.md.

Vocabulary used below:

* *weights*: what :meth:`AttentionVisualizer.extract_attention_weights` returns, a dict
  ``layer name -> (P, H, Q, K)`` fp32 softmax probabilities (parts, heads, queries, keys); when the
  model has an image CLS token (PartCrafter) key 0 is CLS, and figures show the patch keys
  renormalised, with the CLS ("sink") mass in the title.
* *record*: an :class:`~partattn_checks.record.AttentionRecord` (streamed per-step reductions, full
  maps only where opted in). Every method that draws also accepts a record.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from .capture import AttentionRecorder, CaptureError, Selection, cross_attention_modules
from .checks import CHECKS, CheckResult, Thresholds
from .model.pipeline import encoder_view
from .record import AttentionRecord
from .reporting import write_index
from .reporting.run_report import render_record, save_run
from .runspec import for_pipeline, resolve_device
from .session import run_case
from .sidecar import parts_from_name
from .views import safe_name
from .visualizer_figures import SPARSITY_FACTOR, FigureMethods, _check_index

__all__ = ["AttentionVisualizer", "encoder_view", "SPARSITY_FACTOR"]

_PARTCRAFTER_TIMESTEP = 1000.0  # first step of the schedule (sigma = 1)


# ====================================================================== the guide's API
class AttentionVisualizer(FigureMethods):
    """Record and draw a model's cross-attention.

    ``model_or_pipeline``: a :class:`~partattn_checks.model.pipeline.PartCrafterPipeline` (or any
    object with a ``transformer`` and the same call signature), a checkpoint folder (loaded with
    ``device``, ``auto`` by default, and ``dtype``), a ``PartCrafterDiTModel``, or any diffusers
    model whose cross-attention modules use standard diffusers or PartCrafter/TripoSG processors.

    ``num_parts``: default part count (a pipeline run takes it from the ``np<N>_`` file-name prefix
    when not given). ``cfg``: hooked forwards get the batch ``[uncond, cond]`` and only the
    conditional half is kept (pipeline runs decide this from the guidance scale). ``has_cls`` /
    ``time_token``: whether key 0 is an image CLS token and query 0 a time token (default: true
    for PartCrafter, false otherwise). ``patch_grid``: (rows, cols) of the image patch keys, for
    drawing on the image (default: the pipeline's encoder grid).
    """

    def __init__(
        self,
        model_or_pipeline,
        num_parts: int | None = None,
        cfg: bool = True,
        *,
        has_cls: bool | None = None,
        time_token: bool | None = None,
        patch_grid: tuple[int, int] | None = None,
        device="auto",
        dtype=torch.float32,
        thresholds: Thresholds | None = None,
    ):
        from .model.transformer import PartCrafterDiTModel

        if isinstance(model_or_pipeline, (str, os.PathLike)):
            from .model.pipeline import PartCrafterPipeline

            model_or_pipeline = PartCrafterPipeline.from_pretrained(
                model_or_pipeline, dtype=dtype, device=resolve_device(str(device)).device
            )
        if isinstance(model_or_pipeline, torch.nn.Module):
            self.pipeline, self.model = None, model_or_pipeline
        elif isinstance(getattr(model_or_pipeline, "transformer", None), torch.nn.Module) and callable(
            model_or_pipeline
        ):
            self.pipeline, self.model = model_or_pipeline, model_or_pipeline.transformer
        else:
            raise TypeError(
                f"AttentionVisualizer needs a PartCrafterPipeline, a checkpoint folder or a torch/diffusers model, "
                f"got {type(model_or_pipeline).__name__}"
            )
        if num_parts is not None and int(num_parts) < 1:
            raise ValueError(f"num_parts must be at least 1, got {num_parts}")
        partcrafter = isinstance(self.model, PartCrafterDiTModel)
        self.num_parts = None if num_parts is None else int(num_parts)
        self.cfg = bool(cfg)
        self.has_cls = partcrafter if has_cls is None else bool(has_cls)
        self.time_token = partcrafter if time_token is None else bool(time_token)
        if patch_grid is None and self.pipeline is not None:
            patch_grid = getattr(self.pipeline, "patch_grid", None)
        self.patch_grid = tuple(int(g) for g in patch_grid) if patch_grid else None
        self.thresholds = thresholds or Thresholds()
        self.record: AttentionRecord | None = None  # the last record made by any method
        self.results: dict[str, CheckResult] = {}  # checks of the last pipeline run
        self.image = None  # the encoder's view (PIL) of the last image run, for overlays
        self._recorder: AttentionRecorder | None = None
        self._hook_settings: dict | None = None
        self._count_hook = None
        self._forwards = 0

    @classmethod
    def from_pretrained(cls, path, *, device="auto", dtype=torch.float32, **kwargs) -> AttentionVisualizer:
        """Load a PartCrafter checkpoint folder into a pipeline and wrap it (``device``: ``auto``,
        ``cpu``, ``cuda`` or ``cuda:N``, resolved by :func:`partattn_checks.runspec.resolve_device`)."""
        from .model.pipeline import PartCrafterPipeline

        device = resolve_device(str(device)).device
        return cls(PartCrafterPipeline.from_pretrained(path, device=device, dtype=dtype), **kwargs)

    def __repr__(self) -> str:
        what = type(self.pipeline or self.model).__name__
        state = "hooks registered" if self._recorder is not None else "no hooks"
        return (
            f"AttentionVisualizer({what}, num_parts={self.num_parts}, cfg={self.cfg}, {state}, record={self.record!r})"
        )

    # ------------------------------------------------------------------ hooks
    @property
    def hooks_registered(self) -> bool:
        return self._recorder is not None

    def register_hooks(self, model=None, layers=None, steps=None, full_maps=False, *, every: int | None = None):
        """Start recording: swap the ``attn2`` processors of ``model`` (default: this visualizer's).

        Until :meth:`clear_hooks`, every forward call of the model is one recorded step (the
        record's timesteps are NaN: the model alone does not know them). ``layers``: indices, module
        names, glob patterns or a callable; ``steps``: step indices and/or ``every=k``;
        ``full_maps``: ``True`` (every selected layer and step: memory!), ``False``, (layer, step)
        pairs or a callable ``(name, step) -> bool``. Registering twice is refused. Returns ``self``.
        """
        if self._recorder is not None:
            raise CaptureError("hooks are already registered on this visualizer; call clear_hooks() first")
        target = self._target(model)
        selection = Selection(layers=layers, steps=steps, every=every, full_maps=_full_maps_arg(full_maps))
        recorder = AttentionRecorder(
            target,
            num_parts=self.num_parts or 1,
            cfg=self.cfg,
            selection=selection,
            time_token=self.time_token,
            has_cls=self.has_cls,
            meta={"source": "AttentionVisualizer.register_hooks"},
        )
        self._forwards = 0

        def count(_module, _args):
            self._forwards += 1

        hook = target.register_forward_pre_hook(count)
        try:
            recorder.__enter__()
        except BaseException:
            hook.remove()
            raise
        self._recorder, self._count_hook = recorder, hook
        self._hook_settings = {"model": model, "layers": layers, "steps": steps, "full_maps": full_maps, "every": every}
        return self

    def clear_hooks(self) -> AttentionRecord | None:
        """Restore the original processors (idempotent) and finish the record in ``self.record``.

        If the model ran while hooked, the record is validated as the recorder always does (zero
        captures, miscounts or NaN/Inf raise, after the processors are restored); if it never ran,
        the hooks are just removed. Returns ``self.record``.
        """
        recorder, hook, forwards = self._recorder, self._count_hook, self._forwards
        if recorder is None:
            return self.record
        self._recorder = self._count_hook = self._hook_settings = None
        try:
            recorder.__exit__(None, None, None)  # restores first, then validates
        except CaptureError:
            if forwards:
                raise
        finally:
            hook.remove()
        if forwards:
            self.record = self._attach_grid(recorder.record())
        return self.record

    def __enter__(self) -> AttentionVisualizer:
        if self._recorder is None:
            self.register_hooks()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._recorder is None:
            return
        if exc_type is None:
            self.clear_hooks()
            return
        recorder, hook = self._recorder, self._count_hook
        self._recorder = self._count_hook = self._hook_settings = None
        try:
            recorder.__exit__(exc_type, exc, tb)  # restore only; the exception propagates
        finally:
            hook.remove()

    @contextlib.contextmanager
    def _paused(self):
        """Methods that run their own recorder pause registered hooks (nested recorders are refused)."""
        settings = self._hook_settings if self._recorder is not None else None
        if settings is not None:
            self.clear_hooks()
        try:
            yield
        finally:
            if settings is not None:
                self.register_hooks(**settings)

    # ------------------------------------------------------------------ extraction
    @torch.no_grad()
    def extract_attention_weights(
        self,
        model=None,
        hidden_states=None,
        encoder_hidden_states=None,
        layer_idx=None,
        *,
        timestep=None,
        num_parts: int | None = None,
        cfg: bool | None = None,
        image=None,
        **forward_kwargs,
    ):
        """Run ONE forward of ``model`` with capture and full maps on; return its attention probabilities.

        Returns ``{layer name: (P, H, Q, K) fp32}`` (conditional CFG half, time-token row dropped,
        CLS key in column 0 when ``has_cls``), or one such tensor when ``layer_idx`` (index, name or
        pattern matching one layer) is given; only that layer is then recorded. The rows sum to 1 and
        are exactly the recorder's full maps (``self.record.full_maps``, fp16 on the CPU).

        ``hidden_states``/``encoder_hidden_states`` are the model's inputs, with the CFG batch
        ``[uncond, cond]`` when ``cfg`` (default: the visualizer's). For a PartCrafter transformer
        ``num_parts`` defaults to the batch's part count and ``timestep`` to 1000 (sigma 1); other
        models get ``timestep`` only when given. ``image``: the image the encoder tokens came from (a
        path or PIL image; with a pipeline it is preprocessed like the encoder's input), kept in
        ``self.image`` for overlays; without it ``self.image`` is cleared, since the tokens' source is
        unknown. ``forward_kwargs`` go to the model unchanged.
        Registered hooks are paused around the call (their record so far lands in ``self.record``,
        then is replaced by this one) and registered again afterwards.
        """
        from .model.transformer import PartCrafterDiTModel

        if hidden_states is None or encoder_hidden_states is None:
            raise TypeError("extract_attention_weights needs hidden_states and encoder_hidden_states")
        target = self._target(model)
        cfg = self.cfg if cfg is None else bool(cfg)
        names = [n for n, _ in cross_attention_modules(target)]
        layers = None
        if layer_idx is not None:
            layers = Selection(layers=[layer_idx]).pick_layers(names)
            if len(layers) != 1:
                raise ValueError(
                    f"layer_idx {layer_idx!r} matches {len(layers)} layers ({', '.join(layers)}); "
                    f"give one index or name, or leave it out for all layers"
                )
        elif self._hook_settings is not None:
            layers = self._hook_settings["layers"]
        param = next(target.parameters(), None)
        if param is not None:
            hidden_states = hidden_states.to(device=param.device, dtype=param.dtype)
            encoder_hidden_states = encoder_hidden_states.to(device=param.device, dtype=param.dtype)
        batch = hidden_states.shape[0]
        partcrafter = isinstance(target, PartCrafterDiTModel)
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
        image,
        num_parts: int | None = None,
        *,
        steps: int | None = None,
        seed: int = 0,
        guidance_scale: float | None = None,
        num_tokens: int | None = None,
        selection: Selection | None = None,
        full_map: tuple[int | str, int] | None = (-1, -1),
        callback: Callable | None = None,
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
        images: Iterable,
        out_dir,
        num_parts: int | None = None,
        *,
        steps: int | None = None,
        seed: int = 0,
        guidance_scale: float | None = None,
        num_tokens: int | None = None,
        full_map: tuple[int | str, int] | None = (-1, -1),
        layer=None,
        fps: float = 2,
        callback: Callable | None = None,
    ) -> list[Path]:
        """Run every image and write, per image, ``<out_dir>/<image stem>/``: the record
        (``record.json`` + ``record.safetensors``), ``input.png`` (the encoder's view), the figures
        of :func:`render_record`, ``metrics.json`` and ``index.html``; plus ``<out_dir>/index.html``
        linking them all. Returns the per-image folders, in input order. ``num_parts`` applies to
        every image; else each image's ``np<N>_`` prefix or the visualizer's default is used (a
        missing count is an error that names the image, raised before anything runs)."""
        images = list(images)
        counts = [self._parts_for(image, num_parts) for image in images]  # fail before any work
        out_dir = Path(out_dir)
        folders, rows, used = [], [], set()
        for i, (image, n) in enumerate(zip(images, counts, strict=False)):
            stem = safe_name(Path(image).stem if isinstance(image, (str, os.PathLike)) else f"image{i}")
            name, k = stem, 2
            while name in used:
                name, k = f"{stem}_{k}", k + 1
            used.add(name)
            folder = out_dir / name
            record = self.run(
                image,
                n,
                steps=steps,
                seed=seed,
                guidance_scale=guidance_scale,
                num_tokens=num_tokens,
                full_map=full_map,
                callback=callback,
            )
            links = save_run(folder, record, self.image)
            render_record(
                record,
                folder,
                image=self.image,
                results=self.results,
                layer=layer,
                fps=fps,
                title=str(image) if isinstance(image, (str, os.PathLike)) else name,
                thresholds=self.thresholds,
                links=links,
            )
            folders.append(folder)
            rows.append([f"{name}", n] + [self.results[c].verdict if c in self.results else "" for c in CHECKS])
        write_index(
            out_dir / "index.html",
            f"partattn: {len(folders)} images",
            sections=[("Images", [(f.name, f"{f.name}/index.html") for f in folders])],
            tables=[("Checks", ["image", "parts", *CHECKS], rows)],
        )
        return folders

    # ------------------------------------------------------------------ internals
    def _target(self, model) -> torch.nn.Module:
        if model is None:
            return self.model
        if isinstance(model, torch.nn.Module):
            return model
        transformer = getattr(model, "transformer", None)
        if isinstance(transformer, torch.nn.Module):
            return transformer
        raise TypeError(f"expected a torch model or a pipeline, got {type(model).__name__}")

    def _need_pipeline(self, what: str):
        if self.pipeline is None:
            raise TypeError(
                f"{what}() runs images through a pipeline; build the visualizer from a "
                f"PartCrafterPipeline or a checkpoint folder, not from a bare model"
            )
        return self.pipeline

    def _parts_for(self, image, num_parts) -> int:
        n = num_parts
        if n is None and isinstance(image, (str, os.PathLike)):
            n = parts_from_name(image)
        if n is None:
            n = self.num_parts
        if n is None:
            raise ValueError(
                f"{image if isinstance(image, (str, os.PathLike)) else 'image'}: no part count; "
                f"pass num_parts or name the file np<N>_<name>.png"
            )
        if int(n) < 1:
            raise ValueError(f"num_parts must be at least 1, got {n}")
        return int(n)

    def _full_map_pairs(self, full_map, steps: int):
        """``(layer, step)`` with negative indices resolved, validated against the model and the run."""
        if full_map is None:
            return ()
        layer, step = full_map
        names = [n for n, _ in cross_attention_modules(self.model)]
        if isinstance(layer, int):
            layer = names[_check_index(layer, len(names), "full-map layer", allow_negative=True)]
        elif layer not in names:
            raise ValueError(f"full-map layer {layer!r} is not a cross-attention module (known: {', '.join(names)})")
        step = _check_index(step, steps, "full-map step", allow_negative=True)
        return [(layer, step)]

    def _attach_grid(self, record: AttentionRecord) -> AttentionRecord:
        """Give a hooked/extracted record this visualizer's patch grid when the key count fits."""
        grid = self.patch_grid
        if record.patch_grid is None and grid is not None and grid[0] * grid[1] == record.num_patch_keys:
            record.patch_grid = grid
        return record


# ====================================================================== helpers
def _full_maps_arg(full_maps):
    if full_maps is True:
        return lambda name, step: True
    if full_maps is False or full_maps is None:
        return ()
    return full_maps
