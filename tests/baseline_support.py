"""Helpers of the baseline tests: runs of an image the baseline runner can judge without the model.

An :class:`~partattn_checks.baselines.runner.ImageRuns` whose ``sample`` builds each seed's run from a
given function: ``numbers(...)`` gives headline metrics only (the decisions of the runner), and
``records(...)`` real ``AttentionRecord`` objects (summaries, step marginals, metrics all computed by
the package from them). The end-to-end tests run the embedded model instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from partattn_checks.baselines.floor import Condition
from partattn_checks.baselines.paired_attention import StepMarginals
from partattn_checks.baselines.policy import BaselinePolicy
from partattn_checks.baselines.runner import BaselineRunner, ImageRuns
from partattn_checks.baselines.sample import SeedRun, SeedSample
from partattn_checks.baselines.store import BaselineStore, environment_fingerprint
from partattn_checks.baselines.summary import AttentionSummary

ENV = {
    "schema_version": 1,
    "model": "m",
    "config_hash": "abc",
    "steps": 2,
    "seed": 0,
    "num_parts": 2,
    "guidance_scale": 7.0,
    "num_tokens": 16,
    "dtype": "float32",
    "device_kind": "cpu",
    "torch": "2.x",
    "diffusers": "0.x",
}


def numbers(
    key: str,
    metrics: Callable[[int, Condition | None], Mapping[str, float]],
    env: Mapping | None = None,
    seed: int = 0,
) -> ImageRuns:
    """``key``'s runs known by their headline metrics alone: ``metrics(seed, condition)``."""

    def sample(seeds, condition):
        runs = []
        for s in seeds:
            e = dict(env or ENV, seed=s)
            if condition is not None and condition.dtype is not None:
                e["dtype"] = condition.dtype
            runs.append(SeedRun(s, dict(metrics(s, condition)), {"uniformity": 0.5}, e))
        return SeedSample(tuple(runs))

    return ImageRuns(key, f"{key}.png", seed, sample)


def records(key: str, record: Callable[[int, Condition | None], object], seed: int = 0) -> ImageRuns:
    """``key``'s runs as ``AttentionRecord``s: ``record(seed, condition)``."""

    def sample(seeds, condition):
        runs = []
        for s in seeds:
            r = record(s, condition)
            env = environment_fingerprint({**r.meta, "seed": s, "dtype": "float32", "device": "cpu"}, "m")
            if condition is not None and condition.dtype is not None:
                env["dtype"] = condition.dtype
            runs.append(
                SeedRun(
                    s,
                    r.summary(),
                    {},
                    env,
                    AttentionSummary.from_record(r, exact=True),
                    StepMarginals.from_record(r),
                )
            )
        return SeedSample(tuple(runs))

    return ImageRuns(key, f"{key}.png", seed, sample)


def runner(root, **policy) -> BaselineRunner:
    """A runner over ``root/base`` with candidates in ``root/cand``."""
    return BaselineRunner(BaselineStore(root / "base"), BaselineStore(root / "cand"), BaselinePolicy(**policy))
