"""Exact, streaming capture of cross-attention while a diffusers model denoises (docs/capture.md).

``AttentionRecorder`` never replaces a module's code: every selected cross-attention module keeps
its own processor (a user's fork included), and the recorder reads the tensors that processor
makes through forward hooks on the module's projections and norms: the queries and keys (after
``norm_q``/``norm_k`` when the module has them, else ``to_q``/``to_k`` split into heads), and the
attention output handed to ``to_out[0]``. A :class:`ProcessorFamily` says how a processor class
lays out its heads, folds parts and scales its scores; from that the recorder derives the
probabilities ``softmax(q kᵀ · scale)`` in fp32 of the very ``q`` and ``k`` the layer used. On the
first recorded step of each layer it checks that those probabilities reproduce the processor's
own attention output (``P·V``, merged over heads, against the input of ``to_out[0]``) within
:data:`VERIFY_TOLERANCE`; when they do not (a fork whose math differs from its family's), it
refuses, naming the layer, the processor class and the size of the mismatch. Hooks only read, so
the model's outputs are bit-identical with capture on or off, for any processor.

Per (step, layer) call it keeps the conditional CFG half only, drops the time-token query row,
reduces over queries right away (entropy, peak, effective keys, CLS mass, key-marginals), and keeps
a full query × key map only for opted-in (layer, step) pairs: a record's size does not depend on
the number of query tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.hooks import RemovableHandle

from ..errors import PartattnError
from . import metrics
from .families import FAMILIES as FAMILIES  # the family table's names stay importable from here
from .families import ProcessorFamily, find_family, known_class_names
from .families import register_family as register_family
from .pipeline_run import RecordablePipeline as RecordablePipeline  # importable from here, as before
from .pipeline_run import record_attention as record_attention
from .record import TENSORS, AttentionRecord
from .runspec import dtype_name
from .selection import Selection as Selection  # part of this module's API

if TYPE_CHECKING:
    from diffusers.models.attention_processor import Attention


#: Largest relative mismatch (‖P·V − output‖ / ‖output‖) the verification accepts, per model dtype:
#: the processor computes in that dtype, the recorder in fp32.
VERIFY_TOLERANCE = {"float32": 1e-3, "float64": 1e-6, "float16": 1e-2, "bfloat16": 5e-2}

#: The record's tensors whose per-call statistic (``metrics.row_stats_from_logits``) has another name.
_STAT_OF = {"marginals": "marginal"}


class CaptureError(PartattnError, RuntimeError):
    """Capture could not be done faithfully; the message names module, processor and diffusers version."""


class RecorderError(PartattnError, ValueError):
    """A recorder or ``record_attention`` given an option it cannot use (a policy, a run spec for
    another device); the message names it and the fix."""


class RecorderTypeError(RecorderError, TypeError):
    """``record_attention`` given the run settings twice (also a ``TypeError``)."""


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def _where(name: str, processor: object) -> str:
    return f"module '{name}', processor {type(processor).__name__}, diffusers {_diffusers_version()}"


def cross_attention_modules(model: torch.nn.Module) -> list[tuple[str, Attention]]:
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
            f"(diffusers {_diffusers_version()}; compiled: {', '.join(compiled)}): hooks are invisible to a "
            f"compiled graph. Record the uncompiled model, then compile for production"
        )


def family_of(name: str, processor: object) -> ProcessorFamily:
    """The family of ``processor``, or a :class:`CaptureError` that says how to describe it."""
    family = find_family(processor)
    if family is not None:
        return family
    raise CaptureError(
        f"{_where(name, processor)}: unknown attention processor; the recorder knows {known_class_names()}. "
        f"If this processor computes softmax(q kᵀ·scale)·V like one of them, describe it with "
        f"partattn_checks.register_family(ProcessorFamily(...)) (docs/capture.md), or record other layers"
    )


@dataclass
class _LayerCall:
    """What one recorded (step, layer) call left behind, still on the model's device."""

    stats: dict[str, torch.Tensor]
    finite: torch.Tensor
    full_map: torch.Tensor | None = None


class _LayerTap:
    """The hooks on one cross-attention module: they read what its own processor computes."""

    def __init__(self, recorder: AttentionRecorder, name: str, module: Attention, family: ProcessorFamily):
        self.recorder = recorder
        self.name = name
        self.module = module
        self.processor: object = module.processor  # any processor class (a user's fork included)
        self.family = family
        self.verified = False
        self.seen: dict[str, torch.Tensor] = {}
        self.handles: list[RemovableHandle] = []

    def attach(self) -> None:
        m = self.module
        if getattr(m, "_partattn_recording", False):
            raise CaptureError(
                f"{_where(self.name, self.processor)}: this module is already being recorded; nested recorders "
                f"are refused"
            )
        slots: list[tuple[str, torch.nn.Module]] = [("q", m.to_q), ("k", m.to_k), ("v", m.to_v)]
        slots += [(slot, norm) for slot, norm in (("norm_q", m.norm_q), ("norm_k", m.norm_k)) if norm is not None]
        self.handles = [mod.register_forward_hook(self._keep(slot)) for slot, mod in slots]
        self.handles.append(m.to_out[0].register_forward_pre_hook(self._attended))
        # A flag, not a field of Attention: nn.Module's typed __setattr__ takes tensors and modules only.
        setattr(m, "_partattn_recording", True)  # noqa: B010

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        setattr(self.module, "_partattn_recording", False)  # noqa: B010  (a flag: see attach)
        self.seen = {}

    def _keep(self, slot: str) -> Callable[[torch.nn.Module, tuple[object, ...], torch.Tensor], None]:
        def hook(_module: torch.nn.Module, _inputs: tuple[object, ...], output: torch.Tensor) -> None:
            if self.recorder.current_step() is not None:
                self.seen[slot] = output

        return hook

    def _attended(self, _module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        """``to_out[0]`` is about to run on the processor's merged attention output: record the call."""
        step = self.recorder.current_step()
        seen, self.seen = self.seen, {}
        if step is None:
            return
        with torch.no_grad():  # reading only: no graph, also when the model runs with autograd on
            query, key, value = self._heads(seen)
            scale = self.family.scale(self.module, self.processor, query.shape[-1])
            if not self.verified:
                self.verified = self._verify(query, key, value, scale, inputs[0])
            self.recorder.observe(self.name, step, query, key, scale)

    def _heads(self, seen: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-part ``(B, H, L, d)`` queries, keys and values, as the family lays them out."""
        attn, heads = self.module, self.module.heads
        missing = [slot for slot in ("q", "k", "v") if slot not in seen]
        if missing:
            raise CaptureError(f"{_where(self.name, self.processor)}: the processor never called {missing[0]}")
        batch = seen["q"].shape[0]
        head_dim = seen["q"].shape[-1] // heads
        if self.family.heads_first:
            kv = torch.cat((seen["k"], seen["v"]), dim=-1).view(batch, -1, heads, 2 * head_dim).transpose(1, 2)
            key, value = kv[..., :head_dim], kv[..., head_dim:]
        else:
            key, value = (seen[s].view(batch, -1, heads, head_dim).transpose(1, 2) for s in ("k", "v"))
        query = seen.get("norm_q", seen["q"].view(batch, -1, heads, head_dim).transpose(1, 2))
        key = seen.get("norm_k", key) if attn.norm_k is not None else key
        if self.family.folded:  # every part of a CFG half uses the first part's keys and values
            n = self.recorder.num_parts
            if batch % n:
                raise CaptureError(f"{_where(self.name, self.processor)}: batch {batch} is not a multiple of {n} parts")
            key, value = (t[::n].repeat_interleave(n, dim=0) for t in (key, value))
        return query, key, value

    def _verify(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, attended: torch.Tensor
    ) -> bool:
        """Do the probabilities reproduce the processor's output (``P·V`` against ``attended``)?
        Returns False (try the next recorded step) when non-finite values make it undecidable."""
        err2 = ref2 = 0.0
        heads = query.shape[1]
        for b in range(query.shape[0]):  # one batch row at a time bounds peak memory
            probs = torch.softmax((query[b].float() * scale) @ key[b].float().transpose(-1, -2), dim=-1)
            rebuilt = (probs @ value[b].float()).transpose(0, 1).reshape(-1, heads * value.shape[-1])
            out = attended[b].float()
            err2 += float((rebuilt - out).pow(2).sum())
            ref2 += float(out.pow(2).sum())
        if not (err2 == err2 and ref2 == ref2) or err2 == float("inf"):  # NaN/Inf: decide on a later step
            return False
        mismatch = (err2 / ref2) ** 0.5 if ref2 > 0 else (0.0 if err2 == 0 else float("inf"))
        dtype = dtype_name(attended.dtype)
        tolerance = VERIFY_TOLERANCE.get(dtype, 1e-2)
        if mismatch > tolerance:
            raise CaptureError(
                f"{_where(self.name, self.processor)}: the probabilities softmax(q kᵀ·scale) of the {self.family.name} "
                f"family do not reproduce this processor's attention output (relative mismatch {mismatch:.3g} > "
                f"{tolerance:g} for {dtype}): its math differs from its family's, so what would be recorded is not "
                f"the attention it computes. Describe it with partattn_checks.register_family(ProcessorFamily("
                f"...)) (its head layout, folding and score scale; docs/capture.md)"
            )
        return True


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
        meta: Mapping[str, Any] | None = None,
    ):
        if nonfinite not in ("raise", "record"):
            raise RecorderError(f"nonfinite must be 'raise' or 'record', got {nonfinite!r}")
        self.model = model
        self.num_parts = int(num_parts)
        self.cfg = cfg
        self.selection = selection or Selection()
        self.time_token = time_token
        self.has_cls = has_cls
        self.patch_grid = (patch_grid[0], patch_grid[1]) if patch_grid else None
        self.nonfinite_mode = nonfinite
        self.meta = dict(meta or {})
        self._taps: dict[str, _LayerTap] = {}
        self._kinds: dict[str, str] = {}
        self._calls: dict[tuple[int, str], _LayerCall] = {}
        self._timesteps: dict[int, float] = {}
        self._nonfinite: list[dict[str, Any]] = []  # {"step": int, "layer": str | None, "where": str}
        self._finite_checked: set[tuple[int, str]] = set()
        self._step: int | None = None
        self._explicit_steps = False
        self._forward_count = 0
        self._hook: RemovableHandle | None = None
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
        self._all_names = names
        self.layer_names = self.selection.pick_layers(names)
        self._wants_full = self.selection.full_map_test(names)
        chosen = dict(modules)
        families = {n: family_of(n, chosen[n].processor) for n in self.layer_names}  # all known before any hook
        try:
            for name in self.layer_names:
                tap = _LayerTap(self, name, chosen[name], families[name])
                tap.attach()
                self._taps[name] = tap
                self._kinds[name] = families[name].kind
            self._hook = self.model.register_forward_pre_hook(self._count_forward, with_kwargs=True)
        except BaseException:
            self._restore()
            raise
        self._active = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._restore()
        self._active = False
        if exc_type is None:
            self._check_nonfinite()
            self._validate_counts()

    def _restore(self) -> None:
        for tap in self._taps.values():
            tap.detach()
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

    def _count_forward(self, _module: torch.nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        """Used alone (no ``begin_step``), every forward call of the model is one step; its timestep
        is read from the call (``timestep=`` or the second positional argument, as diffusers
        transformers take it)."""
        if self._explicit_steps:
            return
        self._step = self._forward_count
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        self._timesteps[self._step] = timestep_value(timestep)
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
                f"{_where(name, self._taps[name].processor)}: called twice in step {step}; the recorder expects one "
                f"model call per step (drive it with begin_step/end_step or one forward per step)"
            )
        query, key = self._conditional(query), self._conditional(key)
        if self.time_token:
            query = query[:, :, 1:]
        chunks: list[dict[str, torch.Tensor]] = []
        full: list[torch.Tensor] = []
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
            detail = _where(layer, self._taps[layer].processor) if layer in self._taps else ""
            raise CaptureError(f"non-finite values in {where} at step {first['step']}{': ' + detail if detail else ''}")

    def _validate_counts(self) -> None:
        steps = sorted({s for s, _ in self._calls})
        if not self._calls:
            raise CaptureError(
                f"no cross-attention was recorded (selected layers: {', '.join(self.layer_names)}; "
                f"diffusers {_diffusers_version()}): the model never called them, or no selected step ran"
            )
        never = self.selection.missing_full_maps(self._all_names, steps)
        if never:
            name, step = never[0]
            raise CaptureError(
                f"a full map was asked for step {step} of '{name}', but the steps recorded were "
                f"{steps[0]}..{steps[-1]} ({len(steps)} steps); ask for a step that runs (negative steps are not "
                f"counted from the end)"
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

        def stack(key: str) -> torch.Tensor:
            return torch.stack(
                [torch.stack([self._calls[(s, n)].stats[key] for n in self.layer_names]) for s in steps]
            ).cpu()

        return AttentionRecord.assemble(
            steps=steps,
            timesteps=[self._timesteps.get(s, float("nan")) for s in steps],
            layers=self.layer_names,
            layer_kinds=[self._kinds[n] for n in self.layer_names],
            tensors={name: stack(_STAT_OF.get(name, name)) for name in TENSORS},
            has_cls=self.has_cls,
            patch_grid=self.patch_grid,
            full_maps={(s, n): c.full_map.cpu() for (s, n), c in self._calls.items() if c.full_map is not None},
            nonfinite=self._nonfinite,
            meta={**self.meta, "cfg": self.cfg, "time_token_dropped": self.time_token},
        )


def timestep_value(timestep: object) -> float:
    """The timestep of a forward call as a float (the first element of a tensor), NaN when absent."""
    if timestep is None:
        return float("nan")
    try:
        return float(torch.as_tensor(timestep).reshape(-1)[0])
    except (TypeError, ValueError, IndexError, RuntimeError):
        return float("nan")
