"""The judge: a stored baseline and this run's samples in, the ``baseline`` check's result out.

Pure (no files, no runs): :func:`judge` picks the verdict (:func:`pairing`), computes every
deviation (``paired`` or ``noise``), and builds the result: verdict, the reason in words (what
moved, by how much, against what, which verdict and why), the worst offender, the onset and the
attention drift the ``drift`` figure draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..checks import CheckResult, Offender, Thresholds
from ..checks.baseline import (
    PAIRED,
    SEED_SPREAD,
    Baseline,
    BaselineDetails,
    Deviation,
    MetricDrift,
    Onset,
    deviation_text,
)
from .fingerprint import RUN_SETTINGS, fingerprint_diff
from .noise import (
    JUDGED_METRICS,
    LAYERS_POOLED,
    TAIL_LAYERS,
    TAIL_METRICS,
    allowances,
    layer_band,
    layer_deviation,
    log_spread,
    metric_deviation,
    pooled_sd,
)
from .paired import judge_paired
from .policy import BaselinePolicy
from .sample import SeedSample
from .store import ENVIRONMENT_FILE, SUMMARY_FILE, StoredBaseline
from .summary import AttentionSummary, attention_drift, layer_drifts

#: The note of a comparison against a baseline written from one run.
SINGLE_RUN_NOTE = (
    "this baseline holds a single run (no seed spread): compared with the fixed atol/rtol; regenerate it with "
    "--partattn-update=failed to judge it against its own seeds"
)
NO_SUMMARY_NOTE = (
    f"this baseline has no attention summary ({SUMMARY_FILE}): compared on its metrics alone; "
    f"regenerate it with --partattn-update=failed to add the drift pictures"
)


@dataclass(frozen=True)
class Pairing:
    """Which verdict a comparison gets, and why (said in the report)."""

    verdict: str
    note: str


def pairing(stored: StoredBaseline, measured: SeedSample, policy: BaselinePolicy) -> Pairing:
    """``paired`` when the baseline holds this run's seeds, settings, device kind and a floor for its
    dtype (and the policy allows it), else ``seed-spread`` with the reason."""
    seeds = list(measured.seeds)
    if not policy.pairs:
        return Pairing(SEED_SPREAD, "the seed-spread verdict was asked for (--partattn-verdict=seed-spread)")
    paired = stored.paired
    if paired is None:
        why = (
            "the baseline holds no paired runs (written before paired verdicts): regenerate it with "
            "--partattn-update=all to judge against the same seeds"
        )
        return Pairing(SEED_SPREAD, why)
    missing = [s for s in seeds if s not in paired.seeds]
    if missing:
        return Pairing(
            SEED_SPREAD,
            f"this run's seed(s) {seeds} are not among the baseline's paired seeds {list(paired.seeds)} (another "
            f"--partattn-seed, or more --partattn-seeds than the baseline was written with)",
        )
    env, now = stored.environment or {}, measured.environment
    differ = fingerprint_diff(env, now, keys=(*RUN_SETTINGS, "device_kind"))
    if differ:
        return Pairing(SEED_SPREAD, f"this run is another experiment than the baseline's ({'; '.join(differ)})")
    dtype = now.get("dtype")
    if dtype != env.get("dtype") and not any(c.dtype == dtype for c in paired.conditions):
        return Pairing(
            SEED_SPREAD,
            f"this run is in {dtype}, the baseline in {env.get('dtype')} with no numeric floor for {dtype} "
            f"(write it with --partattn-floor-dtypes={dtype} to pair runs in {dtype})",
        )
    return Pairing(PAIRED, f"reran the baseline's seed(s) {seeds}: judged against the numeric floor")


def judge(
    stored: StoredBaseline,
    measured: SeedSample,
    policy: BaselinePolicy,
    thresholds: Thresholds,
    pooled: Mapping[str, float] | None = None,
) -> CheckResult:
    """``measured`` (the gate's runs) against ``stored``; ``pooled``: the folder's pooled spreads."""
    if not stored.has_spread or stored.samples is None:
        legacy = Baseline().judge_metrics(measured.metrics, stored.metrics, thresholds)
        assert isinstance(legacy.details, BaselineDetails)
        return _with_note(legacy, SINGLE_RUN_NOTE, replace(legacy.details, attention_note=SINGLE_RUN_NOTE))
    chosen = pairing(stored, measured, policy)
    if chosen.verdict != PAIRED and policy.verdict == PAIRED:
        reason = f"the paired verdict was asked for (--partattn-verdict=paired) but cannot be used: {chosen.note}"
        return CheckResult("baseline", "fail", None, None, None, reason, BaselineDetails(verdict=SEED_SPREAD))
    pooled = dict(pooled or {})
    attention = measured.attention()
    same = [n for n in JUDGED_METRICS if len(set(stored.samples.get(n, ()))) == 1 and not pooled.get(n)]
    identical = (
        f"; the baseline's {len(stored.seeds)} seeds are identical in {', '.join(same)} (the runs do not depend on the "
        f"noise seed there: its spread is the stored rounding, 1e-5, and any change counts)"
        if same
        else ""
    )
    if chosen.verdict == PAIRED:
        assert stored.paired is not None
        spreads = {
            n: _spread(n, stored.samples[n], pooled)
            for n in JUDGED_METRICS
            if n in stored.samples and n in measured.samples
        }
        found = judge_paired(
            stored.seeds,
            stored.samples,
            stored.paired,
            measured,
            spreads,
            str(measured.environment.get("dtype")),
            JUDGED_METRICS,
        )
        note = chosen.note + (f"; {found.note}" if found.note else "") + identical
        result = _result(found.deviations, PAIRED, note, policy, _missing(stored, measured), found.onset)
        reference, attention = _same_seed(stored, measured, attention)
        return with_drift(result, replace(stored, attention=reference), attention)
    else:
        deviations, extra = _seed_spread(stored, measured, attention, policy, pooled)
        note = chosen.note + (f"; {extra}" if extra else "") + identical
        result = _result(deviations, SEED_SPREAD, note, policy, _missing(stored, measured))
    return with_drift(result, stored, attention)


def _same_seed(
    stored: StoredBaseline, measured: SeedSample, attention: AttentionSummary | None
) -> tuple[AttentionSummary | None, AttentionSummary | None]:
    """For the drift figure of a paired run: the stored run of the same seeds and this run, both averaged
    over the kept steps of the paired marginals (so that the panels show the change alone); the stored
    summary and this run's as they are when the paired marginals cannot give them."""
    paired = stored.paired.attention if stored.paired is not None else None
    runs = [r.steps for r in measured.runs]
    if stored.attention is None or attention is None or paired is None or any(r is None for r in runs):
        return stored.attention, attention
    if paired.layers != stored.attention.layers or any(r.layers != paired.layers for r in runs if r is not None):
        return stored.attention, attention
    slots = [paired.seeds.index(s) for s in measured.seeds]
    ref = paired.marginals[slots].astype(np.float64).mean(axis=(0, 1))  # (L, P, K)
    now = np.stack([r.values.astype(np.float64) for r in runs if r is not None]).mean(axis=(0, 1))
    if ref.shape != stored.attention.mean.shape or now.shape != attention.mean.shape:
        return stored.attention, attention
    return replace(stored.attention, mean=ref), replace(attention, mean=now)


def environment_difference(stored: StoredBaseline, measured: SeedSample) -> list[str]:
    """How the baseline's environment differs from this run's (the seed left out: a baseline holds several)."""
    if stored.environment is None:
        return [f"no {ENVIRONMENT_FILE} next to the baseline"]
    return fingerprint_diff(stored.environment, measured.environment, ignore=("seed",))


def _missing(stored: StoredBaseline, measured: SeedSample) -> list[str]:
    return sorted(n for n in JUDGED_METRICS if stored.samples and n in stored.samples and n not in measured.samples)


def _spread(name: str, samples: Sequence[float], pooled: Mapping[str, float]) -> float:
    from .noise import spread_of

    return spread_of(name, samples, pooled.get(name))


# ----------------------------------------------------------------------------- seed spread
def _seed_spread(
    stored: StoredBaseline,
    measured: SeedSample,
    attention: AttentionSummary | None,
    policy: BaselinePolicy,
    pooled: Mapping[str, float],
) -> tuple[list[Deviation], str | None]:
    """The run against the baseline's seeds it did not use (leave-out), in standard errors."""
    assert stored.samples is not None
    used = [i for i, s in enumerate(stored.seeds) if s in measured.seeds]
    keep = [i for i in range(len(stored.seeds)) if i not in used]
    notes = []
    if used:
        notes.append(f"the run's seed(s) left out of the baseline's {len(stored.seeds)}: judged against {len(keep)}")
    if len(keep) < 2:
        return [], "fewer than two of the baseline's seeds are left once this run's are left out"
    samples = {n: [v[i] for i in keep] for n, v in stored.samples.items()}
    common = [n for n in JUDGED_METRICS if n in samples and n in measured.samples]
    drifts, why = _layer_drifts(stored, attention, used)
    if why:
        notes.append(why)
    tails = (pooled.get(TAIL_METRICS, 1.0), pooled.get(TAIL_LAYERS, 1.0))
    a_metric, a_layer = allowances(policy.false_alarm_rate, len(common) + len(drifts), len(keep), tails)
    repeats = max(1, len(measured.runs))
    deviations = [
        metric_deviation(n, measured.metrics[n], samples[n], pooled=pooled.get(n), repeats=repeats, allowance=a_metric)
        for n in common
    ]
    if drifts:
        own = pooled_sd([log_spread(d.seed_drifts) for d in drifts])  # the image's layers pooled, and the folder's
        layer_pool = max((v for v in (own, pooled.get(LAYERS_POOLED)) if v is not None), default=None)
        deviations += [
            layer_deviation(
                d.layer, d.drift, d.seed_drifts, pooled=layer_pool, repeats=repeats, allowance=a_layer, part=d.part
            )
            for d in drifts
        ]
    return deviations, "; ".join(notes) or None


def _layer_drifts(stored: StoredBaseline, attention: AttentionSummary | None, used: list[int]):
    """Each layer's drift from the baseline's mean of the seeds the run did not use (the paired seeds'
    own marginals are taken out of the stored mean), or why there is none."""
    summary = stored.attention
    if summary is None or attention is None or not summary.has_spread or summary.seed_drift is None:
        return [], None
    if used:
        out = _left_out(summary, stored, used)
        if isinstance(out, str):
            return [], out
        summary = out
    found = layer_drifts(summary, attention)
    return (found, None) if not isinstance(found, str) else ([], f"layers not compared: {found}")


def _left_out(summary: AttentionSummary, stored: StoredBaseline, used: list[int]) -> AttentionSummary | str:
    seeds = [stored.seeds[i] for i in used]
    paired = stored.paired.attention if stored.paired is not None else None
    if paired is None or any(s not in paired.seeds for s in seeds) or paired.layers != summary.layers:
        return "layers not compared: the run's seeds cannot be left out of the stored attention (no paired marginals)"
    k = len(summary.seed_drift) if summary.seed_drift is not None else 0
    own = np.stack([paired.marginals[paired.seeds.index(s)].astype(np.float64).mean(axis=0) for s in seeds])
    own /= own.sum(axis=-1, keepdims=True)
    rest = (k * summary.mean.astype(np.float64) - own.sum(axis=0)) / (k - len(seeds))
    rest = np.clip(rest, 0.0, None)
    keep = [i for i in range(k) if i not in used]
    assert summary.seed_drift is not None
    return replace(
        summary,
        mean=rest,
        seeds=tuple(summary.seeds[i] for i in keep),
        seed_drift=summary.seed_drift[keep],
    )


# ----------------------------------------------------------------------------- the result
def _result(
    deviations: list[Deviation],
    verdict: str,
    note: str,
    policy: BaselinePolicy,
    missing: Sequence[str] = (),
    paired_onset: Onset | None = None,
) -> CheckResult:
    """Fail when a metric or a layer moved beyond its allowance; the reason gives what moved, the
    worst deviation in words, where the change begins and which verdict was used."""
    per_metric = {
        d.name: MetricDrift(
            d.measured,
            d.mean,
            abs(d.measured - d.mean) if math.isfinite(d.measured) else math.inf,
            d.allowed_delta,
            d.spread,
            d.seeds,
            d.z,
            d.allowance,
            d.log_scale,
            d.verdict,
            d.floor,
        )
        for d in deviations
        if d.kind == "metric"
    }
    moved = [d for d in deviations if d.moved]
    onset = next((d for d in deviations if d.kind == "layer" and d.moved), None)
    worst = max(deviations, key=lambda d: (abs(d.z) if d.two_sided else d.z) / d.allowance) if deviations else None
    details = BaselineDetails(
        per_metric=per_metric,
        missing_in_measured=list(missing),
        worst_metric=worst.name if worst is not None and worst.kind == "metric" else None,
        deviations=list(deviations),
        onset=(paired_onset.layer if paired_onset is not None and moved else onset.name if onset else None),
        seeds=worst.seeds if worst else None,
        repeats=worst.repeats if worst else None,
        false_alarm_rate=policy.false_alarm_rate if verdict == SEED_SPREAD else None,
        verdict=verdict,
        verdict_note=note,
        paired_onset=paired_onset,
    )
    kind = "paired verdict" if verdict == PAIRED else "seed-spread verdict"
    if worst is None:
        reason = f"no metric in common with the baseline ({kind}: {note})"
        return CheckResult("baseline", "fail", None, None, None, reason, details)
    runs = f"the mean of {worst.repeats} runs" if worst.repeats > 1 else "this run"
    what = "the numeric floor" if verdict == PAIRED else "the baseline's seed noise"
    if moved:
        head = f"moved beyond {what}: {', '.join(d.name for d in moved)}. {deviation_text(worst, runs)}"
        if paired_onset is not None:
            head += f"; {paired_onset.sentence()}"
        elif onset is not None:
            head += f"; the drift starts at {onset.name} (the first layer beyond its own noise)"
    else:
        head = f"within {what} (closest to its allowance: {deviation_text(worst, runs)})"
    if missing:
        head += f" (not measured: {', '.join(missing)})"
    head += f" [{kind}: {note}]"
    value = abs(worst.z) if worst.two_sided else worst.z
    return CheckResult("baseline", "fail" if moved or missing else "pass", value, worst.allowance, None, head, details)


def _with_note(result: CheckResult, note: str, details: BaselineDetails) -> CheckResult:
    return replace(result, reason=f"{result.reason}. Note: {note}", details=details)


def with_drift(result: CheckResult, stored: StoredBaseline, attention: AttentionSummary | None) -> CheckResult:
    """``result`` with the attention drift from the stored summary (its worst offender: the onset
    layer, else the layer and part that moved most), or with a note saying why there is none."""
    details = result.details
    assert isinstance(details, BaselineDetails)
    if stored.attention is None:
        note = (
            f"the baseline's attention summary is unusable ({stored.attention_error}); compared on its metrics "
            f"alone; regenerate it with --partattn-update=failed"
            if stored.attention_error
            else NO_SUMMARY_NOTE
        )
        return _with_note(result, note, replace(details, attention_note=note))
    if attention is None:
        note = "this run made no attention summary: compared on the metrics alone"
        return _with_note(result, note, replace(details, attention_note=note))
    drift = attention_drift(stored.attention, attention)
    if isinstance(drift, str):
        note = f"no drift figure: {drift}"
        return _with_note(result, note, replace(details, attention_note=note))
    layers = {d.name: d for d in details.deviations or () if d.kind == "layer"}
    judged = [layers[name] for name in drift.layers if name in layers]
    banded = bool(judged) and len(judged) == len(drift.layers)
    paired = details.verdict == PAIRED
    bands = [_band(d) for d in judged] if banded else []
    drift = replace(
        drift,
        judged=tuple(d.measured for d in judged) if banded else None,
        typical=tuple(b[0] for b in bands) if banded else None,
        band=tuple(b[1] for b in bands) if banded else None,
        onset=details.onset,
        verdict=PAIRED if paired else SEED_SPREAD,
    )
    reason = result.reason
    if result.verdict == "fail":
        reason += (
            f" (attention moved most in layer {drift.layer}, part {drift.part}: JS/log2 {drift.value:.3f}; "
            f"see the drift figure)"
        )
    layer = details.onset or drift.layer
    part = layers[layer].part if layer in layers and layers[layer].part is not None else drift.part
    step = details.paired_onset.step if details.paired_onset is not None and details.onset else None
    return replace(
        result,
        reason=reason,
        offender=Offender(step=step, layer=layer, part=part),
        details=replace(details, attention=drift),
    )


def _band(d: Deviation) -> tuple[float, float]:
    """(chance level, largest allowed) of a layer deviation in its drift's units."""
    if d.verdict == PAIRED:
        return d.mean, d.allowance * d.spread
    return layer_band(d)
