"""Exact, streaming capture of cross-attention while a diffusers model denoises (docs/capture.md).

``AttentionRecorder`` swaps the processor of each selected cross-attention module, per instance,
for a ``RecordingProcessor`` and restores the originals on exit (also on exceptions and
KeyboardInterrupt). The recording processor computes the layer output with the very steps of the
original processor and derives probabilities ``softmax(q kᵀ · scale)`` in fp32 from the same
``q`` and ``k``, so outputs are bit-identical with capture on or off.

Per (step, layer) call it keeps the conditional CFG half only, drops the time-token query row,
reduces over queries right away (entropy, peak, effective keys, CLS mass, key-marginals), and keeps
a full query × key map only for opted-in (layer, step) pairs: a record's size does not depend on
the number of query tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import metrics
from .errors import PartattnError
from .model.attention import PartCrafterAttnProcessor, PreparedAttention, TripoSGAttnProcessor
from .record import AttentionRecord
from .runspec import RUN_KEYS, RunSpec, dtype_name, for_pipeline, run_meta
from .selection import Selection  # noqa: F401  (part of this module's API)

#: Processor class names from upstream PartCrafter/TripoSG forks that run our attention math.
UPSTREAM_MATH = {"TripoSGAttnProcessor2_0": TripoSGAttnProcessor, "PartCrafterAttnProcessor": PartCrafterAttnProcessor}


class CaptureError(PartattnError, RuntimeError):
    """Capture could not be done faithfully; the message names module, processor and diffusers version."""


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def _where(name: str, processor) -> str:
    return f"module '{name}', processor {type(processor).__name__}, diffusers {_diffusers_version()}"


def cross_attention_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """All diffusers ``Attention`` modules built for cross-attention, decided by module, not by shape."""
    from diffusers.models.attention_processor import Attention

    return [(n, m) for n, m in model.named_modules() if isinstance(m, Attention) and m.is_cross_attention]


def _refuse_compiled(model: torch.nn.Module) -> None:
    compiled = [n or "<root>" for n, m in model.named_modules() if getattr(m, "_compiled_call_impl", None) is not None]
    if type(model).__name__ == "OptimizedModule":
        compiled.insert(0, "<root>")
    if compiled:
        first = compiled[0]
        module = model if first == "<root>" else model.get_submodule(first)
        processor = getattr(module, "processor", None)
        what = f", processor {type(processor).__name__}" if processor is not None else ""
        raise CaptureError(
            f"module '{first}' ({type(module).__name__}{what}) of {type(model).__name__} is torch.compile'd "
            f"(diffusers {_diffusers_version()}; compiled: {', '.join(compiled)}): processor swaps are "
            f"invisible to a compiled graph. Record the uncompiled model, then compile for production"
        )


def _math_for(name: str, processor):
    """How to reproduce a processor: ('partcrafter', math) or ('standard', None); else a loud error."""
    from diffusers.models import attention_processor as dap

    if isinstance(processor, TripoSGAttnProcessor):
        return "partcrafter", processor
    if type(processor).__name__ in UPSTREAM_MATH:
        return "partcrafter", UPSTREAM_MATH[type(processor).__name__]()
    if type(processor) in (dap.AttnProcessor2_0, dap.AttnProcessor):
        return "standard", None
    if isinstance(processor, RecordingProcessor):
        raise CaptureError(
            f"{_where(name, processor)}: this module is already being recorded; nested recorders are refused"
        )
    raise CaptureError(
        f"{_where(name, processor)}: unknown attention processor; the recorder knows PartCrafter/TripoSG processors "
        f"and diffusers' AttnProcessor2_0/AttnProcessor. Set one of those on this module or record other layers"
    )


@dataclass
class _LayerCall:
    """What one recorded (step, layer) call left behind, still on the model's device."""

    stats: dict[str, torch.Tensor]
    finite: torch.Tensor
    full_map: torch.Tensor | None = None


class RecordingProcessor:
    """Stands in for one module's processor while recording; computes exactly what it would."""

    def __init__(self, recorder: AttentionRecorder, name: str, original, family: str, math):
        self.recorder = recorder
        self.name = name
        self.original = original
        self.family = family
        self.math = math

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        image_rotary_emb=None,
        num_parts=None,
        **kwargs,
    ):
        step = self.recorder.current_step()
        if step is None:
            return self._call_original(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, image_rotary_emb, num_parts, kwargs
            )
        if self.family == "partcrafter":
            if attention_mask is not None or image_rotary_emb is not None:
                raise CaptureError(f"{_where(self.name, self.original)}: masks and rotary embeddings are not supported")
            prepared = self.math.prepare(attn, hidden_states, encoder_hidden_states, num_parts)
            out = self.math.finish(attn, prepared, self.math.attend(prepared), prepared.query.dtype)
            query, key = _per_part_query_key(prepared)
            scale = query.shape[-1] ** -0.5  # scaled_dot_product_attention's default
        else:
            out, query, key = self._standard(attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs)
            scale = _standard_scale(attn, self.original, query.shape[-1])
        self.recorder.observe(self.name, step, query, key, scale)
        return out

    def _call_original(
        self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, image_rotary_emb, num_parts, kwargs
    ):
        extra = dict(kwargs)
        if image_rotary_emb is not None:
            extra["image_rotary_emb"] = image_rotary_emb
        if num_parts is not None:
            extra["num_parts"] = num_parts
        if temb is not None:
            extra["temb"] = temb
        return self.original(
            attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, **extra
        )

    def _standard(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs):
        """Run the original diffusers processor; catch its q and k with temporary forward hooks."""
        seen = {}

        def keep(slot):
            def hook(_module, _inputs, output):
                seen[slot] = output

            return hook

        hooks = [attn.to_q.register_forward_hook(keep("q")), attn.to_k.register_forward_hook(keep("k"))]
        if attn.norm_q is not None:
            hooks.append(attn.norm_q.register_forward_hook(keep("norm_q")))
        if attn.norm_k is not None:
            hooks.append(attn.norm_k.register_forward_hook(keep("norm_k")))
        try:
            out = self._call_original(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, None, None, kwargs
            )
        finally:
            for hook in hooks:
                hook.remove()
        if attention_mask is not None:
            raise CaptureError(f"{_where(self.name, self.original)}: attention masks are not supported by the recorder")
        batch, head_dim = hidden_states.shape[0], attn.inner_dim // attn.heads
        query = seen.get("norm_q", _heads(seen["q"], batch, attn.heads, head_dim))
        key = seen.get("norm_k", _heads(seen["k"], batch, attn.heads, head_dim))
        return out, query, key


def _standard_scale(attn, processor, head_dim: int) -> float:
    """AttnProcessor2_0 calls scaled_dot_product_attention without a scale; AttnProcessor uses attn.scale."""
    from diffusers.models.attention_processor import AttnProcessor

    return attn.scale if type(processor) is AttnProcessor else head_dim**-0.5


def _heads(t: torch.Tensor, batch: int, heads: int, head_dim: int) -> torch.Tensor:
    return t.view(batch, -1, heads, head_dim).transpose(1, 2)


def _per_part_query_key(prepared: PreparedAttention) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries as ``(B, H, Lq, d)`` per part, keys as ``(B, H, Lk, d)`` per part, undoing the fold.

    In a global cross-attention block all parts of a CFG half share the first part's keys, so
    each part's rows use that half's key tensor.
    """
    query, key, n = prepared.query, prepared.key, prepared.num_parts
    if n is None:
        return query, key
    b, heads, nl, dim = query.shape
    query = query.view(b, heads, n, nl // n, dim).transpose(1, 2).reshape(b * n, heads, nl // n, dim)
    return query, key.repeat_interleave(n, dim=0)


class AttentionRecorder:
    """Context manager that records a model's cross-attention while it runs.

    Drive it from :class:`~partattn_checks.model.pipeline.PartCrafterPipeline` as an observer
    (``observers=(recorder,)``), which tells it the step index and timestep; used alone, every
    forward call of ``model`` counts as one step. ``cfg=True`` means the batch is
    ``[uncond, cond]`` and only the conditional half is recorded; ``time_token=True`` drops the
    first query row of every part (PartCrafter's time token).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        num_parts: int = 1,
        cfg: bool = True,
        selection: Selection | None = None,
        time_token: bool = True,
        has_cls: bool = True,
        patch_grid: tuple[int, int] | None = None,
        nonfinite: str = "raise",
        meta: dict | None = None,
    ):
        if nonfinite not in ("raise", "record"):
            raise ValueError(f"nonfinite must be 'raise' or 'record', got {nonfinite!r}")
        self.model = model
        self.num_parts = int(num_parts)
        self.cfg = cfg
        self.selection = selection or Selection()
        self.time_token = time_token
        self.has_cls = has_cls
        self.patch_grid = tuple(patch_grid) if patch_grid else None
        self.nonfinite_mode = nonfinite
        self.meta = dict(meta or {})
        self._originals: dict[str, tuple[torch.nn.Module, object]] = {}
        self._kinds: dict[str, str] = {}
        self._calls: dict[tuple[int, str], _LayerCall] = {}
        self._timesteps: dict[int, float] = {}
        self._nonfinite: list[dict] = []
        self._finite_checked: set[tuple[int, str]] = set()
        self._step: int | None = None
        self._explicit_steps = False
        self._forward_count = 0
        self._hook = None
        self._active = False
        self._entered = False

    # -- context management ---------------------------------------------------------------
    def __enter__(self) -> AttentionRecorder:
        if self._active or self._entered:
            # Re-entering would append a second run to the first one's calls: refuse it.
            raise CaptureError(
                f"this AttentionRecorder is already {'active' if self._active else 'used'}; use a new one per run"
            )
        self._entered = True
        _refuse_compiled(self.model)
        modules = cross_attention_modules(self.model)
        names = [n for n, _ in modules]
        if not modules:
            raise CaptureError(
                f"{type(self.model).__name__} has no cross-attention modules (diffusers {_diffusers_version()})"
            )
        self.layer_names = self.selection.pick_layers(names)
        self._wants_full = self.selection.full_map_test(names)
        chosen = dict(modules)
        plans = {n: _math_for(n, chosen[n].processor) for n in self.layer_names}
        try:
            for name in self.layer_names:
                module = chosen[name]
                family, math = plans[name]
                self._originals[name] = (module, module.processor)
                self._kinds[name] = _layer_kind(module.processor, family)
                module.set_processor(RecordingProcessor(self, name, module.processor, family, math))
            self._hook = self.model.register_forward_pre_hook(self._count_forward)
        except BaseException:
            self._restore()
            raise
        self._active = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._restore()
        self._active = False
        if exc_type is None:
            self._check_nonfinite()
            self._validate_counts()

    def _restore(self) -> None:
        for module, processor in self._originals.values():
            module.set_processor(processor)
        self._originals.clear()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # -- step bookkeeping (StepObserver protocol) -----------------------------------------
    def begin_step(self, step: int, timestep: float) -> None:
        self._explicit_steps = True
        self._step = int(step)
        self._timesteps[self._step] = float(timestep)

    def end_step(self, step: int, timestep: float, latents: torch.Tensor) -> None:
        # This step's attention ran before its latents were updated: list it first, so the error
        # names the layer where non-finite values started rather than the latents they reached.
        self._scan_calls()
        if not bool(torch.isfinite(latents).all()):
            self._nonfinite.append({"step": int(step), "layer": None, "where": "latents"})
        self._check_nonfinite()

    def _count_forward(self, _module, args, kwargs=None) -> None:
        if self._explicit_steps:
            return
        self._step = self._forward_count
        self._timesteps[self._step] = float("nan")
        self._forward_count += 1

    def current_step(self) -> int | None:
        """The step being recorded now, or ``None`` when this step is not selected."""
        if self._step is None or not self.selection.wants_step(self._step):
            return None
        return self._step

    # -- recording ------------------------------------------------------------------------
    def _conditional(self, t: torch.Tensor) -> torch.Tensor:
        batch = t.shape[0]
        if self.cfg:
            if batch % 2:
                raise CaptureError(f"cfg=True but the batch of {batch} is odd: it is not [uncond, cond]")
            t = t[batch // 2 :]
        return t

    def observe(self, name: str, step: int, query: torch.Tensor, key: torch.Tensor, scale: float) -> None:
        """Reduce one call's attention (conditional half, time token dropped) and keep the result."""
        if (step, name) in self._calls:
            raise CaptureError(
                f"{_where(name, self._originals[name][1])}: called twice in step {step}; the recorder expects one "
                f"model call per step (drive it with begin_step/end_step or one forward per step)"
            )
        query, key = self._conditional(query), self._conditional(key)
        if self.time_token:
            query = query[:, :, 1:]
        chunks, full = [], []
        keep_full = self._wants_full(name, step)
        for part in range(query.shape[0]):  # one part at a time bounds peak memory
            logits = (query[part].float() * scale) @ key[part].float().transpose(-1, -2)
            chunks.append(metrics.row_stats_from_logits(logits, has_cls=self.has_cls))
            if keep_full:
                full.append(torch.softmax(logits, dim=-1).to(torch.float16))
        stats = {k: torch.stack([c[k] for c in chunks]) for k in chunks[0]}
        finite = torch.stack([torch.isfinite(v).all() for v in stats.values()]).all()
        self._calls[(step, name)] = _LayerCall(
            stats={k: v.to(torch.float16) for k, v in stats.items()},
            finite=finite,
            full_map=torch.stack(full) if keep_full else None,
        )

    def _scan_calls(self) -> None:
        unchecked = sorted(set(self._calls) - self._finite_checked, key=lambda k: (k[0], self.layer_names.index(k[1])))
        for step, name in unchecked:
            self._finite_checked.add((step, name))
            if not bool(self._calls[(step, name)].finite):
                self._nonfinite.append({"step": step, "layer": name, "where": "attention"})

    def _check_nonfinite(self) -> None:
        self._scan_calls()
        if self._nonfinite and self.nonfinite_mode == "raise":
            first = self._nonfinite[0]
            where = f"layer {first['layer']}" if first["layer"] else "the latents"
            layer = first["layer"]
            detail = _where(layer, self._originals.get(layer, (None, "?"))[1]) if layer else ""
            raise CaptureError(f"non-finite values in {where} at step {first['step']}{': ' + detail if detail else ''}")

    def _validate_counts(self) -> None:
        steps = sorted({s for s, _ in self._calls})
        if not self._calls:
            raise CaptureError(
                f"no cross-attention was recorded (selected layers: {', '.join(self.layer_names)}; "
                f"diffusers {_diffusers_version()}): the model never called them, or no selected step ran"
            )
        missing = [(s, n) for s in steps for n in self.layer_names if (s, n) not in self._calls]
        if missing:
            step, name = missing[0]
            raise CaptureError(
                f"recorded {len(self._calls)} calls, expected {len(steps) * len(self.layer_names)} "
                f"({len(self.layer_names)} layers x {len(steps)} steps); first missing: step {step}, module '{name}' "
                f"(diffusers {_diffusers_version()})"
            )

    # -- result ---------------------------------------------------------------------------
    def record(self) -> AttentionRecord:
        """Assemble the :class:`AttentionRecord` (fp16, on the CPU)."""
        if self._active:
            raise CaptureError("the record is complete only after the recorder's `with` block has exited")
        self._validate_counts()
        steps = sorted({s for s, _ in self._calls})

        def stack(key):
            return torch.stack(
                [torch.stack([self._calls[(s, n)].stats[key] for n in self.layer_names]) for s in steps]
            ).cpu()

        first = self._calls[(steps[0], self.layer_names[0])].stats["marginal"]
        return AttentionRecord(
            steps=steps,
            timesteps=[self._timesteps.get(s, float("nan")) for s in steps],
            layers=list(self.layer_names),
            layer_kinds=[self._kinds[n] for n in self.layer_names],
            num_parts=first.shape[0],
            num_heads=first.shape[1],
            num_patch_keys=first.shape[2],
            has_cls=self.has_cls,
            patch_grid=self.patch_grid,
            entropy=stack("entropy"),
            peak=stack("peak"),
            eff_keys=stack("eff_keys"),
            cls_mass=stack("cls_mass"),
            marginals=stack("marginal"),
            full_maps={(s, n): c.full_map.cpu() for (s, n), c in self._calls.items() if c.full_map is not None},
            nonfinite=list(self._nonfinite),
            meta={**self.meta, "cfg": self.cfg, "time_token_dropped": self.time_token},
        )


def _layer_kind(processor, family: str) -> str:
    if family == "standard":
        return "standard"
    is_global = (
        isinstance(processor, PartCrafterAttnProcessor) or type(processor).__name__ == "PartCrafterAttnProcessor"
    )
    return "global" if is_global else "local"


def record_attention(
    pipeline,
    image,
    num_parts: int | None = None,
    *,
    spec: RunSpec | None = None,
    selection: Selection | None = None,
    nonfinite: str = "raise",
    meta: dict | None = None,
    **run_kwargs,
):
    """Run ``pipeline`` on ``image`` while recording; return ``(DenoiseResult, AttentionRecord)``.

    ``spec``: the run's resolved :class:`~partattn_checks.runspec.RunSpec`. Without one,
    ``num_parts`` and the run settings among ``run_kwargs`` (``steps``, ``seed``,
    ``guidance_scale``, ``num_tokens``; unset: the checkpoint's) are resolved into one. Other
    ``run_kwargs`` (``callback``, ``latents``) go to the pipeline call as they are.
    """
    settings = {k: run_kwargs.pop(k) for k in RUN_KEYS if k in run_kwargs}
    if spec is None:
        spec = for_pipeline(pipeline, call={"num_parts": num_parts, **settings})
    elif num_parts is not None or settings:
        raise TypeError("record_attention: pass either spec= or num_parts and the run settings, not both")
    elif (spec.device, spec.dtype) != (str(pipeline.device), dtype_name(pipeline.dtype)):
        raise ValueError(
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
