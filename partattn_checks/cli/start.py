"""The start every ``partattn`` command that runs the model makes, declared once: the options it shares
(``--thresholds``, ``--out``, ``-q``) and, for the commands that run a fixture set (``trend``,
``compare``, ``calibrate``), the same resolution in the same order: fixture images → thresholds →
device → output folder, then a progress bar over this process's share."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runs.distributed import Ranks
from .args import fixtures_dir
from .io import ProgressBar, UsageError, read_thresholds, refuse_foreign, remove_created, writable_folder
from .launch import rank_device

THRESHOLDS_HELP = "thresholds file (tables [uniformity], [collapse], ...)"
QUIET_HELP = "no progress bar or status lines"


def add_output_options(
    parser: argparse.ArgumentParser,
    out_default: str,
    *,
    thresholds_help: str = THRESHOLDS_HELP,
    quiet_help: str = QUIET_HELP,
) -> None:
    """``--thresholds TOML``, ``--out DIR`` (``out_default`` says what it defaults to) and ``-q``."""
    parser.add_argument("--thresholds", metavar="TOML", help=thresholds_help)
    parser.add_argument("--out", metavar="DIR", help=f"output folder (default: {out_default})")
    parser.add_argument("-q", "--quiet", action="store_true", help=quiet_help)


def output_folder(args, default: Path, named: str = "output folder") -> tuple[Path, str]:
    """The folder ``--out`` names (``default`` without it) and how messages name it (the option, or
    ``named``)."""
    return (Path(args.out).expanduser(), "--out") if args.out else (default, named)


def claim_output_folder(out: Path, option: str, outputs) -> Path | None:
    """Before any work: create ``out`` if needed and refuse a file of the user's named like one of
    ``outputs`` (a user's own index.html stays theirs). The folder this created (None when it was
    there already); removed again when refused."""
    created = writable_folder(out, option)
    try:
        refuse_foreign(out, outputs, option)
    except UsageError:
        remove_created(out, created)
        raise
    return created


def progress_bar(args, total: int, label: str = "denoising") -> ProgressBar:
    """A progress bar over ``total`` units, off under ``-q`` (and, by default, off a terminal)."""
    return ProgressBar(total, enabled=False if args.quiet else None, label=label)


@dataclass(frozen=True)
class FixtureRun:
    """What a fixture-set command resolved before its run: the images, the thresholds, the device
    (the same on every rank of a launch) and the output folder with the name messages give it."""

    images: list
    thresholds: Any  # checks.Thresholds (imported lazily: it pulls in numpy)
    device: str
    out: Path
    option: str


def start_fixture_run(
    args,
    ranks: Ranks,
    default_out: Path,
    read_images: Callable[[Path], list],
    bad_images: tuple[type[Exception], ...],
) -> FixtureRun:
    """Resolve ``--fixtures`` (through ``read_images``; one of ``bad_images`` is a usage error),
    ``--thresholds``, ``--device`` and ``--out``, in that order; every rank resolves the same."""
    try:
        images = read_images(fixtures_dir(args.fixtures))
    except bad_images as err:
        raise UsageError(str(err)) from None
    thresholds = read_thresholds(args.thresholds)
    device = rank_device(args, ranks)
    out, option = output_folder(args, default_out)
    return FixtureRun(images, thresholds, device, out, option)
