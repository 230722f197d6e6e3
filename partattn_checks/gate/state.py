"""The pytest gate's per-process state, around the shared :class:`~partattn_checks.runs.session.Session`.

* :class:`GateSession` (one per process, i.e. per xdist worker): the session (pipeline from the
  plugin's loader, record cache) plus the gate's thresholds, its baseline runner (the baseline item
  of each image, the fixture set over them) and figures. Each
  fixture image runs once per run spec; its items judge the cached record.
* :class:`PartattnFixture` is what the ``partattn`` fixture returns.

Importing this module imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from .. import EMBEDDED_MODEL
from ..baselines.errors import BaselineError
from ..baselines.fixture_set import SetVerdict, set_verdict
from ..baselines.runner import BaselineOutcome, BaselineRunner
from ..baselines.store import BaselineStore
from ..capture.runspec import DeviceChoice
from ..checks import CheckResult, Thresholds
from ..model.files import ImageNotFoundError
from ..model.hub import snapshot_of
from ..runs.session import CaseError, CaseOutcome, Session, error_message
from ..runs.sidecar import FixtureError, ImageSpec, read_spec


class GateSession(Session):
    """Per process: the pipeline (``load()``, lazily, once), the record cache, the baseline runner."""

    def __init__(
        self,
        load: Callable[[], object],
        settings,
        thresholds: Thresholds,
        device: DeviceChoice,
        load_in: Callable[[str], object] | None = None,
    ):
        super().__init__(load, options=settings.run_options(), thresholds=thresholds, load_in=load_in)
        self.settings = settings
        self.device = device
        self.runner = BaselineRunner(
            BaselineStore(settings.baselines),
            BaselineStore(settings.results / "baseline-candidates"),
            settings.policy(),
        )

    @property
    def model_label(self) -> str:
        """The model as the fingerprint names it: ``embedded:<name>`` for the packaged checkpoint and
        ``hub:<repo id>`` for a Hugging Face hub snapshot (the same on every machine), else its path
        relative to the rootdir when inside it."""
        loaded = getattr(getattr(self.loaded, "checkpoint", None), "path", None)
        path = Path(str(loaded)).resolve() if loaded is not None else self.settings.model
        if path == EMBEDDED_MODEL.resolve():
            return f"embedded:{path.name}"
        snapshot = snapshot_of(path)
        if snapshot is not None:
            return f"hub:{snapshot.repo_id}"
        try:
            return path.relative_to(self.settings.rootdir).as_posix()
        except ValueError:
            return str(path)

    # -- figures ------------------------------------------------------------------------------
    def figures(
        self, spec: ImageSpec, outcome: CaseOutcome, result: CheckResult, thresholds: Thresholds
    ) -> tuple[list[str], list[str]]:
        """(figure paths, problems): drawing problems never hide the check's verdict. The drift
        figure draws now − baseline on ``--partattn-drift-scale`` (auto: each figure its own range)."""
        from ..checks.baseline import with_delta_scale
        from ..present.check_figures import figures_for

        result = with_delta_scale(result, self.settings.drift_scale)
        try:
            paths = figures_for(
                result, outcome.record, self.settings.results / spec.key, self.image_view(spec), thresholds=thresholds
            )
            return [str(p) for p in paths], []
        except Exception as exc:  # noqa: BLE001
            return [], [f"could not draw the figures of {result.name}: {error_message(exc)}"]

    def clear_figures(self, spec: ImageSpec, check: str) -> None:
        """Remove figures an earlier run wrote for this (image, check)."""
        for stale in (self.settings.results / spec.key).glob(f"{check}__*.png"):
            stale.unlink(missing_ok=True)

    # -- baselines ----------------------------------------------------------------------------
    def baseline(self, spec: ImageSpec, thresholds: Thresholds) -> BaselineOutcome:
        """The ``baseline`` item: the gate's ``--partattn-seeds`` runs of the image (the first is the
        one its other items judged, from the cache) against its stored baseline."""
        return self.runner.evaluate(self.image_runs(spec), thresholds)

    def fixture_set(self, results: Mapping[str, CheckResult | None]) -> SetVerdict:
        """The fixture-set item: every image's baseline result (None: not run) combined into the verdict
        of the whole set (``baselines.fixture_set``); an image not compared counts as such."""
        from ..checks.baseline import BaselineDetails

        per_image: dict[str, BaselineDetails | None] = {}
        for image, result in results.items():
            details = result.details if result is not None else None
            per_image[image] = details if isinstance(details, BaselineDetails) else None
        return set_verdict(per_image, self.settings.false_alarm_rate)

    def stored_checks(self, spec: ImageSpec) -> dict:
        try:
            stored = self.runner.store.load(spec.key, tensors=False)
        except BaselineError:
            return {}
        return stored.checks if stored is not None else {}


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
            t = (
                thresholds
                if isinstance(thresholds, Thresholds)
                else Thresholds.resolve(session.thresholds, call=thresholds)
            )
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
