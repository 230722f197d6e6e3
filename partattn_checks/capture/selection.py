"""Which layers and steps a recorder keeps, and where it keeps full query x key maps.

No torch: the plugin and the command build selections before anything heavy is imported.
``partattn_checks.capture.recorder.Selection`` is this class.
"""

from __future__ import annotations

import fnmatch
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import PartattnError


class SelectionError(PartattnError, ValueError):
    """A selection that can never be recorded (a step, layer or full map it names or leaves out)."""


@dataclass
class Selection:
    """Which layers and steps to record, and where to keep full maps.

    ``layers``: ``None`` (all cross-attention modules), indices into them, module names or glob
    patterns (``"blocks.1*.attn2"``), or a callable ``name -> bool``; a single name or pattern may be
    given as a bare string (``layers="blocks.4.attn2"`` is that one layer) and a single index as a
    bare int. ``steps``: ``None`` (all), step indices (any iterable, read once; a bare int is that
    one step), or use ``every=k`` for every k-th step. ``full_maps``: (layer, step) pairs (layer as
    index or name) or a callable ``(name, step) -> bool``.

    Iterables are materialised when the selection is made (a generator is not used up by the first
    step). Anything else (``layers=[1.5]``, ``[True]``, ``full_maps=True``) and a full map that can
    never be recorded (a negative step, a step or layer the selection leaves out, a layer index out
    of range, an unknown layer name) is a :class:`SelectionError` (a ``ValueError``) naming it.
    """

    layers: None | Iterable[int | str] | Callable[[str], bool] = None
    steps: None | Iterable[int] = None
    every: int | None = None
    full_maps: Iterable[tuple[int | str, int]] | Callable[[str, int], bool] = ()

    def __post_init__(self) -> None:
        if self.layers is not None and not callable(self.layers):
            layers = _items(self.layers, "layers", "layer indices, module names or glob patterns, or a callable")
            bad = [item for item in layers if not _is_layer(item)]
            if bad:
                raise SelectionError(
                    f"layers: {bad[0]!r} is not a layer (give an index, a module name such as 'blocks.4.attn2' "
                    f"or a glob pattern such as 'blocks.*.attn2')"
                )
            self.layers = tuple(item if isinstance(item, str) else operator.index(item) for item in layers)
        if self.every is not None and not _is_index(self.every, 1):
            raise SelectionError(f"every={self.every!r}: must be a whole number of steps, 1 or more")
        if self.steps is not None:
            steps = _items(self.steps, "steps", "step indices")
            bad = [s for s in steps if not _is_index(s)]
            if bad:
                raise SelectionError(f"steps: {bad[0]!r} is not a step index (whole numbers from 0)")
            self.steps = tuple(operator.index(s) for s in steps)
        self._steps = frozenset(self.steps) if self.steps is not None else None
        if not callable(self.full_maps):
            if isinstance(self.full_maps, (str, bytes)) or not isinstance(self.full_maps, Iterable):
                raise SelectionError(
                    f"full_maps={self.full_maps!r}: expected (layer, step) pairs, e.g. full_maps=[(-1, 9)], "
                    f"or a callable (name, step) -> bool"
                )
            self.full_maps = tuple(self._full_map_pair(pair) for pair in self.full_maps)

    def _full_map_pair(self, pair: tuple[int | str, int]) -> tuple[int | str, int]:
        """One ``(layer, step)`` of ``full_maps``, checked against the steps this selection records."""
        try:
            layer, step = pair
        except (TypeError, ValueError):
            raise SelectionError(f"full_maps: {pair!r} is not a (layer, step) pair") from None
        if not _is_layer(layer):
            raise SelectionError(f"full_maps: ({layer!r}, {step!r}): the layer must be an index or a module name")
        if not _is_index(step):
            raise SelectionError(
                f"full_maps: ({layer!r}, {step!r}): the step must be a step index (whole numbers from 0)"
            )
        if not self.wants_step(step):
            chosen = [f"steps={list(self.steps)}"] if self.steps is not None else []
            chosen += [f"every={self.every}"] if self.every is not None else []
            raise SelectionError(
                f"full_maps: ({layer!r}, {step}): step {step} is not recorded ({', '.join(chosen)}); "
                f"ask for a full map at a recorded step"
            )
        return (layer if isinstance(layer, str) else operator.index(layer)), operator.index(step)

    def pick_layers(self, names: list[str]) -> list[str]:
        if self.layers is None:
            return list(names)
        if callable(self.layers):
            return [n for n in names if self.layers(n)]
        picked = set()
        for item in self.layers:
            if isinstance(item, int):
                picked.add(names[_layer_index(item, names, "layer index")])
            else:
                matches = [n for n in names if fnmatch.fnmatchcase(n, item)]
                if not matches:
                    raise SelectionError(
                        f"layer '{item}' matches no cross-attention module (known: {', '.join(names)})"
                    )
                picked.update(matches)
        return [n for n in names if n in picked]

    def wants_step(self, step: int) -> bool:
        if self.every is not None and step % self.every:
            return False
        return self._steps is None or step in self._steps

    def full_map_test(self, names: list[str]) -> Callable[[str, int], bool]:
        """``(name, step) -> bool`` over the cross-attention module ``names``; a pair naming a layer
        that is not one of them, or one the selection leaves out, is a :class:`SelectionError`."""
        if callable(self.full_maps):
            return self.full_maps
        recorded = self.pick_layers(names)
        pairs = set()
        for layer, step in self.full_maps:
            if isinstance(layer, int):
                name = names[_layer_index(layer, names, f"full_maps: ({layer}, {step}): layer index")]
            elif layer in names:
                name = layer
            else:
                raise SelectionError(
                    f"full_maps: ({layer!r}, {step}): {layer!r} is not a cross-attention module "
                    f"(known: {', '.join(names)})"
                )
            if name not in recorded:
                raise SelectionError(
                    f"full_maps: ({layer!r}, {step}): layer {name} is not recorded (layers= selects "
                    f"{', '.join(recorded)})"
                )
            pairs.add((name, step))
        return lambda name, step: (name, step) in pairs

    def missing_full_maps(self, names: list[str], steps_run: Iterable[int]) -> list[tuple[str, int]]:
        """The ``(layer name, step)`` full maps asked for whose step never ran (``steps_run``: the
        steps of the run), e.g. step 99 of a 10-step run; empty for a callable ``full_maps``."""
        if callable(self.full_maps):
            return []
        ran = set(steps_run)
        asked = {(names[layer] if isinstance(layer, int) else layer, step) for layer, step in self.full_maps}
        return sorted((pair for pair in asked if pair[1] not in ran), key=lambda pair: (pair[1], pair[0]))


def _items(value: Any, what: str, expected: str) -> tuple[Any, ...]:
    """``value`` as a tuple: a bare string or whole number is one item; a non-iterable is an error."""
    if isinstance(value, str) or _is_index(value, smallest=None):
        return (value,)
    if not isinstance(value, Iterable):
        raise SelectionError(f"{what}={value!r}: expected {expected}")
    return tuple(value)


def _is_layer(value: Any) -> bool:
    """A layer as a selection names it: an index (any sign) or a module name / glob pattern."""
    return isinstance(value, str) or _is_index(value, smallest=None)


def _is_index(value: Any, smallest: int | None = 0) -> bool:
    """A whole number (an int, a numpy integer; not a bool) of at least ``smallest`` (None: any)."""
    if isinstance(value, bool):
        return False
    try:
        index = operator.index(value)
    except TypeError:
        return False
    return smallest is None or index >= smallest


def _layer_index(index: int, names: list[str], what: str) -> int:
    """``index`` into ``names`` (negative counts from the end), or a :class:`SelectionError` naming the layers."""
    if not -len(names) <= index < len(names):
        raise SelectionError(
            f"{what} {index} out of range: the model has {len(names)} cross-attention layers "
            f"(known: {', '.join(names)})"
        )
    return index
