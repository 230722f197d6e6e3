"""The pytest plugin of partattn-checks (entry point ``partattn``): hooks only.

Each hook hands off to a small object: ``options`` (the option table), ``items`` (the pytest
nodes), ``gate`` (the per-process session: pipeline, record cache, figures, baselines; the
fixture), ``sidecar`` (what an image needs to run), ``report`` (texts, tables, index.html) and
``baseline`` (the store). Without ``--partattn`` nothing heavy is imported: fixture images are
collected and skipped. With it, torch is imported at configure time to check the device before
any item runs; the model itself loads lazily, once per process (once per pytest-xdist worker),
from the ``pytest_partattn_load_pipeline`` hook or the checkpoint option.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ..baselines.errors import BaselineError
from ..baselines.store import BaselineStore, UpdateLock, unused_keys
from ..capture.runspec import DeviceChoice, checkpoint_defaults, torch_dtype
from ..checks.baseline import BaselineDetails
from ..runs.sidecar import FIXTURE_IMAGE_SUFFIXES, image_keys
from . import hookspecs, interrupt, markdown, options, preflight, results_folder, scheduling
from .context import summary_context
from .items import SESSION_KEY, SETTINGS_KEY, SKIP_REASON, CheckItem, ImageFile
from .report import ItemReport, Summary, header_lines, junit_logging_warning
from .state import GateSession, PartattnFixture

if TYPE_CHECKING:
    from ..baselines.fixture_set import SetVerdict

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
    thresholds, source = options.thresholds_for(settings)
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
    controller = Controller(settings, header, is_worker=worker is not None, plan=plan, context=context)
    config.pluginmanager.register(controller, "partattn-controller")
    collected = _collect_fixtures_by_default(config, settings)
    header.append(f"partattn: {collected}")
    if worker is None:
        warnings = [plan.warning if plan is not None else None]
        if getattr(config.option, "xmlpath", None):
            warnings.append(junit_logging_warning(config.getini("junit_logging")))
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
        raise options.OptionError(f"{settings.where('results')}: {wrong}")
    candidates = BaselineStore(settings.results / "baseline-candidates")
    for key in candidates.keys():
        candidates.remove(key)
    if settings.update is None:
        return
    lock = UpdateLock(settings.baselines)
    try:
        lock.acquire()
    except BaselineError as err:
        raise options.OptionError(f"{settings.where('update')}: {err}") from None
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
        if item_report.figures and item.config.pluginmanager.hasplugin("html"):
            from .report import html_extras

            html_path = item.config.getoption("htmlpath", None)  # links relative to the --html report
            report_dir = Path(os.path.expandvars(html_path)).expanduser().absolute().parent if html_path else None
            report.extras = [*getattr(report, "extras", []), *html_extras(item_report, report_dir)]
    return report


class Controller:
    """Session-wide reporting, registered only with --partattn: header, summary, index.html, and the
    GitHub job summary when ``GITHUB_STEP_SUMMARY`` is set.

    Under pytest-xdist the controller process sees every worker's reports (with their
    ``partattn`` payloads) and writes the summary; workers write nothing session-wide.
    """

    def __init__(
        self,
        settings: options.Settings,
        header: list[str],
        is_worker: bool,
        plan: scheduling.SchedulingPlan | None = None,
        context: dict[str, str] | None = None,
    ):
        self.settings = settings
        self.header = header
        #: ``{label: text}`` the summary opens with (it survives ``-q``, the header does not): the model,
        #: the run settings, the thresholds' source; add here what else a quiet run must say.
        self.context = dict(context or {})
        self.interrupted = False
        self.config: pytest.Config | None = None
        self.is_worker = is_worker
        self.plan = plan
        self.summary = Summary()
        self.index: Path | None = None
        self.index_error: str | None = None
        self.job_summary_error: str | None = None
        self.unused_lines: list[str] = []
        self.fixture_set: SetVerdict | None = None  # this session's, once judged

    def _judge_fixture_set(self, session: pytest.Session) -> None:
        """The fixture-set item: the images' baseline deviations combined (``fixture_set``),
        reported as one more test so it counts, prints and lands in JUnit like the others."""
        from ..baselines.fixture_set import ITEM_NAME, set_verdict

        per_image: dict[str, BaselineDetails | None] = {}
        for image, per in self.summary.by_image.items():
            item = per.get("baseline")
            if item is None:
                continue
            details = item.result.details if item.result is not None else None
            per_image[image] = details if isinstance(details, BaselineDetails) else None
        if len(per_image) < 2:  # no set: one image, or its baseline item deselected
            return
        verdict = set_verdict(per_image, self.settings.false_alarm_rate)
        self.fixture_set = verdict
        where = self.settings.shown(self.settings.fixtures)
        failed = verdict.verdict == "fail"
        skipped = verdict.verdict == "skip"
        report = pytest.TestReport(
            nodeid=f"{where}::{ITEM_NAME}",
            location=(where, None, ITEM_NAME),
            keywords={ITEM_NAME: 1, "partattn": 1},
            outcome="failed" if failed else "skipped" if skipped else "passed",
            longrepr=(
                "\n".join(verdict.lines())
                if failed
                else (where, 0, f"Skipped: fixture set {verdict.reason()}")
                if skipped
                else None
            ),
            when="call",
            user_properties=[("partattn_check", ITEM_NAME), ("partattn_verdict", verdict.verdict)],
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
            self.unused_lines = [f"{len(unused)} unused baseline(s) removed (no image under {s.shown(s.fixtures)}):"]
        else:
            self.unused_lines = [
                f"{len(unused)} unused baseline(s), their image is no longer under "
                f"{s.shown(s.fixtures)} (delete them, or let --partattn-update=all remove them):"
            ]
        self.unused_lines += [f"  {s.shown(store.paths(key).folder)}" for key in unused]

    def pytest_report_header(self) -> list[str]:
        return self.header

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log):
        if self.plan is None:
            return None
        return scheduling.make_scheduler(self.plan, config, log, FIXTURE_IMAGE_SUFFIXES)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "partattn", None)
        if data is not None and report.when == "call":
            self.summary.add(ItemReport.from_dict(data))
        elif data is None and report.failed and not self.is_worker:
            lost = self._lost_item(report)
            if lost is not None:
                self.summary.add(lost)

    def _lost_item(self, report: pytest.TestReport) -> ItemReport | None:
        """An item of ours that failed without its report (its xdist worker crashed, or pytest's own
        machinery failed around it): an error in the summary, never a blank (or a pass)."""
        from ..checks import REGISTRY

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
        s = self.settings
        try:
            if self.summary:
                self.index = self.summary.write_index(s.results, self.header, fixture_set=self.fixture_set)
            results_folder.write_manifest(s.results, image_keys(s.fixtures, s.results))
        except OSError as exc:
            self.index_error = f"could not write index.html in {s.results}: {exc}"
        self._job_summary(session)

    def _job_summary(self, session: pytest.Session) -> None:
        """``$GITHUB_STEP_SUMMARY`` set: append the session as markdown (a file that cannot be written is a
        warning line in the terminal summary, never an error)."""
        path, config = os.environ.get(markdown.ENV), session.config
        if not path or config.option.collectonly:
            return
        s = self.settings
        text = markdown.job_summary(
            self.summary,
            fixture_set=self.fixture_set,
            context={**self.context, **self.baseline_context()},
            shown=lambda p: s.shown(Path(p)),
            results=s.results,
            index=self.index,
            reports={
                "JUnit XML": getattr(config.option, "xmlpath", None),
                "pytest-html": config.getoption("htmlpath", None),
            },
            notes=[*self.summary.notes(), *self.unused_lines],
            interrupted=self.interrupted or session.exitstatus == pytest.ExitCode.INTERRUPTED,
        )
        self.job_summary_error = markdown.append(path, text)

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.config = session.config

    def baseline_context(self) -> dict[str, str]:
        """The summary's line on the baselines: where, and which verdict judged how many images."""
        counts = self.summary.verdicts()
        if not counts:
            return {}
        s = self.settings
        judged = ", ".join(f"{kind} {n}" for kind, n in counts.items())
        return {"baselines": f"{s.shown(s.baselines)} (--partattn-verdict {s.verdict}): {judged}"}

    @pytest.hookimpl(trylast=True)  # after the terminal reporter has kept the interrupt it will show
    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        self.interrupted = True
        if not self.is_worker and self.config is not None:
            interrupt.one_line(self.config)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.is_worker or (not self.summary and terminalreporter.config.option.collectonly):
            return
        tr = terminalreporter
        tr.write_sep("=", "partattn summary")
        for label, text in {**self.context, **self.baseline_context()}.items():
            tr.write_line(f"{label}: {text}")
        if not self.summary:
            why = f"fixtures folder: {self.settings.fixtures}"
            why = "interrupted before one finished" if self.interrupted else why
            tr.write_line(f"no fixture images ran ({why})")
            for line in self.unused_lines:
                tr.write_line(line)
            self._write_errors(tr)
            return
        for line in self.summary.table_lines():
            tr.write_line(line)
        if self.fixture_set is not None:
            tr.write_line(f"fixture set: {self.fixture_set.verdict} ({self.fixture_set.reason()})")
        for line in [*self.summary.notes(), *self.unused_lines]:
            tr.write_line(line)
        if self.index is not None:
            tr.write_line(f"figures and index: {self.index}")
        self._write_errors(tr)

    def _write_errors(self, tr) -> None:
        if self.index_error:
            tr.write_line(self.index_error, red=True)
        if self.job_summary_error:
            tr.write_line(f"warning: {self.job_summary_error}", yellow=True)
