"""Attention health over training: the fixture images through each saved checkpoint, in step order.

* :func:`find_checkpoints` turns paths into ordered :class:`TrendCheckpoint` entries: a checkpoint
  folder, or a training output folder holding accelerate-style ``checkpoint-N/`` subfolders
  (ordered by N). A folder holding only ``transformer/`` borrows the rest (image encoder, feature
  extractor, scheduler, ``partattn.json``) from a base checkpoint.
* :func:`load_pipeline` loads one of them (once), through the normal loader.
* :func:`fixture_images` lists a folder's images with their part counts and sidecars.
* :func:`run_trend` runs and judges every image on every checkpoint; the :class:`Trend` it returns
  says where each check first fails and becomes ``trend.json``.

``partattn trend`` (``cli/trend.py``) draws and writes it. Importing this module imports no torch.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .checks import CHECKS, REGISTRY, Thresholds
from .errors import PartattnError

#: ``checkpoint-1500`` (accelerate, diffusers' training scripts), else a trailing number (``step_300``).
STEP_NAME = re.compile(r"^checkpoint[-_](\d+)$")
TRAILING_NUMBER = re.compile(r"(\d+)$")
#: Headline metrics (``AttentionRecord.summary`` keys) the trend follows, mean over images.
HEADLINE = ("separation", "entropy_mean", "peak_mean", "stability_max_jump")


class TrendError(PartattnError, ValueError):
    """Checkpoints or images that cannot make a trend; the message names the path and the fix."""


@dataclass(frozen=True)
class TrendCheckpoint:
    path: Path
    step: int | None  # from the folder name; None when it has no number
    transformer_only: bool = False  # borrows the rest from the base checkpoint

    @property
    def label(self) -> str:
        return self.path.name

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "label": self.label,
            "step": self.step,
            "transformer_only": self.transformer_only,
        }


def _step_of(folder: Path) -> int | None:
    match = STEP_NAME.match(folder.name) or TRAILING_NUMBER.search(folder.name)
    return int(match.group(1)) if match else None


def _kind(folder: Path) -> str | None:
    """``"full"`` (has model_index.json), ``"transformer"`` (only transformer/), else None."""
    if (folder / "model_index.json").is_file():
        return "full"
    if (folder / "transformer").is_dir():
        return "transformer"
    return None


def find_checkpoints(paths: Sequence[str | Path], *, base: str | Path | None = None) -> list[TrendCheckpoint]:
    """The checkpoints ``paths`` name, ordered by training step when every one has a step number
    (else in the order given). A path is a checkpoint folder or a folder of ``checkpoint-N/``."""
    found: list[TrendCheckpoint] = []
    for given in paths:
        path = Path(given).expanduser()
        if not path.is_dir():
            raise TrendError(f"{path}: not a folder; give checkpoint folders or a training output folder")
        kind = _kind(path)
        if kind is not None:
            found.append(TrendCheckpoint(path, _step_of(path), kind == "transformer"))
            continue
        subs = [p for p in path.iterdir() if p.is_dir() and STEP_NAME.match(p.name) and _kind(p)]
        if not subs:
            raise TrendError(
                f"{path}: neither a checkpoint (model_index.json or transformer/) nor a folder of "
                f"checkpoint-N/ subfolders; give the checkpoint folders themselves"
            )
        found.extend(TrendCheckpoint(p, _step_of(p), _kind(p) == "transformer") for p in subs)
    if not found:
        raise TrendError("no checkpoints given")
    if all(c.step is not None for c in found):
        found.sort(key=lambda c: c.step)
        steps = [c.step for c in found]
        repeated = sorted({s for s in steps if steps.count(s) > 1})
        if repeated:
            same = [str(c.path) for c in found if c.step == repeated[0]]
            raise TrendError(f"two checkpoints for step {repeated[0]}: {', '.join(same)}; give one of them")
    borrowing = [c for c in found if c.transformer_only]
    if borrowing and base is None:
        raise TrendError(
            f"{borrowing[0].path} holds only transformer/; pass --base DIR, the checkpoint it was trained "
            f"from, to borrow the image encoder, feature extractor and scheduler"
        )
    if base is not None and _kind(Path(base).expanduser()) != "full":
        raise TrendError(f"--base {base}: not a checkpoint folder (no model_index.json)")
    return found


@contextlib.contextmanager
def assembled(checkpoint: TrendCheckpoint, base: str | Path | None) -> Iterator[Path]:
    """A folder to load ``checkpoint`` from: itself, or (transformer only) a temporary folder of links
    to the base's components and the checkpoint's ``transformer/``, removed afterwards."""
    if not checkpoint.transformer_only:
        yield checkpoint.path
        return
    base = Path(base).expanduser().resolve()
    folder = Path(tempfile.mkdtemp(prefix="partattn-trend-"))
    try:
        for entry in base.iterdir():
            if entry.name != "transformer":
                (folder / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
        (folder / "transformer").symlink_to(checkpoint.path.resolve() / "transformer", target_is_directory=True)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def load_pipeline(checkpoint: TrendCheckpoint, *, base=None, device: str = "cpu", dtype: str = "float32"):
    """The pipeline of one checkpoint (loaded once; its ``checkpoint.path`` is the checkpoint's own)."""
    from .model.files import checkpoint_problems, format_problems
    from .model.pipeline import PartCrafterPipeline
    from .runspec import torch_dtype

    with assembled(checkpoint, base) as folder:
        problems = checkpoint_problems(folder)
        if problems:
            raise TrendError(f"{checkpoint.path}: {format_problems(problems)}")
        pipeline = PartCrafterPipeline.from_pretrained(folder, device=device, dtype=torch_dtype(dtype))
    pipeline.checkpoint.path = checkpoint.path
    return pipeline


def fixture_images(folder: str | Path):
    """The images of a fixture folder (sorted, as the gate collects them) as ``sidecar.ImageSpec``;
    a folder or image that cannot run is a :class:`TrendError`."""
    from .sidecar import FixtureError, fixture_specs

    try:
        return fixture_specs(folder, Path.cwd())
    except FixtureError as err:
        raise TrendError(str(err)) from None


# ---------------------------------------------------------------------------------------- trend
@dataclass
class Trend:
    """Per checkpoint, per image, per check: ``{"value", "verdict", "threshold"}``; headline means."""

    checkpoints: list[TrendCheckpoint]
    images: list[str]
    checks: list[str]
    settings: dict
    results: list[dict[str, dict[str, dict]]] = field(default_factory=list)  # [ckpt][image][check]
    headline: list[dict[str, float]] = field(default_factory=list)  # [ckpt] mean over images

    def failing(self, index: int) -> dict[str, list[str]]:
        """``{check: [images failing it]}`` at checkpoint ``index`` (checks with no failure left out)."""
        out: dict[str, list[str]] = {}
        for image, checks in self.results[index].items():
            for name, result in checks.items():
                if result["verdict"] == "fail":
                    out.setdefault(name, []).append(image)
        return out

    def first_failures(self) -> dict[str, TrendCheckpoint | None]:
        """Each check's first failing checkpoint (None: it never fails)."""
        first: dict[str, TrendCheckpoint | None] = dict.fromkeys(self.checks)
        for i, checkpoint in enumerate(self.checkpoints):
            for name in self.failing(i):
                if first.get(name) is None:
                    first[name] = checkpoint
        return first

    def values(self, check: str) -> list[list[float | None]]:
        """``[checkpoint][image]`` values of one check (None where it was skipped)."""
        return [[self.results[i][img][check]["value"] for img in self.images] for i in range(len(self.checkpoints))]

    def verdicts(self, check: str) -> list[list[str]]:
        return [[self.results[i][img][check]["verdict"] for img in self.images] for i in range(len(self.checkpoints))]

    @property
    def last_fails(self) -> bool:
        return bool(self.failing(len(self.checkpoints) - 1))

    def to_dict(self) -> dict:
        first = self.first_failures()
        return {
            "settings": self.settings,
            "images": self.images,
            "checks": self.checks,
            "checkpoints": [
                {
                    **c.to_dict(),
                    "headline": self.headline[i],
                    "failing": self.failing(i),
                    "images": self.results[i],
                }
                for i, c in enumerate(self.checkpoints)
            ],
            "first_failure": {name: (c.label if c is not None else None) for name, c in first.items()},
            "last_fails": self.last_fails,
        }


def _finite_or_none(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def headline_means(summaries: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean over images of each :data:`HEADLINE` metric (over the images that have it)."""
    out = {}
    for key in HEADLINE:
        values = [s[key] for s in summaries if key in s and math.isfinite(s[key])]
        if values:
            out[key] = sum(values) / len(values)
    return out


def run_trend(
    checkpoints: Sequence[TrendCheckpoint],
    images,
    *,
    base=None,
    steps: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    thresholds: Thresholds | None = None,
    checks: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Trend:
    """Run and judge every image (``sidecar.ImageSpec``, from :func:`fixture_images`) on every
    checkpoint, one model in memory at a time, each image with its sidecar's settings and
    ``[thresholds.*]`` overrides. ``progress(done)`` is called after each image."""
    thresholds = thresholds or Thresholds()
    names = list(checks) if checks is not None else list(CHECKS)
    trend = Trend(
        list(checkpoints),
        [spec.path.name for spec in images],
        names,
        {"steps": steps, "seed": seed, "device": device, "dtype": dtype, "thresholds": thresholds.to_dict()},
    )
    done = 0
    for checkpoint in checkpoints:
        session = pipeline_session(
            load_pipeline(checkpoint, base=base, device=device, dtype=dtype),
            {"steps": steps, "seed": seed},
            thresholds,
            names,
        )
        per_image, summaries = {}, []
        for outcome in session.run_set(images):
            per_image[Path(outcome.image).name] = {
                name: {
                    "value": _finite_or_none(r.value),
                    "verdict": r.verdict,
                    "threshold": r.threshold,
                    "reason": r.reason,
                }
                for name, r in outcome.results.items()
            }
            summaries.append(outcome.summary)
            done += 1
            if progress is not None:
                progress(done)
        trend.results.append(per_image)
        trend.headline.append(headline_means(summaries))
        del session  # and with it the pipeline: the next checkpoint loads into the freed memory
    return trend


def pipeline_session(pipeline, options: dict, thresholds: Thresholds | None = None, checks=None):
    """A :class:`~partattn_checks.session.Session` around a loaded checkpoint's ``pipeline``, without
    a record cache (each record is run and judged once)."""
    from .session import Session

    return Session(lambda: pipeline, options=options, cache_size=0, thresholds=thresholds, checks=checks)


def check_label(name: str) -> str:
    """``"part separation (≥ threshold)"``-style label of a registered check."""
    check = REGISTRY.get(name)
    return f"{check.label} ({check.op} threshold)" if check is not None else name
