"""What the baseline layer reads of runs: one :class:`SeedRun` per (image, noise seed), and a
:class:`SeedSample` of several.

The runs layer (``runs.session.Session.seed_runs``) makes them from records as they come (a
record is summarized, then dropped); the runner combines them into what a baseline stores
(:meth:`SeedSample.summary`) and what the verdicts compare (per-seed metrics, per-seed step
marginals for the paired verdict).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .paired_attention import StepMarginals
    from .summary import AttentionSummary


@dataclass(frozen=True, eq=False)
class SeedRun:
    """One run of one image under one noise seed, summarized.

    ``metrics``: the record's headline metrics (``AttentionRecord.summary()``); ``checks``: each
    record check's value; ``attention``: its attention summary (float64, to be combined over seeds);
    ``steps``: its per-step marginals (what a paired comparison needs); ``environment``: the
    fingerprint of the run (``store.environment_fingerprint``); ``dtype``: the model dtype it ran in."""

    seed: int
    metrics: dict[str, float]
    checks: dict[str, float | None]
    environment: dict[str, Any]
    attention: AttentionSummary | None = None
    steps: StepMarginals | None = None

    @property
    def dtype(self) -> str | None:
        return self.environment.get("dtype")


@dataclass(frozen=True, eq=False)
class SeedSample:
    """Runs of one image under several noise seeds (in seed order)."""

    runs: tuple[SeedRun, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(r.seed for r in self.runs)

    @property
    def samples(self) -> dict[str, list[float]]:
        """Metric -> one value per seed (metrics every run measured)."""
        if not self.runs:
            return {}
        names = sorted(set.intersection(*(set(r.metrics) for r in self.runs)))
        return {n: [float(r.metrics[n]) for r in self.runs] for n in names}

    @property
    def metrics(self) -> dict[str, float]:
        """Each metric's mean over the seeds."""
        return {k: sum(v) / len(v) for k, v in self.samples.items()}

    @property
    def checks(self) -> dict[str, float | None]:
        """Each check's value, the mean over the seeds (None when a run had none)."""
        names = sorted({n for r in self.runs for n in r.checks})
        out: dict[str, float | None] = {}
        for name in names:
            values = [v for r in self.runs if (v := r.checks.get(name)) is not None]
            out[name] = sum(values) / len(values) if len(values) == len(self.runs) else None
        return out

    @property
    def environment(self) -> dict[str, Any]:
        """The first run's fingerprint (its seed is the first seed)."""
        return dict(self.runs[0].environment) if self.runs else {}

    def attention(self) -> AttentionSummary | None:
        """The runs' attention summaries combined (mean, with each seed's leave-one-out drift when
        there are several), or None when a run has none."""
        parts = [r.attention for r in self.runs]
        if not parts or any(p is None for p in parts):
            return None
        from .summary import AttentionSummary

        return AttentionSummary.combine([p for p in parts if p is not None], self.seeds)

    def only(self, seeds: Sequence[int]) -> SeedSample:
        """The runs of ``seeds`` (in that order)."""
        by_seed = {r.seed: r for r in self.runs}
        return SeedSample(tuple(by_seed[s] for s in seeds))

    def merged(self, other: SeedSample) -> SeedSample:
        """These runs and ``other``'s, one per seed (this sample's first), in seed order."""
        by_seed: dict[int, SeedRun] = {r.seed: r for r in other.runs}
        by_seed.update({r.seed: r for r in self.runs})
        return SeedSample(tuple(by_seed[s] for s in sorted(by_seed)))

    @classmethod
    def of(cls, runs: Sequence[SeedRun]) -> SeedSample:
        return cls(tuple(runs))


def seed_run(
    seed: int,
    metrics: Mapping[str, float],
    checks: Mapping[str, float | None] | None = None,
    environment: Mapping[str, Any] | None = None,
) -> SeedRun:
    """A run known by its numbers only (no attention): tests and old callers."""
    return SeedRun(int(seed), dict(metrics), dict(checks or {}), dict(environment or {}))
