"""Attention health over training: the fixture images through each saved checkpoint, in step order.

* :func:`find_checkpoints` turns paths into ordered :class:`TrendCheckpoint` entries: a checkpoint
  folder, or a run folder of step subfolders (accelerate's ``checkpoint-N/``, upstream PartCrafter's
  ``000500/``), ordered by step. A folder holding only ``transformer/`` (and/or ``transformer_ema/``)
  borrows the rest (image encoder, feature extractor, scheduler, ``partattn.json``) from a base
  checkpoint; the optimizer, scheduler and RNG files beside it are never read. ``ema=True`` judges
  ``transformer_ema/``. Checkpoints of different architectures (``config.json``) are refused.
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..checks import CHECKS, CheckResult, Thresholds
from ..errors import PartattnError

if TYPE_CHECKING:
    from ..runs.distributed import Ranks

#: A step folder: ``checkpoint-1500`` (accelerate, diffusers' training scripts) or ``001500`` (upstream
#: PartCrafter's ``accelerator.save_state(<ckpt_dir>/<step:06d>)``). ``seed1`` or ``run_v2`` is no step.
STEP_NAME = re.compile(r"^(?:checkpoint[-_])?(\d+)$")
#: The transformer subfolders a checkpoint may hold: the trained weights and their EMA.
WEIGHTS = ("transformer", "transformer_ema")
#: ``PartCrafterDiTModel``'s arguments: the ``config.json`` keys that fix the transformer's shape. Others
#: (``_diffusers_version``, an EMA's ``decay`` and ``optimization_step``) may differ between checkpoints.
ARCHITECTURE_KEYS = (
    "num_attention_heads",
    "width",
    "in_channels",
    "num_layers",
    "cross_attention_dim",
    "max_num_parts",
    "enable_part_embedding",
    "enable_local_cross_attn",
    "enable_global_cross_attn",
    "global_attn_block_ids",
    "global_attn_block_id_range",
)
#: Headline metrics (``AttentionRecord.summary`` keys) the trend follows, mean over images.
HEADLINE = ("separation", "entropy_mean", "peak_mean", "stability_max_jump")
#: Checks whose value is a count (of non-finite values), not a share or distance on the 0..1 scale.
COUNT_CHECKS = ("nonfinite",)


class TrendError(PartattnError, ValueError):
    """Checkpoints or images that cannot make a trend; the message names the path and the fix."""


@dataclass(frozen=True)
class TrendCheckpoint:
    path: Path
    step: int | None  # from the folder name (checkpoint-N or all digits); None otherwise
    transformer_only: bool = False  # borrows the rest from the base checkpoint
    weights: str = "transformer"  # the subfolder judged: "transformer" or "transformer_ema"

    @property
    def label(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        """The judged transformer's ``config.json``."""
        return self.path / self.weights / "config.json"

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "label": self.label,
            "step": self.step,
            "transformer_only": self.transformer_only,
            "weights": self.weights,
        }


def _step_of(folder: Path) -> int | None:
    match = STEP_NAME.match(folder.name)
    return int(match.group(1)) if match else None


def _kind(folder: Path) -> str | None:
    """``"full"`` (has model_index.json), ``"transformer"`` (only transformer/ or transformer_ema/), else None."""
    if (folder / "model_index.json").is_file():
        return "full"
    if any((folder / name).is_dir() for name in WEIGHTS):
        return "transformer"
    return None


def as_checkpoint(path: str | Path, *, ema: bool = False) -> TrendCheckpoint:
    """One checkpoint folder, judged on ``transformer_ema/`` under ``ema`` (else ``transformer/``);
    a folder without that subfolder is a :class:`TrendError` naming it."""
    path = Path(path).expanduser()
    kind = _kind(path)
    if kind is None:
        raise TrendError(f"{path}: not a checkpoint folder (no model_index.json, transformer/ or transformer_ema/)")
    weights = WEIGHTS[1] if ema else WEIGHTS[0]
    if not (path / weights).is_dir():
        if ema:
            fix = "drop --ema to judge transformer/, or save the run with EMA on"
        elif (path / WEIGHTS[1]).is_dir():
            fix = "pass --ema to judge its EMA weights (transformer_ema/)"
        else:
            fix = "the checkpoint is incomplete (re-save or re-download it)"
        raise TrendError(f"{path}: no {weights}/ in it; {fix}")
    return TrendCheckpoint(path, _step_of(path), kind == "transformer", weights)


def find_checkpoints(
    paths: Sequence[str | Path], *, base: str | Path | None = None, ema: bool = False
) -> list[TrendCheckpoint]:
    """The checkpoints ``paths`` name. A path is a checkpoint folder or a run folder of step subfolders
    (``checkpoint-N/`` or upstream's ``000500/``; optimizer, scheduler and RNG files beside them are
    never read), whose checkpoints come ordered by step. Folders given one by one keep the order
    given unless every checkpoint has a step name. ``ema``: judge ``transformer_ema/``."""
    found: list[TrendCheckpoint] = []
    for given in paths:
        path = Path(given).expanduser()
        if not path.is_dir():
            raise TrendError(f"{path}: not a folder; give checkpoint folders or a training output folder")
        if _kind(path) is not None:
            found.append(as_checkpoint(path, ema=ema))
            continue
        subs = sorted(
            (p for p in path.iterdir() if p.is_dir() and _step_of(p) is not None and _kind(p)),
            key=lambda p: _step_of(p) or 0,  # each has a step
        )
        if not subs:
            raise TrendError(
                f"{path}: neither a checkpoint (model_index.json or transformer/) nor a folder of step "
                f"subfolders (checkpoint-N/ or 000500/, each holding transformer/); give the checkpoint folders "
                f"themselves"
            )
        found.extend(as_checkpoint(p, ema=ema) for p in subs)
    if not found:
        raise TrendError("no checkpoints given")
    seen: dict[Path, Path] = {}
    for c in found:  # the same folder twice (X and X/, a link to it, a run folder and one of its steps)
        first = seen.setdefault(c.path.resolve(), c.path)
        if first is not c.path:
            also = f" (also given as {first})" if str(first) != str(c.path) else ""
            raise TrendError(f"{c.path}: the same checkpoint folder is given twice{also}; give each checkpoint once")
    steps = [c.step for c in found if c.step is not None]
    repeated = sorted({s for s in steps if steps.count(s) > 1})
    if repeated:
        same = [str(c.path) for c in found if c.step == repeated[0]]
        raise TrendError(f"two checkpoints for step {repeated[0]}: {', '.join(same)}; give one of them")
    if len(steps) == len(found):
        found.sort(key=lambda c: c.step or 0)  # each has a step
    borrowing = [c for c in found if c.transformer_only]
    if borrowing and base is None:
        raise TrendError(
            f"{borrowing[0].path} holds only {borrowing[0].weights}/; pass --base DIR, the checkpoint it was trained "
            f"from, to borrow the image encoder, feature extractor and scheduler"
        )
    if base is not None and _kind(Path(base).expanduser()) != "full":
        raise TrendError(f"--base {base}: not a checkpoint folder (no model_index.json)")
    check_architecture(found)
    return found


def read_architecture(config: Path, error: type[ValueError] = TrendError) -> dict:
    """The :data:`ARCHITECTURE_KEYS` a transformer's ``config.json`` sets (the JSON only; no weights)."""
    from ..model.files import read_json

    data = read_json(config, error=error)
    if not isinstance(data, dict):
        raise error(f"{config}: holds a JSON {type(data).__name__}, not an object; re-save the checkpoint")
    return {key: data[key] for key in ARCHITECTURE_KEYS if key in data}


def check_architecture(checkpoints: Sequence[TrendCheckpoint], error: type[ValueError] = TrendError) -> None:
    """Refuse checkpoints whose transformers differ in architecture, naming the first two configs that
    differ and how. A missing ``config.json`` is left to the loader's pre-flight."""
    configs = [c.config for c in checkpoints if c.config.is_file()]
    if len(configs) < 2:
        return
    first = read_architecture(configs[0], error)
    for config in configs[1:]:
        other = read_architecture(config, error)
        differ = [f"{key} {first[key]} vs {other[key]}" for key in first if key in other and first[key] != other[key]]
        if differ:
            raise error(
                f"{configs[0]} and {config} describe different architectures ({', '.join(differ)}); attention "
                f"cannot be followed layer by layer across them: give checkpoints of the same model"
            )


@contextlib.contextmanager
def assembled(checkpoint: TrendCheckpoint, base: str | Path | None) -> Iterator[Path]:
    """A folder to load ``checkpoint`` from: itself, or a temporary folder of links to the components
    of the base (transformer only; else of the checkpoint itself) with the judged weights
    (``transformer/`` or ``transformer_ema/``) as ``transformer/``, removed afterwards. Nothing else
    of the checkpoint folder (optimizer, RNG states) is linked or read."""
    if not checkpoint.transformer_only and checkpoint.weights == "transformer":
        yield checkpoint.path
        return
    if not checkpoint.transformer_only:
        rest = checkpoint.path
    elif base is None:
        raise TrendError(f"{checkpoint.path} holds only {checkpoint.weights}/; pass --base DIR to borrow the rest")
    else:
        rest = Path(base)
    rest = rest.expanduser().resolve()
    folder = Path(tempfile.mkdtemp(prefix="partattn-trend-"))
    try:
        for entry in rest.iterdir():
            if entry.name not in WEIGHTS:
                (folder / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
        (folder / "transformer").symlink_to(checkpoint.path.resolve() / checkpoint.weights, target_is_directory=True)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def load_pipeline(
    checkpoint: TrendCheckpoint, *, base=None, device: str = "cpu", dtype: str = "float32", pipeline: str | None = None
):
    """The pipeline of one checkpoint (loaded once; its ``checkpoint.path`` is the checkpoint's own).
    ``pipeline``: ``module:factory`` of the user's own pipeline (``upstream.build_pipeline``),
    called with the checkpoint folder (assembled with ``base`` when it holds only a transformer)."""
    from ..capture.runspec import torch_dtype
    from ..model.files import checkpoint_problems, format_problems
    from ..model.pipeline import PartCrafterPipeline

    with assembled(checkpoint, base) as folder:
        if pipeline is not None:
            from ..capture.upstream import build_pipeline

            loaded = build_pipeline(pipeline, Path.cwd(), folder, device, dtype, "--pipeline")
            loaded.checkpoint.path = checkpoint.path
            return loaded
        problems = checkpoint_problems(folder)
        if problems:
            raise TrendError(f"{checkpoint.path}: {format_problems(problems)}")
        ours = PartCrafterPipeline.from_pretrained(folder, device=device, dtype=torch_dtype(dtype))
    ours.checkpoint.path = checkpoint.path
    return ours


def fixture_images(folder: str | Path):
    """The images of a fixture folder (sorted, as the gate collects them) as ``sidecar.ImageSpec``;
    a folder or image that cannot run is a :class:`TrendError`."""
    from ..runs.sidecar import FixtureError, fixture_specs

    try:
        return fixture_specs(folder, Path.cwd())
    except FixtureError as err:
        raise TrendError(str(err)) from None


# ---------------------------------------------------------------------------------------- trend
@dataclass
class Trend:
    """Per checkpoint, per image, per check: its ``CheckResult``; headline means."""

    checkpoints: list[TrendCheckpoint]
    images: list[str]
    checks: list[str]
    settings: dict
    results: list[dict[str, dict[str, CheckResult]]] = field(default_factory=list)  # [ckpt][image][check]
    headline: list[dict[str, float]] = field(default_factory=list)  # [ckpt] mean over images

    def failing(self, index: int) -> dict[str, list[str]]:
        """``{check: [images failing it]}`` at checkpoint ``index`` (checks with no failure left out)."""
        out: dict[str, list[str]] = {}
        for image, checks in self.results[index].items():
            for name, result in checks.items():
                if result.verdict == "fail":
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
        """``[checkpoint][image]`` values of one check (None where it was skipped or could not measure)."""
        return [[shown_value(per[img][check]) for img in self.images] for per in self.results]

    def verdicts(self, check: str) -> list[list[str]]:
        return [[per[img][check].verdict for img in self.images] for per in self.results]

    def threshold(self, check: str) -> float | None:
        """The check's threshold (the first image's that has one; a sidecar may set another)."""
        return first_threshold(r[check] for per in self.results for r in per.values())

    @property
    def by_step(self) -> bool:
        """Every checkpoint has a step: the trend is drawn against the training step, else per folder."""
        return all(c.step is not None for c in self.checkpoints)

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
                    "images": {
                        image: {name: result_entry(r) for name, r in checks.items()}
                        for image, checks in self.results[i].items()
                    },
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


def shown_value(result: CheckResult) -> float | None:
    """The value a trend or comparison shows: None where the check was skipped or could not
    measure (the record holds NaN/Inf: ``result.measured`` is False and its value is that count)."""
    return _finite_or_none(result.value) if result.measured else None


def first_threshold(results: Iterable[CheckResult]) -> float | None:
    """The first threshold among ``results`` of checks that could measure."""
    return next((r.threshold for r in results if r.measured and r.threshold is not None), None)


def result_entry(result: CheckResult) -> dict:
    """``{"value", "verdict", "threshold", "reason"}`` of one check result, its JSON form in
    trend.json and compare.json: a check that could not measure has no value or threshold there; its
    verdict and reason stay."""
    return {
        "value": shown_value(result),
        "verdict": result.verdict,
        "threshold": result.threshold if result.measured else None,
        "reason": result.reason,
    }


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
    pipeline: str | None = None,
    ranks: Ranks | None = None,
) -> Trend:
    """Run and judge every image (``sidecar.ImageSpec``, from :func:`fixture_images`) on every
    checkpoint, one model in memory at a time, each image with its sidecar's settings and
    ``[thresholds.*]`` overrides. ``progress(done)`` is called after each image (on this rank's
    share under a launch). ``pipeline``: the user's own ``module:factory`` (see :func:`load_pipeline`).
    ``ranks``: the processes of a ``torchrun`` launch (``runs.distributed``), which share the
    (checkpoint, image) runs and all get the whole trend; default one process."""
    check_architecture(checkpoints)
    thresholds = thresholds or Thresholds()
    names = list(checks) if checks is not None else list(CHECKS)
    weights = ", ".join(dict.fromkeys(c.weights for c in checkpoints))  # one name unless mixed by hand
    trend = Trend(
        list(checkpoints),
        [spec.path.name for spec in images],
        names,
        {
            "steps": steps,
            "seed": seed,
            "device": device,
            "dtype": dtype,
            "weights": weights,
            "thresholds": thresholds.to_dict(),
        },
    )
    from ..runs.distributed import Ranks
    from ..runs.session import Session

    ranks = ranks or Ranks()
    held: dict[int, Session] = {}  # the checkpoint this process holds: consecutive runs share it
    done = 0

    def run(unit: tuple[int, int]) -> tuple[dict[str, CheckResult], dict[str, float]]:
        nonlocal done
        c, i = unit
        if c not in held:
            held.clear()  # and with it the pipeline: the next checkpoint loads into the freed memory
            loaded = load_pipeline(
                checkpoints[c], base=base, device=ranks.device(device), dtype=dtype, pipeline=pipeline
            )
            held[c] = Session.around(
                loaded, options={"steps": steps, "seed": seed}, thresholds=thresholds, checks=names
            )
        outcome = held[c].image_outcome(images[i])
        done += 1
        if progress is not None:
            progress(done)
        return dict(outcome.results), outcome.summary

    units = [(c, i) for c in range(len(checkpoints)) for i in range(len(images))]
    results = ranks.map(units, run, label=lambda u: f"{checkpoints[u[0]].label} x {images[u[1]].path.name}")
    held.clear()
    for c in range(len(checkpoints)):
        per = results[c * len(images) : (c + 1) * len(images)]
        trend.results.append({spec.path.name: checks for spec, (checks, _) in zip(images, per, strict=True)})
        trend.headline.append(headline_means([summary for _, summary in per]))
    return trend
