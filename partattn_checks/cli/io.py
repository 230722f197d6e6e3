"""What the ``partattn`` command shows and writes besides its results: the progress bar, and
its output folders (checked writable before any work; a manifest of what ``run``/``show``/``compare``/
``calibrate`` wrote, so the next command into the same folder removes exactly its own stale files and
refuses to overwrite a file the user put there).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from ..errors import PartattnError

#: What ``run``/``show`` wrote into an output folder, so the next command there removes exactly its
#: own stale files (``overlay_part2.png`` of an earlier 3-part run) and nothing else.
MANIFEST = "partattn-manifest.json"
#: The files ``partattn compare`` writes (recognised in folders written before manifests existed).
COMPARE_OUTPUTS = ("compare.json", "index.html", "change_heatmap.png", "check_values.png", "parts_a.png", "parts_b.png")
#: The files ``partattn calibrate`` writes, and the folder of the gate run that wrote the baselines.
CALIBRATE_OUTPUTS = ("thresholds.toml", "model-matrix.md", "model-matrix.json", "model-matrix.png")
GATE_RESULTS = "gate-results"
#: Never removed as stale, only overwritten: a saved record is data (``show`` may be rendering it),
#: and ``input.png`` is the record's view of its image.
KEPT_OUTPUTS = ("record.json", "record.safetensors", "input.png")


class UsageError(PartattnError):
    """Bad arguments or inputs: printed as one line, exit status 2."""


class RunFailed(PartattnError):
    """The run itself failed (for example a capture error): printed as one line, exit status 1."""


class ProgressBar:
    """The pipeline's per-step callback ``(step, timestep, latents)``, drawing a tqdm bar over the
    denoising steps on ``stream`` (stderr). Off when ``enabled`` is false or, by default, when the
    stream is not a terminal (logs and CI stay clean)."""

    def __init__(self, total: int, *, stream=None, enabled: bool | None = None, label: str = "denoising"):
        from tqdm import tqdm  # installed with transformers and huggingface-hub

        stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.bar = tqdm(
            total=max(int(total), 1), desc=label, unit="step", file=stream, disable=not enabled, dynamic_ncols=True
        )

    def __call__(self, step: int, timestep=None, latents=None) -> None:
        done = min(int(step) + 1, self.bar.total)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        """End the bar's line (also when the run stopped early)."""
        self.bar.close()


def writable_folder(out: Path, option: str) -> Path | None:
    """Create ``out`` if needed and prove it writable, before any work is done.

    Returns the topmost folder this created (to remove again if the command fails), or None.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(
            f"{option} {out}: exists and is not a folder; pass --out DIR, a folder (created when "
            f"missing), or move the file away"
        )
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
        raise UsageError(
            f"{option} {out}: cannot write there ({err.strerror or err}); pass --out DIR, a folder you can write to"
        ) from None
    return top


def remove_created(out: Path, top: Path | None) -> None:
    """Remove the still-empty folders from ``out`` up to ``top`` (what ``writable_folder`` made)."""
    if top is None:
        return
    for folder in (out, *out.parents):
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == top:
            return


def _inside(path: Path, out: Path) -> str | None:
    """``path`` relative to ``out`` (posix), or None when it is not inside ``out``."""
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(out)).as_posix()
    except ValueError:
        return None


def _json_object(path: Path) -> dict:
    """A JSON object file, ``{}`` when it is none; silently: a file that is not ours is simply not ours."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _legacy_files(out: Path) -> list[str]:
    """What an earlier command wrote into ``out`` before manifests existed, recognised by its main file:
    ``run``'s metrics.json (its figures, index.html), ``compare``'s compare.json, ``calibrate``'s
    model-matrix.json (its outputs and the gate's results folder)."""
    names: list[str] = []
    metrics = _json_object(out / "metrics.json")
    if (out / "index.html").is_file() and {"figures", "checks", "summary"} <= metrics.keys():
        try:
            names += [f["path"] for f in metrics["figures"]] + ["metrics.json", "index.html"]
        except (KeyError, TypeError):
            pass
    if {"a", "b", "change", "verdict"} <= _json_object(out / "compare.json").keys():
        names += list(COMPARE_OUTPUTS)
    if {"provenance", "decisions", "matrix"} <= _json_object(out / "model-matrix.json").keys():
        names += list(CALIBRATE_OUTPUTS)
        if (out / GATE_RESULTS).is_dir():
            names += [p.relative_to(out).as_posix() for p in (out / GATE_RESULTS).rglob("*") if p.is_file()]
    return names


def _owned_files(out: Path) -> list[str]:
    """Files (relative to ``out``) that an earlier ``partattn`` command wrote into ``out``.

    From its manifest; for folders written before manifests existed, recognised by their main file
    (:func:`_legacy_files`). Entries outside ``out`` are ignored.
    """
    names = []
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            names = json.loads(manifest.read_text(encoding="utf-8"))["files"]
            problem = None if isinstance(names, list) else f"'files' is a {type(names).__name__}, not a list"
        except (OSError, ValueError, KeyError, TypeError) as err:
            problem = str(err)
        if problem is not None:
            print(
                f"partattn: warning: {manifest} is unreadable ({problem}); files of the earlier run in {out} are "
                f"left as they are",
                file=sys.stderr,
            )
            return []
    else:
        names = _legacy_files(out)
    owned = []
    for name in names:
        if isinstance(name, str) and name and not Path(name).is_absolute() and ".." not in Path(name).parts:
            owned.append(Path(name).as_posix())
    return owned


def refuse_foreign(out: Path, names, option: str) -> None:
    """Refuse, before any work, to overwrite a file in ``out`` that partattn did not write: one of
    ``names`` (files, or folders whose files count) that exists there and that no manifest lists."""
    owned = set(_owned_files(out))
    for name in names:
        path = out / name
        found = [p for p in path.rglob("*") if not p.is_dir()] if path.is_dir() else [path]
        for file in found:
            if (file.exists() or file.is_symlink()) and file.relative_to(out).as_posix() not in owned:
                raise UsageError(
                    f"{option} {out}: {file} is not a file partattn wrote there (no {MANIFEST} lists it) and would be "
                    f"overwritten; pass --out DIR, another folder, or move the file away"
                )


def _top_files(out: Path) -> set[str]:
    """Files directly in ``out`` and under its ``checks/`` (where the outputs live), relative."""
    found = set()
    for folder in (out, out / "checks"):
        if folder.is_dir():
            found |= {p.relative_to(out).as_posix() for p in folder.iterdir() if p.is_file()}
    return found


class Outputs:
    """The files a command writes into ``out``: stale ones of the previous command are removed after
    the new ones are written, and a manifest records what is there now.

    Use as a context manager around the writing; ``add(path)`` each written file. On an error
    nothing is removed, and the manifest also lists the files this attempt created, so the next
    run can clean them up.
    """

    def __init__(self, out: Path, command: str):
        self.out, self.command = out, command
        self.previous = _owned_files(out)
        self.before = _top_files(out)
        self.written: list[str] = []

    def add(self, *paths) -> None:
        for path in paths:
            rel = _inside(Path(path), self.out)
            if rel is not None and rel not in self.written:
                self.written.append(rel)

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            created = sorted(_top_files(self.out) - self.before)
            try:
                self._write_manifest(list(dict.fromkeys(self.previous + created)))
            except OSError:
                pass  # the original error says more
            return
        now = set(self.written)
        kept = []
        for name in self.previous:
            if name in now:
                continue
            path = self.out / name
            if Path(name).name in KEPT_OUTPUTS:
                if path.is_file():
                    kept.append(name)
                continue
            if path.is_file() or path.is_symlink():
                path.unlink()
                parent = path.parent
                while parent != self.out and _inside(parent, self.out):
                    try:
                        parent.rmdir()
                    except OSError:
                        break
                    parent = parent.parent
        self._write_manifest(self.written + kept)

    def _write_manifest(self, files: list[str]) -> None:
        from ..base.atomic import atomic_write_text

        doc = {
            "written_by": f"partattn {self.command}",
            "note": "files partattn wrote here; the next partattn command into this folder removes "
            "the ones it does not write again (not record.json, record.safetensors, input.png), and "
            "overwrites no other file",
            "files": files,
        }
        atomic_write_text(self.out / MANIFEST, json.dumps(doc, indent=2) + "\n")


def read_thresholds(arg: str | None):
    from ..checks import Thresholds, load_thresholds

    if arg is None:
        return Thresholds()
    path = Path(arg)
    if not path.is_file():
        raise UsageError(f"thresholds file not found: {path}")
    try:
        return load_thresholds(path)
    except ValueError as err:
        raise UsageError(str(err)) from None


def print_results(results, index: Path, n_figures: int) -> None:
    width = max((len(name) for name in results), default=0)
    for result in results.values():
        print(f"  {result.name:<{width}}  {result.verdict.upper():<4}  {result.reason}")
    print(f"wrote {n_figures} figures, metrics.json and the record; open {index}")
