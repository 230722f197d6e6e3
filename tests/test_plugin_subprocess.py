"""The plugin in real subprocesses: nothing heavy is imported without --partattn, and
pytest-xdist (-n 2) gives the same outcomes as a serial run, one model load per worker."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from plugin_support import FAILING_SEPARATION, IMAGE, RUN_COUNTER, args, make_project

from partattn_checks.gate import scheduling
from partattn_checks.gate.items import ITEM_CHECKS
from partattn_checks.gate.report import markdown
from partattn_checks.gate.scheduling import KEEPS_FILES_TOGETHER, SPLITS_FILES
from partattn_checks.runs.sidecar import FIXTURE_IMAGE_SUFFIXES

pytest_plugins = ("pytester",)
HEAVY = ("torch", "diffusers", "transformers", "matplotlib")

RECORD_MODULES = f"""
import json, sys

def pytest_unconfigure(config):
    heavy = [m for m in {HEAVY!r} if m in sys.modules]
    with open("modules.json", "w") as fh:
        json.dump(heavy, fh)
"""


@pytest.fixture(autouse=True)
def _no_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)


def test_importing_the_plugin_is_light():
    imports = (
        "from partattn_checks.gate import plugin, items, state, options, report",
        "from partattn_checks.runs import session, sidecar",
        "from partattn_checks.capture import runspec",
    )
    heavy = (*HEAVY, "numpy", "safetensors", "PIL")  # numpy alone costs ~0.2 s at every pytest start
    code = f"import sys; {'; '.join(imports)}; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_explicit_cpu_device_is_resolved_without_torch():
    """``--partattn-device=cpu`` needs no look at the machine: resolving it (as a worker, and as the
    xdist controller, which runs no model) imports no torch, which costs seconds at every start."""
    code = (
        "import sys; from partattn_checks.capture import runspec; "
        "got = [runspec.resolve_device('cpu'), runspec.resolve_device('cpu', 'gw1', spread=True)]; "
        "print([c.device for c in got], 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['cpu', 'cpu'] False"


def test_without_partattn_nothing_heavy_is_imported(pytester):
    make_project(pytester, images=(IMAGE, "np1_circle.png"))
    pytester.makeconftest(RECORD_MODULES)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs", timeout=120)
    result.assert_outcomes(skipped=2 * len(ITEM_CHECKS))
    result.stdout.fnmatch_lines(["*pass --partattn to run attention checks*"])
    assert json.loads((pytester.path / "modules.json").read_text()) == []


def _junit_outcomes(path) -> dict[tuple[str, str], str]:
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        kind = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        out[(case.get("classname"), case.get("name"))] = kind
    return out


#: An image whose part separation fails and one that skips it (one part); with the broken image, three
#: files for two workers: each worker runs at least one (xdist's scope schedulers give the first two one
#: each, then the third to the first), and each image's checks, run apart, would denoise it twice.
IMAGES = (IMAGE, "np1_circle.png")
EARLIER = "# Build\nearlier step's line\n"  # a GitHub job summary file an earlier step wrote to
#: The device of both runs: what auto resolves to without CUDA, given explicitly so that the xdist
#: controller, which runs no model, imports no torch (some 7 s of CPU a launch).
CPU = "--partattn-device=cpu"
#: Added to RUN_COUNTER: the xdist controller records the heavy modules it imported.
CONTROLLER_MODULES = f"""

def pytest_unconfigure(config):
    import sys
    if config.getoption("numprocesses", None) and not hasattr(config, "workerinput"):
        Path("controller-modules.json").write_text(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
"""


@pytest.fixture(scope="module")
def serial_outcomes() -> dict:
    """The serial run's outcomes, kept by the first test of this module that runs (in each xdist worker)
    for the others: the same project gives the same outcomes in any folder, so one serial run serves
    every --dist mode's comparison (each ran its own, 13 s apiece)."""
    return {}


def _serial_then(pytester, monkeypatch, serial_outcomes: dict, *xdist_args: str):
    """Run the gate serially (in process; once per module), then under xdist with ``xdist_args`` and a
    GitHub job summary file to append to; both see a broken image."""
    folder = make_project(pytester, images=IMAGES, thresholds=FAILING_SEPARATION)
    (folder / "np2_broken.png").write_bytes(b"not an image at all")
    pytester.makeconftest(RUN_COUNTER + CONTROLLER_MODULES)
    if "junit" not in serial_outcomes:
        serial = pytester.runpytest_inprocess(*args(CPU, "--junitxml=serial.xml", steps=1))
        assert serial.ret == pytest.ExitCode.TESTS_FAILED
        serial_outcomes["junit"] = _junit_outcomes(pytester.path / "serial.xml")
    expected = dict(serial_outcomes["junit"])
    assert len(expected) == 3 * len(ITEM_CHECKS) + 1  # and the fixture-set item, not judged: no baselines
    assert expected[("fixtures.images", "fixture-set")] == "skipped"
    assert set(expected.values()) == {"passed", "failure", "skipped"}
    summary = pytester.path / "step-summary.md"
    summary.write_text(EARLIER)
    monkeypatch.setenv(markdown.ENV, str(summary))
    parallel = pytester.runpytest_subprocess(*args(CPU, *xdist_args, "--junitxml=xdist.xml", steps=1), timeout=300)
    workers = {p.name: json.loads(p.read_text()) for p in pytester.path.glob("events-gw*.json")}
    assert set(workers) == {"events-gw0.json", "events-gw1.json"}
    return expected, parallel, workers


#: partattn's two scheduling paths end to end (a launch of pytest -n 2, a controller and two workers, costs
#: some 25 s of CPU). No --dist: partattn sees that none was given (before xdist fills in its default), picks
#: loadfile, and its hook hands xdist a LoadFileScheduling. A mode that would split an image (worksteal): the
#: hook hands xdist partattn's own ImageScheduling and the controller warns once; load and loadgroup build that
#: same scheduler and, for fixture images (no xdist_group mark), run the same code. loadscope and loadfile run
#: no code of partattn's but its hook returning None, and then xdist's LoadScopeScheduling (loadscope) or the
#: LoadFileScheduling of the no --dist run: the machinery of both runs here, whose schedulers are each a
#: LoadScopeScheduling with its own _split_scope. What differs between every mode, how its scheduler groups an
#: image's checks and other tests, and its plan, header and warning, is checked for each mode by
#: test_the_scheduler_keeps_each_image_whole_and_groups_other_tests_by_mode and test_every_dist_mode_gets_its_plan.
#: Each run also shows that under xdist only the controller appends to the GitHub job summary
#: (tests/test_job_summary.py runs the summary serially) and that the controller imports no torch.
@pytest.mark.parametrize("dist", [None, "worksteal"])
def test_each_image_runs_once_under_xdist_whatever_the_dist_mode(pytester, monkeypatch, serial_outcomes, dist):
    xdist_args = ("-n", "2") if dist is None else ("-n", "2", "--dist", dist)
    expected, parallel, workers = _serial_then(pytester, monkeypatch, serial_outcomes, *xdist_args)
    assert _junit_outcomes(pytester.path / "xdist.xml") == expected
    runs = sorted(c for w in workers.values() for c in w["calls"])
    assert runs == sorted([*IMAGES, "np2_broken.png"])  # one denoising run per image, in all
    assert all(w["calls"] for w in workers.values())  # on both workers
    assert all(len(w["loads"]) <= 1 for w in workers.values())
    out = parallel.stdout.str()
    if dist is None:
        assert "partattn: xdist: --dist loadfile (chosen by partattn" in out
        assert "would split" not in out
        _the_controller_reported_the_workers_results(pytester, parallel)
    else:
        assert f"partattn: xdist: --dist {dist} for other tests, each fixture image kept on one worker" in out
        assert out.count(f"--dist {dist} would split a fixture image's checks across workers") == 1
    _only_the_controller_appended_the_job_summary(pytester.path / "step-summary.md")
    assert json.loads((pytester.path / "controller-modules.json").read_text()) == []  # given cpu: no torch


def _only_the_controller_appended_the_job_summary(path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.startswith(EARLIER + "\n## ❌ partattn gate: FAILED: "), text[:300]
    assert text.count("partattn gate:") == 1  # one block: the workers appended nothing
    for image in IMAGES:  # and it holds the results of both workers
        assert text.count(f"#### baseline: FAIL · `fixtures/images/{image}`") == 1, text


@pytest.mark.parametrize("dist", [None, "no", *SPLITS_FILES, *KEEPS_FILES_TOGETHER, "each"])
def test_every_dist_mode_gets_its_plan(dist):
    """Every --dist value maps to the plan (and the header and warning) the runs above show for their
    representative of the same path."""
    got = scheduling.plan(dist, "load" if dist in (None, "no") else dist)  # what xdist resolved it to
    if dist in (None, "no"):  # -n N alone: xdist fills in "no", partattn runs loadfile
        assert (got.mode, got.replaced) == ("loadfile", False) and "chosen by partattn" in got.header
    elif dist in SPLITS_FILES:
        assert (got.mode, got.replaced) == (dist, True) and f"--dist {dist} would split" in got.warning
        assert got.header == f"xdist: --dist {dist} for other tests, each fixture image kept on one worker (partattn)"
    else:
        assert (got.mode, got.replaced, got.warning) == (dist, False, None)
        kept = "every worker runs every image" if dist == "each" else "each image's checks run on one worker"
        assert got.header == f"xdist: --dist {dist} ({kept})"
    assert scheduling.plan(dist, "no") is None  # xdist not distributing: nothing to plan


@pytest.mark.parametrize("dist", [None, *SPLITS_FILES, *KEEPS_FILES_TOGETHER])
def test_the_scheduler_keeps_each_image_whole_and_groups_other_tests_by_mode(pytester, dist):
    """The scheduler each plan runs (partattn's, or xdist's own where the mode keeps files together)
    puts an image's checks in one work unit, and groups other tests as the mode does: by file (no
    --dist: loadfile), one by one (load, worksteal), by xdist group (loadgroup, whose workers add
    ``@group`` to a marked test's id), by module or class (loadscope)."""
    from xdist.scheduler import LoadFileScheduling, LoadScopeScheduling

    config = pytester.parseconfig("--tx=2*popen", *(() if dist is None else ("--dist", dist)))  # what -n 2 sets
    plan = scheduling.plan(dist, dist or "load")  # what xdist resolves it to (-n N alone: load)
    got = scheduling.make_scheduler(plan, config, None, FIXTURE_IMAGE_SUFFIXES)
    if dist in KEEPS_FILES_TOGETHER:
        assert got is None  # xdist builds its own
        got = {"loadfile": LoadFileScheduling, "loadscope": LoadScopeScheduling}[dist](config)
    unit = got._split_scope
    for check in ITEM_CHECKS:
        assert unit(f"fixtures/images/np2_a.png::{check}") == "fixtures/images/np2_a.png"
        assert unit(f"more/np3_B.PNG::{check}") == "more/np3_B.PNG"
    others = ("tests/test_x.py::test_a", "tests/test_x.py::Case::test_b", "tests/test_x.py::test_c@db")
    expected = {
        None: ["tests/test_x.py"] * 3,
        "load": list(others),
        "worksteal": list(others),
        "loadgroup": ["tests/test_x.py::test_a", "tests/test_x.py::Case::test_b", "db"],
        "loadfile": ["tests/test_x.py"] * 3,
        "loadscope": ["tests/test_x.py", "tests/test_x.py::Case", "tests/test_x.py"],
    }[dist]
    assert [unit(nodeid) for nodeid in others] == expected


def _the_controller_reported_the_workers_results(pytester, parallel):
    # the controller printed the summary from the workers' reports and wrote the index
    parallel.stdout.fnmatch_lines(
        [
            "*= partattn summary =*",
            "image*baseline",
            "fixtures/images/np1_circle.png*skip*FAIL",
            "fixtures/images/np2_broken.png*ERROR*",
            f"fixtures/images/{IMAGE}*FAIL*",
        ]
    )
    assert parallel.stdout.str().count("which leaves out <system-out>") == 1  # warned by the controller only
    index = (pytester.path / ".partattn-results" / "index.html").read_text()
    assert all(name in index for name in (*IMAGES, "np2_broken.png"))
    # failure text and figures travelled from the workers
    parallel.stdout.fnmatch_lines([f"partattn: part_separation failed for fixtures/images/{IMAGE}", "figures:"])
