"""What a fixture image needs to run: its part count, its pinned run settings, its thresholds.

The part count comes from the file name prefix ``np<N>_`` (``np3_chair.png`` -> 3) or from a
sidecar TOML file next to the image with the same stem (``chair.toml``): ``num_parts``, optional
``steps`` / ``num_tokens`` / ``seed`` / ``guidance_scale`` (the sidecar layer of :mod:`partattn_checks.capture.runspec`)
and ``[thresholds.<check>]`` tables merged over the session's thresholds. A problem never raises
here: it goes into :attr:`ImageSpec.error`, and the image's items fail with it.

Standard library only (plus the torch-free checks): the plugin reads sidecars while collecting.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..base.tomlread import TomlError, read_toml
from ..capture.runspec import problem
from ..checks import Thresholds, ThresholdsLayer
from ..errors import PartattnError

FIXTURE_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: Run settings a sidecar may pin. ``num_tokens`` is one: the record (hence the baseline) depends on
#: it, so an image whose baseline was made at, say, 256 tokens can pin them while the gate's option
#: sets another count for the rest.
SIDECAR_RUN_KEYS = ("num_parts", "steps", "num_tokens", "seed", "guidance_scale")
PART_PREFIX = re.compile(r"^np(\d+)_")


def parts_from_name(path: str | os.PathLike[str]) -> int | None:
    """Part count from a file name prefix ``np<N>_`` (``np3_chair.png`` -> 3), else ``None``."""
    match = PART_PREFIX.match(Path(path).name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class ImageSpec:
    path: Path  # absolute
    key: str  # path below the fixtures folder, posix, without suffix: baseline and results folder name
    display: str  # path relative to the rootdir (as in node ids)
    num_parts: int | None = None
    run: dict[str, Any] = field(default_factory=dict)  # steps / num_tokens / seed / guidance_scale from the sidecar
    thresholds: dict[str, Any] = field(default_factory=dict)  # [thresholds.<check>] of the sidecar
    sidecar: Path | None = None
    error: str | None = None  # why this image cannot run (bad sidecar, no part count)

    def run_layer(self) -> dict[str, Any]:
        """The sidecar layer of the run spec: the part count and the pinned settings."""
        return {"num_parts": self.num_parts, **self.run}

    def thresholds_layer(self) -> ThresholdsLayer | None:
        """The sidecar layer of :meth:`Thresholds.resolve`: this image's ``[thresholds.<check>]`` tables."""
        return _thresholds_layer(self.thresholds, self.sidecar) if self.thresholds else None

    def thresholds_over(self, base: Thresholds) -> Thresholds:
        """``base`` (the session's thresholds) with this image's ``[thresholds.<check>]`` overrides applied."""
        return Thresholds.resolve(base, sidecar=self.thresholds_layer())


def _thresholds_layer(tables: dict[str, Any], sidecar: Path | None) -> ThresholdsLayer:
    return ThresholdsLayer(tables, str(sidecar), prefix="thresholds.")


def _relative(path: Path, root: Path) -> Path | None:
    try:
        return path.relative_to(root)
    except ValueError:
        return None


def read_spec(path: Path, fixtures: Path, rootdir: Path) -> ImageSpec:
    """What ``path`` needs to run. Problems go into ``error`` (the image's items fail with it)."""
    path = Path(path).resolve()
    rel = _relative(path, fixtures)
    key = (rel.with_suffix("") if rel is not None else Path(path.stem)).as_posix()
    shown = _relative(path, rootdir)
    display = shown.as_posix() if shown is not None else str(path)
    sidecar = path.with_suffix(".toml")
    base = ImageSpec(path=path, key=key, display=display)
    from_name = parts_from_name(path)
    if from_name is not None and from_name < 1:
        rest = PART_PREFIX.sub("", path.name)
        return replace(
            base,
            error=(
                f"{display}: the np<N>_ prefix needs N >= 1 (the number of parts), not np{from_name}_; "
                f"rename the file, e.g. np1_{rest}"
            ),
        )
    if not sidecar.is_file():
        if from_name is None:
            return replace(
                base,
                error=(
                    f"{display}: unknown part count. Either rename the file with an np<N>_ prefix "
                    f"(e.g. np3_{path.name}) or add a sidecar file {sidecar.name} next to it with "
                    f"'num_parts = 3'"
                ),
            )
        return replace(base, num_parts=from_name)
    try:
        doc = read_toml(sidecar, "sidecar file")
    except TomlError as exc:
        return replace(base, sidecar=sidecar, error=str(exc))
    problems = _sidecar_problems(doc)
    if problems:
        return replace(base, sidecar=sidecar, error=f"{sidecar}: {problems}")
    thresholds = doc.get("thresholds", {})
    try:
        _thresholds_layer(thresholds, sidecar).check()
    except ValueError as exc:
        return replace(base, sidecar=sidecar, error=str(exc))
    num_parts = doc.get("num_parts", from_name)
    if num_parts is None:
        return replace(
            base,
            sidecar=sidecar,
            error=(
                f"{sidecar}: no num_parts, and {path.name} has no np<N>_ prefix; add 'num_parts = N' to the sidecar"
            ),
        )
    if from_name is not None and num_parts != from_name:
        return replace(
            base,
            sidecar=sidecar,
            error=(
                f"{sidecar}: num_parts = {num_parts} contradicts the file name prefix np{from_name}_; "
                f"rename the image or fix the sidecar"
            ),
        )
    run = {k: doc[k] for k in SIDECAR_RUN_KEYS if k != "num_parts" and k in doc}
    return replace(base, num_parts=int(num_parts), run=run, thresholds=thresholds, sidecar=sidecar)


def _sidecar_problems(doc: dict[str, Any]) -> str | None:
    unknown = sorted(set(doc) - {*SIDECAR_RUN_KEYS, "thresholds"})
    if unknown:
        return f"unknown key {unknown[0]!r} (known: {', '.join(SIDECAR_RUN_KEYS)}, [thresholds.<check>])"
    for key in SIDECAR_RUN_KEYS:
        wrong = problem(key, doc[key]) if key in doc else None
        if wrong:
            return f"{key} = {doc[key]!r} {wrong}"
    if not isinstance(doc.get("thresholds", {}), dict):
        return "thresholds must be a table of [thresholds.<check>] tables"
    return None


def image_keys(fixtures: Path, results: Path) -> set[str]:
    """Keys (``read_spec``'s ``key``) of every fixture image on disk, the results folder excluded."""
    if not fixtures.is_dir():
        return set()
    return {
        p.relative_to(fixtures).with_suffix("").as_posix()
        for p in fixtures.rglob("*")
        if p.suffix.lower() in FIXTURE_IMAGE_SUFFIXES and results not in p.parents and p.is_file()
    }


class FixtureError(PartattnError, ValueError):
    """A fixture folder that cannot be run: missing, empty, or an image the gate could not run."""


def fixture_specs(folder: str | Path, rootdir: str | Path = ".") -> list[ImageSpec]:
    """The images under ``folder`` as the gate collects them (sorted, subfolders included), with their
    sidecar settings, for the commands that run a fixture set outside pytest (calibrate, trend, compare)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FixtureError(f"fixture folder not found: {folder} (pass --fixtures DIR, a folder of np<N>_*.png images)")
    folder = folder.resolve()
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in FIXTURE_IMAGE_SUFFIXES)
    if not paths:
        raise FixtureError(f"no fixture images in {folder} ({', '.join(FIXTURE_IMAGE_SUFFIXES)})")
    specs = [read_spec(path, folder, Path(rootdir).resolve()) for path in paths]
    for spec in specs:
        if spec.error:
            raise FixtureError(spec.error)
    return specs
