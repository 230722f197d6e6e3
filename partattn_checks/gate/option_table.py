"""One row of the plugin's option table (:data:`~partattn_checks.gate.options.OPTIONS`): :class:`Option`, the
``option(...)`` marker a :class:`~partattn_checks.gate.options.Settings` field declares it with, and how a value the
user wrote converts (:func:`_convert`), or the :class:`OptionError` that names the option. Imports nothing heavy."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from ..errors import PartattnError

#: An option's converted value: a flag's bool, a number, a name, a tuple of names (``choices``), a path, or None.
OptionValue = bool | int | float | str | tuple[str, ...] | Path | None


class OptionError(PartattnError, pytest.UsageError):  # type: ignore[misc]  # pytest marks it final; exit code 4
    """A ``--partattn-*`` option (or its ini twin) that cannot be used: pytest's usage error (exit code 4),
    naming the option and the fix."""


def _usage(msg: str) -> OptionError:
    return OptionError(msg)


@dataclass(frozen=True)
class Option:
    """One row of the option table, the ``option(...)`` marker of a :class:`Settings` field (``name``: the
    field's). ``name`` ``"model"`` gives ``--partattn-model``/``partattn_model``; ``default`` is written as
    in an ini file (converted like a value the user wrote)."""

    name: str
    help: str
    kind: str = "str"  # flag | str | int | float | path | choice | choices (comma-separated) | scale (auto|X)
    default: object = None
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    default_text: str = ""  # how the docs and --help show the default

    @property
    def flag(self) -> str:
        return "--partattn" if self.name == "enabled" else f"--partattn-{self.name.replace('_', '-')}"

    @property
    def ini(self) -> str:
        return "partattn" if self.name == "enabled" else f"partattn_{self.name}"

    @property
    def dest(self) -> str:
        return "partattn" if self.name == "enabled" else f"partattn_{self.name}"


def _convert(opt: Option, value: object, src: str, base: Path) -> OptionValue:
    label = opt.flag if src == "cli" else (f"ini option {opt.ini}" if src == "ini" else opt.flag)
    if value is None:
        return None
    if opt.kind == "flag":
        return bool(value)
    text = str(value).strip()
    if opt.kind == "int":
        try:
            return int(text)
        except ValueError:
            raise _usage(f"{label} {text}: expected a whole number") from None
    if opt.kind == "float":
        try:
            number = float(text)
        except ValueError:
            raise _usage(f"{label} {text}: expected a number") from None
        if not math.isfinite(number):
            raise _usage(f"{label} {text}: expected a finite number")
        return number
    if opt.kind == "scale":
        if text.lower() == "auto":
            return None
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number > 0):
            raise _usage(f"{label} {text}: expected auto or a positive number (the ± range, e.g. 4)")
        return number
    if opt.kind == "choice":
        if text not in opt.choices:
            raise _usage(f"{label} {text}: expected one of {', '.join(opt.choices)}")
        return text
    if opt.kind == "choices":
        names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
        wrong = [n for n in names if n not in opt.choices]
        if wrong:
            raise _usage(f"{label} {text}: {wrong[0]!r} is not one of {', '.join(opt.choices)} (comma-separated)")
        return names
    if opt.kind == "path":
        # not a string: a path object (a Settings default such as EMBEDDED_MODEL)
        path = Path(os.path.expanduser(text)) if isinstance(value, str) else Path(cast("os.PathLike[str]", value))
        return (path if path.is_absolute() else base / path).resolve()
    return text


def option(
    help: str,
    *,
    kind: str = "str",
    default: object = None,
    choices: tuple[str, ...] = (),
    metavar: str | None = None,
    default_text: str = "",
) -> Any:
    """A :class:`Settings` field that is an option (its row of ``OPTIONS``, named after the field). Its
    default is ``default`` converted; a path has none (relative to the rootdir, :meth:`Settings.of`)."""
    row = Option("", help, kind, default, choices, metavar, default_text)
    if kind == "path":
        return field(metadata={"option": row})
    return field(default=_convert(row, default, "default", Path()), metadata={"option": row})
