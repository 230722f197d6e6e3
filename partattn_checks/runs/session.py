"""Running and judging, apart: what the plugin, the ``partattn`` command and the visualizer share.

* :func:`run_record` denoises one image with capture under a resolved
  :class:`~partattn_checks.capture.runspec.RunSpec` and returns its ``AttentionRecord``: the expensive step.
* :func:`judge` applies the checks to a record under thresholds: cheap, and re-runnable on the
  same record with other thresholds or checks without denoising again.
* :func:`run_case` is both, once (no cache), for one image that is not a fixture: ``partattn run``
  and the visualizer.
* :class:`Session` is **the fixture-set runner** every front end uses (the pytest gate, ``partattn
  calibrate``, ``trend`` and ``compare``, the training monitor, the benchmarks): fixture images
  (``sidecar.ImageSpec``: part count, pinned run settings and ``[thresholds.*]`` overrides) and
  noise seeds in, one typed :class:`CaseOutcome` per (image, seed) out (:meth:`Session.run_set`,
  whose ``progress`` callback drives the command's one progress bar). It holds the pipeline,
  loaded lazily and once, and a record cache keyed by what changes the denoising only, ``(model,
  image path, RunSpec)``. Thresholds and check names are not part of that key: judging a cached
  record again never re-runs the model.

Importing this module imports no torch.
"""

from __future__ import annotations

import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..capture.runspec import RunSpec, dtype_name, for_pipeline
from ..checks import CHECKS, CheckResult, Thresholds, run_checks
from ..errors import PartattnError
from .sidecar import ImageSpec

if TYPE_CHECKING:
    from ..baselines.floor import Condition
    from ..baselines.runner import ImageRuns
    from ..baselines.sample import SeedRun, SeedSample
    from ..capture.record import AttentionRecord

#: Records (and judged outcomes) kept per process; an image's items run back to back, so a few suffice.
CACHE_SIZE = 4


class CaseError(PartattnError, RuntimeError):
    """An image (or the model) could not be run (also a ``RuntimeError``); the message says why and what
    to do."""


@dataclass(frozen=True)
class CaseOutcome:
    """One image's record under one run spec (seed included) and the verdicts of the checks on it."""

    image: Path | str
    spec: RunSpec
    record: AttentionRecord
    results: dict[str, CheckResult] = field(default_factory=dict)
    seconds: float = 0.0  # denoising with capture (0 when the record came from the cache)
    name: str = ""  # the image as reports show it (``ImageSpec.display``), when run from a fixture set
    thresholds: Thresholds | None = None  # what the checks judged with (sidecar overrides applied)

    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def summary(self) -> dict[str, float]:
        """Headline metrics of the record (what baselines store)."""
        return self.record.summary()


def run_record(pipeline, image, spec: RunSpec, *, selection=None, callback=None):
    """Denoise ``image`` with capture (non-finite values are recorded, not raised); the record."""
    from ..capture.pipeline_run import record_attention

    extra = {"callback": callback} if callback is not None else {}
    _, record = record_attention(pipeline, image, spec=spec, selection=selection, nonfinite="record", **extra)
    return record


def judge(record, thresholds: Thresholds | None = None, checks=None) -> dict[str, CheckResult]:
    """``{check name: CheckResult}`` of the record checks (``checks``: names, default all) on ``record``."""
    names = list(checks) if checks is not None else list(CHECKS)
    return {r.name: r for r in run_checks(record, thresholds, names=names)}


def run_case(
    pipeline, image, spec: RunSpec, thresholds: Thresholds | None = None, *, selection=None, checks=None, callback=None
) -> CaseOutcome:
    """Run ``image`` under ``spec`` and judge it; ``callback(step, timestep, latents)`` is the
    pipeline's per-step callback (e.g. a progress bar)."""
    start = time.perf_counter()
    record = run_record(pipeline, image, spec, selection=selection, callback=callback)
    seconds = time.perf_counter() - start
    return CaseOutcome(
        image=image, spec=spec, record=record, results=judge(record, thresholds, checks), seconds=seconds
    )


def error_message(exc: BaseException) -> str:
    """A clean message for expected errors; the type and a short traceback for anything else."""
    from ..model.files import CheckpointError

    if isinstance(exc, (CheckpointError, FileNotFoundError, CaseError)):
        return str(exc)
    if isinstance(exc, (ValueError, OSError)) and str(exc):
        return str(exc)
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-4))
    return f"{type(exc).__name__}: {exc}\n{tb.rstrip()}"


class Session:
    """Per process: the pipeline (``load()`` called lazily, once) and the record cache.

    ``options``: the options layer of every run spec (``steps``, ``seed``, ``guidance_scale``;
    ``None`` values are unset), named ``options_label`` in errors. ``runs`` counts the denoising
    runs this session made.
    """

    def __init__(
        self,
        load: Callable[[], object],
        *,
        options: Mapping | None = None,
        options_label: str = "options",
        cache_size: int = CACHE_SIZE,
        thresholds: Thresholds | None = None,
        checks: Sequence[str] | None = None,
        load_in: Callable[[str], object] | None = None,
    ):
        self._load = load
        self._load_in = load_in
        self._in_dtype: dict[str, object] = {}
        self._views: dict[str, object] = {}
        self.options = {k: v for k, v in (options or {}).items() if v is not None}
        self.options_label = options_label
        self.cache_size = cache_size
        self.thresholds = thresholds or Thresholds()
        self.checks = list(checks) if checks is not None else None
        self.runs = 0
        self._pipeline = None
        self._pipeline_error: str | None = None
        self._records: OrderedDict[tuple, object] = OrderedDict()
        self._outcomes: OrderedDict[tuple, CaseOutcome] = OrderedDict()

    @classmethod
    def around(cls, pipeline, **kwargs) -> Session:
        """The runner around an already loaded ``pipeline``, without a record cache: calibration's
        variants and a training run change its weights in place between runs, and trend, compare
        and the monitor run each record once."""
        return cls(lambda: pipeline, cache_size=0, **kwargs)

    # -- pipeline -----------------------------------------------------------------------------
    @property
    def pipeline(self):
        if self._pipeline_error is not None:  # said in full by the first run that tried
            raise CaseError(
                f"the model could not be loaded: {self._pipeline_error.splitlines()[0]} "
                f"(the first failing item of this session has the details)"
            )
        if self._pipeline is None:
            try:
                self._pipeline = self._load()
            except Exception as exc:  # noqa: BLE001 - this image's failure; later images get one line
                self._pipeline_error = error_message(exc)
                raise CaseError(f"could not load the model: {self._pipeline_error}") from None
        return self._pipeline

    @property
    def loaded(self):
        """The pipeline if it is loaded, else ``None`` (never loads it)."""
        return self._pipeline

    def model_key(self) -> str:
        return str(getattr(getattr(self.pipeline, "checkpoint", None), "path", id(self.pipeline)))

    @property
    def model_label(self) -> str:
        """The model as a baseline's fingerprint names it (the gate names the embedded one the same
        on every machine; a Hugging Face hub snapshot is ``hub:<repo id>`` everywhere)."""
        from ..model.hub import snapshot_of

        path = getattr(getattr(self.pipeline, "checkpoint", None), "path", None)
        snapshot = snapshot_of(path) if path is not None else None
        return f"hub:{snapshot.repo_id}" if snapshot is not None else str(path or "in-memory model")

    def pipeline_in(self, dtype: str):
        """The pipeline in another model dtype (the numeric floor's dtype runs): ``load_in(dtype)``, else
        a converted copy of the built-in pipeline; loaded once."""
        if dtype == dtype_name(self.pipeline.dtype):
            return self.pipeline
        if dtype not in self._in_dtype:
            if self._load_in is not None:
                self._in_dtype[dtype] = self._load_in(dtype)
            else:
                from ..model.pipeline import converted

                self._in_dtype[dtype] = converted(self.pipeline, dtype)
        return self._in_dtype[dtype]

    def image_view(self, image: ImageSpec):
        """The encoder's view of the image (PIL) for overlays and summaries, or None if the pipeline
        cannot give it (one kept)."""
        if image.key not in self._views:
            view = None
            fn = getattr(self.loaded, "preprocessed_image", None)
            if fn is not None:
                try:
                    view = fn(str(image.path))
                except Exception:  # noqa: BLE001 - overlays are optional
                    view = None
            self._views = {image.key: view}
        return self._views[image.key]

    # -- run specs ----------------------------------------------------------------------------
    def spec(
        self, sidecar: Mapping | None = None, call: Mapping | None = None, *, sidecar_label: str = "sidecar"
    ) -> RunSpec:
        """The run spec: the pipeline's checkpoint defaults, this session's options, ``sidecar``, ``call``."""
        labels = {"options": self.options_label, "sidecar": sidecar_label}
        return for_pipeline(self.pipeline, self.options, sidecar, call, labels=labels)

    # -- running and judging ------------------------------------------------------------------
    def record(self, image, spec: RunSpec, *, selection=None, name: str | None = None):
        """The record of ``image`` (a path) under ``spec``: run once, then from the cache. Runs
        with a ``selection`` (e.g. full maps) are not cached. A failed run is a ``CaseError``
        (remembered, so the image's other items do not run it again)."""
        key = (self.model_key(), str(Path(image).resolve()), spec)
        if selection is None and key in self._records:
            self._records.move_to_end(key)
            cached = self._records[key]
            if isinstance(cached, CaseError):
                raise cached
            return cached
        pipeline = self.pipeline
        self.runs += 1
        try:
            record = run_record(pipeline, image, spec, selection=selection)
        except Exception as exc:  # noqa: BLE001 - becomes this image's failure, not the session's
            record = CaseError(f"could not run {name or image}: {error_message(exc)}")
        if selection is None:
            _remember(self._records, key, record, self.cache_size)
        if isinstance(record, CaseError):
            raise record
        return record

    def outcome(
        self,
        image,
        spec: RunSpec,
        thresholds: Thresholds | None = None,
        *,
        checks=None,
        selection=None,
        name: str | None = None,
    ) -> CaseOutcome:
        """``image``'s cached record judged under ``thresholds``. The same (record, thresholds,
        checks) gives the same outcome object; other thresholds re-judge, never re-run."""
        thresholds = thresholds or Thresholds()
        key = (self.model_key(), str(Path(image).resolve()), spec, thresholds, tuple(checks) if checks else None)
        if selection is None and key in self._outcomes:
            self._outcomes.move_to_end(key)
            return self._outcomes[key]
        start, runs = time.perf_counter(), self.runs
        record = self.record(image, spec, selection=selection, name=name)
        seconds = time.perf_counter() - start if self.runs > runs else 0.0
        outcome = CaseOutcome(
            image=image,
            spec=spec,
            record=record,
            results=judge(record, thresholds, checks),
            seconds=seconds,
            name=name or "",
            thresholds=thresholds,
        )
        if selection is None:
            _remember(self._outcomes, key, outcome, self.cache_size)
        return outcome

    def run_in_memory(
        self, image, spec: RunSpec, thresholds: Thresholds | None = None, *, checks=None, selection=None
    ) -> CaseOutcome:
        """An in-memory image (PIL): run and judge, not cached (it has no path to key on)."""
        self.runs += 1
        return run_case(self.pipeline, image, spec, thresholds, selection=selection, checks=checks)

    # -- fixture images -----------------------------------------------------------------------
    def thresholds_for(self, image: ImageSpec, extra: Mapping | None = None) -> Thresholds:
        """This session's thresholds with ``image``'s sidecar ``[thresholds.*]`` overrides, then ``extra`` (the
        call's): :meth:`Thresholds.resolve` over the session's, never over the built-in defaults."""
        return Thresholds.resolve(self.thresholds, sidecar=image.thresholds_layer(), call=extra)

    def image_spec(self, image: ImageSpec, call: Mapping | None = None) -> RunSpec:
        """``image``'s run spec: checkpoint defaults, options, its sidecar, ``call``."""
        if image.error:
            raise CaseError(image.error)
        return self.spec(image.run_layer(), call, sidecar_label=str(image.sidecar or image.display))

    def image_outcome(
        self,
        image: ImageSpec,
        thresholds: Thresholds | None = None,
        call: Mapping | None = None,
        *,
        checks=None,
        selection=None,
    ) -> CaseOutcome:
        """Run ``image`` (once per run spec; cached) and judge it under ``thresholds`` (default: the
        session's with the image's sidecar overrides); ``CaseError`` if it cannot run,
        ``RunSpecError`` (a ``ValueError``) if its settings are invalid."""
        run = self.image_spec(image, call)
        t = thresholds if thresholds is not None else self.thresholds_for(image)
        checks = checks if checks is not None else self.checks
        return self.outcome(image.path, run, t, checks=checks, selection=selection, name=image.display)

    def run_set(
        self,
        images: Iterable[ImageSpec],
        *,
        seeds: Sequence[int] | None = None,
        progress: Callable[[CaseOutcome], None] | None = None,
    ) -> Iterator[CaseOutcome]:
        """Every image under every seed (default: the seed its spec resolves to), image by image:
        one :class:`CaseOutcome` each, judged with the image's own thresholds. A generator: a
        caller that keeps only what it needs holds one record at a time. ``progress`` is called
        after each run (e.g. a progress bar's update)."""
        for image in images:
            for seed in seeds if seeds is not None else (None,):
                outcome = self.image_outcome(image, call={"seed": seed} if seed is not None else None)
                if progress is not None:
                    progress(outcome)
                yield outcome

    # -- what the baseline runner runs -----------------------------------------------------------
    def seed_sample(
        self, image: ImageSpec, seeds: Sequence[int], condition: Condition | None = None, call: Mapping | None = None
    ) -> SeedSample:
        """``image`` under each of ``seeds`` (plain runs come from the cache when they were made), each
        summarized as it comes; ``condition``: a numeric-floor perturbation (never cached); ``call``:
        run settings that win over the image's sidecar (the seed aside)."""
        from ..baselines.sample import SeedSample

        return SeedSample(tuple(self._seed_run(image, seed, condition, call) for seed in seeds))

    def _seed_run(self, image: ImageSpec, seed: int, condition: Condition | None, call: Mapping | None) -> SeedRun:
        from ..baselines.fingerprint import environment_fingerprint
        from ..baselines.paired_attention import StepMarginals
        from ..baselines.sample import SeedRun
        from ..baselines.summary import AttentionSummary

        call = {**(call or {}), "seed": seed}
        if condition is None:
            outcome = self.image_outcome(image, call=call)
            record, results = outcome.record, outcome.results
        else:
            record = self._perturbed_record(image, call, condition)
            results = judge(record, self.thresholds_for(image), self.checks)
        size = getattr(self.image_view(image), "size", None)
        return SeedRun(
            seed=seed,
            metrics=record.summary(),
            checks={name: r.value for name, r in results.items()},
            environment=environment_fingerprint(record.meta, self.model_label),
            attention=AttentionSummary.from_record(record, image_size=size, exact=True),
            steps=StepMarginals.from_record(record),
        )

    def _perturbed_record(self, image: ImageSpec, call: Mapping, condition: Condition):
        """One run under a floor condition: another dtype, thread count or a rounding error (not cached)."""
        import contextlib

        from ..model.perturb import ROUNDING_SEED, intra_op_threads, rounding_error

        pipeline = self.pipeline_in(condition.dtype) if condition.dtype is not None else self.pipeline
        spec = for_pipeline(pipeline, self.options, image.run_layer(), call)
        self.runs += 1
        with contextlib.ExitStack() as stack:
            if condition.threads is not None:
                stack.enter_context(intra_op_threads(condition.threads))
            if condition.rounding:
                stack.enter_context(rounding_error(pipeline, seed=ROUNDING_SEED + condition.pattern))
            try:
                return run_record(pipeline, image.path, spec)
            except Exception as exc:  # noqa: BLE001 - the image's failure, said once
                raise CaseError(
                    f"could not run {image.display} for the numeric floor ({condition.name}): {error_message(exc)}"
                ) from None

    def image_runs(self, image: ImageSpec, call: Mapping | None = None) -> ImageRuns:
        """``image`` as the baseline runner sees it (its run seed, how to run it, where it runs);
        ``call``: run settings that win over its sidecar."""
        import torch

        from ..baselines.runner import ImageRuns

        spec = self.image_spec(image, call)
        return ImageRuns(
            key=image.key,
            display=image.display,
            seed=spec.seed,
            sample=lambda seeds, condition: self.seed_sample(image, seeds, condition, call),
            device_kind=spec.device.split(":")[0],
            dtype=spec.dtype,
            threads=torch.get_num_threads(),
        )


def _remember(cache: OrderedDict, key, value, size: int) -> None:
    cache[key] = value
    while len(cache) > size:
        cache.popitem(last=False)
