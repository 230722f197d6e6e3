"""The baseline comparison of one image: a small engine with a status enum.

:func:`evaluate` loads the stored baseline (``baseline.BaselineStore``), compares the measured
headline metrics with it (the ``baseline`` check: in units of the baseline's seed spread when it
has one, :mod:`partattn_checks.checks.baseline.noise`), measures how far the attention moved from the baseline's
attention summary (``attention``; the drift figure and the worst offender come from it),
and writes the baseline or a candidate as the update mode says (:func:`writes`). A baseline is
written from the runs of its noise seeds (``sample``, run only when one is written); a candidate
holds the gate's own run(s). What happened to the baseline is said one way: a
:class:`BaselineStatus` in a :class:`BaselineState`, next to the check's result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from .. import CheckResult, Offender, Thresholds, check_baseline
from .check import BaselineDetails
from .store import (
    ENVIRONMENT_FILE,
    SUMMARY_FILE,
    BaselineError,
    BaselinePaths,
    BaselineStore,
    StoredBaseline,
    fingerprint_diff,
    nonfinite_metrics,
)

if TYPE_CHECKING:  # numpy loads with a summary, not with the plugin
    from .attention import AttentionSummary
from .noise import (
    DEFAULT_FALSE_ALARM_RATE,
    JUDGED_METRICS,
    allowances,
    layer_band,
    layer_deviation,
    log_spread,
    metric_deviation,
    pooled_sd,
)

#: The note of a comparison against a baseline written from one run.
SINGLE_RUN_NOTE = (
    "this baseline holds a single run (no seed spread): compared with the fixed atol/rtol; regenerate it with "
    "--partattn-update=all to judge drift in units of seed noise"
)

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
    (None: none usable) and what happened to the baseline."""

    result: CheckResult
    baseline: StoredBaseline | None
    state: BaselineState
    warnings: tuple[str, ...] = ()

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
class SeedSample:
    """Runs of one image under several noise seeds, summarized: what a baseline stores."""

    seeds: tuple[int, ...]
    samples: dict[str, list[float]]  # metric -> one value per seed
    checks: dict[str, float | None]  # check values, mean over the seeds
    attention: AttentionSummary | None = None  # mean over the seeds, with their seed drift

    @property
    def metrics(self) -> dict[str, float]:
        """Each metric's mean over the seeds (a metric missing from any run is left out)."""
        return {k: sum(v) / len(v) for k, v in self.samples.items() if len(v) == len(self.seeds)}

    @classmethod
    def of(cls, seeds: Sequence[int], summaries: Sequence[Mapping], checks: Sequence[Mapping], attention=None):
        """From per-run headline metrics and check values (one mapping per seed)."""
        names = sorted(set().union(*summaries)) if summaries else []
        samples = {n: [float(s[n]) for s in summaries] for n in names if all(n in s for s in summaries)}
        check_names = sorted(set().union(*checks)) if checks else []
        means = {}
        for name in check_names:
            values = [v for c in checks if (v := c.get(name)) is not None]
            means[name] = sum(values) / len(values) if len(values) == len(checks) else None
        return cls(tuple(int(s) for s in seeds), samples, means, attention)


def writes(update: str | None, status: BaselineStatus, verdict: str) -> bool:
    """Whether ``--partattn-update=<update>`` writes the measured baseline of an image that would
    otherwise end with ``status`` and ``verdict``: ``missing`` writes a MISSING one, ``failed`` every
    failing one (missing, unreadable but of another schema, environment mismatch, drifted), ``all``
    every one. (A file that cannot be read at all is replaced only when forced: :meth:`unusable`.)"""
    if update == "all":
        return True
    if update == "failed":
        return verdict == "fail"
    return update == "missing" and status is BaselineStatus.MISSING


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
    measured_seeds: tuple[int, ...] = ()
    measured_samples: dict[str, list[float]] | None = None
    sample: Callable[[], SeedSample] | None = None
    pooled: Callable[[], Mapping[str, float]] | None = None
    alpha: float = DEFAULT_FALSE_ALARM_RATE

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
        forced = err.corrupt and self.force and self.update == "all"
        if forced or (not err.corrupt and writes(self.update, BaselineStatus.UNREADABLE, "fail")):
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
        return self.failed(BaselineStatus.UNREADABLE, reason, None, cand, unusable=str(err.path))

    def missing(self) -> BaselineOutcome:
        looked = self.looked
        if writes(self.update, BaselineStatus.MISSING, "fail"):
            return self.write(
                BaselineStatus.WRITTEN, f"no baseline existed; wrote {looked.metrics} (--partattn-update={self.update})"
            )
        cand = self.candidate()
        reason = (
            f"no baseline for this image: looked for {looked.metrics}; a candidate was written to {cand} "
            f"(review it, then copy that folder to {looked.folder}, or create it with "
            f"--partattn-update=missing{self.update_hint})"
        )
        return self.failed(BaselineStatus.MISSING, reason, None, cand)

    def compare(self, stored: StoredBaseline) -> BaselineOutcome:
        if stored.has_spread:
            result = self.judge_noise(stored)
        else:
            legacy = check_baseline(self.metrics, stored.metrics, self.thresholds)
            assert isinstance(legacy.details, BaselineDetails)  # the baseline check's own
            details = replace(legacy.details, attention_note=SINGLE_RUN_NOTE)
            result = replace(legacy, reason=f"{legacy.reason}. Note: {SINGLE_RUN_NOTE}", details=details)
        result = self.with_drift(result, stored)
        env_diff = (
            fingerprint_diff(stored.environment, self.environment, ignore=("seed",) if stored.has_spread else ())
            if stored.environment is not None
            else [f"no {ENVIRONMENT_FILE} next to the baseline"]
        )
        env_failed = self.strict_env and bool(env_diff)
        status = BaselineStatus.ENV_MISMATCH if env_failed else BaselineStatus.COMPARED
        if writes(self.update, status, "fail" if env_failed else result.verdict):
            why = (
                f"it failed: {result.reason}"
                if result.verdict == "fail"
                else "its environment differed"
                if env_failed
                else f"--partattn-update={self.update}"
            )
            return self.write(BaselineStatus.UPDATED, f"baseline updated ({why})", stored)
        warnings = []
        if env_diff:
            text = (
                f"{self.looked.folder}: the baseline was recorded in a different environment "
                f"({'; '.join(env_diff)}); differences may come from there"
            )
            if env_failed:
                written = self.candidate()
                reason = (
                    f"{text} [--partattn-strict-env]. Comparison: {result.reason}. A candidate was written "
                    f"to {written}; regenerate with --partattn-update=failed"
                )
                failed = replace(result, verdict="fail", offender=None, reason=reason)
                return self.outcome(failed, stored, status, candidate=written, environment_diff=env_diff)
            warnings.append(text)
        cand = None
        if result.verdict == "fail":
            cand = self.candidate()
            result = replace(result, reason=f"{result.reason}; a candidate was written to {cand}")
        return self.outcome(result, stored, status, candidate=cand, environment_diff=env_diff, warnings=warnings)

    @property
    def repeats(self) -> int:
        return max(1, len(self.measured_seeds))

    def judge_noise(self, stored: StoredBaseline) -> CheckResult:
        """The measured metrics and layers against the baseline's seed distribution."""
        from .check import Baseline as BaselineCheck

        pooled = dict(self.pooled()) if self.pooled is not None else {}
        common = [n for n in JUDGED_METRICS if n in stored.samples and n in self.metrics]
        drifts = []
        if self.attention is not None and stored.attention is not None:
            from .attention import layer_drifts  # numpy: only when there is a summary

            found = layer_drifts(stored.attention, self.attention)
            drifts = found if not isinstance(found, str) else []
        tests = len(common) + len(drifts)
        a_metric, a_layer = allowances(self.alpha, tests, len(stored.seeds))
        deviations = [
            metric_deviation(
                n,
                float(self.metrics[n]),
                stored.samples[n],
                pooled=pooled.get(n),
                repeats=self.repeats,
                allowance=a_metric,
            )
            for n in common
        ]
        if drifts:
            # the image's layers pooled: spreads on the log scale are relative
            layer_pool = pooled_sd([log_spread(d.seed_drifts) for d in drifts])
            deviations += [
                layer_deviation(
                    d.layer,
                    d.drift,
                    d.seed_drifts,
                    pooled=layer_pool,
                    repeats=self.repeats,
                    allowance=a_layer,
                    part=d.part,
                )
                for d in drifts
            ]
        missing = sorted(n for n in JUDGED_METRICS if n in stored.samples and n not in self.metrics)
        return BaselineCheck().judge_noise(deviations, self.alpha, missing)

    def with_drift(self, result: CheckResult, stored: StoredBaseline) -> CheckResult:
        """``result`` with the attention drift from the stored summary (its worst offender: the
        layer and part that moved most), or with a note saying why there is none."""
        details = result.details
        assert isinstance(details, BaselineDetails)
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
            from .attention import attention_drift  # numpy: only when there is a summary

            drift = attention_drift(stored.attention, self.attention)
            if isinstance(drift, str):
                note = f"no drift figure: {drift}"
            else:
                layers = {d.name: d for d in details.deviations or () if d.kind == "layer"}
                judged = [layers[name] for name in drift.layers if name in layers]
                banded = bool(judged) and len(judged) == len(drift.layers)
                bands = [layer_band(d) for d in judged] if banded else []
                banded_drift = replace(
                    drift,
                    judged=tuple(d.measured for d in judged) if banded else None,
                    typical=tuple(b[0] for b in bands) if banded else None,
                    band=tuple(b[1] for b in bands) if banded else None,
                    onset=details.onset,
                )
                reason = result.reason
                if result.verdict == "fail":
                    reason += (
                        f" (attention moved most in layer {drift.layer}, part {drift.part}: JS/log2 {drift.value:.3f}; "
                        f"see the drift figure)"
                    )
                layer = details.onset or drift.layer
                part = layers[layer].part if layer in layers and layers[layer].part is not None else drift.part
                return replace(
                    result,
                    reason=reason,
                    offender=Offender(layer=layer, part=part),
                    details=replace(details, attention=banded_drift),
                )
        return replace(result, reason=f"{result.reason}. Note: {note}", details=replace(details, attention_note=note))

    # -- steps -------------------------------------------------------------------------------
    def write(self, status: BaselineStatus, reason: str, stored: StoredBaseline | None = None) -> BaselineOutcome:
        looked = self.looked
        bad = nonfinite_metrics(self.metrics)
        if bad:
            reason = (
                f"not written: the measured metrics are not finite ({', '.join(bad)}); a baseline must "
                f"come from a healthy run (see the nonfinite check)"
            )
            return self.failed(BaselineStatus.REFUSED, reason, stored, None)
        files = self.files()
        if self.sample is not None:
            seeded = self.sample()
            bad = nonfinite_metrics(seeded.metrics) or [k for k in self.metrics if k not in seeded.samples]
            if bad:
                reason = (
                    f"not written: the runs of the baseline's noise seeds {list(seeded.seeds)} gave non-finite or "
                    f"missing metrics ({', '.join(bad)}); a baseline must come from healthy runs"
                )
                return self.failed(BaselineStatus.REFUSED, reason, stored, None)
            files = self.files(seeded)
        if not self.store.write(self.key, **files):
            status, reason = BaselineStatus.COMPARED, f"baseline up to date: no stored value changed ({looked.metrics})"
        result = CheckResult("baseline", "pass", None, None, None, reason, BaselineDetails())
        return self.outcome(result, stored, status)

    def files(self, seeded: SeedSample | None = None) -> dict:
        """What a baseline holds (``BaselineStore.write``'s keyword arguments): the runs of the
        noise seeds (``seeded``), or this run's own (a candidate, a baseline without seeds)."""
        metrics, checks, attention, seeds, samples = (
            (seeded.metrics, seeded.checks, seeded.attention, seeded.seeds, seeded.samples)
            if seeded is not None
            else (self.metrics, self.checks, self.attention, self.measured_seeds, self.measured_samples)
        )
        return dict(
            image=self.image,
            metrics=metrics,
            checks=checks,
            environment=self.environment,
            attention=attention,
            seeds=seeds,
            samples=samples,
        )

    def candidate(self) -> Path:
        self.candidates.write(self.key, **self.files())
        return self.candidates.paths(self.key).folder

    def failed(
        self,
        status: BaselineStatus,
        reason: str,
        stored: StoredBaseline | None,
        cand: Path | None,
        unusable: str | None = None,
    ) -> BaselineOutcome:
        result = CheckResult("baseline", "fail", None, None, None, reason, BaselineDetails())
        return self.outcome(result, stored, status, candidate=cand, unusable=unusable)

    def outcome(
        self,
        result: CheckResult,
        stored: StoredBaseline | None,
        status: BaselineStatus,
        *,
        candidate: Path | None = None,
        unusable: str | None = None,
        environment_diff: Sequence[str] = (),
        warnings: Sequence[str] = (),
    ) -> BaselineOutcome:
        state = BaselineState(
            status,
            str(self.looked.folder),
            str(candidate) if candidate is not None else None,
            unusable,
            tuple(environment_diff),
        )
        return BaselineOutcome(result, stored, state, tuple(warnings))


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
    measured_seeds: Sequence[int] = (),
    measured_samples: dict[str, list[float]] | None = None,
    sample: Callable[[], SeedSample] | None = None,
    pooled: Callable[[], Mapping[str, float]] | None = None,
    alpha: float = DEFAULT_FALSE_ALARM_RATE,
) -> BaselineOutcome:
    """Compare ``metrics`` with the stored baseline of ``key``, writing baselines as ``update`` says.

    ``update``: None (compare only), "missing" (write absent baselines), "failed" (write absent and
    failing ones, including a strict environment mismatch and a readable baseline of another schema
    or with non-finite values), "all" (rewrite every baseline whose values changed; with ``force``,
    also an unreadable one). A failing comparison also writes a candidate under ``candidates``.
    ``attention``: this run's attention summary, stored with the baseline and compared with the
    stored one (the drift figure); None compares and writes the metrics alone.

    Noise: ``metrics`` (and ``attention``) are the mean of the runs of ``measured_seeds``
    (``measured_samples``: their values); ``sample()`` runs the baseline's noise seeds when a
    baseline is written; ``pooled()`` gives the folder's pooled spreads; ``alpha`` is the item's
    false-alarm rate.
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
        tuple(measured_seeds),
        measured_samples,
        sample,
        pooled,
        alpha,
    ).run()
