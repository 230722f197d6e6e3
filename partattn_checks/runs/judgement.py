"""The gate's judgement of a fixture set without pytest (the benchmarks, calibration, library use):
every check and the ``baseline`` item of each image, judged as the gate's items judge them, then
the fixture-set item. Importing this module imports no torch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..baselines.fixture_set import SetVerdict, set_verdict
from ..baselines.runner import BaselineRunner, BaselineState
from ..checks import CheckResult
from ..checks.baseline import BaselineDetails
from .session import Session
from .sidecar import ImageSpec


@dataclass(frozen=True)
class SetJudgement:
    """Each image's check results (``baseline`` included), the fixture-set verdict and what happened
    to each image's baseline."""

    results: dict[str, dict[str, CheckResult]]
    fixture_set: SetVerdict
    baselines: dict[str, BaselineState] = field(default_factory=dict)

    def failing(self) -> dict[str, list[str]]:
        """``{check: [images failing it]}``."""
        out: dict[str, list[str]] = {}
        for image, checks in self.results.items():
            for name, result in checks.items():
                if result.verdict == "fail":
                    out.setdefault(name, []).append(image)
        return out


def judge_set(session: Session, runner: BaselineRunner, images: Sequence[ImageSpec]) -> SetJudgement:
    """Run and judge ``images`` as the gate does: the record checks on each image's first run, its
    ``baseline`` item through ``runner``, then the fixture set."""
    results: dict[str, dict[str, CheckResult]] = {}
    baselines: dict[str, BaselineState] = {}
    details: dict[str, BaselineDetails | None] = {}
    for spec in images:
        thresholds = session.thresholds_for(spec)
        outcome = session.image_outcome(spec, thresholds)
        judged = dict(outcome.results)
        baseline = runner.evaluate(session.image_runs(spec), thresholds)
        judged["baseline"], baselines[spec.display] = baseline.result, baseline.state
        results[spec.display] = judged
        details[spec.display] = baseline.details
    return SetJudgement(results, set_verdict(details, runner.policy.false_alarm_rate), baselines)
