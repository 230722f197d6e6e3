"""The baseline comparison of one image: a small engine with a status enum.

:func:`evaluate` loads the stored baseline (``baseline.BaselineStore``), compares the measured
headline metrics with it (the ``baseline`` check), measures how far the attention moved from the
baseline's attention summary (``baseline_attention``; the drift figure and the worst offender come
from it), and writes the baseline or a candidate as the update mode says (``WRITES``: one table of
which situations each mode writes).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from .baseline import (
    ENVIRONMENT_FILE,
    SUMMARY_FILE,
    Baseline,
    BaselineError,
    BaselinePaths,
    BaselineStore,
    fingerprint_diff,
    nonfinite_metrics,
)
from .checks import CheckResult, Offender, Thresholds, check_baseline
from .checks.baseline import AttentionDrift, BaselineDetails

if TYPE_CHECKING:  # numpy loads with a summary, not with the plugin
    from .baseline_attention import AttentionSummary
from .checks.details import Matrix

#: The note of a comparison against a baseline without an attention summary.
NO_SUMMARY_NOTE = (
    f"this baseline has no attention summary ({SUMMARY_FILE}): compared on its metrics alone; "
    f"regenerate it with --partattn-update=all to add the drift pictures"
)


class BaselineStatus(str, Enum):
    """What happened to an image's baseline (compares equal to its string value)."""

    COMPARED = "compared"  # measured against the stored baseline (includes "up to date" under an update)
    MISSING = "missing"  # none stored, none written
    UNREADABLE = "unreadable"  # stored but unusable, not replaced
    WRITTEN = "written"  # none stored; written by an update mode
    UPDATED = "updated"  # stored; replaced by an update mode
    ENV_MISMATCH = "env-mismatch"  # recorded elsewhere, and --partattn-strict-env
    REFUSED = "refused"  # an update would have stored non-finite metrics

    def __str__(self) -> str:
        return self.value


@dataclass
class BaselineOutcome:
    """What the ``baseline`` check decided for one image."""

    result: CheckResult
    baseline: Baseline | None
    looked: BaselinePaths
    status: BaselineStatus = BaselineStatus.COMPARED
    written: Path | None = None  # baseline folder written in the store
    candidate: Path | None = None  # candidate folder written under the results folder
    warnings: list[str] = field(default_factory=list)


#: update mode -> the situations in which it writes the measured metrics as the baseline
WRITES = {
    None: frozenset(),
    "missing": frozenset({"missing"}),
    "failed": frozenset({"missing", "failed", "env-failed", "outdated"}),
    "all": frozenset({"missing", "failed", "env-failed", "outdated", "passed"}),
}


@dataclass
class _Comparison:
    """One image's baseline comparison; :func:`evaluate` is its one entry point."""

    store: BaselineStore
    candidates: BaselineStore
    key: str
    image: str
    metrics: dict
    checks: dict
    environment: dict
    thresholds: Thresholds
    update: str | None
    force: bool
    strict_env: bool
    update_hint: str
    attention: AttentionSummary | None = None

    @property
    def looked(self) -> BaselinePaths:
        return self.store.paths(self.key)

    def run(self) -> BaselineOutcome:
        try:
            stored = self.store.load(self.key)
        except BaselineError as err:
            return self.unusable(err)
        if stored is None:
            return self.missing()
        return self.compare(stored)

    # -- the three situations ------------------------------------------------------------------
    def unusable(self, err: BaselineError) -> BaselineOutcome:
        situation = "outdated" if not err.corrupt else ("forced" if self.force and self.update == "all" else None)
        if situation == "forced" or situation in WRITES[self.update]:
            return self.write(
                BaselineStatus.UPDATED, f"replaced the unusable baseline {err.path} ({err}) with the measured metrics"
            )
        cand = self.candidate()
        if err.corrupt:
            keep = (
                "It was NOT overwritten: fix it, or delete the folder and run with --partattn-update=missing "
                "(or replace it with --partattn-update=all --partattn-force-update)"
            )
        else:
            keep = "Regenerate it with --partattn-update=failed"
        reason = f"baseline unusable: {err}. {keep}. A candidate was written to {cand}"
        return self.failed(BaselineStatus.UNREADABLE, reason, None, cand, file=str(err.path))

    def missing(self) -> BaselineOutcome:
        looked = self.looked
        if "missing" in WRITES[self.update]:
            return self.write(
                BaselineStatus.WRITTEN, f"no baseline existed; wrote {looked.metrics} (--partattn-update={self.update})"
            )
        cand = self.candidate()
        reason = (
            f"no baseline for this image: looked for {looked.metrics}; a candidate was written to {cand} "
            f"(review it, then copy that folder to {looked.folder}, or create it with "
            f"--partattn-update=missing{self.update_hint})"
        )
        return self.failed(BaselineStatus.MISSING, reason, None, cand, looked=str(looked.metrics))

    def compare(self, stored: Baseline) -> BaselineOutcome:
        result = self.with_drift(check_baseline(self.metrics, stored.metrics, self.thresholds), stored)
        env_diff = (
            fingerprint_diff(stored.environment, self.environment)
            if stored.environment is not None
            else [f"no {ENVIRONMENT_FILE} next to the baseline"]
        )
        env_failed = self.strict_env and bool(env_diff)
        situation = "failed" if result.verdict == "fail" else "env-failed" if env_failed else "passed"
        if situation in WRITES[self.update]:
            why = {
                "failed": f"it failed: {result.reason}",
                "env-failed": "its environment differed",
                "passed": f"--partattn-update={self.update}",
            }[situation]
            return self.write(BaselineStatus.UPDATED, f"baseline updated ({why})", stored)
        warnings = []
        if env_diff:
            text = (
                f"{self.looked.folder}: the baseline was recorded in a different environment "
                f"({'; '.join(env_diff)}); differences may come from there"
            )
            if env_failed:
                cand = self.candidate()
                reason = (
                    f"{text} [--partattn-strict-env]. Comparison: {result.reason}. A candidate was written "
                    f"to {cand}; regenerate with --partattn-update=failed"
                )
                failed = replace(
                    result,
                    verdict="fail",
                    offender=None,
                    reason=reason,
                    details=replace(
                        result.details,
                        status=str(BaselineStatus.ENV_MISMATCH),
                        environment_diff=env_diff,
                        candidate=str(cand),
                    ),
                )
                return BaselineOutcome(failed, stored, self.looked, BaselineStatus.ENV_MISMATCH, candidate=cand)
            warnings.append(text)
        cand = None
        if result.verdict == "fail":
            cand = self.candidate()
            result = replace(
                result,
                reason=f"{result.reason}; a candidate was written to {cand}",
                details=replace(result.details, candidate=str(cand)),
            )
        return BaselineOutcome(result, stored, self.looked, BaselineStatus.COMPARED, candidate=cand, warnings=warnings)

    def with_drift(self, result: CheckResult, stored: Baseline) -> CheckResult:
        """``result`` with the attention drift from the stored summary (its worst offender: the
        layer and part that moved most), or with a note saying why there is none."""
        details = result.details if isinstance(result.details, BaselineDetails) else BaselineDetails()
        if stored.attention is None:
            note = (
                f"the baseline's attention summary is unusable ({stored.attention_error}); compared on its "
                f"metrics alone; regenerate it with --partattn-update=all"
                if stored.attention_error
                else NO_SUMMARY_NOTE
            )
        elif self.attention is None:
            note = "this run made no attention summary: compared on the metrics alone"
        else:
            from .baseline_attention import attention_drift  # numpy: only when there is a summary

            drift = attention_drift(stored.attention, self.attention)
            if isinstance(drift, str):
                note = f"no drift figure: {drift}"
            else:
                typed = AttentionDrift(
                    layers=drift.layers,
                    per_part=Matrix.of(drift.per_part),
                    layer=drift.layer,
                    part=drift.part,
                    baseline=Matrix.of(drift.baseline),
                    now=Matrix.of(drift.now),
                    grid=drift.grid,
                )
                reason = result.reason
                if result.verdict == "fail":
                    reason += (
                        f" (attention moved most in layer {drift.layer}, part {drift.part}: JS/log2 {drift.value:.3f}; "
                        f"see the drift figure)"
                    )
                return replace(
                    result,
                    reason=reason,
                    offender=Offender(layer=drift.layer, part=drift.part),
                    details=replace(details, attention=typed),
                )
        return replace(result, reason=f"{result.reason}. Note: {note}", details=replace(details, attention_note=note))

    # -- steps -------------------------------------------------------------------------------
    def write(self, status: BaselineStatus, reason: str, stored: Baseline | None = None) -> BaselineOutcome:
        looked = self.looked
        bad = nonfinite_metrics(self.metrics)
        if bad:
            reason = (
                f"not written: the measured metrics are not finite ({', '.join(bad)}); a baseline must "
                f"come from a healthy run (see the nonfinite check)"
            )
            return self.failed(BaselineStatus.REFUSED, reason, stored, None)
        if not self.store.write(self.key, **self.files()):
            status, reason = BaselineStatus.COMPARED, f"baseline up to date: no stored value changed ({looked.metrics})"
        details = BaselineDetails(status=str(status), written=str(looked.folder))
        result = CheckResult("baseline", "pass", None, None, None, reason, details)
        return BaselineOutcome(result, stored, looked, status, written=looked.folder)

    def files(self) -> dict:
        """What a baseline of this run holds (``BaselineStore.write``'s keyword arguments)."""
        return dict(
            image=self.image,
            metrics=self.metrics,
            checks=self.checks,
            environment=self.environment,
            attention=self.attention,
        )

    def candidate(self) -> Path:
        self.candidates.write(self.key, **self.files())
        return self.candidates.paths(self.key).folder

    def failed(
        self, status: BaselineStatus, reason: str, stored: Baseline | None, cand: Path | None, **details
    ) -> BaselineOutcome:
        extra = {"candidate": str(cand)} if cand is not None else {}
        typed = BaselineDetails(status=str(status), **details, **extra)
        result = CheckResult("baseline", "fail", None, None, None, reason, typed)
        return BaselineOutcome(result, stored, self.looked, status, candidate=cand)


def evaluate(
    store: BaselineStore,
    candidates: BaselineStore,
    key: str,
    *,
    image: str,
    metrics: dict,
    checks: dict,
    environment: dict,
    thresholds: Thresholds,
    update: str | None = None,
    force: bool = False,
    strict_env: bool = False,
    update_hint: str = "",
    attention: AttentionSummary | None = None,
) -> BaselineOutcome:
    """Compare ``metrics`` with the stored baseline of ``key``, writing baselines as ``update`` says.

    ``update``: None (compare only), "missing" (write absent baselines), "failed" (write absent and
    failing ones, including a strict environment mismatch and a readable baseline of another schema
    or with non-finite values), "all" (rewrite every baseline whose values changed; with ``force``,
    also an unreadable one). A failing comparison also writes a candidate under ``candidates``.
    ``attention``: this run's attention summary, stored with the baseline and compared with the
    stored one (the drift figure); None compares and writes the metrics alone.
    """
    return _Comparison(
        store,
        candidates,
        key,
        image,
        metrics,
        checks,
        environment,
        thresholds,
        update,
        force,
        strict_env,
        update_hint,
        attention,
    ).run()
