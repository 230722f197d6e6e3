"""What the ``partattn`` command shows and writes besides its results: the progress bar, and its
output folders under the one rule of :mod:`partattn_checks.base.outfolder` (checked writable before any
work; a manifest of what each command wrote, so the next command into the same folder removes exactly
its own stale files and refuses to overwrite a file the user put there: a usage error, exit status 2).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..base import outfolder
from ..base.outfolder import KEPT_OUTPUTS, OutputFolderError
from ..base.outfolder import MANIFEST as MANIFEST  # the shared rule's names, used by the commands
from ..base.outfolder import remove_created as remove_created
from ..errors import PartattnError

#: The files ``partattn compare`` writes (recognised in folders written before manifests existed).
COMPARE_OUTPUTS = ("compare.json", "index.html", "change_heatmap.png", "check_values.png", "parts_a.png", "parts_b.png")
#: The files ``partattn calibrate`` writes, and the folder of the gate run that wrote the baselines.
CALIBRATE_OUTPUTS = ("thresholds.toml", "model-matrix.md", "model-matrix.json", "model-matrix.png")
GATE_RESULTS = "gate-results"


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


#: How to proceed when ``--out`` cannot be used as it is.
OUT_FIX = "pass --out DIR, another folder, or move the file away"
WRITABLE_FIX = "pass --out DIR, a folder you can write to (created when missing), or move the file away"


def writable_folder(out: Path, option: str) -> Path | None:
    """:func:`partattn_checks.base.outfolder.writable_folder` for ``--out``: create ``out`` if needed and
    prove it writable, before any work. Returns the topmost folder this created, or None."""
    try:
        return outfolder.writable_folder(out, option, WRITABLE_FIX)
    except OutputFolderError as err:
        raise UsageError(str(err)) from None


def _json_object(path: Path) -> dict:
    """A JSON object file, ``{}`` when it is none; silently: a file that is not ours is simply not ours."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def legacy_files(out: Path) -> list[str]:
    """What an earlier command wrote into ``out`` before manifests existed, recognised by its main file:
    ``run``'s metrics.json (its figures, the record it links, index.html), ``compare``'s compare.json,
    ``calibrate``'s model-matrix.json (its outputs and the gate's results folder)."""
    names: list[str] = []
    metrics = _json_object(out / "metrics.json")
    if (out / "index.html").is_file() and {"figures", "checks", "summary"} <= metrics.keys():
        try:
            names += [f["path"] for f in metrics["figures"]] + ["metrics.json", "index.html"]
            names += [f["path"] for f in metrics.get("files", []) if Path(f["path"]).name in KEPT_OUTPUTS]
        except (KeyError, TypeError):
            pass
    if {"a", "b", "change", "verdict"} <= _json_object(out / "compare.json").keys():
        names += list(COMPARE_OUTPUTS)
    if {"provenance", "decisions", "matrix"} <= _json_object(out / "model-matrix.json").keys():
        names += list(CALIBRATE_OUTPUTS)
        if (out / GATE_RESULTS).is_dir():
            names += [p.relative_to(out).as_posix() for p in (out / GATE_RESULTS).rglob("*") if p.is_file()]
    return names


def refuse_foreign(out: Path, names, option: str) -> None:
    """Refuse, before any work, to overwrite a file in ``out`` that partattn did not write: one of
    ``names`` (files, or folders whose files count) that exists there and that no manifest lists."""
    try:
        outfolder.refuse_foreign(out, names, option, OUT_FIX, legacy=legacy_files)
    except OutputFolderError as err:
        raise UsageError(str(err)) from None


def _warn(text: str) -> None:
    print(f"partattn: warning: {text}", file=sys.stderr)


class Outputs(outfolder.Outputs):
    """:class:`partattn_checks.base.outfolder.Outputs` of a ``partattn`` command: render into
    :meth:`stage` (or write checked names and ``add`` them); a file in the way is a usage error."""

    def __init__(self, out: Path, command: str, option: str = "--out"):
        super().__init__(out, f"partattn {command}", option=option, fix=OUT_FIX, legacy=legacy_files, warn=_warn)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            super().__exit__(exc_type, exc, tb)
        except OutputFolderError as err:
            raise UsageError(str(err)) from None


def read_thresholds(arg: str | None):
    """The commands' thresholds: ``--thresholds FILE`` over the defaults (:meth:`Thresholds.resolve`'s
    file layer; the commands read no pyproject), a usage error when it cannot be used."""
    from ..checks import Thresholds, ThresholdsLayer

    if arg is None:
        return Thresholds.resolve()
    path = Path(arg)
    if not path.is_file():
        raise UsageError(f"thresholds file not found: {path}")
    try:
        return Thresholds.resolve(file=ThresholdsLayer.from_file(path))
    except ValueError as err:
        raise UsageError(str(err)) from None


def print_results(results, index: Path, n_figures: int) -> None:
    width = max((len(name) for name in results), default=0)
    for result in results.values():
        print(f"  {result.name:<{width}}  {result.verdict.upper():<4}  {result.reason}")
    print(f"wrote {n_figures} figures, metrics.json and the record; open {index}")
