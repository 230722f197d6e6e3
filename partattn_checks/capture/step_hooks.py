"""Hooks that make every forward call of a model one recorded step (``AttentionVisualizer.register_hooks``).

A forward pre-hook on the model opens an :class:`~partattn_checks.capture.recorder.AttentionRecorder`
(public API only) and tells it the step and the call's timestep; a forward hook, also run when the
forward raises, closes it (which validates the step), keeps the step's reductions and the selected
full maps, and publishes the step's full maps as ``attention_maps``. :meth:`StepHooks.finish` joins
the kept steps into one :class:`~partattn_checks.capture.record.AttentionRecord`. Memory: one
step's full maps, plus the record's streamed reductions.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Iterator
from typing import Any, Protocol

import torch

from .record import AttentionRecord
from .recorder import AttentionRecorder, CaptureError, Selection, cross_attention_modules, timestep_value

_MISSING = object()


class StepSettings(Protocol):
    """Where the hooks read, at every step, how to record it (the visualizer's attributes)."""

    num_parts: int | None
    cfg: bool | None
    time_token: bool
    has_cls: bool


class StepHooks:
    """One recorder per hooked forward of ``model``; ``finish()`` removes the hooks and returns the record.

    ``settings``: read at each forward (part count, CFG, time token, CLS). ``holders``: the objects
    whose ``attention_maps`` attribute is the latest step's maps while hooked (restored on removal).
    ``layers``, ``steps``/``every`` and ``full_maps`` are those of ``register_hooks``; ``meta`` goes
    into every step's record.
    """

    def __init__(
        self,
        settings: StepSettings,
        model: torch.nn.Module,
        holders,
        *,
        layers,
        steps,
        every: int | None,
        full_maps,
        attention_maps: bool,
        meta: dict,
    ):
        self.steps = Selection(steps=steps, every=every)
        full = Selection(full_maps=_full_maps_arg(full_maps))
        names = [n for n, _ in cross_attention_modules(model)]
        if not names:
            raise CaptureError(f"{type(model).__name__} has no cross-attention modules to hook")
        self.settings, self.model, self.meta = settings, model, meta
        self.layers = Selection(layers=layers).pick_layers(names)
        self.keep_full = full.full_map_test(names)
        self.publish_maps = attention_maps
        self.signature = inspect.signature(model.forward)
        self.forwards = 0  # hooked forwards so far = the next step's index
        self.paused = 0  # while positive, forwards are not hooked steps
        self.records: list[AttentionRecord] = []
        self.open: AttentionRecorder | None = None
        self.maps: dict[str, torch.Tensor] = {}
        self.holders = [(h, getattr(h, "attention_maps", _MISSING)) for h in holders] if attention_maps else []
        self._publish({})
        self.handles = [
            model.register_forward_pre_hook(self._before, with_kwargs=True),
            model.register_forward_hook(self._after, always_call=True),
        ]

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Forwards inside the block are not hooked steps (nor counted as steps); pauses may nest."""
        self.paused += 1
        try:
            yield
        finally:
            self.paused -= 1

    def _before(self, module, args, kwargs) -> None:
        if self.paused:
            return
        if self.open is not None:  # its forward was interrupted (KeyboardInterrupt skips the closing hook)
            raise CaptureError(
                f"the hooked forward of step {self.forwards - 1} was interrupted and its recorder is still "
                f"attached; call clear_hooks() before running the model again"
            )
        step, self.forwards = self.forwards, self.forwards + 1
        if not self.steps.wants_step(step):
            self._publish({})
            return
        call: dict[str, Any]
        try:
            call = self.signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            call = {}
        hidden = call.get("hidden_states")
        parts = (call.get("attention_kwargs") or {}).get("num_parts") or self.settings.num_parts
        batch = hidden.shape[0] if torch.is_tensor(hidden) else None
        recorder = AttentionRecorder(
            module,
            num_parts=int(parts or 1),
            cfg=cfg_for_batch(self.settings.cfg, batch, parts),
            selection=Selection(layers=self.layers, full_maps=self._wants_full),
            time_token=self.settings.time_token,
            has_cls=self.settings.has_cls,
            meta=self.meta,
        )
        recorder.__enter__()
        recorder.begin_step(step, timestep_value(call.get("timestep")))
        self.open = recorder

    def _after(self, module, args, output) -> None:
        recorder, self.open = self.open, None
        if recorder is None:
            return
        if output is None and sys.exc_info()[0] is not None:  # the forward raised: drop the step
            recorder.__exit__(*sys.exc_info())  # removes its hooks only
            return
        recorder.__exit__(None, None, None)  # removes its hooks, then validates the step (raises)
        record = recorder.record()
        step = record.steps[0]
        if self.publish_maps:
            self._publish({name: record.full_maps[(step, name)].float() for name in record.layers})
        record.full_maps = {k: v for k, v in record.full_maps.items() if self.keep_full(k[1], k[0])}
        self.records.append(record)

    def _wants_full(self, name: str, step: int) -> bool:
        return self.publish_maps or self.keep_full(name, step)

    def _publish(self, maps: dict) -> None:
        self.maps = maps
        for holder, _ in self.holders:
            holder.attention_maps = maps

    def _abandon(self) -> None:
        """Remove the hooks of a recorder whose forward was interrupted (its step is dropped)."""
        recorder, self.open = self.open, None
        if recorder is not None:
            recorder.__exit__(RuntimeError, None, None)  # restore only

    def remove(self) -> None:
        """Remove the hooks and ``attention_maps`` (the holders get back what they had); nothing is finished."""
        for handle in self.handles:
            handle.remove()
        self._abandon()
        for holder, previous in self.holders:
            if previous is _MISSING:
                with contextlib.suppress(AttributeError):
                    del holder.attention_maps
            else:
                holder.attention_maps = previous
        self.maps = {}

    def finish(self) -> AttentionRecord | None:
        """Remove the hooks and return the hooked steps as one record; ``None`` when no hooked forward ran.

        Raises a :class:`CaptureError` when hooked forwards ran but none was recorded, or when the
        recorded steps differ in shape (one record holds one shape).
        """
        self.remove()
        if self.records:
            first = self.records[0]
            odd = next((r for r in self.records[1:] if not first.same_shape(r)), None)
            if odd is not None:
                raise CaptureError(
                    f"the hooked steps differ in shape: step {first.steps[0]} recorded {first.num_parts} parts, "
                    f"{first.num_heads} heads, {first.num_patch_keys} keys; step {odd.steps[0]} {odd.num_parts}, "
                    f"{odd.num_heads}, {odd.num_patch_keys}. One record holds one shape: call clear_hooks() and "
                    f"register_hooks() again between such runs"
                )
            return AttentionRecord.concat(self.records)
        if self.forwards:
            raise CaptureError(
                f"no cross-attention was recorded: the model ran {self.forwards} hooked forward(s), steps "
                f"0-{self.forwards - 1}, and none was recorded (register_hooks selected steps="
                f"{self.steps.steps!r}, every={self.steps.every!r}, or the forwards raised)"
            )
        return None


def cfg_for_batch(cfg: bool | None, batch: int | None, num_parts: int | None) -> bool:
    """``cfg`` when set; else whether a batch is ``[uncond, cond]``: not when it holds exactly
    ``num_parts`` rows (one object's parts without guidance), yes otherwise."""
    if cfg is not None:
        return bool(cfg)
    return not (num_parts is not None and batch == int(num_parts))


def _full_maps_arg(full_maps):
    """``register_hooks``'s ``full_maps`` (``True``, ``False``, pairs or a callable) as a Selection takes it."""
    if full_maps is True:
        return lambda name, step: True
    if full_maps is False or full_maps is None:
        return ()
    return full_maps
