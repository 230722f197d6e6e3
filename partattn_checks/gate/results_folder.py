"""The gate's results folder (``--partattn-results``) under the one output-folder rule
(:mod:`partattn_checks.base.outfolder`).

What the gate writes, replaces or removes there: ``index.html`` (the controller, at the end), each
fixture image's figures ``<image key>/<check>__<what>.png`` (an item removes its check's old ones
before drawing), and the baseline files (``metrics.json``, ``environment.json``,
``attention.safetensors``) under ``baseline-candidates/`` (removed when a session starts). Nothing
else in the folder is touched. Before any item runs, the controller refuses a results folder where
one of these is a file the gate did not write (a usage error naming the option and the file); at
the end it lists them in the folder's ``partattn-manifest.json``. Files named as the gate names them
are its own too (a folder written before manifests existed, a session killed before its end):
``index.html`` when it is the gate's page, figures named after a check, baseline files among the
candidates. So what can stand in the way is an ``index.html`` of someone else's. No torch.
"""

from __future__ import annotations

from pathlib import Path

from ..base import outfolder

WRITER = "pytest --partattn"
INDEX = "index.html"
CANDIDATES = "baseline-candidates"
#: The files of a baseline (candidate), as ``checks.baseline.store`` writes them.
BASELINE_FILES = ("metrics.json", "environment.json", "attention.safetensors")
#: How the gate's own index.html names itself (``Page("partattn results")``).
INDEX_TITLE = "<title>partattn results</title>"


def targets(results: Path, keys: set[str]) -> list[str]:
    """Files (relative) in ``results`` the gate may write, replace or remove: ``index.html``, and those
    that exist now among each image's ``<check>__*.png`` and the candidates' baseline files."""
    from ..checks import REGISTRY

    names = [INDEX]
    for key in sorted(keys):
        folder = results / key
        if folder.is_dir():
            names += [
                p.relative_to(results).as_posix()
                for p in sorted(folder.glob("*__*.png"))
                if p.name.split("__", 1)[0] in REGISTRY
            ]
    candidates = results / CANDIDATES
    if candidates.is_dir():
        names += [
            p.relative_to(results).as_posix()
            for p in sorted(candidates.rglob("*"))
            if p.name in BASELINE_FILES and not p.is_dir()
        ]
    return names


def legacy_files(keys: set[str]):
    """The reader of a results folder written before manifests (``base.outfolder.Legacy``): the gate's
    index.html, figures named after a check, baseline candidates' files."""

    def read(results: Path) -> list[str]:
        names = targets(results, keys)[1:]  # figures named after a check, candidates' baseline files
        index = results / INDEX
        try:
            if index.is_file() and INDEX_TITLE in index.read_text(encoding="utf-8", errors="replace")[:4096]:
                names.append(INDEX)
        except OSError:
            pass
        return names

    return read


def owned(results: Path, keys: set[str]) -> set[str]:
    """The gate's files in ``results``: those its manifest lists and those named as it names them (a
    session killed before its end leaves figures and candidates its manifest does not list yet)."""
    read = legacy_files(keys)
    return set(outfolder.ownership(results, read).overwrite) | set(read(results))


def problem(results: Path, keys: set[str], fix: str) -> str | None:
    """Why the gate may not write into ``results`` (a file there, or a file of the user's in the way;
    the message starts with the file), else None. Checked before any item runs."""
    if results.exists() and not results.is_dir():
        return f"{results} exists and is not a folder; {fix}"
    if not results.is_dir():
        return None
    found = outfolder.in_the_way(results, targets(results, keys), owned(results, keys))
    if not found:
        return None
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return (
        f"{found[0]} is not a file partattn wrote there (no {outfolder.MANIFEST} lists it) and would be "
        f"overwritten{more}; {fix}"
    )


def write_manifest(results: Path, keys: set[str]) -> None:
    """List what the gate wrote (and what earlier partattn writers listed and is still there)."""
    if not results.is_dir():
        return
    previous = outfolder.ownership(results, legacy_files(keys)).previous
    now = [n for n in targets(results, keys) if (results / n).is_file()]
    kept = [n for n in previous if (results / n).is_file()]
    outfolder.write_manifest(results, WRITER, [*kept, *now])
