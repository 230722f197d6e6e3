"""Shared set-up for the plugin's pytester tests: a tiny project with fixture images.

Every run passes the tiny random checkpoint explicitly (``--partattn-model=...``, with ``=`` so
pytest's rootdir detection does not take the checkpoint folder for a test path) and 2 steps.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

# pytester's in-process runs drop modules first imported during a run (sys.modules snapshot), and
# torch cannot be imported twice in one process: import everything heavy the plugin uses up front.
import partattn_checks.capture  # noqa: F401,E402  (torch, diffusers)
import partattn_checks.model.pipeline  # noqa: F401,E402  (transformers)
import partattn_checks.render  # noqa: F401,E402  (matplotlib)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "fixtures" / "checkpoints" / "tiny-random"
IMAGES = REPO / "fixtures" / "images"
IMAGE = "np2_circle_square.png"

#: Thresholds under which the random tiny model passes every record check.
PASSING = "[part_separation]\nmin_separation = 0.0\n\n[uniformity]\nmax_share = 1.0\n"
#: ... and under which part separation fails.
FAILING_SEPARATION = "[part_separation]\nmin_separation = 0.999\n\n[uniformity]\nmax_share = 1.0\n"


def make_project(pytester: pytest.Pytester, images=(IMAGE,), thresholds: str = PASSING) -> Path:
    folder = pytester.path / "fixtures" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for name in images:
        shutil.copyfile(IMAGES / name, folder / name)
    (pytester.path / "thresholds.toml").write_text(thresholds)
    return folder


def args(*extra: str, steps: int = 2) -> list[str]:
    return [
        "-p",
        "no:cacheprovider",
        "--partattn",
        f"--partattn-model={TINY}",
        f"--partattn-steps={steps}",
        "--partattn-thresholds=thresholds.toml",
        *extra,
    ]


def call_reports(result) -> dict[str, object]:
    """{node id: call-phase report} of an in-process run (skips at setup included)."""
    out = {}
    for rep in result.reprec.getreports("pytest_runtest_logreport"):
        if rep.when == "call" or (rep.when == "setup" and rep.skipped):
            out[rep.nodeid] = rep
    return out


def outcomes(result) -> dict[str, str]:
    return {nodeid: rep.outcome for nodeid, rep in call_reports(result).items()}


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


#: A conftest that supplies the pipeline through the hook and records model loads and image runs
#: per process (events-<xdist worker or main>.json). The file is (re)written atomically at start and
#: at every event, not at exit: an xdist worker can still be shutting down when the run returns.
RUN_COUNTER = (
    f"MODEL = {str(TINY)!r}\n"
    + """
import json, os
from pathlib import Path

import pytest

EVENTS = {"loads": [], "calls": []}


def save():
    path = Path(f"events-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.json")
    path.with_suffix(".tmp").write_text(json.dumps(EVENTS))
    os.replace(path.with_suffix(".tmp"), path)


class Counting:
    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, image, *args, **kwargs):
        EVENTS["calls"].append(Path(str(image)).name)
        save()
        return self.inner(image, *args, **kwargs)


def pytest_configure(config):
    save()


def pytest_partattn_load_pipeline(config, device, dtype):
    import torch
    from partattn_checks.model.pipeline import PartCrafterPipeline

    EVENTS["loads"].append(device)
    save()
    return Counting(PartCrafterPipeline.from_pretrained(MODEL, device=device, dtype=getattr(torch, dtype)))
"""
)
