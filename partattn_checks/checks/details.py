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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


def optional_key():
    """A details field that is left out of ``to_dict()`` while it is ``None``."""
    return field(default=None, metadata={"omit_none": True})


@dataclass(frozen=True)
class Matrix:
    """A (rows, columns) table of floats, e.g. (step, layer); NaN/Inf are ``null`` in JSON."""

    rows: tuple[tuple[float, ...], ...]

    @classmethod
    def of(cls, tensor) -> Matrix:
        return cls(tuple(tuple(float(x) for x in row) for row in tensor.tolist()))

    def tensor(self):
        """fp32 ``(rows, columns)`` tensor (imports torch)."""
        import torch

        return torch.tensor(self.rows, dtype=torch.float32)

    def to_json(self) -> list[list[float | None]]:
        return [[x if math.isfinite(x) else None for x in row] for row in self.rows]

    @classmethod
    def from_json(cls, data) -> Matrix:
        return cls(tuple(tuple(math.nan if x is None else float(x) for x in row) for row in data))


@dataclass(frozen=True)
class Details(Mapping):
    """Base of a check's typed details: a frozen dataclass (declare subclasses with
    ``@dataclass(frozen=True, kw_only=True)``) that reads like the dict of its JSON form, so
    ``details["per_layer"]`` and ``dict(details)`` work. A bare ``Details()`` is empty (skips)."""

    def to_dict(self) -> dict:
        """JSON-ready dict: nested dataclasses become dicts, tuples lists; ``optional_key()``
        fields that are ``None`` are left out."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = _plain(value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> Details:
        """The typed details back from ``to_dict()`` (unknown keys raise ``TypeError``)."""
        return _typed(cls, dict(data))

    def __getitem__(self, key: str):
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def setdefault(self, key: str, default=None):
        """dict-style read of a key that is there; details are frozen, so a missing key raises."""
        if key in self:
            return self[key]
        raise TypeError(
            f"{type(self).__name__} is frozen: cannot add {key!r} "
            f"(build a new CheckResult with dict(result.details, {key}=...))"
        )


def _plain(value):
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


def _typed(tp, value):
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
