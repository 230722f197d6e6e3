"""The pytest nodes of the gate: one :class:`ImageFile` per fixture image, one :class:`CheckItem`
per check (``<image>::part_separation``, ..., ``<image>::baseline``).

An item asks the process's :class:`~partattn_checks.gate.state.GateSession` for its image's outcome:
the image runs once per run spec (the record is cached), and each item judges that record.
Importing this module is light (no torch): items are collected, and skipped, without --partattn.
"""

from __future__ import annotations

import time
import warnings
from functools import partial

import pytest

from ..checks import REGISTRY
from ..checks.baseline import Baseline
from ..errors import PartattnError
from ..runs.session import CaseError
from ..runs.sidecar import ImageSpec, read_spec
from . import report
from .options import Settings
from .state import GateSession

#: The built-in checks, one item each; collection reads the registry, so a registered check adds its item.
ITEM_CHECKS = tuple(REGISTRY)
SKIP_REASON = "pass --partattn to run attention checks"

SETTINGS_KEY = pytest.StashKey[Settings]()
SESSION_KEY = pytest.StashKey[GateSession]()


class PartattnEnvironmentWarning(UserWarning):
    """A baseline was recorded in a different environment (fingerprint mismatch)."""


class PartattnBaselineWarning(UserWarning):
    """Part of a stored baseline could not be used (an attention summary of another shape, a damaged
    file): the item was judged without it."""


class CheckFailed(PartattnError):
    """A check item failed; ``str()`` is the full failure report."""


# ----------------------------------------------------------------------------- collection
class ImageFile(pytest.File):
    """A fixture image: one item per check."""

    def collect(self):
        settings = self.config.stash[SETTINGS_KEY]
        spec = read_spec(self.path, settings.fixtures, settings.rootdir)
        for check in REGISTRY:
            item = CheckItem.from_parent(self, name=check, check=check, spec=spec)
            item.add_marker(pytest.mark.partattn)
            if not settings.enabled:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
            yield item


class CheckItem(pytest.Item):
    """One check of one fixture image."""

    def __init__(self, *, check: str, spec: ImageSpec, **kwargs):
        super().__init__(**kwargs)
        self.check = check
        self.spec = spec
        self.partattn_report: report.ItemReport | None = None

    def runtest(self) -> None:
        session: GateSession = self.config.stash[SESSION_KEY]
        settings = session.settings
        start = time.perf_counter()
        item_report = partial(
            report.ItemReport,
            rerun=self._command(self.check),
            update=self._command(Baseline.name, update="failed"),
            image=self.spec.display,
            key=self.spec.key,
            check=self.check,
        )
        try:
            thresholds = session.thresholds_for(self.spec) if not self.spec.error else session.thresholds
            outcome = session.image_outcome(self.spec, thresholds)
        except (CaseError, ValueError) as err:
            p = item_report(result=None, figures=(), error=str(err), seconds=time.perf_counter() - start)
            self._finish(p)
            raise CheckFailed(report.failure_text(p)) from None

        notes: list[str] = []
        baseline = None
        if not REGISTRY[self.check].record_check:  # the baseline: judged against the stored baselines
            bo = session.baseline(self.spec, thresholds)
            result, baseline = bo.result, bo.state
            stored = bo.baseline.checks if bo.baseline is not None else {}
            for text in bo.warnings:
                warnings.warn(PartattnEnvironmentWarning(text), stacklevel=1)
            for text in bo.problems:
                warnings.warn(PartattnBaselineWarning(text), stacklevel=1)
            notes += [*bo.warnings, *bo.problems]
        else:
            result = outcome.results[self.check]
            stored = session.stored_checks(self.spec)
        figures: list[str] = []
        session.clear_figures(self.spec, self.check)
        if result.verdict == "fail" or (settings.save_all_figures and result.verdict == "pass"):
            figures, problems = session.figures(self.spec, outcome, result, thresholds)
            notes += problems
        p = item_report(
            result=result,
            figures=tuple(figures),
            baseline_checks=stored or {},
            baseline=baseline,
            warnings=tuple(notes),
            seconds=time.perf_counter() - start,
            summary=outcome.summary if baseline is not None else {},  # what a baseline item compared
        )
        self._finish(p)
        if result.verdict == "fail":
            raise CheckFailed(report.failure_text(p))
        if result.verdict == "skip":
            # reported at the image (like a skip marker), not at this line
            raise pytest.skip.Exception(result.reason, _use_item_location=True)

    def _finish(self, p: report.ItemReport) -> None:
        self.partattn_report = p
        self.user_properties.extend(report.user_properties(p))
        for sink in self.config.stash[report.SINKS_KEY]:
            sink.item_done(self, p)

    def _command(self, name: str, update: str | None = None) -> str:
        settings = self.config.stash[SETTINGS_KEY]
        return report.pytest_command(
            settings.cli_args(), self.config.invocation_params.dir, self.spec.path, name, update=update
        )

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CheckFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        # the domain is the item's own name, so `pytest -v` prints the node id as it can be pasted back
        return self.path, 0, self.name
