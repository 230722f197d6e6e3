"""The package-level API: light to import, every public name importable from the root, one base
exception for every project error."""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

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


BUILTIN_ERRORS = {
    name for name, obj in vars(builtins).items() if isinstance(obj, type) and issubclass(obj, BaseException)
}


def is_protocol(name: str, function: str | None, method: bool) -> bool:
    """A built-in raise that is protocol, not an error of ours."""
    return (
        name in ("KeyboardInterrupt", "SystemExit")  # re-raising an interrupt
        or (name == "NotImplementedError" and method)  # an abstract method
        or (name == "KeyError" and function == "__getitem__")  # Mapping.__getitem__
        or (name == "AttributeError" and function == "__getattr__")  # module and class __getattr__
    )


def builtin_raises(package: Path) -> list[str]:
    """``path:line: Name`` of every ``raise <built-in exception>`` in ``package`` that is not
    :func:`is_protocol` (a bare ``raise`` or ``raise err`` of a caught error is not one)."""
    found = []

    def visit(node: ast.AST, function: str | None, method: bool, path: Path) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name, isinstance(node, ast.ClassDef), path)
                continue
            if isinstance(child, ast.Raise) and child.exc is not None:
                exc = child.exc.func if isinstance(child.exc, ast.Call) else child.exc
                name = exc.id if isinstance(exc, ast.Name) else None
                if name in BUILTIN_ERRORS and not is_protocol(name, function, method):
                    found.append(f"{path.relative_to(package.parent).as_posix()}:{child.lineno}: {name}")
            visit(child, function, method, path)

    for path in sorted(package.rglob("*.py")):
        visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), None, False, path)
    return found


def test_every_deliberate_raise_is_a_project_error():
    offenders = builtin_raises(Path(partattn_checks.__file__).parent)
    assert offenders == [], (
        "raise a PartattnError subclass (keeping the built-in as a second base, as RecordError does):\n"
        + "\n".join(offenders)
    )


PLANTED = """

def planted(key):
    raise ValueError("x")  # named


class Table:
    def __getitem__(self, key):
        raise KeyError(key)  # protocol: allowed

    def get(self, key):
        raise KeyError(key)  # named: not __getitem__
"""


def test_the_raise_scan_names_a_planted_builtin_raise(tmp_path):
    package = tmp_path / "partattn_checks"
    module = package / "capture" / "selection.py"
    module.parent.mkdir(parents=True)
    source = (Path(partattn_checks.__file__).parent / "capture" / "selection.py").read_text(encoding="utf-8")
    module.write_text(source, encoding="utf-8")
    assert builtin_raises(package) == []  # the real module is clean

    module.write_text(source + PLANTED, encoding="utf-8")
    named = [i for i, line in enumerate((source + PLANTED).splitlines(), 1) if "# named" in line]
    assert builtin_raises(package) == [
        f"partattn_checks/capture/selection.py:{named[0]}: ValueError",
        f"partattn_checks/capture/selection.py:{named[1]}: KeyError",
    ]
