"""JUnit XML (``--junitxml``), a sink: each figure as an ``[[ATTACHMENT|path]]`` line in the test
case's ``<system-out>``, where Jenkins and GitLab look for attachments, and a warning at start when
``junit_logging`` leaves ``<system-out>`` out. The failure text is JUnit's ``<failure>`` as it is
the terminal's; the properties every item records (:func:`user_properties`) are its ``<property>``
elements. No torch.
"""

from __future__ import annotations

from ...checks.reporting import fmt
from .item import ItemReport
from .rows import properties
from .session import Sink
from .text import attachment_lines, offender_text

#: junit_logging values that write <system-out>, where Jenkins/GitLab look for attachments.
JUNIT_LOGGING_WITH_STDOUT = ("system-out", "out-err", "all")


class JUnit(Sink):
    def __init__(self, path: str, junit_logging: str) -> None:
        self.artifact = ("JUnit XML", path)
        self.junit_logging = junit_logging

    def warning(self) -> str | None:
        return junit_logging_warning(self.junit_logging)

    def item_done(self, item, p: ItemReport) -> None:
        if p.figures:
            item.add_report_section("call", "stdout", "\n".join(attachment_lines(p.figures)) + "\n")


def user_properties(p: ItemReport) -> list[tuple[str, object]]:
    """(name, value) pairs for ``item.user_properties``, recorded on every item (JUnit's <property>
    elements; pytest keeps them on the test report for any other reader)."""
    props: list[tuple[str, object]] = [("partattn_check", p.check), ("partattn_verdict", p.verdict)]
    if p.baseline is not None:
        props.append(("partattn_baseline_status", p.baseline.status.value))
    r = p.result
    if r is not None:
        props += [("partattn_value", fmt(r.value, 6)), ("partattn_threshold", fmt(r.threshold, 6))]
        if r.offender is not None:
            props.append(("partattn_offender", offender_text(r.offender)))
        if p.check in p.baseline_checks:
            props.append(("partattn_baseline", fmt(p.baseline_checks[p.check], 6)))
    props += properties(p)
    props += [(f"partattn_metric_{k}", fmt(v, 6)) for k, v in sorted(p.summary.items())]
    props += [("partattn_figure", f) for f in p.figures]
    return props


def junit_logging_warning(junit_logging: str) -> str | None:
    if junit_logging in JUNIT_LOGGING_WITH_STDOUT:
        return None
    return (
        f"--junitxml is used with junit_logging = {junit_logging}, which leaves out <system-out>: "
        f"Jenkins and GitLab will not pick up the [[ATTACHMENT|...]] lines of partattn figures "
        f"(they are still in the <failure> text). Set junit_logging = system-out (or all) in your "
        f"pytest configuration to attach the figures"
    )
