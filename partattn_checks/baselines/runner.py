"""The one baseline runner: what the gate, ``partattn calibrate``, the benchmarks and the training
monitor call to judge an image against its baseline and to write baselines.

:class:`BaselineRunner` holds the store, the candidates' store and the :class:`~.policy.BaselinePolicy`.
For one image (:class:`ImageRuns`: its key, its run seed and how to run it under given seeds and a
floor :class:`~.floor.Condition`), :meth:`BaselineRunner.evaluate` runs the gate's seeds, loads the
stored baseline, judges (:mod:`.judge`) and writes the baseline or a candidate as the policy says;
:meth:`BaselineRunner.write` writes one unconditionally. A baseline is written from the runs of its K
noise seeds (the gate's own runs are its first seeds, reused) plus the floor's reruns of its paired
seeds. What happened to the baseline is said one way: a :class:`BaselineStatus` in a
:class:`BaselineState`, next to the check's result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

from ..base.seeds import baseline_seeds, gate_seeds
from ..checks import CheckResult, Thresholds
from ..checks.baseline import BaselineDetails
from .errors import BaselineError, BaselineWriteError
from .floor import Condition, conditions
from .policy import BaselinePolicy
from .reading import nonfinite_metrics
from .sample import SeedSample
from .store import DECIMALS, BaselineContent, BaselinePaths, BaselineStore, StoredBaseline


class BaselineStatus(str, Enum):
    """What happened to an image's baseline (compares equal to its string value)."""

    COMPARED = "compared"  # measured against the stored baseline (includes "up to date" under an update)
    MISSING = "missing"  # none stored, none written
    UNREADABLE = "unreadable"  # stored but unusable, not replaced
    WRITTEN = "written"  # none stored; written by an update mode
    UPDATED = "updated"  # stored; replaced by an update mode
    ENV_MISMATCH = "env-mismatch"  # recorded elsewhere, and --partattn-strict-env
    REFUSED = "refused"  # an update would have stored non-finite metrics, or could not write

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class BaselineState:
    """What happened to an image's baseline: its status and the folders involved (the item report
    carries it beside the check's result; a dict, the status as its string, only in JSON)."""

    status: BaselineStatus
    folder: str  # the image's baseline folder: looked in, and written when ``written``
    candidate: str | None = None  # the candidate folder written under the results folder
    unusable: str | None = None  # the stored file that could not be used
    environment_diff: tuple[str, ...] = ()  # how the baseline's environment differs from this run's

    @property
    def written(self) -> bool:
        """The baseline was written or updated (to review and commit)."""
        return self.status in (BaselineStatus.WRITTEN, BaselineStatus.UPDATED)

    def to_dict(self) -> dict:
        return {
            "status": self.status.value,
            "folder": self.folder,
            "candidate": self.candidate,
            "unusable": self.unusable,
            "environment_diff": list(self.environment_diff),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> BaselineState:
        return cls(
            BaselineStatus(d["status"]),
            d["folder"],
            d.get("candidate"),
            d.get("unusable"),
            tuple(d.get("environment_diff") or ()),
        )


@dataclass(frozen=True)
class BaselineOutcome:
    """What the ``baseline`` check decided for one image: its result, the stored baseline it read
    (None: none usable), what happened to the baseline, and the runs it judged."""

    result: CheckResult
    baseline: StoredBaseline | None
    state: BaselineState
    warnings: tuple[str, ...] = ()  # the baseline was recorded in another environment
    measured: SeedSample | None = None
    problems: tuple[str, ...] = ()  # a stored file that could not be used (the comparison went on without it)

    @property
    def status(self) -> BaselineStatus:
        return self.state.status

    @property
    def details(self) -> BaselineDetails:
        """The result's details (always ``BaselineDetails``: ``CheckResult`` checks it)."""
        details = self.result.details
        assert isinstance(details, BaselineDetails)
        return details


@dataclass(frozen=True)
class ImageRuns:
    """One image as the runner sees it: ``sample(seeds, condition)`` runs it under those noise seeds
    (``condition``: a floor perturbation, None for a plain run); ``seed`` is its run seed (the first
    of its baseline's seeds); ``device_kind``, ``dtype`` and ``threads`` say where it runs (the
    floor's conditions depend on them)."""

    key: str
    display: str
    seed: int
    sample: Callable[[Sequence[int], Condition | None], SeedSample]
    device_kind: str = "cpu"
    dtype: str = "float32"
    threads: int = 1


@dataclass
class BaselineRunner:
    """Judges and writes the baselines of ``store`` under ``policy``; ``candidates``: where a failing
    image's measurements go for review (None: nowhere). ``update_hint``: appended to the
    ``--partattn-update=missing`` advice (the gate adds the rerun command)."""

    store: BaselineStore
    candidates: BaselineStore | None
    policy: BaselinePolicy
    update_hint: str = ""
    _pooled: dict[str, float] | None = field(default=None, repr=False)

    def pooled(self) -> dict[str, float]:
        """The folder's pooled seed spreads, read once (and again after a write)."""
        if self._pooled is None:
            self._pooled = self.store.pooled_spreads()
        return self._pooled

    # -- the gate's item --------------------------------------------------------------------------
    def evaluate(self, image: ImageRuns, thresholds: Thresholds) -> BaselineOutcome:
        """The ``baseline`` item of ``image``: its R gate runs against the stored baseline."""
        measured = image.sample(gate_seeds(image.seed, self.policy.seeds), None)
        try:
            stored = self.store.load(image.key)
        except BaselineError as err:
            return self._unusable(image, measured, err)
        if stored is None:
            return self._missing(image, measured)
        return self._judge_stored(image, measured, stored, thresholds)

    def write(self, image: ImageRuns, measured: SeedSample | None = None) -> BaselineOutcome:
        """Write ``image``'s baseline whatever is stored (``partattn calibrate``); ``measured``: runs
        already made of some of its seeds (reused)."""
        return self._write(image, measured or SeedSample(()), BaselineStatus.WRITTEN, "baseline written", None)

    # -- the situations ---------------------------------------------------------------------------
    def _unusable(self, image: ImageRuns, measured: SeedSample, err: BaselineError) -> BaselineOutcome:
        policy = self.policy
        if (err.corrupt and policy.force and policy.update == "all") or (
            not err.corrupt and policy.writes(False, True)
        ):
            why = f"replaced the unusable baseline {err.path} ({err}) with the measured one"
            return self._write(image, measured, BaselineStatus.UPDATED, why, None)
        cand = self._candidate(image, measured)
        if err.corrupt:
            keep = (
                "It was NOT overwritten: fix it, or delete the folder and run with --partattn-update=missing "
                "(or replace it with --partattn-update=all --partattn-force-update)"
            )
        else:
            keep = "Regenerate it with --partattn-update=failed"
        reason = f"baseline unusable: {err}. {keep}.{_candidate_text(cand)}"
        return self._failed(image, BaselineStatus.UNREADABLE, reason, None, cand, measured, unusable=str(err.path))

    def _missing(self, image: ImageRuns, measured: SeedSample) -> BaselineOutcome:
        looked = self.store.paths(image.key)
        if self.policy.writes(True, True):
            why = f"no baseline existed; wrote {looked.metrics} (--partattn-update={self.policy.update})"
            return self._write(image, measured, BaselineStatus.WRITTEN, why, None)
        cand = self._candidate(image, measured)
        reason = (
            f"no baseline for this image: looked for {looked.metrics}; create it with "
            f"--partattn-update=missing{self.update_hint}.{_candidate_text(cand)}"
        )
        return self._failed(image, BaselineStatus.MISSING, reason, None, cand, measured)

    def _judge_stored(
        self, image: ImageRuns, measured: SeedSample, stored: StoredBaseline, thresholds: Thresholds
    ) -> BaselineOutcome:
        from .judge import environment_difference, judge  # numpy: only when a baseline is compared

        result = judge(stored, measured, self.policy, thresholds, self.pooled())
        env_diff = environment_difference(stored, measured)
        env_failed = self.policy.strict_env and bool(env_diff)
        status = BaselineStatus.ENV_MISMATCH if env_failed else BaselineStatus.COMPARED
        if self.policy.writes(False, env_failed or result.verdict == "fail"):
            why = (
                f"it failed: {result.reason}"
                if result.verdict == "fail"
                else "its environment differed"
                if env_failed
                else f"--partattn-update={self.policy.update}"
            )
            return self._write(image, measured, BaselineStatus.UPDATED, f"baseline updated ({why})", stored)
        warnings = []
        folder = self.store.paths(image.key).folder
        if env_diff:
            text = (
                f"{folder}: the baseline was recorded in a different environment ({'; '.join(env_diff)}); "
                f"differences may come from there"
            )
            if env_failed:
                cand = self._candidate(image, measured)
                reason = (
                    f"{text} [--partattn-strict-env]. Comparison: {result.reason}. Regenerate with "
                    f"--partattn-update=failed.{_candidate_text(cand)}"
                )
                failed = replace(result, verdict="fail", offender=None, reason=reason)
                return self._outcome(image, failed, stored, status, measured, cand, environment_diff=env_diff)
            warnings.append(text)
        cand = None
        if result.verdict == "fail":
            cand = self._candidate(image, measured)
            result = replace(result, reason=result.reason + _candidate_text(cand, ";"))
        outcome = self._outcome(image, result, stored, status, measured, cand, env_diff, warnings)
        return replace(outcome, problems=_problems(outcome, folder))

    # -- writing ----------------------------------------------------------------------------------
    def _write(
        self,
        image: ImageRuns,
        measured: SeedSample,
        status: BaselineStatus,
        reason: str,
        stored: StoredBaseline | None,
    ) -> BaselineOutcome:
        bad = nonfinite_metrics(measured.metrics)
        if bad:
            reason = (
                f"not written: the measured metrics are not finite ({', '.join(bad)}); a baseline must come from a "
                f"healthy run (see the nonfinite check)"
            )
            return self._failed(image, BaselineStatus.REFUSED, reason, stored, None, measured)
        content = self.content(image, measured)
        bad = nonfinite_metrics(content.sample.metrics) or [
            k for k in measured.metrics if k not in content.sample.metrics
        ]
        if bad:
            reason = (
                f"not written: the runs of the baseline's noise seeds {list(content.sample.seeds)} gave non-finite or "
                f"missing metrics ({', '.join(bad)}); a baseline must come from healthy runs"
            )
            return self._failed(image, BaselineStatus.REFUSED, reason, stored, None, measured)
        try:
            changed = self.store.write(image.key, content)
        except BaselineWriteError as err:
            return self._failed(image, BaselineStatus.REFUSED, f"not written: {err}", stored, None, measured)
        self._pooled = None  # the folder's spreads change with this baseline
        if not changed:
            looked = self.store.paths(image.key).metrics
            status, reason = BaselineStatus.COMPARED, f"baseline up to date: no stored value changed ({looked})"
        result = CheckResult("baseline", "pass", None, None, None, reason, BaselineDetails())
        return self._outcome(image, result, stored, status, measured)

    def content(self, image: ImageRuns, measured: SeedSample) -> BaselineContent:
        """What ``image``'s baseline holds: the runs of its K seeds (``measured``'s reused) and, for its
        first R seeds (the ones the gate reruns), the numeric floor's reruns."""
        policy = self.policy
        seeds = baseline_seeds(image.seed, policy.baseline_seeds)
        have = {run.seed for run in measured.runs}
        todo = [seed for seed in seeds if seed not in have]
        sample = (measured.merged(image.sample(todo, None)) if todo else measured).only(seeds)
        if not policy.pairs:
            return BaselineContent(image.display, sample, sample.environment)
        from .paired_attention import paired_baseline  # numpy

        paired = gate_seeds(image.seed, policy.seeds)
        floor = {
            condition: image.sample(paired, condition)
            for condition in conditions(image.device_kind, image.dtype, policy.floor_dtypes, image.threads)
        }
        pairs = paired_baseline(sample, floor, len(paired), DECIMALS)
        return BaselineContent(image.display, sample, sample.environment, pairs)

    def _candidate(self, image: ImageRuns, measured: SeedSample) -> Path | None:
        if self.candidates is None or not measured.runs:
            return None
        try:
            self.candidates.write(
                image.key, BaselineContent(image.display, measured, measured.environment, candidate=True)
            )
        except BaselineWriteError:
            return None
        return self.candidates.paths(image.key).folder

    # -- outcomes ---------------------------------------------------------------------------------
    def _failed(
        self,
        image: ImageRuns,
        status: BaselineStatus,
        reason: str,
        stored: StoredBaseline | None,
        cand: Path | None,
        measured: SeedSample,
        unusable: str | None = None,
    ) -> BaselineOutcome:
        result = CheckResult("baseline", "fail", None, None, None, reason, BaselineDetails())
        return self._outcome(image, result, stored, status, measured, cand, unusable=unusable)

    def _outcome(
        self,
        image: ImageRuns,
        result: CheckResult,
        stored: StoredBaseline | None,
        status: BaselineStatus,
        measured: SeedSample,
        candidate: Path | None = None,
        environment_diff: Sequence[str] = (),
        warnings: Sequence[str] = (),
        unusable: str | None = None,
    ) -> BaselineOutcome:
        paths: BaselinePaths = self.store.paths(image.key)
        state = BaselineState(
            status,
            str(paths.folder),
            str(candidate) if candidate is not None else None,
            unusable,
            tuple(environment_diff),
        )
        return BaselineOutcome(result, stored, state, tuple(warnings), measured)


def _problems(outcome: BaselineOutcome, folder: Path) -> tuple[str, ...]:
    """What of the stored baseline could not be used although the item was judged (said in the
    terminal too, not only in the item's reason: a passing item prints no reason)."""
    from .judge import NO_SUMMARY_NOTE, SINGLE_RUN_NOTE

    d = outcome.details
    found = []
    if d.attention_note and d.attention_note not in (NO_SUMMARY_NOTE, SINGLE_RUN_NOTE):
        found.append(d.attention_note)
    found += [part for part in (d.verdict_note or "").split("; ") if part.startswith("layers not compared")]
    return tuple(f"{folder}: {text}" for text in found)


def _candidate_text(cand: Path | None, sep: str = "") -> str:
    if cand is None:
        return ""
    start = "this" if sep else "This"
    return f"{sep} {start} run's measurements were written to {cand} for review"
