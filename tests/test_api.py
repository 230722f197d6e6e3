"""The package-level API: light to import, every public name importable from the root, one base
exception for every project error."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import partattn_checks
from partattn_checks import PartattnError

HEAVY = ("torch", "diffusers", "transformers", "matplotlib")


def test_importing_the_package_imports_nothing_heavy():
    code = f"import sys, partattn_checks; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_public_name_imports_from_the_root():
    for name in partattn_checks.__all__:
        assert getattr(partattn_checks, name) is not None, name
    from partattn_checks import AttentionRecord, AttentionRecorder, AttentionVisualizer, PartCrafterPipeline, run_checks

    assert AttentionRecorder.__module__ == "partattn_checks.capture.recorder"
    assert {AttentionRecord.__name__, AttentionVisualizer.__name__, PartCrafterPipeline.__name__} == {
        "AttentionRecord",
        "AttentionVisualizer",
        "PartCrafterPipeline",
    }
    assert callable(run_checks)
    assert set(dir(partattn_checks)) >= set(partattn_checks.__all__)


def _project_modules():
    for info in pkgutil.walk_packages(partattn_checks.__path__, "partattn_checks."):
        yield importlib.import_module(info.name)


def test_every_project_error_subclasses_partattn_error():
    errors = {
        obj
        for module in _project_modules()
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, BaseException)
        and not issubclass(obj, Warning)
        and obj.__module__.startswith("partattn_checks")
    }
    assert len(errors) >= 6
    assert [e.__qualname__ for e in errors if not issubclass(e, PartattnError)] == []
