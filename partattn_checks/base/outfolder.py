"""One rule for every writer of an output folder: the ``partattn`` commands and the pytest gate.

A writer writes only into a folder that is new, empty, or its own. Every file it is about to write
or replace must be absent, listed in the folder's manifest (``partattn-manifest.json``, which every
partattn writer keeps), or recognised as an older partattn output (a writer's ``legacy`` reader, for
folders written before manifests existed). This is checked before the first write, and a file in the
way is named with how to proceed; nothing of the user's is overwritten or removed.

* :func:`writable_folder`: create the folder if needed and prove it writable, before any work;
* :func:`refuse_foreign`: the up-front check of names a writer knows before it works;
* :class:`Outputs`: the writing itself. Outputs are rendered into a staging folder inside the
  output folder; when they are complete, every staged name is checked, then all of them are moved
  into place, the writer's stale files of the previous run are removed, and the manifest lists what
  is there now. An error or Ctrl-C leaves the folder as it was.

No package imports beyond :mod:`partattn_checks.errors` and :mod:`.atomic`: the gate uses it too.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ..errors import PartattnError
from .atomic import atomic_write_text

#: What partattn wrote into an output folder, so the next writer there replaces and removes exactly
#: its own files (``overlay_part2.png`` of an earlier 3-part run) and nothing else.
MANIFEST = "partattn-manifest.json"
#: Never removed as stale, only overwritten: a saved record is data (``show`` may be rendering it),
#: and ``input.png`` is the record's view of its image.
KEPT_OUTPUTS = ("record.json", "record.safetensors", "input.png")
#: Prefix of the staging folders :class:`Outputs` renders into (removed when it is done).
STAGING_PREFIX = ".partattn-staging-"

#: A writer's reader of folders written before manifests existed: ``out`` -> files (relative) it wrote.
Legacy = Callable[[Path], Iterable[str]]


class OutputFolderError(PartattnError, ValueError):
    """An output folder a writer may not use as it is (a file where the folder should be, a folder it
    cannot write, a file it did not write in the way); the message names it and how to proceed."""


def writable_folder(out: Path, option: str, fix: str) -> Path | None:
    """Create ``out`` if needed and prove it writable, before any work is done. ``option`` names the
    folder in messages (``--out``); ``fix`` says how to proceed.

    Returns the topmost folder this created (to remove again if the writer fails), or None.
    """
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{option} {out}: exists and is not a folder; {fix}")
    top = None
    for folder in (out, *out.parents):
        if folder.exists() or folder.is_symlink():
            break
        top = folder
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".partattn-write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        remove_created(out, top)
        raise OutputFolderError(f"{option} {out}: cannot write there ({err.strerror or err}); {fix}") from None
    return top


def remove_created(out: Path, top: Path | None) -> None:
    """Remove the still-empty folders from ``out`` up to ``top`` (what :func:`writable_folder` made)."""
    if top is None:
        return
    for folder in (out, *out.parents):
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == top:
            return


def inside(path: Path, out: Path) -> str | None:
    """``path`` relative to ``out`` (posix), or None when it is not inside ``out``."""
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(out)).as_posix()
    except ValueError:
        return None


@dataclass(frozen=True)
class Ownership:
    """What partattn wrote into a folder. ``overwrite``: files a writer may replace; ``previous``: those
    it removes when it does not write them again (none when the manifest is unreadable); ``problem``:
    why the manifest could not be read, else None."""

    overwrite: frozenset[str]
    previous: tuple[str, ...]
    problem: str | None = None


def ownership(out: Path, legacy: Legacy | None = None) -> Ownership:
    """The files partattn wrote into ``out``: its manifest's, else (no manifest, or one that cannot be
    read) those ``legacy`` recognises. Entries outside ``out`` are ignored."""
    manifest = out / MANIFEST
    names: list[str] = []
    problem = None
    if manifest.is_file():
        try:
            listed = json.loads(manifest.read_text(encoding="utf-8"))["files"]
            if isinstance(listed, list):
                names = [n for n in listed if isinstance(n, str)]
            else:
                problem = f"'files' is a {type(listed).__name__}, not a list"
        except (OSError, ValueError, KeyError, TypeError) as err:
            problem = str(err)
    recognised = _clean(legacy(out)) if legacy is not None and (problem or not manifest.is_file()) else []
    if problem is not None:  # ours, but which files is unknown: replace what looks like ours, remove nothing
        return Ownership(frozenset(recognised), (), problem)
    owned = _clean(names) if manifest.is_file() else recognised
    return Ownership(frozenset(owned), tuple(owned))


def _clean(names: Iterable[str]) -> list[str]:
    out = []
    for name in names:
        if isinstance(name, str) and name and not Path(name).is_absolute() and ".." not in Path(name).parts:
            out.append(Path(name).as_posix())
    return list(dict.fromkeys(out))


def in_the_way(out: Path, names: Iterable[str], owned: Iterable[str]) -> list[Path]:
    """Files among ``names`` (relative to ``out``; a folder counts with every file under it) that exist
    in ``out`` and are not in ``owned``; also anything that is not a plain file where one will go."""
    mine = set(owned)
    found = []
    for name in names:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            found += [p for p in sorted(path.rglob("*")) if not p.is_dir() and inside(p, out) not in mine]
        elif (path.exists() or path.is_symlink()) and inside(path, out) not in mine:
            found.append(path)
        else:  # a file where a folder on the way should be (``checks`` for ``checks/a.png``)
            found += [p for p in path.parents if p != out and inside(p, out) and p.is_file()]
    return list(dict.fromkeys(found))


def foreign_message(where: str, found: list[Path], fix: str) -> str:
    """``--out DIR: DIR/index.html is not a file partattn wrote there ... ; <fix>`` (``where``: ``--out DIR``)."""
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return (
        f"{where}: {found[0]} is not a file partattn wrote there (no {MANIFEST} lists it) and would be "
        f"overwritten{more}; {fix}"
    )


def refuse_foreign(out: Path, names: Iterable[str], option: str, fix: str, legacy: Legacy | None = None) -> None:
    """Refuse, before any work, to overwrite a file in ``out`` that partattn did not write: one of
    ``names`` (files, or folders whose files count) that exists there and that no manifest lists."""
    found = in_the_way(out, names, ownership(out, legacy).overwrite)
    if found:
        raise OutputFolderError(foreign_message(f"{option} {out}", found, fix))


def write_manifest(out: Path, writer: str, files: Iterable[str]) -> Path:
    """``partattn-manifest.json``: which files of ``out`` ``writer`` (``partattn run``) put there."""
    doc = {
        "written_by": writer,
        "note": "files partattn wrote here: a partattn writer replaces or removes only files listed here (never "
        "record.json, record.safetensors, input.png), and refuses to overwrite any other",
        "files": list(dict.fromkeys(files)),
    }
    return atomic_write_text(out / MANIFEST, json.dumps(doc, indent=2) + "\n")


def _top_files(out: Path) -> set[str]:
    """Files directly in ``out`` and under its ``checks/`` (where the outputs live), relative."""
    found = set()
    for folder in (out, out / "checks"):
        if folder.is_dir():
            found |= {p.relative_to(out).as_posix() for p in folder.iterdir() if p.is_file()}
    return found


class Outputs:
    """The files a writer puts into ``out``, written under the one rule.

    Use as a context manager around the writing. Either render into :meth:`stage` (a folder inside
    ``out``; on leaving the block every staged file is checked against ``out`` and, when none is in
    the way, all are moved into place), or write into ``out`` directly after checking the names with
    :func:`refuse_foreign` and ``add(path)`` each one. Then the writer's files of the previous run
    that it did not write again are removed (except :data:`KEPT_OUTPUTS`), and the manifest lists
    what is there now. On an error nothing is removed: staged files are dropped, and files written
    directly are added to the manifest, so that the next run can clean them up.
    """

    def __init__(
        self,
        out: Path,
        writer: str,
        *,
        option: str = "--out",
        fix: str = "pass another folder, or move the file away",
        legacy: Legacy | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        self.out, self.writer, self.option, self.fix = out, writer, option, fix
        owned = ownership(out, legacy)
        if owned.problem is not None and warn is not None:
            warn(f"{out / MANIFEST} is unreadable ({owned.problem}); files of the earlier run in {out} are left alone")
        self.owned = owned
        self.before = _top_files(out)
        self.written: list[str] = []
        self._kept: list[str] = []
        self._staging: Path | None = None

    def stage(self) -> Path:
        """The staging folder to render into (created on first use; removed when the block ends)."""
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.out))
        return self._staging

    def add(self, *paths: str | os.PathLike[str]) -> None:
        """Files written into ``out`` directly."""
        for path in paths:
            rel = inside(Path(path), self.out)
            if rel is not None and rel not in self.written:
                self.written.append(rel)

    def __enter__(self) -> Outputs:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is not None:
                created = sorted(_top_files(self.out) - self.before)  # written directly, before the error
                try:
                    if created:
                        write_manifest(self.out, self.writer, [*self.owned.previous, *created])
                except OSError:
                    pass  # the original error says more
                return
            if self._staging is not None:
                self._publish(self._staging)
            self._remove_stale()
            write_manifest(self.out, self.writer, self.written + self._kept)
        finally:
            if self._staging is not None:
                shutil.rmtree(self._staging, ignore_errors=True)

    def _publish(self, staging: Path) -> None:
        """Move every staged file into ``out``, after checking that none of them is in the way."""
        staged = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if not p.is_dir())
        found = in_the_way(self.out, staged, self.owned.overwrite)
        found += [self.out / name for name in staged if (self.out / name).is_dir()]  # a folder where a file goes
        if found:
            raise OutputFolderError(foreign_message(f"{self.option} {self.out}", found, self.fix))
        for name in staged:
            target = self.out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, target)
            self.add(target)

    def _remove_stale(self) -> None:
        now = set(self.written)
        for name in self.owned.previous:
            if name in now:
                continue
            path = self.out / name
            if Path(name).name in KEPT_OUTPUTS:
                if path.is_file():
                    self._kept.append(name)
                continue
            if path.is_file() or path.is_symlink():
                path.unlink()
                parent = path.parent
                while parent != self.out and inside(parent, self.out):
                    try:
                        parent.rmdir()
                    except OSError:
                        break
                    parent = parent.parent
