"""Which outputs a session writes, decided in one place (:func:`choose`) from its options.

The terminal summary and the results folder (``index.html``) always; JUnit attachments with
``--junitxml``; figures in the pytest-html report with ``--html``; the GitHub job summary when
``GITHUB_STEP_SUMMARY`` names a file. A new output is one module with a :class:`~.session.Sink`,
added here.
"""

from __future__ import annotations

import os

import pytest

from .html_extras import PytestHtml
from .index import ResultsFolder
from .junit import JUnit
from .markdown import ENV, JobSummary
from .session import Sink
from .terminal import Terminal

#: The session's sinks, in the order their hooks run (each process chooses its own: an xdist worker's
#: items use the item hooks, the controller the session ones).
SINKS_KEY = pytest.StashKey[list[Sink]]()


def choose(config: pytest.Config) -> list[Sink]:
    """The outputs of this session, in order: ``index.html`` is written before the job summary names it."""
    sinks: list[Sink] = [Terminal()]
    xml = getattr(config.option, "xmlpath", None)
    if xml:
        sinks.append(JUnit(xml, config.getini("junit_logging")))
    html = config.getoption("htmlpath", None)
    if html and config.pluginmanager.hasplugin("html"):
        sinks.append(PytestHtml(html))
    sinks.append(ResultsFolder())
    summary = os.environ.get(ENV)
    if summary and not config.option.collectonly:
        reports = dict(sink.artifact for sink in sinks if sink.artifact is not None)
        sinks.append(JobSummary(summary, reports))
    return sinks
