"""The ``partattn`` command.

    partattn run IMAGE [--model DIR] [--num-parts N] [--steps S] [--out DIR] ...
    partattn check [--model DIR] [--fixtures DIR] [pytest args ...]
    partattn show RECORD [--out DIR]
    partattn calibrate [--model DIR] [--fixtures DIR] [--out DIR] [--baselines DIR] [--margin F] ...
    partattn trend CKPT [CKPT ...] [--base DIR] [--fixtures DIR] [--out DIR]
    partattn compare A B [--fixtures DIR] [--out DIR]

``run`` denoises one image with capture on and writes figures, GIFs, ``metrics.json``, the record
and an ``index.html``; ``check`` runs the pytest gate (``pytest --partattn``) on a fixture folder
and exits non-zero when a check fails; ``show`` renders a saved record. Exit codes: 0 done,
1 a run or check failed, 2 bad arguments or inputs (message on stderr, no traceback): also a
damaged checkpoint, record or image, and an output folder that is a file or cannot be written
(checked before any work). ``trend``, ``calibrate`` and ``compare`` also run under ``torchrun`` /
``accelerate launch``, spread over the ranks (``cli/launch.py``). ``run`` and ``show`` list what
they wrote in ``partattn-manifest.json`` and, on the next run into the same folder, remove those of
the files they do not write again.
torch is imported only when a subcommand needs it, so ``--help`` is instant.

Each subcommand is one module of this package with ``add_parser(sub)`` (which sets ``func``) and
``main(args, extra) -> int``; :data:`COMMANDS` lists them in the order ``--help`` shows.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .check import check_args
from .io import MANIFEST, ProgressBar, RunFailed, UsageError

__all__ = ["main", "build_parser", "check_args", "COMMANDS", "MANIFEST", "ProgressBar", "UsageError", "RunFailed"]

#: Subcommand modules of this package (``partattn <name>``).
COMMANDS = ("run", "check", "show", "trend", "compare", "calibrate")
#: Subcommands that pass the arguments they do not know on (``check`` hands them to pytest).
PASS_THROUGH = {"check"}


class Parser(argparse.ArgumentParser):
    """The ``partattn`` parser; ``subparsers``: each command's own, for errors about extra arguments."""

    subparsers: dict[str, argparse.ArgumentParser]


def build_parser() -> Parser:
    parser = Parser(
        prog="partattn",
        description="Record, check and draw the cross-attention of PartCrafter checkpoints.",
        epilog="Run 'partattn <command> --help' for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    sub.required = True
    parser.subparsers = {name: importlib.import_module(f"{__name__}.{name}").add_parser(sub) for name in COMMANDS}
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (the console script exits with it)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.command not in PASS_THROUGH:
            parser.subparsers[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:  # --help (0) and argparse's usage errors (2)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    try:
        status = int(args.func(args, extra))
    except UsageError as err:
        status = _say(args, f"partattn {args.command}: error: {err}", 2)
    except RunFailed as err:
        status = _say(args, f"partattn {args.command}: failed: {err}", 1)
    except KeyboardInterrupt:
        status = _say(args, f"partattn {args.command}: interrupted", 130)
    except Exception as err:  # a bug, or a user's pipeline that raised: the traceback is the message
        from ..runs.distributed import shared

        if getattr(args, "speaks", True) or not shared(err):
            raise
        status = 0  # every rank of the launch raised it; rank 0 shows it
    # Under a torchrun launch rank 0 carries the status and the message (cli/launch.py): the others
    # exit 0, since a rank that exits non-zero makes torchrun stop rank 0 before it writes or speaks.
    return status if getattr(args, "speaks", True) else 0


def _say(args, text: str, status: int) -> int:
    """Print an error message on stderr (rank 0 alone under a launch); return ``status``."""
    if getattr(args, "speaks", True):
        print(text, file=sys.stderr)
    return status
