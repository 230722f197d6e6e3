"""The example scripts' argument checks: a bad OUT_DIR, ``--image`` or part count is one line on
stderr and exit status 2, found before any work (not a traceback half-way through)."""

import argparse

from partattn_checks.model.pipeline import open_image
from partattn_checks.runs.sidecar import parts_from_name


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def checked_inputs(parser: argparse.ArgumentParser, args: argparse.Namespace, drawn_parts: int) -> int:
    """Check ``args.image`` and ``args.out_dir``, create OUT_DIR and return the part count: ``--num-parts``,
    else the image's ``np<N>_`` name prefix, else ``drawn_parts`` for the scene drawn without ``--image``."""

    def error(text: str):
        parser.exit(2, f"{parser.prog}: error: {text}\n")

    image, out = args.image, args.out_dir
    named = parts_from_name(image) if image is not None else None
    if image is not None:
        if not image.is_file():
            error(f"--image {image}: no such file")
        try:
            open_image(image)
        except ValueError as err:
            error(f"--image {err}")
        if named is not None and named < 1:
            error(f"--image {image}: the np<N>_ prefix needs N >= 1 (the number of parts)")
        if None not in (named, args.num_parts) and named != args.num_parts:
            error(f"--num-parts {args.num_parts} contradicts the image's name {image.name} (np{named}_)")
    num_parts = next((n for n in (args.num_parts, named) if n is not None), drawn_parts if image is None else None)
    if num_parts is None:
        error(f"--image {image}: cannot tell its number of parts; pass --num-parts N or name it np<N>_{image.name}")
    if out.exists() and not out.is_dir():
        error(f"{out}: exists and is not a folder; give OUT_DIR, a folder (created when missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        error(f"{out}: cannot create the output folder ({err.strerror or err})")
    return num_parts
