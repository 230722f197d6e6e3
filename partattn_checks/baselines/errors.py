"""What goes wrong with a stored baseline: one that cannot be used, one that could not be written."""

from __future__ import annotations

from pathlib import Path

from ..errors import PartattnError

REGENERATE = "regenerate it with --partattn-update=failed"


class BaselineError(PartattnError, ValueError):
    """A baseline file that cannot be used; the message names the file and what to do.

    ``corrupt`` is True for a file that cannot be read at all (bad JSON, wrong structure) and
    False for a readable file of another schema version or incomplete content (``--partattn-update=failed``
    replaces it).
    """

    def __init__(self, message: str, path: Path, corrupt: bool = True):
        super().__init__(message)
        self.path = path
        self.corrupt = corrupt


class BaselineWriteError(BaselineError):
    """A baseline that could not be written (a folder in the way, a full disk, no permission); the
    files already there were kept."""
