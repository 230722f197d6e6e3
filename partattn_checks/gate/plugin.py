"""The pytest plugin of partattn-checks (entry point ``partattn``): hooks only.

Each hook hands off to a small object: ``options`` (the option table), ``items`` (the pytest
nodes), ``gate`` (the per-process session: pipeline, record cache, figures, baselines; the
fixture), ``sidecar`` (what an image needs to run), ``report`` (the report data and the outputs,
one sink each, chosen at configure time) and ``baseline`` (the store). Without ``--partattn``
nothing heavy is imported: fixture images are collected and skipped. With it, torch is imported at
configure time to check the device before any item runs; the model itself loads lazily, once per
process (once per pytest-xdist worker), from the ``pytest_partattn_load_pipeline`` hook or the
checkpoint option.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ..baselines.errors import BaselineError
from ..baselines.store import BaselineStore, UpdateLock, unused_keys
from ..capture.runspec import DeviceChoice, checkpoint_defaults, torch_dtype
from ..checks import REGISTRY
from ..runs.sidecar import FIXTURE_IMAGE_SUFFIXES, image_keys
from . import hookspecs, interrupt, options, preflight, results_folder, scheduling
from .context import summary_context
from .items import SESSION_KEY, SETTINGS_KEY, SKIP_REASON, CheckItem, ImageFile
from .option_table import OptionError
from .report import SINKS_KEY, ItemReport, SessionReport, Sink, choose, header_lines
from .report.rows import set_check
from .state import GateSession, PartattnFixture

MARKER = (
    "partattn: an attention-check test (uses the partattn fixture or runs PartCrafter); "
    "skipped unless pytest runs with --partattn"
)


#: ``--dist`` as the user gave it, before pytest-xdist fills in its default.
CHOSEN_DIST_KEY = pytest.StashKey["str | None"]()


class PartattnConfigWarning(pytest.PytestWarning):
    """A partattn configuration that works but loses something (e.g. JUnit attachments)."""


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


@pytest.hookimpl(wrapper=True)
def pytest_cmdline_main(config: pytest.Config):
    option = config.option
    config.stash[CHOSEN_DIST_KEY] = "load" if getattr(option, "distload", False) else getattr(option, "dist", None)
    return (yield)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)
    settings = options.resolve(config)
    config.stash[SETTINGS_KEY] = settings
    if not settings.enabled:
        return
    settings = config.stash[SETTINGS_KEY] = preflight.resolve_model(settings)  # a hub repo id: its snapshot
    hooks = [impl.plugin_name for impl in config.hook.pytest_partattn_load_pipeline.get_hookimpls()]
    preflight.check_enabled_settings(settings, custom_pipeline=bool(hooks) or settings.pipeline is not None)
    thresholds, source = options.session_thresholds(settings)
    worker = getattr(config, "workerinput", {}).get("workerid")
    if worker is None:
        _start_session_files(config, settings)
    device = options.device_for(settings, worker, spread=bool(getattr(config.option, "numprocesses", None)))
    config.stash[SESSION_KEY] = GateSession(
        _pipeline_loader(config, settings, device),
        settings,
        thresholds,
        device,
        load_in=lambda dtype: _pipeline_loader(config, settings, device, dtype)(),
    )
    plan = scheduling.plan(config.stash.get(CHOSEN_DIST_KEY, None), getattr(config.option, "dist", None))
    hook_files, defaults = [Path(h).name for h in hooks], checkpoint_defaults(settings.model)
    header = header_lines(settings, device, source, hook_files, defaults)
    if plan is not None:
        header.append(f"partattn: {plan.header}")
    context = summary_context(settings, hook_files, device.device, source, defaults)
    sinks = config.stash[SINKS_KEY] = choose(config)
    run = SessionReport(settings, header, context)
    controller = Controller(run, sinks, is_worker=worker is not None, plan=plan)
    config.pluginmanager.register(controller, "partattn-controller")
    collected = _collect_fixtures_by_default(config, settings)
    header.append(f"partattn: {collected}")
    if worker is None:
        warnings = [plan.warning if plan is not None else None, *(sink.warning() for sink in sinks)]
        for text in filter(None, warnings):
            config.issue_config_time_warning(PartattnConfigWarning(text), stacklevel=2)


def _pipeline_loader(config: pytest.Config, settings: options.Settings, device: DeviceChoice, dtype: str | None = None):
    """How this process gets its pipeline (called lazily, once): the first non-None
    ``pytest_partattn_load_pipeline`` result, else ``--partattn-pipeline``'s factory, else the
    ``--partattn-model`` checkpoint. An upstream-style pipeline is wrapped (``upstream.as_pipeline``).
    ``dtype``: another than ``--partattn-dtype`` (the numeric floor's runs of a baseline). A pipeline of the
    user's runs with the defaults the header shows (``--partattn-model``'s)."""
    dtype = dtype or settings.dtype

    def load():
        from ..capture.upstream import as_pipeline, build_pipeline

        shown = checkpoint_defaults(settings.model)  # what the header says runs when no option sets it
        custom = config.hook.pytest_partattn_load_pipeline(config=config, device=device.device, dtype=dtype)
        if custom is not None:
            return as_pipeline(custom, run_defaults=shown)
        if settings.pipeline is not None:
            model = settings.model if settings.sources.get("model") != "default" else None
            what = preflight.pipeline_label(settings)
            return build_pipeline(
                settings.pipeline, settings.rootdir, model, device.device, dtype, what, run_defaults=shown
            )
        from ..model.pipeline import PartCrafterPipeline

        return PartCrafterPipeline.from_pretrained(settings.model, device=device.device, dtype=torch_dtype(dtype))

    return load


#: How to proceed when the results folder holds a file the gate did not write.
RESULTS_FIX = "pass --partattn-results=DIR, a new or empty folder or one pytest --partattn wrote, or move the file away"


def _start_session_files(config: pytest.Config, settings: options.Settings) -> None:
    """Once per session (the xdist controller), before any item runs: refuse a results folder where
    a file of the user's is in the way, drop the baseline candidates of earlier sessions and, when
    baselines are written, lock the baselines folder against a second writer."""
    wrong = results_folder.problem(settings.results, image_keys(settings.fixtures, settings.results), RESULTS_FIX)
    if wrong:
        raise OptionError(f"{settings.where('results')}: {wrong}")
    candidates = BaselineStore(settings.results / "baseline-candidates")
    for key in candidates.keys():
        candidates.remove(key)
    if settings.update is None:
        return
    lock = UpdateLock(settings.baselines)
    try:
        lock.acquire()
    except BaselineError as err:
        raise OptionError(f"{settings.where('update')}: {err}") from None
    config.add_cleanup(lock.release)


def _collect_fixtures_by_default(config: pytest.Config, settings: options.Settings) -> str:
    """``pytest --partattn`` without paths also collects the fixtures folder (e.g. next to testpaths).
    Returns the header text that says what is collected."""
    shown = settings.shown(settings.fixtures)
    if not settings.fixtures.is_dir():
        return f"no fixture images: {shown} is not a folder"
    found = f"{len(image_keys(settings.fixtures, settings.results))} fixture images under {shown}"
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        return f"{found}; collected where the paths given include them"
    base = Path(config.invocation_params.dir)
    for arg in config.args:
        path = (base / arg.split("::")[0]).resolve()
        if settings.fixtures == path or path in settings.fixtures.parents:
            return f"collecting {found}"
    source = "testpaths" if config.args_source == pytest.Config.ArgsSource.TESTPATHS else "the current folder"
    config.args.append(str(settings.fixtures))
    return f"collecting {found} (added to {source}: {' '.join(config.args[:-1])})"


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    settings = parent.config.stash.get(SETTINGS_KEY, None)
    if settings is None or file_path.suffix.lower() not in FIXTURE_IMAGE_SUFFIXES:
        return None
    path = file_path.resolve()
    if settings.fixtures not in path.parents or settings.results in path.parents:
        return None
    return ImageFile.from_parent(parent, path=file_path)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.stash[SETTINGS_KEY].enabled:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if item.get_closest_marker("partattn") is not None and not isinstance(item, CheckItem):
            item.add_marker(skip)


@pytest.fixture
def partattn(request: pytest.FixtureRequest) -> PartattnFixture:
    """Run an image through the session's pipeline: ``partattn(image, num_parts=None, **settings)``
    returns a ``CaseOutcome`` (``.record``, ``.results``, ``.summary``). Skips without --partattn."""
    session = request.config.stash.get(SESSION_KEY, None)
    if session is None:
        pytest.skip(SKIP_REASON)
    return PartattnFixture(session, request.path)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    item_report = getattr(item, "partattn_report", None)
    if item_report is not None and report.when == "call":
        report.partattn = item_report.to_dict()  # plain JSON-ready data: travels to the xdist controller
        for sink in item.config.stash[SINKS_KEY]:
            sink.test_report(item, report, item_report)
    return report


class Controller:
    """Session-wide reporting, registered only with --partattn: the header, the fixture-set item, the
    unused baselines, and the session's outputs (its sinks: terminal summary, index.html, the GitHub
    job summary, ...).

    Under pytest-xdist the controller process sees every worker's reports (with their
    ``partattn`` payloads) and writes the outputs; workers write nothing session-wide.
    """

    def __init__(
        self,
        run: SessionReport,
        sinks: list[Sink],
        is_worker: bool,
        plan: scheduling.SchedulingPlan | None = None,
    ):
        self.run = run
        self.settings = run.settings
        self.sinks = sinks
        self.config: pytest.Config | None = None
        self.is_worker = is_worker
        self.plan = plan

    def _judge_fixture_set(self, session: pytest.Session) -> None:
        """The fixture-set item (the ``set_item`` of the check judged over the whole set): every
        image's item of that check combined by the session's baseline runner, reported as one more
        test so it counts, prints and lands in JUnit like the others."""
        check = set_check()
        if check is None or check.set_item is None:
            return
        by_image = self.run.summary.by_image
        results = {image: per[check.name].result for image, per in by_image.items() if check.name in per}
        if len(results) < 2:  # no set: one image, or its item deselected
            return
        verdict = session.config.stash[SESSION_KEY].fixture_set(results)
        self.run.fixture_set = verdict
        name, where = check.set_item, self.settings.shown(self.settings.fixtures)
        failed = verdict.verdict == "fail"
        skipped = verdict.verdict == "skip"
        report = pytest.TestReport(
            nodeid=f"{where}::{name}",
            location=(where, None, name),
            keywords={name: 1, "partattn": 1},
            outcome="failed" if failed else "skipped" if skipped else "passed",
            longrepr=(
                "\n".join(verdict.lines())
                if failed
                else (where, 0, f"Skipped: fixture set {verdict.reason()}")
                if skipped
                else None
            ),
            when="call",
            user_properties=[("partattn_check", name), ("partattn_verdict", verdict.verdict)],
        )
        session.testscollected += 1  # the terminal's progress counts it: [100%], not [101%]
        session.config.hook.pytest_runtest_logreport(report=report)
        if failed:
            session.testsfailed += 1
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _unused_baselines(self) -> None:
        """List stored baselines whose image is gone (like unused snapshots); ``--partattn-update=all``
        removes them."""
        s = self.settings
        store = BaselineStore(s.baselines)
        unused = unused_keys(store, image_keys(s.fixtures, s.results))
        if not unused:
            return
        if s.update == "all":
            for key in unused:
                store.remove(key)
            lines = [f"{len(unused)} unused baseline(s) removed (no image under {s.shown(s.fixtures)}):"]
        else:
            lines = [
                f"{len(unused)} unused baseline(s), their image is no longer under "
                f"{s.shown(s.fixtures)} (delete them, or let --partattn-update=all remove them):"
            ]
        self.run.unused_lines = lines + [f"  {s.shown(store.paths(key).folder)}" for key in unused]

    def pytest_report_header(self) -> list[str]:
        return self.run.header

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log):
        if self.plan is None:
            return None
        return scheduling.make_scheduler(self.plan, config, log, FIXTURE_IMAGE_SUFFIXES)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "partattn", None)
        if data is not None and report.when == "call":
            self.run.summary.add(ItemReport.from_dict(data))
        elif data is None and report.failed and not self.is_worker:
            lost = self._lost_item(report)
            if lost is not None:
                self.run.summary.add(lost)

    def _lost_item(self, report: pytest.TestReport) -> ItemReport | None:
        """An item of ours that failed without its report (its xdist worker crashed, or pytest's own
        machinery failed around it): an error in the summary, never a blank (or a pass)."""
        image, _, check = report.nodeid.rpartition("::")
        s = self.settings
        path = (s.rootdir / image).resolve()
        if check not in REGISTRY or path.suffix.lower() not in FIXTURE_IMAGE_SUFFIXES or s.fixtures not in path.parents:
            return None
        text = str(report.longrepr).strip().splitlines()
        why = text[-1] if text else "no report"
        key = path.relative_to(s.fixtures).with_suffix("").as_posix()
        return ItemReport(image=image, key=key, check=check, result=None, figures=(), rerun="", update="", error=why)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.is_worker:
            return
        if not session.config.option.collectonly and session.exitstatus != pytest.ExitCode.INTERRUPTED:
            self._unused_baselines()
            self._judge_fixture_set(session)
        for sink in self.sinks:
            sink.session_done(self.run, session)

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.config = session.config

    @pytest.hookimpl(trylast=True)  # after the terminal reporter has kept the interrupt it will show
    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        self.run.interrupted = True
        if not self.is_worker and self.config is not None:
            interrupt.one_line(self.config)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.is_worker:
            return
        for sink in self.sinks:
            sink.terminal_summary(terminalreporter, self.run)
