"""The model zoo, measured: a known-good checkpoint, its broken variants made in memory, and
optionally other checkpoints (the random-init one), each run on every fixture image and judged.

The variants are :mod:`partattn_checks.model.broken`'s weight edits, applied to the loaded
pipeline's transformer in place and undone after their images (``broken``), so the checkpoint is
loaded once and never copied. ``measure`` returns the raw matrix; :mod:`partattn_checks.calibrate`
derives thresholds from it and ``partattn calibrate`` writes it (docs/model-matrix.md for the
embedded model). It lives above the model package because it runs and judges.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import EMBEDDED_MODEL as HEALTHY
from .checks import CHECKS, CheckResult, Thresholds
from .model.broken import VARIANTS

#: The checkpoint folder a random-init tiny model lives in (the matrix's extra row for the embedded model).
RANDOM = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints" / "tiny-random"


def targets() -> dict[str, str]:
    """Which check each broken model is made to fail (the random-init model should fail separation)."""
    return {**{name: v.target for name, v in VARIANTS.items()}, "random": "part_separation"}


TARGETS = targets()


@dataclass(frozen=True)
class ImageRun:
    """What one image needs to run: its path, display name and the run settings of its sidecar."""

    path: Path
    name: str
    sidecar: dict


def fixture_images(folder: str | Path, rootdir: str | Path = ".") -> list[ImageRun]:
    """The images under ``folder`` as the gate collects them (sorted), with their sidecar settings;
    a missing or empty folder, or an image the gate could not run, is a ``sidecar.FixtureError``
    (a ``ValueError``) naming it."""
    from .sidecar import fixture_specs

    specs = fixture_specs(folder, rootdir)
    folder = Path(folder).expanduser().resolve()
    return [ImageRun(spec.path, spec.path.relative_to(folder).as_posix(), spec.run_layer()) for spec in specs]


#: ``{model: {image name: {check: CheckResult}}}``
Matrix = dict[str, dict[str, dict[str, CheckResult]]]


def run_images(
    pipeline,
    images: Iterable[ImageRun],
    *,
    options: Mapping | None = None,
    thresholds: Thresholds | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, CheckResult]]:
    """Run and judge every image on ``pipeline`` as it is now; ``{image name: {check: result}}``
    (records are dropped: at release scale they are large and the results hold what we need)."""
    from .runspec import for_pipeline
    from .session import run_case

    out = {}
    for image in images:
        spec = for_pipeline(pipeline, options, image.sidecar, labels={"sidecar": f"{image.name} sidecar"})
        outcome = run_case(pipeline, image.path, spec, thresholds)
        out[image.name] = dict(outcome.results)
        if progress is not None:
            progress(image.name)
    return out


def measure(
    pipeline,
    images: list[ImageRun],
    *,
    options: Mapping | None = None,
    thresholds: Thresholds | None = None,
    variants: Iterable[str] | None = None,
    others: Mapping[str, Callable[[], object]] | None = None,
    progress: Callable[[str, str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Matrix:
    """The matrix: ``"healthy"`` (``pipeline`` as loaded), each variant (edited in memory, restored
    after its images) and each of ``others`` (``{row name: load()}``, loaded one at a time). A variant
    that does not fit the model (e.g. no part embedding) is left out and ``warn`` is told why."""
    from .model.broken import VariantError, broken, edited_parameters

    def tell(model):
        return (lambda image: progress(model, image)) if progress is not None else None

    matrix: Matrix = {
        "healthy": run_images(pipeline, images, options=options, thresholds=thresholds, progress=tell("healthy"))
    }
    for name in VARIANTS if variants is None else variants:
        try:
            edited_parameters(pipeline.transformer, name)
        except VariantError as err:
            if warn is not None:
                warn(f"the {name} variant does not fit this model: {err}")
            continue
        with broken(pipeline.transformer, name):
            matrix[name] = run_images(pipeline, images, options=options, thresholds=thresholds, progress=tell(name))
    for name, load in (others or {}).items():
        matrix[name] = run_images(load(), images, options=options, thresholds=thresholds, progress=tell(name))
    return matrix


__all__ = ["CHECKS", "HEALTHY", "RANDOM", "TARGETS", "ImageRun", "Matrix", "fixture_images", "measure", "run_images"]
