"""The model zoo, measured: a known-good checkpoint, its broken variants made in memory, and
optionally other checkpoints (the random-init one), each run on every fixture image and judged.

The variants are :mod:`partattn_checks.model.broken`'s weight edits, applied to the loaded
pipeline's transformer in place and undone after their images (``broken``), so the checkpoint is
loaded once and never copied. ``measure`` returns the raw matrix; :mod:`partattn_checks.analysis.calibrate`
derives thresholds from it and ``partattn calibrate`` writes it (docs/model-matrix.md for the
embedded model). ``measure_graded`` runs the graded degradations (``GRADES``) the same way, level by
level, to find the smallest one each calibrated threshold catches.

The images are the fixture set's ``sidecar.ImageSpec`` (``sidecar.fixture_specs``): every run goes
through one :class:`~partattn_checks.runs.session.Session` per pipeline, so each image's sidecar run
settings and ``[thresholds.*]`` overrides apply as in the gate. It lives above the model package
because it runs and judges.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from .. import EMBEDDED_MODEL as HEALTHY
from ..checks import CHECKS, REGISTRY, CheckResult, Thresholds
from ..model.broken import GRADES, VARIANTS
from ..runs.sidecar import ImageSpec


def targets() -> dict[str, tuple[str, ...]]:
    """The checks each broken model is made to fail: what each registered check says breaks it
    (``Check.broken_by``); a random-init model (the matrix's ``random`` row) should fail separation."""
    out: dict[str, tuple[str, ...]] = {"random": ("part_separation",)}
    for name, check in REGISTRY.items():
        if check.broken_by in VARIANTS:
            out[check.broken_by] = (*out.get(check.broken_by, ()), name)
    return out


#: ``{model: {image name: {check: CheckResult}}}``
ResultMatrix = dict[str, dict[str, dict[str, CheckResult]]]
#: ``{grade: {level: {image name: {check: CheckResult}}}}``
Graded = dict[str, dict[float, dict[str, dict[str, CheckResult]]]]


def image_name(image: ImageSpec) -> str:
    """The matrix's name of a fixture image: its path below the fixtures folder, posix, with suffix."""
    return image.key + image.path.suffix


def by_name(images: Iterable[ImageSpec]) -> dict[str, ImageSpec]:
    return {image_name(image): image for image in images}


def session(pipeline, *, options: Mapping | None = None, thresholds: Thresholds | None = None):
    """The fixture-set runner around ``pipeline`` (uncached: the variants edit its weights in place)."""
    from ..runs.session import Session

    return Session.around(pipeline, options=options, options_label="the command line", thresholds=thresholds)


def run_images(
    runner, images: Iterable[ImageSpec], *, progress: Callable[[str], None] | None = None
) -> dict[str, dict[str, CheckResult]]:
    """Run and judge every image with ``runner`` (a :class:`~partattn_checks.runs.session.Session`) on its
    pipeline as it is now, each under its own thresholds; ``{image name: {check: result}}`` (records are
    dropped: at release scale they are large and the results hold what we need)."""
    out = {}
    for image in images:
        out[image_name(image)] = dict(runner.image_outcome(image).results)
        if progress is not None:
            progress(image_name(image))
    return out


def _fits(pipeline, variant, warn, what: str) -> bool:
    from ..model.broken import VariantError, edited_parameters

    try:
        edited_parameters(pipeline.transformer, variant)
    except VariantError as err:
        if warn is not None:
            warn(f"{what} does not fit this model: {err}")
        return False
    return True


def _teller(progress, model: str):
    return (lambda image: progress(model, image)) if progress is not None else None


def measure(
    pipeline,
    images: Sequence[ImageSpec],
    *,
    options: Mapping | None = None,
    thresholds: Thresholds | None = None,
    variants: Iterable[str] | None = None,
    others: Mapping[str, Callable[[], object]] | None = None,
    progress: Callable[[str, str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> ResultMatrix:
    """The matrix: ``"healthy"`` (``pipeline`` as loaded), each variant (edited in memory, restored
    after its images) and each of ``others`` (``{row name: load()}``, loaded one at a time), judged with
    ``thresholds`` and each image's sidecar overrides. A variant that does not fit the model (e.g. no
    part embedding) is left out and ``warn`` is told why."""
    from ..model.broken import broken

    runner = session(pipeline, options=options, thresholds=thresholds)
    matrix: ResultMatrix = {"healthy": run_images(runner, images, progress=_teller(progress, "healthy"))}
    for name in VARIANTS if variants is None else variants:
        if not _fits(pipeline, name, warn, f"the {name} variant"):
            continue
        with broken(pipeline.transformer, name):
            matrix[name] = run_images(runner, images, progress=_teller(progress, name))
    for name, load in (others or {}).items():
        other = session(load(), options=options, thresholds=thresholds)
        matrix[name] = run_images(other, images, progress=_teller(progress, name))
    return matrix


def measure_graded(
    pipeline,
    images: Sequence[ImageSpec],
    *,
    options: Mapping | None = None,
    thresholds: Thresholds | None = None,
    grades: Iterable[str] | None = None,
    progress: Callable[[str, str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Graded:
    """Every level of every graded degradation (:data:`~partattn_checks.model.broken.GRADES`), applied
    in memory like the variants, on every image, judged with ``thresholds`` (the calibrated ones) and
    each image's sidecar overrides. A grade that does not fit the model is left out (``warn``)."""
    from ..model.broken import broken, graded

    runner = session(pipeline, options=options, thresholds=thresholds)
    out: Graded = {}
    for name in GRADES if grades is None else grades:
        grade = GRADES[name]
        if not _fits(pipeline, graded(name, grade.levels[0]), warn, f"the {name} degradation"):
            continue
        out[name] = {}
        for level in grade.levels:
            variant = graded(name, level)
            with broken(pipeline.transformer, variant):
                out[name][level] = run_images(runner, images, progress=_teller(progress, variant.name))
    return out


__all__ = [
    "CHECKS",
    "HEALTHY",
    "Graded",
    "ResultMatrix",
    "by_name",
    "image_name",
    "measure",
    "measure_graded",
    "run_images",
    "session",
]
