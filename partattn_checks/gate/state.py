"""The pytest gate's per-process state, around the shared :class:`~partattn_checks.runs.session.Session`.

* :class:`GateSession` (one per process, i.e. per xdist worker): the session (pipeline from the
  plugin's loader, record cache) plus the gate's thresholds, baseline stores and figures. Each
  fixture image runs once per run spec; its items judge the cached record.
* :class:`PartattnFixture` is what the ``partattn`` fixture returns.

Importing this module imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import EMBEDDED_MODEL
from ..capture.runspec import DeviceChoice
from ..checks import CheckResult, Thresholds
from ..checks.baseline.compare import BaselineOutcome, BaselineState, SeedSample, evaluate
from ..checks.baseline.noise import baseline_seeds, gate_seeds
from ..checks.baseline.store import BaselineError, BaselineStore, environment_fingerprint
from ..checks.fixture_set import SetVerdict
from ..model.files import ImageNotFoundError
from ..runs.session import CaseError, CaseOutcome, Session, describe
from ..runs.sidecar import FixtureError, ImageSpec, read_spec


class GateSession(Session):
    """Per process: the pipeline (``load()``, lazily, once), the record cache and the stores."""

    def __init__(self, load: Callable[[], object], settings, thresholds: Thresholds, device: DeviceChoice):
        super().__init__(load, options=settings.run_options(), thresholds=thresholds)
        self.settings = settings
        self.device = device
        self.store = BaselineStore(settings.baselines)
        self.candidates = BaselineStore(settings.results / "baseline-candidates")
        self._images: dict[str, object] = {}
        self._pooled: dict[str, float] | None = None

    @property
    def model_label(self) -> str:
        """The model as the fingerprint names it: ``embedded:<name>`` for the packaged checkpoint
        (the same on every machine), else its path relative to the rootdir when inside it."""
        loaded = getattr(getattr(self.loaded, "checkpoint", None), "path", None)
        path = Path(str(loaded)).resolve() if loaded is not None else self.settings.model
        if path == EMBEDDED_MODEL.resolve():
            return f"embedded:{path.name}"
        try:
            return path.relative_to(self.settings.rootdir).as_posix()
        except ValueError:
            return str(path)

    # -- figures ------------------------------------------------------------------------------
    def image_view(self, spec: ImageSpec):
        """The encoder's view of the image (PIL) for overlays, or None if the pipeline cannot give it."""
        if spec.key not in self._images:
            view = None
            fn = getattr(self.loaded, "preprocessed_image", None)
            if fn is not None:
                try:
                    view = fn(str(spec.path))
                except Exception:  # noqa: BLE001 - overlays are optional
                    view = None
            self._images = {spec.key: view}  # keep one
        return self._images[spec.key]

    def figures(
        self, spec: ImageSpec, outcome: CaseOutcome, result: CheckResult, thresholds: Thresholds
    ) -> tuple[list[str], list[str]]:
        """(figure paths, problems): drawing problems never hide the check's verdict. The drift
        figure draws now − baseline on ``--partattn-drift-scale`` (auto: each figure its own range)."""
        from ..checks.baseline.check import with_delta_scale
        from ..present.check_figures import figures_for

        result = with_delta_scale(result, self.settings.drift_scale)
        try:
            paths = figures_for(
                result, outcome.record, self.settings.results / spec.key, self.image_view(spec), thresholds=thresholds
            )
            return [str(p) for p in paths], []
        except Exception as exc:  # noqa: BLE001
            return [], [f"could not draw the figures of {result.name}: {describe(exc)}"]

    def clear_figures(self, spec: ImageSpec, check: str) -> None:
        """Remove figures an earlier run wrote for this (image, check)."""
        for stale in (self.settings.results / spec.key).glob(f"{check}__*.png"):
            stale.unlink(missing_ok=True)

    # -- baselines ----------------------------------------------------------------------------
    def seed_sample(self, spec: ImageSpec, seeds: list[int]) -> SeedSample:
        """``spec``'s image under each of ``seeds`` (each run once, like any run), summarized;
        records are summarized as they come, not kept."""
        from ..checks.baseline.attention import AttentionSummary

        size = getattr(self.image_view(spec), "size", None)
        summaries, checks, parts = [], [], []
        for seed in seeds:
            outcome = self.image_outcome(spec, call={"seed": seed})
            summaries.append(outcome.summary)
            checks.append({name: r.value for name, r in outcome.results.items()})
            parts.append(AttentionSummary.from_record(outcome.record, image_size=size, exact=True))
        return SeedSample.of(seeds, summaries, checks, AttentionSummary.combine(parts, seeds))

    def baseline_sample(self, spec: ImageSpec, gate_seed: int) -> SeedSample:
        """The runs of a baseline's noise seeds (``--partattn-baseline-seeds`` of them, see
        :func:`partattn_checks.checks.baseline.noise.baseline_seeds`)."""
        sample = self.seed_sample(spec, baseline_seeds(gate_seed, self.settings.baseline_seeds))
        self._pooled = None  # the folder's spreads change with this baseline
        return sample

    def pooled_spreads(self) -> dict[str, float]:
        """The baseline folder's pooled seed spreads, read once per session (and after a write)."""
        if self._pooled is None:
            self._pooled = self.store.pooled_spreads()
        return self._pooled

    def baseline(
        self, spec: ImageSpec, outcome: CaseOutcome, thresholds: Thresholds, update_hint: str = ""
    ) -> BaselineOutcome:
        """The ``baseline`` item: the mean of the gate's ``--partattn-seeds`` runs (the first is
        ``outcome``) against the stored baseline, which is written from its own noise seeds."""
        s = self.settings
        seeds = gate_seeds(outcome.seed, s.seeds)
        measured = self.seed_sample(spec, seeds)  # the first run is ``outcome``'s, from the cache
        return evaluate(
            self.store,
            self.candidates,
            spec.key,
            image=spec.display,
            metrics=measured.metrics,
            checks=measured.checks,
            environment=environment_fingerprint(outcome.record.meta, self.model_label),
            thresholds=thresholds,
            update=s.update,
            force=s.force_update,
            strict_env=s.strict_env,
            update_hint=update_hint,
            attention=measured.attention,
            measured_seeds=measured.seeds,
            measured_samples=measured.samples,
            sample=lambda: self.baseline_sample(spec, outcome.seed),
            pooled=self.pooled_spreads,
            alpha=s.false_alarm_rate,
        )

    def stored_checks(self, spec: ImageSpec) -> dict:
        try:
            stored = self.store.load(spec.key)
        except BaselineError:
            return {}
        return stored.checks if stored is not None else {}


@dataclass(frozen=True)
class SetJudgement:
    """What the gate decides on a fixture set: each image's check results (``baseline`` included),
    the fixture-set verdict (None with fewer than two images judged in units of noise) and what
    happened to each image's baseline."""

    results: dict[str, dict[str, CheckResult]]
    fixture_set: SetVerdict | None
    baselines: dict[str, BaselineState] = field(default_factory=dict)

    def failing(self) -> dict[str, list[str]]:
        """``{check: [images failing it]}``."""
        out: dict[str, list[str]] = {}
        for image, checks in self.results.items():
            for name, result in checks.items():
                if result.verdict == "fail":
                    out.setdefault(name, []).append(image)
        return out


def judge_set(session: GateSession, images: list[ImageSpec]) -> SetJudgement:
    """The gate's judgement of ``images`` without pytest (benchmarks, library use): every check
    and the ``baseline`` item of each image, as the items judge them, then the fixture-set item."""
    from ..checks.fixture_set import set_verdict

    results: dict[str, dict[str, CheckResult]] = {}
    baselines: dict[str, BaselineState] = {}
    deviations = {}
    for spec in images:
        thresholds = session.thresholds_for(spec)
        outcome = session.image_outcome(spec, thresholds)
        judged = dict(outcome.results)
        bo = session.baseline(spec, outcome, thresholds)
        judged["baseline"], baselines[spec.display] = bo.result, bo.state
        results[spec.display] = judged
        found = bo.details.deviations
        if found:
            deviations[spec.display] = found
    return SetJudgement(results, set_verdict(deviations, session.settings.false_alarm_rate), baselines)


class PartattnFixture:
    """``partattn(image, num_parts=None, **settings) -> CaseOutcome`` for hand-written tests.

    ``image``: a path (absolute, or relative to the test file's folder, the rootdir or the
    fixtures folder, tried in that order) or a PIL image (then ``num_parts`` is required).
    ``settings``: ``steps``, ``seed``, ``guidance_scale``, ``num_tokens`` (they win over the image's
    sidecar, which wins over the ``--partattn-*`` options), ``thresholds`` (a ``Thresholds`` or a
    ``{check: {key: value}}`` dict merged over the session's), ``checks`` (names to run) and
    ``selection`` (a ``capture.Selection``; disables the cache). The same image and run settings
    run once per session, whatever the thresholds and checks: only the judging is repeated.
    """

    def __init__(self, session: GateSession, test_path: Path):
        self.session = session
        self.test_path = Path(test_path)

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
            tries = [self.test_path.parent / path, s.rootdir / path, s.fixtures / path]
        for p in tries:
            if p.is_file():
                return p.resolve()
        raise ImageNotFoundError(f"image {image!s} not found (looked at: {', '.join(map(str, tries))})")

    def __call__(
        self,
        image,
        num_parts: int | None = None,
        *,
        steps=None,
        seed=None,
        guidance_scale=None,
        num_tokens=None,
        thresholds=None,
        checks=None,
        selection=None,
    ) -> CaseOutcome:
        session = self.session
        call = {
            "num_parts": num_parts,
            "steps": steps,
            "seed": seed,
            "guidance_scale": guidance_scale,
            "num_tokens": num_tokens,
        }
        if hasattr(image, "size") and not isinstance(image, (str, Path)):
            if num_parts is None:
                raise FixtureError("partattn(image): pass num_parts= with a PIL image")
            t = thresholds if isinstance(thresholds, Thresholds) else session.thresholds.merged(thresholds or {})
            return session.run_in_memory(image, session.spec(None, call), t, selection=selection, checks=checks)
        s = session.settings
        spec = read_spec(self.resolve(image), s.fixtures, s.rootdir)
        if num_parts is not None and spec.num_parts is None and spec.sidecar is None:
            spec = replace(spec, num_parts=num_parts, error=None)  # an explicit count needs no prefix
        if spec.error:
            raise FixtureError(spec.error)
        t = thresholds if isinstance(thresholds, Thresholds) else session.thresholds_for(spec, thresholds)
        try:
            return session.image_outcome(spec, t, call, checks=checks, selection=selection)
        except CaseError as err:  # a fresh one: the session keeps the cached error for the image's other items
            raise CaseError(str(err)) from None
