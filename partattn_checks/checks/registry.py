"""The registry of checks: every registered check by name, in registration order.

It reads a check's class attributes only (``name``, the headline, ``details_type``,
``thresholds_type``, ``record_check``; ``Check`` is imported for annotations only), so
:mod:`.thresholds` (one table per registered check) builds on it without importing :mod:`.core`
(results and the ``Check`` base class, which use the thresholds). No torch here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from ..errors import PartattnError
from .details import Details

if TYPE_CHECKING:
    from .core import Check

#: Headline directions: the value passes when it is ``op`` the threshold.
OPS = ("≤", "≥")


class CheckError(PartattnError, ValueError):
    """A check used wrongly: an unknown check name, a bad verdict, a clashing registration."""


class Registry(Mapping):
    """The checks by name, in registration order (the order reports and ``run_checks`` use)."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}

    def __getitem__(self, name: str) -> Check:
        return self._checks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._checks)

    def __len__(self) -> int:
        return len(self._checks)

    def add(self, check: Check) -> Check:
        name = getattr(check, "name", None)
        if not isinstance(name, str) or not name.isidentifier():
            raise CheckError(f"{type(check).__name__}: a check needs a name that is an identifier, got {name!r}")
        if name in self._checks:
            raise CheckError(f"a check named {name!r} is already registered ({self._checks[name]!r})")
        if not isinstance(getattr(check, "label", None), str) or getattr(check, "op", None) not in OPS:
            raise CheckError(f"check {name!r} needs a headline: label (text) and op (one of {', '.join(OPS)})")
        if not (isinstance(check.details_type, type) and issubclass(check.details_type, Details)):
            raise CheckError(f"check {name!r}: details_type must be a Details subclass")
        self._checks[name] = check
        return check

    def remove(self, name: str) -> Check:
        return self._checks.pop(name)

    @contextlib.contextmanager
    def registered(self, cls: type[Check]) -> Iterator[Check]:
        """Register ``cls`` for the ``with`` block only (tests, experiments)."""
        check = self.add(cls())
        try:
            yield check
        finally:
            if self._checks.get(check.name) is check:
                del self._checks[check.name]

    def record_checks(self) -> Mapping[str, Check]:
        """The checks ``run_checks`` runs (a live view)."""
        return _RecordChecks(self)


class _RecordChecks(Mapping):
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def __getitem__(self, name: str) -> Check:
        check = self._registry[name]
        if not check.record_check:
            raise KeyError(name)
        return check

    def __iter__(self) -> Iterator[str]:
        return (name for name, check in self._registry.items() if check.record_check)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"CHECKS({', '.join(self)})"


#: Every check, in order. ``CHECKS``: the record checks among them.
REGISTRY = Registry()
CHECKS = REGISTRY.record_checks()


def register(cls: type[Check]) -> type[Check]:
    """Class decorator: add an instance of the check class to ``REGISTRY`` (after the others)."""
    REGISTRY.add(cls())
    return cls


def details_type_of(name: str) -> type[Details]:
    """The details type of the check registered as ``name`` (``Details`` for one that is not)."""
    check = REGISTRY.get(name)
    return check.details_type if check is not None else Details
