"""pytest File/Item classes for fixture images, and the per-process session that runs them.

* :func:`read_spec` reads what an image needs to run: its part count (``np<N>_`` prefix or a
  sidecar ``<stem>.toml``), per-image run settings and threshold overrides.
* :class:`PartattnSession` loads the pipeline once per process (per xdist worker), runs each
  image once (the outcome is shared by that image's items) and writes figures and baselines.
* :class:`ImageFile` yields one :class:`CheckItem` per check (``<image>::part_separation``,
  ..., ``<image>::baseline``).
* :class:`PartattnFixture` is what the ``partattn`` fixture returns.

Importing this module is light (no torch): items are collected, and skipped, without --partattn.
"""

from __future__ import annotations

import time
import traceback
import warnings
from collections import OrderedDict
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path

import pytest

from . import report
from .errors import PartattnError
from .baseline import BaselineError, BaselineOutcome, BaselineStore, evaluate, fingerprint
from .checks import CHECKS, CheckResult, Thresholds, tomllib
from .options import EMBEDDED_MODEL, DeviceChoice, Settings
from .runner import CaseOutcome, RunSettings, parts_from_name, run_case

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
ITEM_CHECKS = (*CHECKS, "baseline")
SKIP_REASON = "pass --partattn to run attention checks"
SIDECAR_RUN_KEYS = ("num_parts", "steps", "seed", "guidance_scale")
#: Outcomes kept per process; items of one image normally run back to back, so a few suffice.
CACHE_SIZE = 4

SETTINGS_KEY = pytest.StashKey[Settings]()
SESSION_KEY = pytest.StashKey["PartattnSession"]()


class PartattnEnvironmentWarning(UserWarning):
    """A baseline was recorded in a different environment (fingerprint mismatch)."""


class CheckFailed(PartattnError):
    """A check item failed; ``str()`` is the full failure report."""


class CaseError(PartattnError):
    """An image (or the model) could not be run; the message says why and what to do."""


# ----------------------------------------------------------------------------- image specs
@dataclass(frozen=True)
class ImageSpec:
    path: Path  # absolute
    key: str  # path below the fixtures folder, posix, without suffix: baseline and results folder name
    display: str  # path relative to the rootdir (as in node ids)
    num_parts: int | None = None
    run: dict = field(default_factory=dict)  # steps / seed / guidance_scale from the sidecar
    thresholds: dict = field(default_factory=dict)  # [thresholds.<check>] of the sidecar
    sidecar: Path | None = None
    error: str | None = None  # why this image cannot run (bad sidecar, no part count)


def _relative(path: Path, root: Path) -> Path | None:
    try:
        return path.relative_to(root)
    except ValueError:
        return None


def read_spec(path: Path, fixtures: Path, rootdir: Path) -> ImageSpec:
    """What ``path`` needs to run. Problems go into ``error`` (the image's items fail with it)."""
    path = Path(path).resolve()
    rel = _relative(path, fixtures)
    key = (rel.with_suffix("") if rel is not None else Path(path.stem)).as_posix()
    shown = _relative(path, rootdir)
    display = shown.as_posix() if shown is not None else str(path)
    sidecar = path.with_suffix(".toml")
    base = dict(path=path, key=key, display=display)
    from_name = parts_from_name(path)
    if not sidecar.is_file():
        if from_name is None:
            return ImageSpec(**base, error=(
                f"{display}: unknown part count. Either rename the file with an np<N>_ prefix "
                f"(e.g. np3_{path.name}) or add a sidecar file {sidecar.name} next to it with "
                f"'num_parts = 3'"))
        return ImageSpec(**base, num_parts=from_name)
    try:
        doc = tomllib.loads(sidecar.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return ImageSpec(**base, sidecar=sidecar, error=f"{sidecar}: invalid TOML ({exc})")
    problems = _sidecar_problems(doc)
    if problems:
        return ImageSpec(**base, sidecar=sidecar, error=f"{sidecar}: {problems}")
    thresholds = doc.get("thresholds", {})
    try:
        Thresholds().merged(thresholds, source=str(sidecar), table_prefix="thresholds.")
    except ValueError as exc:
        return ImageSpec(**base, sidecar=sidecar, error=str(exc))
    num_parts = doc.get("num_parts", from_name)
    if num_parts is None:
        return ImageSpec(**base, sidecar=sidecar, error=(
            f"{sidecar}: no num_parts, and {path.name} has no np<N>_ prefix; add 'num_parts = N' to the sidecar"))
    if from_name is not None and num_parts != from_name:
        return ImageSpec(**base, sidecar=sidecar, error=(
            f"{sidecar}: num_parts = {num_parts} contradicts the file name prefix np{from_name}_; "
            f"rename the image or fix the sidecar"))
    run = {k: doc[k] for k in ("steps", "seed", "guidance_scale") if k in doc}
    return ImageSpec(**base, num_parts=int(num_parts), run=run, thresholds=thresholds, sidecar=sidecar)


def image_keys(fixtures: Path, results: Path) -> set[str]:
    """Keys (``read_spec``'s ``key``) of every fixture image on disk, the results folder excluded."""
    if not fixtures.is_dir():
        return set()
    return {p.relative_to(fixtures).with_suffix("").as_posix() for p in fixtures.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and results not in p.parents and p.is_file()}


def _sidecar_problems(doc: dict) -> str | None:
    unknown = sorted(set(doc) - {*SIDECAR_RUN_KEYS, "thresholds"})
    if unknown:
        return f"unknown key {unknown[0]!r} (known: {', '.join(SIDECAR_RUN_KEYS)}, [thresholds.<check>])"
    for key, lo in (("num_parts", 1), ("steps", 1), ("seed", 0)):
        if key in doc and (isinstance(doc[key], bool) or not isinstance(doc[key], int) or doc[key] < lo):
            return f"{key} = {doc[key]!r} must be a whole number >= {lo}"
    g = doc.get("guidance_scale")
    if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float)) or g < 0):
        return f"guidance_scale = {g!r} must be a number >= 0"
    if not isinstance(doc.get("thresholds", {}), dict):
        return "thresholds must be a table of [thresholds.<check>] tables"
    return None


# ----------------------------------------------------------------------------- the session
class PartattnSession:
    """Per process: the pipeline (loaded lazily, once), the outcome cache and the stores."""

    def __init__(self, config: pytest.Config, settings: Settings, thresholds: Thresholds,
                 device: DeviceChoice, worker_id: str | None = None):
        self.config = config
        self.settings = settings
        self.thresholds = thresholds
        self.device = device
        self.worker_id = worker_id
        self.store = BaselineStore(settings.baselines)
        self.candidates = BaselineStore(settings.results / "baseline-candidates")
        self._pipeline = None
        self._pipeline_error: str | None = None
        self._cache: "OrderedDict[tuple, object]" = OrderedDict()
        self._images: dict[str, object] = {}

    # -- pipeline -----------------------------------------------------------------------------
    @property
    def pipeline(self):
        if self._pipeline_error is not None:  # said in full by the first item that tried
            raise CaseError(f"the model could not be loaded: {self._pipeline_error.splitlines()[0]} "
                            f"(the first failing item of this session has the details)")
        if self._pipeline is None:
            try:
                self._pipeline = self._load_pipeline()
            except Exception as exc:  # noqa: BLE001 - this image's failure; later images get one line
                self._pipeline_error = _describe(exc)
                raise CaseError(f"could not load the model: {self._pipeline_error}") from None
        return self._pipeline

    def _load_pipeline(self):
        custom = self.config.hook.pytest_partattn_load_pipeline(
            config=self.config, device=self.device.device, dtype=self.settings.dtype)
        if custom is not None:
            return custom
        import torch

        from .model.pipeline import PartCrafterPipeline

        return PartCrafterPipeline.from_pretrained(self.settings.model, device=self.device.device,
                                                   dtype=getattr(torch, self.settings.dtype))

    @property
    def model_label(self) -> str:
        """The model as the fingerprint names it: ``embedded:<name>`` for the packaged checkpoint
        (the same on every machine), else its path relative to the rootdir when inside it."""
        loaded = getattr(getattr(self._pipeline, "checkpoint", None), "path", None)
        path = Path(str(loaded)).resolve() if loaded is not None else self.settings.model
        if path == EMBEDDED_MODEL.resolve():
            return f"embedded:{path.name}"
        rel = _relative(path, self.settings.rootdir)
        return rel.as_posix() if rel is not None else str(path)

    # -- running ------------------------------------------------------------------------------
    def thresholds_for(self, spec: ImageSpec, extra: dict | None = None) -> Thresholds:
        t = self.thresholds
        if spec.thresholds:
            t = t.merged(spec.thresholds, source=str(spec.sidecar), table_prefix="thresholds.")
        if extra:
            t = t.merged(extra, source="thresholds argument")
        return t

    def run_settings(self, spec: ImageSpec, **given) -> RunSettings:
        s = self.settings
        values = {"steps": s.steps, "seed": s.seed, "guidance_scale": s.guidance, "num_tokens": None}
        values.update(spec.run)  # a sidecar pins its image's settings
        values.update({k: v for k, v in given.items() if v is not None})
        num_parts = given.get("num_parts") or spec.num_parts
        values.pop("num_parts", None)
        return RunSettings(num_parts=num_parts, **values)

    def outcome(self, spec: ImageSpec, run: RunSettings | None = None, thresholds: Thresholds | None = None,
                checks=None, selection=None) -> CaseOutcome:
        """Run ``spec`` (once per settings; cached) and return its outcome; ``CaseError`` if it cannot run."""
        if spec.error:
            raise CaseError(spec.error)
        run = run or self.run_settings(spec)
        thresholds = thresholds or self.thresholds_for(spec)
        key = (str(spec.path), astuple(run), thresholds, tuple(checks) if checks else None)
        if selection is None and key in self._cache:
            self._cache.move_to_end(key)
            cached = self._cache[key]
            if isinstance(cached, CaseError):
                raise cached
            return cached
        pipeline = self.pipeline
        try:
            outcome = run_case(pipeline, str(spec.path), run, thresholds, selection=selection, checks=checks)
        except Exception as exc:  # noqa: BLE001 - becomes this image's failure, not the session's
            outcome = CaseError(f"could not run {spec.display}: {_describe(exc)}")
        if selection is None:
            self._cache[key] = outcome
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        if isinstance(outcome, CaseError):
            raise outcome
        return outcome

    def image_view(self, spec: ImageSpec):
        """The encoder's view of the image (PIL) for overlays, or None if the pipeline cannot give it."""
        if spec.key not in self._images:
            view = None
            fn = getattr(self._pipeline, "preprocessed_image", None)
            if fn is not None:
                try:
                    view = fn(str(spec.path))
                except Exception:  # noqa: BLE001 - overlays are optional
                    view = None
            self._images = {spec.key: view}  # keep one
        return self._images[spec.key]

    def figures(self, spec: ImageSpec, outcome: CaseOutcome, result: CheckResult,
                thresholds: Thresholds) -> tuple[list[str], list[str]]:
        """(figure paths, problems): drawing problems never hide the check's verdict."""
        from .figures import figures_for

        try:
            paths = figures_for(result, outcome.record, self.settings.results / spec.key,
                                self.image_view(spec), thresholds=thresholds)
            return [str(p) for p in paths], []
        except Exception as exc:  # noqa: BLE001
            return [], [f"could not draw the figures of {result.name}: {_describe(exc)}"]

    def clear_figures(self, spec: ImageSpec, check: str) -> None:
        """Remove figures an earlier run wrote for this (image, check)."""
        for stale in (self.settings.results / spec.key).glob(f"{check}__*.png"):
            stale.unlink(missing_ok=True)

    # -- baselines ----------------------------------------------------------------------------
    def baseline(self, spec: ImageSpec, outcome: CaseOutcome, thresholds: Thresholds,
                 update_hint: str = "") -> BaselineOutcome:
        s = self.settings
        return evaluate(
            self.store, self.candidates, spec.key, image=spec.display, metrics=outcome.summary,
            checks={name: r.value for name, r in outcome.results.items()},
            environment=fingerprint(outcome.record.meta, self.model_label), thresholds=thresholds,
            update=s.update, force=s.force_update, strict_env=s.strict_env, update_hint=update_hint)

    def stored_checks(self, spec: ImageSpec) -> dict:
        try:
            stored = self.store.load(spec.key)
        except BaselineError:
            return {}
        return stored.checks if stored is not None else {}


def _describe(exc: BaseException) -> str:
    """A clean message for expected errors; the type and a short traceback for anything else."""
    from .model.loading import CheckpointError

    if isinstance(exc, (CheckpointError, FileNotFoundError, CaseError)):
        return str(exc)
    if isinstance(exc, (ValueError, OSError)) and str(exc):
        return str(exc)
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-4))
    return f"{type(exc).__name__}: {exc}\n{tb.rstrip()}"


# ----------------------------------------------------------------------------- collection
class ImageFile(pytest.File):
    """A fixture image: one item per check."""

    def collect(self):
        settings = self.config.stash[SETTINGS_KEY]
        spec = read_spec(self.path, settings.fixtures, settings.rootdir)
        for check in ITEM_CHECKS:
            item = CheckItem.from_parent(self, name=check, check=check, spec=spec)
            item.add_marker(pytest.mark.partattn)
            if not settings.enabled:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
            yield item


class CheckItem(pytest.Item):
    """One check of one fixture image."""

    def __init__(self, *, check: str, spec: ImageSpec, **kwargs):
        super().__init__(**kwargs)
        self.check = check
        self.spec = spec
        self.partattn_payload: dict | None = None

    def runtest(self) -> None:
        session: PartattnSession = self.config.stash[SESSION_KEY]
        settings = session.settings
        start = time.perf_counter()
        args = dict(rerun=self._command(self.check), update=self._command("baseline", update="failed"),
                    image=self.spec.display, image_abs=str(self.spec.path), key=self.spec.key, check=self.check)
        try:
            thresholds = session.thresholds_for(self.spec) if not self.spec.error else session.thresholds
            outcome = session.outcome(self.spec, thresholds=thresholds)
        except (CaseError, ValueError) as err:
            p = report.payload(result=None, figures=[], error=str(err), seconds=time.perf_counter() - start, **args)
            self._finish(p)
            raise CheckFailed(report.failure_text(p)) from None

        notes: list[str] = []
        status = None
        if self.check == "baseline":
            bo = session.baseline(self.spec, outcome, thresholds)
            result, status = bo.result, bo.status
            stored = bo.baseline.checks if bo.baseline is not None else {}
            for text in bo.warnings:
                warnings.warn(PartattnEnvironmentWarning(text), stacklevel=1)
            notes += bo.warnings
        else:
            result = outcome.results[self.check]
            stored = session.stored_checks(self.spec)
        figures: list[str] = []
        session.clear_figures(self.spec, self.check)
        if result.verdict == "fail" or (settings.save_all_figures and result.verdict == "pass"):
            figures, problems = session.figures(self.spec, outcome, result, thresholds)
            notes += problems
        p = report.payload(result=result.to_dict(), figures=figures, baseline_checks=stored, status=status,
                           warnings=notes, seconds=time.perf_counter() - start,
                           summary=outcome.summary if self.check == "baseline" else None, **args)
        self._finish(p)
        if result.verdict == "fail":
            raise CheckFailed(report.failure_text(p))
        if result.verdict == "skip":
            # reported at the image (like a skip marker), not at this line
            raise pytest.skip.Exception(result.reason, _use_item_location=True)

    def _finish(self, p: dict) -> None:
        self.partattn_payload = p
        self.user_properties.extend(report.user_properties(p))
        if p["figures"] and getattr(self.config.option, "xmlpath", None):
            # Jenkins and GitLab read attachments from <system-out>
            self.add_report_section("call", "stdout", "\n".join(report.attachment_lines(p["figures"])) + "\n")

    def _command(self, name: str, update: str | None = None) -> str:
        settings = self.config.stash[SETTINGS_KEY]
        return report.pytest_command(settings.cli_args(), self.config.invocation_params.dir, self.spec.path,
                                     name, update=update)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CheckFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        # the domain is the item's own name, so `pytest -v` prints the node id as it can be pasted back
        return self.path, 0, self.name


# ----------------------------------------------------------------------------- fixture
class PartattnFixture:
    """``partattn(image, num_parts=None, **settings) -> CaseOutcome`` for hand-written tests.

    ``image``: a path (absolute, or relative to the test file's folder, the rootdir or the
    fixtures folder, tried in that order) or a PIL image (then ``num_parts`` is required).
    ``settings``: ``steps``, ``seed``, ``guidance_scale``, ``num_tokens`` (default: the
    ``--partattn-*`` options, then the image's sidecar), ``thresholds`` (a ``Thresholds`` or a
    ``{check: {key: value}}`` dict merged over the session's), ``checks`` (names to run) and
    ``selection`` (a ``capture.Selection``; disables the cache).
    """

    def __init__(self, session: PartattnSession, request: pytest.FixtureRequest):
        self.session = session
        self.request = request

    @property
    def pipeline(self):
        return self.session.pipeline

    @property
    def thresholds(self) -> Thresholds:
        return self.session.thresholds

    def resolve(self, image) -> Path:
        path = Path(image)
        if path.is_absolute():
            tries = [path]
        else:
            s = self.session.settings
            tries = [Path(self.request.path).parent / path, s.rootdir / path, s.fixtures / path]
        for p in tries:
            if p.is_file():
                return p.resolve()
        raise FileNotFoundError(f"image {image!s} not found (looked at: {', '.join(map(str, tries))})")

    def __call__(self, image, num_parts: int | None = None, *, steps=None, seed=None, guidance_scale=None,
                 num_tokens=None, thresholds=None, checks=None, selection=None) -> CaseOutcome:
        if hasattr(image, "size") and not isinstance(image, (str, Path)):
            if num_parts is None:
                raise ValueError("partattn(image): pass num_parts= with a PIL image")
            run = RunSettings(num_parts=num_parts, steps=steps or self.session.settings.steps,
                              seed=self.session.settings.seed if seed is None else seed,
                              guidance_scale=self.session.settings.guidance if guidance_scale is None
                              else guidance_scale, num_tokens=num_tokens)
            t = thresholds if isinstance(thresholds, Thresholds) else self.session.thresholds.merged(thresholds or {})
            return run_case(self.session.pipeline, image, run, t, selection=selection, checks=checks)
        s = self.session.settings
        spec = read_spec(self.resolve(image), s.fixtures, s.rootdir)
        if num_parts is not None and spec.num_parts is None and spec.sidecar is None:
            spec = replace(spec, num_parts=num_parts, error=None)  # an explicit count needs no prefix
        if spec.error:
            raise ValueError(spec.error)
        run = self.session.run_settings(spec, num_parts=num_parts, steps=steps, seed=seed,
                                        guidance_scale=guidance_scale, num_tokens=num_tokens)
        if isinstance(thresholds, Thresholds):
            t = thresholds
        else:
            t = self.session.thresholds_for(spec, thresholds)
        try:
            return self.session.outcome(spec, run, t, checks=checks, selection=selection)
        except CaseError as err:
            raise RuntimeError(str(err)) from None
