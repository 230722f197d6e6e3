"""Ctrl-C under the gate ends with one line.

pytest ends an interrupted session with its own notice: a ``!!! KeyboardInterrupt !!!`` separator,
the file and line where the interrupt landed (under pytest-xdist that is the controller's wait on
its workers' queue, ``threading.py``) and a hint about ``--full-trace``. pytest offers no hook to
change that text, so the gate rewrites the message of the interrupt the terminal reporter is about
to show (its ``_keyboardinterrupt_memo``), which makes pytest print that one line instead. Where a
pytest version keeps it elsewhere, pytest's own notice stays; ``--full-trace`` keeps it on purpose.
No torch.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

#: What an interrupted gate session ends with (between pytest's ``!!!`` separators).
INTERRUPTED = (
    "partattn: interrupted (Ctrl-C): the items reported above finished; files are written whole or not at all, "
    "so rerun to finish"
)


def one_line(config: pytest.Config) -> bool:
    """Make the terminal reporter end this interrupted session with :data:`INTERRUPTED`; False when it
    cannot (another pytest, ``--full-trace``, no terminal reporter)."""
    if config.getoption("fulltrace", False):
        return False
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    memo: Any = getattr(reporter, "_keyboardinterrupt_memo", None)
    crash: Any = getattr(memo, "reprcrash", None)
    if crash is None or not isinstance(getattr(crash, "message", None), str):
        return False
    crash = copy.copy(crash)  # pytest's ReprFileLocation(path, lineno, message)
    crash.message = INTERRUPTED
    memo.reprcrash = crash
    return True
