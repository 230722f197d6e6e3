"""Typed check details: frozen dataclasses that turn into plain JSON data and back.

A check's ``details_type`` subclasses ``Details``; ``to_dict()`` gives the JSON form that reports,
the baseline store and pytest-xdist carry, ``from_dict`` the typed object again. Fields hold
numbers, text, lists, dicts, nested frozen dataclasses, ``Offender``s and ``Matrix`` tables.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import numpy as np
    import torch

_D = TypeVar("_D", bound="Details")


def optional_key() -> Any:
    """A details field that is left out of ``to_dict()`` while it is ``None``."""
    return field(default=None, metadata={"omit_none": True})


@dataclass(frozen=True)
class Matrix:
    """A (rows, columns) table of floats, e.g. (step, layer); NaN/Inf are ``null`` in JSON."""

    rows: tuple[tuple[float, ...], ...]

    @classmethod
    def of(cls, tensor: torch.Tensor | np.ndarray[Any, Any]) -> Matrix:
        return cls(tuple(tuple(float(x) for x in row) for row in tensor.tolist()))

    def tensor(self) -> torch.Tensor:
        """fp32 ``(rows, columns)`` tensor (imports torch)."""
        import torch

        return torch.tensor(self.rows, dtype=torch.float32)

    def to_json(self) -> list[list[float | None]]:
        return [[x if math.isfinite(x) else None for x in row] for row in self.rows]

    @classmethod
    def from_json(cls, data: Iterable[Iterable[float | None]]) -> Matrix:
        return cls(tuple(tuple(math.nan if x is None else float(x) for x in row) for row in data))


@dataclass(frozen=True)
class Details:
    """Base of a check's typed details: a frozen dataclass (declare subclasses with
    ``@dataclass(frozen=True, kw_only=True)``) read by attribute; ``to_dict()`` is its JSON form.
    A bare ``Details()`` is empty (the details of a check that is not registered)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: nested dataclasses become dicts, tuples lists; ``optional_key()``
        fields that are ``None`` are left out."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = _plain(value)
        return out

    @classmethod
    def from_dict(cls: type[_D], data: Mapping[str, Any]) -> _D:
        """The typed details back from ``to_dict()`` (unknown keys raise ``TypeError``)."""
        details: _D = _typed(cls, dict(data))
        return details


def _plain(value: object) -> Any:
    if hasattr(value, "to_json"):
        return value.to_json()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _typed(tp: Any, value: Any) -> Any:
    """``value`` (plain JSON data) as type ``tp``: the inverse of ``_plain`` for details fields."""
    if value is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _typed(next(a for a in args if a is not type(None)), value)
    if isinstance(tp, type) and hasattr(tp, "from_json"):
        return tp.from_json(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return tp(**{k: _typed(hints.get(k, Any), v) for k, v in value.items()})
    if origin is dict:
        return {k: _typed(args[1], v) for k, v in value.items()}
    if origin is list:
        return [_typed(args[0], v) for v in value]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_typed(args[0], v) for v in value)
        return tuple(_typed(a, v) for a, v in zip(args, value, strict=True))
    if tp is float:
        return float(value)
    return value
