"""Reading TOML: ``tomllib`` (Python >= 3.11, else its backport ``tomli``) and ``read_toml``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ..errors import PartattnError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

__all__ = ["TomlError", "read_toml", "tomllib"]


class TomlError(PartattnError, ValueError):
    """A TOML file that cannot be read or parsed; the message starts with the file's path."""


def read_toml(path: str | os.PathLike[str], what: str = "file") -> dict[str, Any]:
    """The parsed document of ``path``; ``what`` names the file's role in the error
    (``"<path>: invalid TOML in the thresholds file (...)"``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise TomlError(f"{p}: cannot read the {what} ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise TomlError(f"{p}: invalid TOML in the {what} (not UTF-8: {exc.reason})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TomlError(f"{p}: invalid TOML in the {what} ({exc})") from None
