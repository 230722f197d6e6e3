"""What the gate reports, and where: the report data and one module per output (a sink).

The data: :class:`ItemReport` (``item``, what one item found; it travels from an xdist worker to the
controller), :class:`Summary` (``summary``, every item by image and check) and
:class:`SessionReport` (``session``, the session as the outputs see it). Check-specific content
(table rows, failure lines, properties, the fixture set's verdict) comes from each check's report
hooks, through ``rows``; ``text`` is the failure text pytest prints.

The outputs, each a :class:`Sink` chosen by ``sinks.choose`` from the options: ``terminal`` (the
``partattn summary``), ``junit`` (``--junitxml`` attachments, and the properties every item
records), ``html_extras`` (``--html``), ``index`` (the results folder's ``index.html``) and
``markdown`` (the GitHub job summary). ``header`` is the report header. No torch, no matplotlib.
"""

from __future__ import annotations

from ...checks.reporting import fmt
from .header import header_lines
from .html_extras import html_extras
from .index import index_html, write_index
from .item import ItemReport
from .junit import junit_logging_warning, user_properties
from .rows import metric_rows
from .session import SessionReport, Sink
from .sinks import SINKS_KEY, choose
from .summary import Summary
from .text import attachment_lines, failure_text, offender_text, pytest_command, quote_nodeid, table

__all__ = [
    "SINKS_KEY",
    "ItemReport",
    "SessionReport",
    "Sink",
    "Summary",
    "attachment_lines",
    "choose",
    "failure_text",
    "fmt",
    "header_lines",
    "html_extras",
    "index_html",
    "junit_logging_warning",
    "metric_rows",
    "offender_text",
    "pytest_command",
    "quote_nodeid",
    "table",
    "user_properties",
    "write_index",
]
