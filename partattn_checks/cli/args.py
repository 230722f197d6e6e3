"""What several ``partattn`` subcommands share: argument types checked by the run settings' own
rules, the model folder (default: the embedded model) and its torch-free pre-flight, status lines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import EMBEDDED_MODEL as DEFAULT_MODEL
from .. import runspec
from .io import UsageError

MODEL_HELP = (
    f"PartCrafter checkpoint folder (hub layout, safetensors); default: the embedded tiny model ({DEFAULT_MODEL.name})"
)


def setting_arg(name: str):
    """An argparse type for run setting ``name``, validated by the rules of :mod:`partattn_checks.runspec`."""
    whole = name in ("num_parts", "steps", "seed", "num_tokens")

    def parse(text: str):
        try:
            value = int(text) if whole else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {'whole ' if whole else ''}number, got {text!r}") from None
        wrong = runspec.problem(name, value)
        if wrong:
            raise argparse.ArgumentTypeError(f"{wrong}, got {value}")
        return value

    return parse


def number_arg(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def device_arg(text: str) -> str:
    wrong = runspec.device_problem(text)
    if wrong:
        raise argparse.ArgumentTypeError(f"{wrong}, got {text!r}")
    return text


def layer_arg(text: str) -> int | str:
    """A layer as an index (``-1``: the last) or a module name (``blocks.20.attn2``)."""
    try:
        return int(text)
    except ValueError:
        return text


def say(args, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(f"partattn: {text}", file=sys.stderr)


def model_dir(arg: str | None) -> Path:
    if arg is None:
        if not DEFAULT_MODEL.is_dir():
            raise UsageError(
                f"the embedded default model is not installed ({DEFAULT_MODEL} not found); "
                f"pass --model DIR, a PartCrafter checkpoint folder"
            )
        return DEFAULT_MODEL
    path = Path(arg).expanduser()
    if not path.is_dir():
        raise UsageError(f"model folder not found: {path} (pass the folder that holds model_index.json)")
    return path


def check_model(model: Path) -> None:
    """The checkpoint pre-flight (no torch, no weights read): a damaged folder is a usage error."""
    from ..model.files import checkpoint_problems, format_problems

    problems = checkpoint_problems(model)
    if problems:
        raise UsageError(format_problems(problems))
