"""Thresholds: one table per registered check, resolved from layers as run settings are.

Each check declares its table as a frozen dataclass whose fields are made with ``param`` (default,
range or choices, doc); ``Thresholds`` holds one instance per registered check that has a table,
so registering a check adds its table. docs/metrics.md lists every default.

:meth:`Thresholds.resolve` is the one resolver, as :func:`~partattn_checks.capture.runspec.resolve_run`
is for run settings; each layer overrides the ones before it (later wins):

1. the defaults: the built-in tables, or thresholds already resolved (a session's);
2. the session's file: a thresholds TOML file (``--partattn-thresholds``, ``--thresholds``), else the
   rootdir ``pyproject.toml``'s ``[tool.partattn.thresholds]`` (the gate);
3. the image's sidecar ``[thresholds.<check>]`` tables;
4. the call's overrides (``partattn(image, thresholds={...})``).

A layer (:class:`ThresholdsLayer`) is ``{table: {key: value}}`` and how errors name it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..base.tomlread import read_toml
from ..errors import PartattnError
from .registry import REGISTRY

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_T = TypeVar("_T")
_Table = TypeVar("_Table", bound="DataclassInstance")


class ThresholdsError(PartattnError, ValueError):
    """A thresholds source that cannot be used; the message names the file, the table and the key."""


class ThresholdsTypeError(ThresholdsError, TypeError):
    """``Thresholds()`` given a table no check has (also a ``TypeError``, as Python's own for an
    unknown keyword)."""


def param(
    default: _T,
    lo: float | None = None,
    hi: float | None = None,
    choices: Sequence[str] | None = None,
    doc: str = "",
) -> _T:
    """A thresholds field: its default, its range ``[lo, hi]`` (numbers) or ``choices`` (text)."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "choices": choices, "doc": doc})


def tables() -> dict[str, type]:
    """``{table name: thresholds dataclass}`` of the registered checks, in registry order."""
    return {name: check.thresholds_type for name, check in REGISTRY.items() if check.thresholds_type is not None}


class Thresholds:
    """All check thresholds, one table per check: ``thresholds.collapse.peak_max``,
    ``thresholds["collapse"]``. Immutable; ``merged`` returns a changed copy."""

    def __init__(self, **given: Any) -> None:
        known = tables()
        for name in given:
            if name not in known:
                raise ThresholdsTypeError(f"Thresholds() got an unknown table {name!r} (known: {', '.join(known)})")
        self.__dict__["_tables"] = {name: given.get(name) or cls() for name, cls in known.items()}

    def __getitem__(self, name: str) -> Any:
        table = self.__dict__["_tables"].get(name)
        if table is None:
            cls = tables().get(name)
            if cls is None:
                raise KeyError(name)
            table = cls()  # registered after this object was made: its defaults
        return table

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"'Thresholds' has no table {name!r} (known: {', '.join(tables())})") from None

    def __setattr__(self, name: str, value: object) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def items(self) -> list[tuple[str, Any]]:
        return [(name, self[name]) for name in tables()]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Thresholds) and self.items() == other.items()

    def __hash__(self) -> int:
        return hash(tuple(self.items()))

    def __repr__(self) -> str:
        return f"Thresholds({', '.join(f'{name}={table!r}' for name, table in self.items())})"

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(table) for name, table in self.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "thresholds", table_prefix: str = "") -> Thresholds:
        """Defaults overridden by ``data`` ({table: {key: value}}), validated."""
        return cls().merged(data, source=source, table_prefix=table_prefix)

    @classmethod
    def resolve(
        cls,
        defaults: Thresholds | None = None,
        file: ThresholdsLayer | None = None,
        sidecar: ThresholdsLayer | None = None,
        call: Mapping[str, Any] | None = None,
    ) -> Thresholds:
        """The one resolver: ``defaults`` (the built-in tables when None), then the session's ``file``
        (a thresholds file or a pyproject's table), then an image's ``sidecar`` tables, then the
        ``call``'s overrides ({table: {key: value}}); each later layer wins. A bad entry raises
        :class:`ThresholdsError` naming its layer's file and table."""
        thresholds = defaults if defaults is not None else cls()
        layers = (file, sidecar, ThresholdsLayer(call, "thresholds argument") if call else None)
        for layer in layers:
            if layer is not None:
                thresholds = thresholds.merged(layer.tables, source=layer.source, table_prefix=layer.prefix)
        return thresholds

    def merged(self, overrides: Mapping[str, Any], source: str = "overrides", table_prefix: str = "") -> Thresholds:
        """A copy with ``overrides`` ({table: {key: value}}) applied; unknown or invalid entries raise."""
        if not isinstance(overrides, Mapping):
            raise ThresholdsError(f"{source}: thresholds must be a table of tables, got {type(overrides).__name__}")
        known = tables()
        changed = dict(self.items())
        for table, values in overrides.items():
            where = f"[{table_prefix}{table}]"
            if table not in known:
                raise ThresholdsError(f"{source}: unknown table {where} (known: {', '.join(known)})")
            if not isinstance(values, Mapping):
                raise ThresholdsError(f"{source}: {where} must be a table of key = value, got {values!r}")
            changed[table] = _validated(changed[table], values, source, where)
        return Thresholds(**changed)


def _validated(section: _Table, values: Mapping[str, Any], source: str, where: str) -> _Table:
    known = {f.name: f for f in dataclasses.fields(section)}
    updates: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ThresholdsError(f"{source}: {where} unknown key {key!r} (known: {', '.join(known)})")
        meta = known[key].metadata
        if meta.get("choices") is not None:
            if value not in meta["choices"]:
                raise ThresholdsError(f"{source}: {where} {key} = {value!r} is not one of {', '.join(meta['choices'])}")
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ThresholdsError(f"{source}: {where} {key} = {value!r} must be a finite number")
            lo, hi = meta.get("lo"), meta.get("hi")
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                rng = f"{lo} <= value <= {hi}" if hi is not None else f"value >= {lo}"
                raise ThresholdsError(f"{source}: {where} {key} = {value!r} is out of range (expected {rng})")
            value = float(value)
        updates[key] = value
    return dataclasses.replace(section, **updates)


#: The table of a pyproject.toml that holds thresholds, and the keys ``[tool.partattn]`` may have.
PYPROJECT_TABLE = "tool.partattn.thresholds"
PYPROJECT_KEYS = ("thresholds",)


@dataclass(frozen=True)
class ThresholdsLayer:
    """One layer of :meth:`Thresholds.resolve`: ``tables`` ({table: {key: value}}), and how errors name
    it: ``source`` (its file) and ``prefix`` (where its tables sit in that file, e.g. ``thresholds.``)."""

    tables: Mapping[str, Any]
    source: str
    prefix: str = ""

    @property
    def where(self) -> str:
        """The file, and the table holding the thresholds when it is not the whole file."""
        return f"{self.source} [{self.prefix.rstrip('.')}]" if self.prefix else self.source

    def check(self) -> None:
        """Raise :class:`ThresholdsError` for an unknown or invalid entry (whatever the layers below)."""
        Thresholds().merged(self.tables, source=self.source, table_prefix=self.prefix)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ThresholdsLayer:
        """A thresholds TOML file: tables [uniformity], [collapse], ... (``TomlError`` if unreadable)."""
        p = Path(path)
        return cls(read_toml(p, "thresholds file"), str(p))

    @classmethod
    def from_pyproject(cls, path: str | os.PathLike[str]) -> ThresholdsLayer | None:
        """``[tool.partattn.thresholds]`` of a pyproject.toml, None when absent; another key under
        ``[tool.partattn]`` is an error (with a did-you-mean)."""
        p = Path(path)
        table = read_toml(p, "pyproject file").get("tool", {}).get("partattn", {})
        if not isinstance(table, Mapping):
            raise ThresholdsError(f"{p}: [tool.partattn] must be a table, got {table!r}")
        unknown = sorted(set(table) - set(PYPROJECT_KEYS))
        if unknown:
            hint = difflib.get_close_matches(unknown[0], PYPROJECT_KEYS, n=1)
            raise ThresholdsError(
                f"{p}: unknown key [tool.partattn.{unknown[0]}]"
                + (f"; did you mean [tool.partattn.{hint[0]}]?" if hint else "")
                + f" (known: {', '.join(f'[tool.partattn.{key}]' for key in PYPROJECT_KEYS)})"
            )
        tables = table.get("thresholds")
        return None if tables is None else cls(tables, str(p), PYPROJECT_TABLE + ".")


def load_thresholds(path: str | os.PathLike[str]) -> Thresholds:
    """Thresholds from a TOML file with tables [uniformity], [collapse], ... (missing keys keep defaults)."""
    return Thresholds.resolve(file=ThresholdsLayer.from_file(path))


def thresholds_from_pyproject(path: str | os.PathLike[str]) -> Thresholds:
    """Thresholds from ``[tool.partattn.thresholds]`` of a pyproject.toml (defaults if absent)."""
    return Thresholds.resolve(file=ThresholdsLayer.from_pyproject(path))
