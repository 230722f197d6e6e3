"""The package's folders are its layers, and imports run one way: down.

A module may import its own layer and the layers below it, never one above (function-level and
``TYPE_CHECKING`` imports included). Adding a top-level module or folder means placing it here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import partattn_checks

PACKAGE = Path(partattn_checks.__file__).parent

#: Bottom to top. The package root (its __init__) and errors.py belong to "base".
LAYERS = ("base", "model", "capture", "render", "checks", "baselines", "runs", "present", "analysis", "gate", "cli")
ROOT_MODULES = {"__init__": "base", "errors": "base"}


def layer_of(module: str) -> str:
    """The layer of a dotted module name relative to the package ('' for the root)."""
    head = module.split(".")[0] if module else "__init__"
    return ROOT_MODULES.get(head, head)


def imports_of(path: Path, package: Path) -> set[str]:
    """Modules (relative dotted names, '' for the package root) a file imports from the package."""
    parts = list(path.relative_to(package).with_suffix("").parts)
    here = parts[:-1]  # the package a relative import starts from
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == package.name:
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:  # `from . import render` imports the module render
                sub = package.joinpath(*target, alias.name)
                found.add(
                    ".".join([*target, alias.name] if sub.exists() or sub.with_suffix(".py").exists() else target)
                )
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == package.name:
                    found.add(".".join(alias.name.split(".")[1:]))
    return found


def upward_imports(package: Path) -> list[str]:
    """``module (layer) -> imported (layer)`` for every import of a higher layer."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    bad = []
    for path in sorted(package.rglob("*.py")):
        module = ".".join(path.relative_to(package).with_suffix("").parts).removesuffix(".__init__")
        mine = layer_of(module)
        for target in sorted(imports_of(path, package)):
            theirs = layer_of(target)
            if rank[theirs] > rank[mine]:
                bad.append(f"{module} ({mine}) -> {target or package.name} ({theirs})")
    return bad


def test_every_module_sits_in_a_layer():
    tops = {
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if p.suffix == ".py" or (p / "__init__.py").exists()
    }
    assert sorted(t for t in tops if layer_of(t) not in LAYERS) == []


def test_imports_run_down_the_layers():
    assert upward_imports(PACKAGE) == []


@pytest.mark.parametrize(
    ("where", "line"),
    [
        ("checks/late.py", "from ..gate import options\n"),
        ("capture/late.py", "def f():\n    from partattn_checks.present.views import renorm\n"),
        ("model/late.py", "from .. import runs\n"),
    ],
)
def test_an_upward_import_is_caught(tmp_path, where, line):
    """The rule on a copy of the package with one upward import planted (function-level included)."""
    import shutil

    copy = tmp_path / PACKAGE.name
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "data"))
    (copy / where).write_text(line)
    bad = upward_imports(copy)
    assert len(bad) == 1 and bad[0].startswith(where.removesuffix(".py").replace("/", ".")), bad


#: A module longer than this does more than one job (issue 27): split it by job.
MAX_MODULE_LINES = 500


def modules_over(package: Path, limit: int) -> dict[str, int]:
    """Modules of ``package`` longer than ``limit`` lines, with their lengths."""
    lengths = {str(p.relative_to(package)): len(p.read_text().splitlines()) for p in package.rglob("*.py")}
    return {name: n for name, n in lengths.items() if n > limit}


def test_no_module_is_over_the_line_limit():
    assert modules_over(PACKAGE, MAX_MODULE_LINES) == {}


def test_a_long_module_is_caught(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "short.py").write_text("x = 1\n" * 3)
    (tmp_path / "sub" / "long.py").write_text("x = 1\n" * 4)
    assert modules_over(tmp_path, 3) == {"sub/long.py": 4}
