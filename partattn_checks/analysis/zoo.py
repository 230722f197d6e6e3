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

import contextlib
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


class _Rows:
    """The pipeline as each row of the matrix needs it, switched as the units move from row to row
    (consecutive units share a row): a variant's weight edit entered (the previous one undone
    first), another checkpoint loaded (the previous one let go). ``close()`` undoes the last edit."""

    def __init__(self, pipeline, variants: Mapping, others: Mapping, options, thresholds):
        self.pipeline, self.variants, self.others = pipeline, variants, others
        self.options, self.thresholds = options, thresholds
        self.row: str | None = None
        self.runner = None
        self.edit = contextlib.ExitStack()

    def __call__(self, row: str):
        """The fixture-set runner of ``row`` ("healthy", a variant's or another checkpoint's name)."""
        from ..model.broken import broken

        if row != self.row:
            self.close()  # the weights as loaded
            if row in self.others:
                self.runner = session(self.others[row](), options=self.options, thresholds=self.thresholds)
            else:
                if row in self.variants:
                    self.edit.enter_context(broken(self.pipeline.transformer, self.variants[row]))
                self.runner = session(self.pipeline, options=self.options, thresholds=self.thresholds)
            self.row = row
        return self.runner

    def close(self) -> None:
        self.edit.close()
        self.row, self.runner = None, None


def _run_rows(
    pipeline,
    images: Sequence[ImageSpec],
    rows: Sequence[str],
    *,
    variants: Mapping | None = None,
    others: Mapping | None = None,
    options=None,
    thresholds=None,
    progress=None,
    ranks=None,
) -> dict[str, dict[str, dict[str, CheckResult]]]:
    """``{row: {image name: {check: result}}}``: every image through every row (see :class:`_Rows`),
    as (row, image) units over ``ranks`` (``runs.distributed``; default one process)."""
    from ..runs.distributed import Ranks

    ranks = ranks or Ranks()
    rows_of = _Rows(pipeline, variants or {}, others or {}, options, thresholds)

    def run(unit: tuple[str, ImageSpec]) -> dict[str, CheckResult]:
        row, image = unit
        results = dict(rows_of(row).image_outcome(image).results)
        if progress is not None:
            progress(row, image_name(image))
        return results

    units = [(row, image) for row in rows for image in images]
    try:
        results = ranks.map(units, run, label=lambda u: f"{u[0]} x {image_name(u[1])}")
    finally:
        rows_of.close()
    matrix: dict[str, dict[str, dict[str, CheckResult]]] = {row: {} for row in rows}
    for (row, image), checks in zip(units, results, strict=True):
        matrix[row][image_name(image)] = checks
    return matrix


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
    ranks=None,
) -> ResultMatrix:
    """The matrix: ``"healthy"`` (``pipeline`` as loaded), each variant (edited in memory, restored
    after its images) and each of ``others`` (``{row name: load()}``, loaded one at a time), judged with
    ``thresholds`` and each image's sidecar overrides. A variant that does not fit the model (e.g. no
    part embedding) is left out and ``warn`` is told why. ``ranks``: the processes of a ``torchrun``
    launch, which share the (row, image) runs and all get the whole matrix."""
    fitting = [
        name
        for name in (VARIANTS if variants is None else variants)
        if _fits(pipeline, name, warn, f"the {name} variant")
    ]
    rows = ["healthy", *fitting, *(others or {})]
    return _run_rows(
        pipeline,
        images,
        rows,
        variants={name: name for name in fitting},
        others=others,
        options=options,
        thresholds=thresholds,
        progress=progress,
        ranks=ranks,
    )


def measure_graded(
    pipeline,
    images: Sequence[ImageSpec],
    *,
    options: Mapping | None = None,
    thresholds: Thresholds | None = None,
    grades: Iterable[str] | None = None,
    progress: Callable[[str, str], None] | None = None,
    warn: Callable[[str], None] | None = None,
    ranks=None,
) -> Graded:
    """Every level of every graded degradation (:data:`~partattn_checks.model.broken.GRADES`), applied
    in memory like the variants, on every image, judged with ``thresholds`` (the calibrated ones) and
    each image's sidecar overrides. A grade that does not fit the model is left out (``warn``).
    ``ranks``: as for :func:`measure`, over the (grade, level, image) runs."""
    from ..model.broken import graded

    levels = {}  # variant name -> (grade, level, variant)
    for name in GRADES if grades is None else grades:
        grade = GRADES[name]
        if _fits(pipeline, graded(name, grade.levels[0]), warn, f"the {name} degradation"):
            for level in grade.levels:
                variant = graded(name, level)
                levels[variant.name] = (name, level, variant)
    matrix = _run_rows(
        pipeline,
        images,
        list(levels),
        variants={key: variant for key, (_, _, variant) in levels.items()},
        options=options,
        thresholds=thresholds,
        progress=progress,
        ranks=ranks,
    )
    out: Graded = {}
    for key, (name, level, _) in levels.items():
        out.setdefault(name, {})[level] = matrix[key]
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
