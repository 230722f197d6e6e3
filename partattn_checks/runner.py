"""One case = one image run through the pipeline with capture, judged by the checks.

Shared by the pytest plugin, the ``partattn`` command and the visualizer, so all three run and
judge an image the same way.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .checks import CHECKS, CheckResult, Thresholds, run_checks

PART_PREFIX = re.compile(r"^np(\d+)_")


def parts_from_name(path: str | Path) -> int | None:
    """Part count from a file name prefix ``np<N>_`` (``np3_chair.png`` -> 3), else ``None``."""
    match = PART_PREFIX.match(Path(path).name)
    return int(match.group(1)) if match else None


@dataclass
class RunSettings:
    """How to run one image. ``None`` means the checkpoint's default (its ``partattn.json``)."""

    num_parts: int
    steps: int | None = None
    seed: int = 0
    guidance_scale: float | None = None
    num_tokens: int | None = None

    def run_kwargs(self) -> dict:
        return {"steps": self.steps, "seed": self.seed, "guidance_scale": self.guidance_scale,
                "num_tokens": self.num_tokens}


@dataclass
class CaseOutcome:
    image: Path | str
    settings: RunSettings
    record: "object"  # AttentionRecord
    results: dict[str, CheckResult] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def summary(self) -> dict[str, float]:
        """Headline metrics of the record (what baselines store)."""
        return self.record.summary()


def run_case(pipeline, image, settings: RunSettings, thresholds: Thresholds | None = None, *,
             selection=None, checks=None, callback=None) -> CaseOutcome:
    """Run ``image`` with capture and apply the record checks (``checks``: names, default all).
    ``callback(step, timestep, latents)`` is the pipeline's per-step callback (e.g. a progress bar)."""
    from .capture import record_attention

    start = time.perf_counter()
    extra = {"callback": callback} if callback is not None else {}
    _, record = record_attention(pipeline, image, settings.num_parts, selection=selection, nonfinite="record",
                                 **settings.run_kwargs(), **extra)
    names = list(checks) if checks is not None else list(CHECKS)
    results = {r.name: r for r in run_checks(record, thresholds, names=names)}
    return CaseOutcome(image=image, settings=settings, record=record, results=results,
                       seconds=time.perf_counter() - start)
