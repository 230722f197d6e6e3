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
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from . import metrics, render
from .capture import AttentionRecorder, CaptureError, Selection, cross_attention_modules
from .checks import CHECKS, CheckResult, Thresholds
from .model.pipeline import encoder_view
from .record import AttentionRecord
from .reporting import write_index
from .reporting.run_report import render_record, save_run
from .runspec import for_pipeline, resolve_device
from .session import run_case
from .sidecar import parts_from_name
from .views import default_layer, renorm, safe_name, with_cls

__all__ = ["AttentionVisualizer", "encoder_view", "SPARSITY_FACTOR"]

#: ``statistics``: an entry counts as "sparse" when it is below this fraction of uniform (1/Nk).
SPARSITY_FACTOR = 0.1
_PARTCRAFTER_TIMESTEP = 1000.0  # first step of the schedule (sigma = 1)


# ====================================================================== the guide's API
class AttentionVisualizer:
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

    # ------------------------------------------------------------------ figures
    def visualize_attention_heatmap(
        self, weights, path=None, layer=None, head=0, part=0, *, step=None, title=None, **render_kwargs
    ):
        """One queries x keys map (``head="mean"`` averages heads) via :func:`render.heatmap`.

        ``weights``: extracted weights, a record with full maps, or a tensor (P,H,Q,K)/(H,Q,K)/(Q,K).
        Patch keys are renormalised (CLS mass in the title). Returns ``path`` (or PNG bytes).
        """
        name, step, maps = self._pick_maps(weights, layer, step)
        rows, cls = self._patch_rows(_index(maps, part=part, head=head))
        return render.heatmap(
            rows,
            title=with_cls(title, cls),
            layer=name,
            step=step,
            part=part if maps.dim() >= 4 else None,
            head=head if maps.dim() >= 3 else None,
            path=path,
            **render_kwargs,
        )

    def visualize_multi_head_attention(
        self, weights, path=None, layer=None, part=0, *, step=None, title=None, **render_kwargs
    ):
        """Every head of one layer (and part) on one fixed scale, via :func:`render.multi_head_grid`."""
        name, step, maps = self._pick_maps(weights, layer, step)
        if maps.dim() == 4:
            maps = maps[_check_index(part, maps.shape[0], "part")]
        if maps.dim() != 3:
            raise ValueError(f"multi-head view needs (heads, queries, keys) maps, got shape {tuple(maps.shape)}")
        rows, cls = self._patch_rows(maps)
        return render.multi_head_grid(
            rows, title=with_cls(title, cls), layer=name, step=step, part=part, path=path, **render_kwargs
        )

    def visualize_part_attention(
        self,
        weights,
        num_parts: int | None = None,
        path=None,
        *,
        title=None,
        layer=None,
        step=None,
        image=None,
        **render_kwargs,
    ):
        """Head-averaged key marginal of every part, side by side, via :func:`render.part_panel`.

        From extracted weights (mean over queries of the patch-renormalised rows) or from a record
        (its streamed marginals; ``step=None`` averages the recorded steps; ``layer=None`` picks the
        most part-separated layer). Drawn on the image when the patch grid and an image are known
        (``image`` or the last run's), on the patch grid otherwise, else as strips.
        """
        name, step, marginals = self._part_marginals(weights, layer, step)
        if num_parts is not None and int(num_parts) != marginals.shape[0]:
            raise ValueError(f"num_parts={num_parts} but the attention holds {marginals.shape[0]} parts")
        record_grid = weights.patch_grid if isinstance(weights, AttentionRecord) else None
        grid, image = self._grid_image(marginals.shape[-1], image, record_grid)
        if title is None and step is None and isinstance(weights, AttentionRecord) and weights.num_steps > 1:
            title = f"mean over steps {weights.steps[0]}–{weights.steps[-1]}"
        return render.part_panel(marginals, grid, image, title=title, layer=name, step=step, path=path, **render_kwargs)

    def create_attention_animation(
        self, sequence, path, fps: float = 4, *, layer=None, part: int = 0, head="mean", image=None, **render_kwargs
    ) -> Path:
        """GIF of attention over steps via :func:`render.animation`.

        ``sequence``: a record (one part's head-averaged key marginal per step, on the image when
        possible), a list of extracted weights / maps (one queries x keys heatmap per item), or a
        tensor of frames (S, Q, K) / (S, Nk) (already patch keys only).
        """
        if isinstance(sequence, AttentionRecord):
            li = sequence.layer_index(layer) if layer is not None else default_layer(sequence)
            name = sequence.layers[li]
            part = _check_index(part, sequence.num_parts, "part")
            frames = sequence.marginals_by_part()[:, li, part]
            titles = [
                f"step {s}" + (f" (t={t:.0f})" if math.isfinite(t) else "") + f" · layer {name} · part {part}"
                for s, t in zip(sequence.steps, sequence.timesteps, strict=False)
            ]
            grid, image = self._grid_image(frames.shape[-1], image, sequence.patch_grid)
            return render.animation(frames, path, fps=fps, titles=titles, grid=grid, image=image, **render_kwargs)
        if torch.is_tensor(sequence):
            return render.animation(sequence, path, fps=fps, **render_kwargs)
        frames, titles = [], []
        for i, item in enumerate(sequence):
            name, _, maps = self._pick_maps(item, layer, None)
            rows, _ = self._patch_rows(_index(maps, part=part, head=head))
            frames.append(rows)
            titles.append(f"frame {i + 1}/{len(sequence)}" + (f" · layer {name}" if name else "") + f" · part {part}")
        if not frames:
            raise ValueError("create_attention_animation needs at least one frame")
        if len({tuple(f.shape) for f in frames}) != 1:
            raise ValueError(f"frames differ in shape: {sorted({tuple(f.shape) for f in frames})}")
        return render.animation(torch.stack(frames), path, fps=fps, titles=titles, **render_kwargs)

    # ------------------------------------------------------------------ statistics
    def statistics(self, weights, *, layer=None, step=None) -> dict[str, dict]:
        """The guide's statistics per layer and head, over parts and queries (patch keys renormalised).

        ``{layer: {"mean", "max", "sparsity", "entropy", "peak", "cls_mass", "heads": [{...}, ...]}}``:
        ``mean``/``max`` of the attention entries (``mean`` is 1/Nk for any row-stochastic map; kept
        for the guide's API), ``sparsity`` the share of entries below ``SPARSITY_FACTOR``/Nk (a tenth
        of uniform), ``entropy`` the normalized entropy (``metrics.normalized_entropy``: 0 one-hot,
        1 uniform), ``peak`` the mean row maximum, ``cls_mass`` the mean CLS mass (0 without CLS).
        Layer values average the heads, except ``max`` (the maximum). ``layer`` limits to one layer.
        """
        if isinstance(weights, Mapping):
            names = [self._pick_maps(weights, layer, step)[0]] if layer is not None else list(weights)
            items = [(n, weights[n]) for n in names]
        elif isinstance(weights, AttentionRecord):
            names = (
                [layer]
                if layer is not None
                else [n for n in weights.layers if any(k[1] == n for k in weights.full_maps)]
            )
            if not names:
                raise ValueError(
                    "the record has no full maps; statistics need them (record with full_maps=...), "
                    "or use record.summary() for the streamed metrics"
                )
            items = [self._pick_maps(weights, n, step)[::2] for n in names]
        else:
            items = [(None, torch.as_tensor(weights))]
        out = {}
        for name, maps in items:
            maps = maps.float()
            while maps.dim() < 4:
                maps = maps.unsqueeze(0)
            rows, cls = self._patch_rows(maps)  # (P, H, Q, Nk), (P, H)
            nk = rows.shape[-1]
            per_head = []
            for h in range(rows.shape[1]):
                a = rows[:, h]
                per_head.append(
                    {
                        "head": h,
                        "mean": float(a.mean()),
                        "max": float(a.amax()),
                        "sparsity": float((a < SPARSITY_FACTOR / nk).float().mean()),
                        "entropy": float(metrics.normalized_entropy(a).mean()),
                        "peak": float(metrics.peak(a).mean()),
                        "cls_mass": float(cls[:, h].mean()),
                    }
                )
            layer_stats = {
                k: sum(d[k] for d in per_head) / len(per_head)
                for k in ("mean", "sparsity", "entropy", "peak", "cls_mass")
            }
            layer_stats["max"] = max(d["max"] for d in per_head)
            layer_stats["num_keys"] = nk
            layer_stats["heads"] = per_head
            out[name if name is not None else "attention"] = layer_stats
        return out

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

    def _pick_maps(self, weights, layer, step):
        """(layer name or None, step or None, maps tensor) from weights, a record or a tensor."""
        if isinstance(weights, AttentionRecord):
            li = weights.layer_index(layer if layer is not None else -1)
            name = weights.layers[li]
            have = [s for (s, n) in weights.full_maps if n == name]
            if not have:
                pairs = ", ".join(f"({s}, {n})" for s, n in weights.full_maps) or "none"
                raise ValueError(
                    f"the record has no full maps for layer {name} (it has: {pairs}); record them with "
                    f"full_maps=[(layer, step)] or pass extracted weights"
                )
            step = have[-1] if step is None else int(step)
            if (step, name) not in weights.full_maps:
                raise ValueError(f"the record has no full map for step {step} of layer {name} (steps with one: {have})")
            return name, step, weights.full_maps[(step, name)].float()
        if isinstance(weights, Mapping):
            names = list(weights)
            if not names:
                raise ValueError("no attention weights (empty dict)")
            key = -1 if layer is None else layer
            if isinstance(key, int):
                name = names[_check_index(key, len(names), "layer", allow_negative=True)]
            elif key in weights:
                name = key
            else:
                raise ValueError(f"layer {key!r} is not in the weights (layers: {', '.join(names)})")
            return name, step, torch.as_tensor(weights[name]).float()
        return None, step, torch.as_tensor(weights).float()

    def _patch_rows(self, maps: torch.Tensor):
        """Patch-key rows (renormalised) and CLS mass of maps ``(..., Q, K)``."""
        return metrics.split_cls(maps, has_cls=self.has_cls)

    def _part_marginals(self, weights, layer, step):
        """(layer name, step, (P, Nk) head-averaged key marginals)."""
        if isinstance(weights, AttentionRecord):
            li = weights.layer_index(layer) if layer is not None else default_layer(weights)
            per_part = weights.marginals_by_part()[:, li]  # (S, P, Nk)
            if step is None:
                marg = renorm(per_part.mean(0))
            else:
                marg = per_part[weights.step_index(step)]
            return weights.layers[li], step, marg
        name, step, maps = self._pick_maps(weights, layer, step)
        if maps.dim() == 3:  # (H, Q, K): one part
            maps = maps.unsqueeze(0)
        if maps.dim() != 4:
            raise ValueError(f"part attention needs (parts, heads, queries, keys) maps, got shape {tuple(maps.shape)}")
        rows, _ = self._patch_rows(maps)
        return name, step, metrics.head_averaged_marginals(metrics.key_marginal(rows))

    def _grid_image(self, nk: int, image, grid=None):
        grid = grid or self.patch_grid
        if grid is None or grid[0] * grid[1] != nk:
            return None, None
        return grid, image if image is not None else self.image


# ====================================================================== helpers
def _full_maps_arg(full_maps):
    if full_maps is True:
        return lambda name, step: True
    if full_maps is False or full_maps is None:
        return ()
    return full_maps


def _check_index(i, size: int, what: str, allow_negative: bool = False) -> int:
    i = int(i)
    lo = -size if allow_negative else 0
    if not lo <= i < size:
        raise ValueError(f"{what} {i} is out of range (there are {size})")
    return i % size


def _index(maps: torch.Tensor, *, part, head) -> torch.Tensor:
    """One (Q, K) map from (P, H, Q, K) / (H, Q, K) / (Q, K); ``head="mean"`` or ``None`` averages heads."""
    if maps.dim() == 4:
        maps = maps[_check_index(part, maps.shape[0], "part")]
    if maps.dim() == 3:
        if head is None or head == "mean":
            maps = maps.mean(0)
        else:
            maps = maps[_check_index(head, maps.shape[0], "head")]
    if maps.dim() != 2:
        raise ValueError(f"expected (P, H, Q, K), (H, Q, K) or (Q, K) attention, got shape {tuple(maps.shape)}")
    return maps
