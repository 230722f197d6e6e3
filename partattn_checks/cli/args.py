"""What several ``partattn`` subcommands share: argument types checked by the run settings' own
rules, the options of the commands that run a fixture set, the model folder (default: the embedded
model; a Hugging Face repo id is resolved through the hub cache) and its torch-free pre-flight, the
device, status lines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import EMBEDDED_MODEL as DEFAULT_MODEL
from ..capture import runspec
from .io import UsageError

DEFAULT_FIXTURES = Path("fixtures") / "images"
MODEL_HELP = (
    "PartCrafter checkpoint folder (hub layout, safetensors) or Hugging Face repo id (wgsxm/PartCrafter[@revision], "
    f"through the hub cache; HF_HUB_OFFLINE honoured); default: the embedded tiny model ({DEFAULT_MODEL.name})"
)


def setting_arg(name: str):
    """An argparse type for run setting ``name``, validated by the rules of :mod:`partattn_checks.capture.runspec`."""
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


def model_dir(arg: str | None, option: str = "--model") -> Path:
    """The folder ``--model`` names: the embedded model by default, a local folder, or a Hugging Face repo
    id's snapshot in the hub cache (``model.hub``); a usage error when there is none."""
    if arg is None:
        if not DEFAULT_MODEL.is_dir():
            raise UsageError(
                f"the embedded default model is not installed ({DEFAULT_MODEL} not found); "
                f"pass --model DIR, a PartCrafter checkpoint folder"
            )
        return DEFAULT_MODEL
    path = hub_folder(arg, option)
    if not path.is_dir():
        raise UsageError(f"model folder not found: {path} (pass the folder that holds model_index.json)")
    return path


def hub_folder(arg: str, option: str) -> Path:
    """``arg`` as a local path, or, written as a Hugging Face repo id with no such local path, its
    snapshot folder in the hub cache; a repo that cannot be had is a usage error in one line."""
    from ..model import hub

    try:
        return hub.model_folder(arg)
    except hub.HubError as err:
        raise UsageError(f"{option} {arg}: {err}") from None


def resolved(arg: str | None, option: str) -> str | None:
    """``arg`` as given, or, when it is a Hugging Face repo id (no such local path), its snapshot folder."""
    from ..model.hub import is_repo_id

    return str(hub_folder(arg, option)) if arg is not None and is_repo_id(arg) else arg


def check_model(model: Path) -> None:
    """The checkpoint pre-flight (no torch, no weights read): a damaged folder is a usage error."""
    from ..model.files import checkpoint_problems, format_problems

    problems = checkpoint_problems(model)
    if problems:
        raise UsageError(format_problems(problems))


def add_run_options(parser: argparse.ArgumentParser, *, num_tokens: bool = False) -> None:
    """``--steps --seed [--num-tokens] --device --dtype``: how a command that denoises runs the model."""
    parser.add_argument(
        "--steps", type=setting_arg("steps"), metavar="S", help="denoising steps (default: the checkpoint's)"
    )
    parser.add_argument(
        "--seed",
        type=setting_arg("seed"),
        default=runspec.DEFAULT_SEED,
        help=f"noise seed (default: {runspec.DEFAULT_SEED})",
    )
    if num_tokens:
        parser.add_argument(
            "--num-tokens",
            type=setting_arg("num_tokens"),
            metavar="T",
            help="latent tokens per part (default: the checkpoint's)",
        )
    parser.add_argument(
        "--device",
        type=device_arg,
        default="auto",
        help="auto (CUDA when present), cpu, cuda or cuda:N (default: auto)",
    )
    parser.add_argument("--dtype", choices=runspec.DTYPES, default="float32", help="model dtype (default: float32)")


def add_fixture_run_options(parser: argparse.ArgumentParser, *, num_tokens: bool = False) -> None:
    """``--fixtures`` and the run options: how the commands that run a fixture set run it."""
    parser.add_argument("--fixtures", metavar="DIR", help=f"folder of fixture images (default: ./{DEFAULT_FIXTURES})")
    add_run_options(parser, num_tokens=num_tokens)
    add_pipeline_option(parser)


def fixtures_dir(arg: str | None) -> Path:
    return Path(arg).expanduser() if arg else DEFAULT_FIXTURES


def run_device(arg: str) -> str:
    """The torch device ``--device`` names (``auto``: CUDA when present), or a usage error saying why not."""
    try:
        return runspec.resolve_device(arg).device
    except runspec.RunSpecError as err:
        raise UsageError(f"--device {arg}: {err}") from None


def check_num_tokens(num_tokens: int | None, model: Path, device: str, dtype: str) -> None:
    """``--num-tokens`` whose runs clearly cannot fit in ``device``'s memory is a usage error naming the
    estimate and the memory there (before anything is loaded)."""
    wrong = runspec.tokens_problem(num_tokens, model, device, dtype=dtype) if num_tokens is not None else None
    if wrong:
        raise UsageError(f"--num-tokens {num_tokens}: {wrong}")


def add_pipeline_option(parser: argparse.ArgumentParser) -> None:
    """``--pipeline MODULE:FACTORY``: the user's own pipeline (the gate's ``--partattn-pipeline``)."""
    parser.add_argument(
        "--pipeline",
        metavar="MODULE:FACTORY",
        help="your own pipeline (an upstream-style PartCrafter pipeline, a fork's): factory(model, device, dtype), "
        "imported from the current folder and called with each checkpoint folder",
    )
