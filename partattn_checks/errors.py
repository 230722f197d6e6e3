"""The one base exception of partattn-checks.

Every error the project raises on purpose subclasses :class:`PartattnError`, so a caller can catch
one type. Each subclass also keeps the built-in base it always had (``ValueError`` for bad input,
``TypeError`` for a bad call, ``FileNotFoundError`` for a missing file, ``RuntimeError`` for a failed
capture), so existing ``except ValueError`` code keeps working. tests/test_api.py scans every ``raise``.
This module imports nothing: every layer, the model included, may use it.
"""


class PartattnError(Exception):
    """Base of every partattn-checks error; the message names the file or option and the fix."""
