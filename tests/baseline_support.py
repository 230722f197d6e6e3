"""Helpers of the baseline tests: runs of an image the baseline runner can judge without the model.

An :class:`~partattn_checks.baselines.runner.ImageRuns` whose ``sample`` builds each seed's run from a
given function: ``numbers(...)`` gives headline metrics only (the decisions of the runner), and
``records(...)`` real ``AttentionRecord`` objects (summaries, step marginals, metrics all computed by
the package from them). The end-to-end tests run the embedded model instead.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping

from helpers import FIXTURE_IMAGES, REPO

from partattn_checks import EMBEDDED_MODEL
from partattn_checks.baselines.fingerprint import environment_fingerprint
from partattn_checks.baselines.floor import Condition
from partattn_checks.baselines.paired_attention import StepMarginals
from partattn_checks.baselines.policy import BaselinePolicy
from partattn_checks.baselines.runner import BaselineRunner, ImageRuns
from partattn_checks.baselines.sample import SeedRun, SeedSample
from partattn_checks.baselines.store import BaselineStore
from partattn_checks.baselines.summary import AttentionSummary
from partattn_checks.capture.runspec import DeviceChoice
from partattn_checks.checks import Thresholds
from partattn_checks.gate.options import Settings
from partattn_checks.gate.state import GateSession
from partattn_checks.model.pipeline import PartCrafterPipeline
from partattn_checks.runs.judgement import SetJudgement, judge_set
from partattn_checks.runs.sidecar import fixture_specs

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


# ----------------------------------------------------------------------------- the embedded model, for real
#: Two fixture images of the end-to-end baseline tests (tests/test_noise.py, tests/test_paired.py).
IMAGES = ("np2_circle_square.png", "np4_four_shapes.png")


def embedded_pipeline() -> PartCrafterPipeline:
    return PartCrafterPipeline.from_pretrained(EMBEDDED_MODEL)


def two_images(tmp_path_factory) -> list:
    """:data:`IMAGES` copied into a fixtures folder of their own, as image specs."""
    folder = tmp_path_factory.mktemp("images")
    for name in IMAGES:
        shutil.copyfile(FIXTURE_IMAGES / name, folder / name)
    return fixture_specs(folder, REPO)


def gate(pipeline, root, images, **values) -> tuple[SetJudgement, GateSession]:
    """The gate's judgement of ``images`` (no pytest), its baselines and results under ``root``."""
    s = Settings.of(baselines=root / "baselines", results=root / "results", **values)
    session = GateSession(lambda: pipeline, s, Thresholds(), DeviceChoice("cpu"))
    return judge_set(session, session.runner, images), session
