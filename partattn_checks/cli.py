"""The ``partattn`` command.

    partattn run IMAGE [--model DIR] [--num-parts N] [--steps S] [--out DIR] ...
    partattn check [--model DIR] [--fixtures DIR] [pytest args ...]
    partattn show RECORD [--out DIR]

``run`` denoises one image with capture on and writes figures, GIFs, ``metrics.json``, the record
and an ``index.html``; ``check`` runs the pytest gate (``pytest --partattn``) on a fixture folder
and exits non-zero when a check fails; ``show`` renders a saved record. Exit codes: 0 done,
1 a run or check failed, 2 bad arguments or inputs (message on stderr, no traceback): also a
damaged checkpoint, record or image, and an output folder that is a file or cannot be written
(checked before any work). ``run`` and ``show`` list what they wrote in ``partattn-manifest.json``
and, on the next run into the same folder, remove those of the files they do not write again.
torch is imported only when a subcommand needs it, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import EMBEDDED_MODEL as DEFAULT_MODEL
from . import runspec
from .cli_io import (
    MANIFEST,
    Outputs,
    ProgressBar,
    UsageError,
    print_results,
    read_thresholds,
    remove_created,
    writable_folder,
)
from .cli_show import cmd_show
from .errors import PartattnError
from .runspec import DTYPES

__all__ = ["main", "build_parser", "check_args", "MANIFEST", "ProgressBar", "UsageError", "RunFailed"]

DEFAULT_FIXTURES = Path("fixtures") / "images"
DEFAULT_RESULTS = Path("partattn-results")
PLUGIN_MODULE = "partattn_checks.plugin"
#: ``pytest.main`` runs in this process, after the ``partattn`` command imported partattn_checks
#: (the plugin's package, which pytest marks for assert rewriting): pytest cannot rewrite it and
#: would say so on every ``check``. Nothing is lost: the gate's verdicts are not ``assert``
#: statements. (-W takes the message as a literal prefix, and it cannot hold the ':' before the
#: module name; the only module imported before ``pytest.main`` is this package.)
REWRITE_WARNING_FILTER = "ignore:Module already imported so cannot be rewritten:pytest.PytestAssertRewriteWarning"


class RunFailed(PartattnError):
    """The run itself failed (for example a capture error): printed as one line, exit status 1."""


# ====================================================================== arguments
def _setting(name: str):
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


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _device(text: str) -> str:
    wrong = runspec.device_problem(text)
    if wrong:
        raise argparse.ArgumentTypeError(f"{wrong}, got {text!r}")
    return text


def _layer(text: str) -> int | str:
    """A layer as an index (``-1``: the last) or a module name (``blocks.20.attn2``)."""
    try:
        return int(text)
    except ValueError:
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="partattn",
        description="Record, check and draw the cross-attention of PartCrafter checkpoints.",
        epilog="Run 'partattn <command> --help' for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{run,check,show}")
    sub.required = True

    model_help = (
        f"PartCrafter checkpoint folder (hub layout, safetensors); default: the embedded tiny "
        f"model ({DEFAULT_MODEL.name})"
    )

    run = sub.add_parser(
        "run",
        help="denoise one image with capture; write figures, GIFs, metrics and index.html",
        description="Denoise IMAGE with capture on, judge its attention with the checks, and write figures "
        "(overlay per part, part panel, multi-head grids, timelines), one GIF per part over steps, "
        "metrics.json, the saved record and an index.html that links them all.",
    )
    run.add_argument("image", metavar="IMAGE", help="input image (PNG/JPEG; transparency is put on white)")
    run.add_argument("--model", metavar="DIR", help=model_help)
    run.add_argument(
        "--num-parts",
        type=_setting("num_parts"),
        metavar="N",
        help="number of parts; default: from an np<N>_ file-name prefix (np3_chair.png -> 3)",
    )
    run.add_argument("--steps", type=_setting("steps"), metavar="S", help="denoising steps (default: the checkpoint's)")
    run.add_argument(
        "--seed",
        type=_setting("seed"),
        default=runspec.DEFAULT_SEED,
        help=f"noise seed (default: {runspec.DEFAULT_SEED})",
    )
    run.add_argument(
        "--guidance",
        type=_setting("guidance_scale"),
        metavar="G",
        help="guidance scale (default: the checkpoint's; <= 1 turns classifier-free guidance off)",
    )
    run.add_argument(
        "--num-tokens",
        type=_setting("num_tokens"),
        metavar="T",
        help="latent tokens per part (default: the checkpoint's)",
    )
    run.add_argument(
        "--device", type=_device, default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N (default: auto)"
    )
    run.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype (default: float32)")
    run.add_argument("--out", metavar="DIR", help=f"output folder (default: {DEFAULT_RESULTS}/<image stem>)")
    run.add_argument(
        "--layer",
        type=_layer,
        metavar="L",
        help="layer to show, as an index or a module name; default: the most part-separated "
        "layer for the part figures and the last layer for the multi-head grids",
    )
    run.add_argument(
        "--step",
        type=int,
        default=-1,
        metavar="K",
        help="step whose full query x key maps are kept for the multi-head grids (default: -1, the last)",
    )
    run.add_argument("--thresholds", metavar="TOML", help="thresholds file (tables [uniformity], [collapse], ...)")
    run.add_argument("--fps", type=_float, default=2.0, help="frames per second of the GIFs (default: 2)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar or status lines")
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser(
        "check",
        help="run the attention gate (pytest --partattn) on fixture images; non-zero exit on failure",
        description="Run the partattn pytest gate on a folder of fixture images (one test per image and check) "
        "against a checkpoint, without writing a test. Exits with pytest's status: 0 when every "
        "check passes. Arguments after the options (or after --) go to pytest, e.g. -x or -k np2.",
    )
    check.add_argument("--model", metavar="DIR", help=model_help)
    check.add_argument("--fixtures", metavar="DIR", help=f"folder of fixture images (default: ./{DEFAULT_FIXTURES})")
    check.add_argument("--steps", type=_setting("steps"), metavar="S", help="denoising steps (default: the plugin's)")
    check.add_argument("--device", type=_device, help="auto, cpu, cuda or cuda:N (default: the plugin's)")
    check.set_defaults(func=_cmd_check)

    show = sub.add_parser(
        "show",
        help="render a saved attention record (figures, metrics.json, index.html)",
        description="Render the figures, metrics.json and index.html of a record saved by 'partattn run', "
        "the pytest plugin or AttentionRecord.save. The overlays use input.png next to the "
        "record, else the record's image and model when they still exist, else --image.",
    )
    show.add_argument(
        "record",
        metavar="RECORD",
        help="record: its .json or .safetensors file, their common stem, or a folder holding record.json",
    )
    show.add_argument("--out", metavar="DIR", help="output folder (default: the record's folder)")
    show.add_argument("--image", metavar="PATH", help="input image for the overlays (default: see above)")
    show.add_argument("--layer", type=_layer, metavar="L", help="layer to show (default: the most part-separated)")
    show.add_argument("--thresholds", metavar="TOML", help="thresholds file for the checks")
    show.add_argument("--fps", type=_float, default=2.0, help="frames per second of the GIFs (default: 2)")
    show.set_defaults(func=cmd_show)
    parser._partattn_subparsers = {"run": run, "check": check, "show": show}  # for errors about extra arguments
    return parser


# ====================================================================== entry point
def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (the console script exits with it)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "check":
            parser._partattn_subparsers[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:  # --help (0) and argparse's usage errors (2)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    try:
        return int(args.func(args, extra))
    except UsageError as err:
        print(f"partattn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RunFailed as err:
        print(f"partattn {args.command}: failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"partattn {args.command}: interrupted", file=sys.stderr)
        return 130


def _say(args, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(f"partattn: {text}", file=sys.stderr)


def _model_dir(arg: str | None) -> Path:
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


# ====================================================================== run
def _cmd_run(args, extra) -> int:
    image = Path(args.image).expanduser()
    if not image.is_file():
        raise UsageError(f"image not found: {image}")
    from .sidecar import parts_from_name

    num_parts = args.num_parts or parts_from_name(image)
    if num_parts is None:
        raise UsageError(
            f"{image}: cannot tell the number of parts; pass --num-parts N or name the file np<N>_{image.name}"
        )
    model = _model_dir(args.model)
    _check_model(model)
    thresholds = read_thresholds(args.thresholds)
    out = Path(args.out).expanduser() if args.out else DEFAULT_RESULTS / image.stem
    created = writable_folder(out, "--out" if args.out else "output folder")
    try:
        return _run(args, image, num_parts, model, thresholds, out)
    except BaseException:
        remove_created(out, created)
        raise


def _check_model(model: Path) -> None:
    """The checkpoint pre-flight (no torch, no weights read): a damaged folder is a usage error."""
    from .model.files import checkpoint_problems, format_problems

    problems = checkpoint_problems(model)
    if problems:
        raise UsageError(format_problems(problems))


def _run(args, image: Path, num_parts: int, model: Path, thresholds, out: Path) -> int:
    from .capture import CaptureError, cross_attention_modules
    from .model.loading import CheckpointError, check_num_parts
    from .model.pipeline import open_image
    from .reporting.run_report import render_record, save_run
    from .visualizer import AttentionVisualizer

    try:
        open_image(image)
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from None
    try:
        device = runspec.resolve_device(args.device).device
    except runspec.RunSpecError as err:
        raise UsageError(f"--device {args.device}: {err}") from None
    _say(args, f"loading {model} on {device} ({args.dtype})")
    try:
        viz = AttentionVisualizer.from_pretrained(
            model, device=device, dtype=runspec.torch_dtype(args.dtype), thresholds=thresholds
        )
    except CheckpointError as err:
        raise UsageError(str(err)) from None
    try:  # the checkpoint's defaults, then the arguments: the run's settings, resolved once
        spec = runspec.for_pipeline(
            viz.pipeline,
            {"steps": args.steps, "seed": args.seed, "guidance_scale": args.guidance},
            call={"num_parts": num_parts, "num_tokens": args.num_tokens},
        )
        check_num_parts(viz.model.config, num_parts, cfg=spec.cfg)
    except ValueError as err:
        raise UsageError(str(err)) from None
    steps = spec.steps
    full_layer = args.layer if args.layer is not None else -1
    names = [name for name, _ in cross_attention_modules(viz.model)]
    if (
        isinstance(full_layer, int)
        and not -len(names) <= full_layer < len(names)
        or isinstance(full_layer, str)
        and full_layer not in names
    ):
        raise UsageError(
            f"--layer {full_layer}: not a cross-attention layer of {model} (give an index from "
            f"{-len(names)} to {len(names) - 1} or a name: {', '.join(names)})"
        )
    if not -steps <= args.step < steps:
        raise UsageError(f"--step {args.step}: out of range for {steps} steps (give {-steps} to {steps - 1})")

    progress = ProgressBar(steps, enabled=False if args.quiet else None)
    _say(args, f"{image.name}: {num_parts} part(s), {steps} steps, seed {spec.seed}, guidance {spec.guidance_scale:g}")
    try:
        record = viz.run(
            image,
            num_parts,
            steps=steps,
            seed=spec.seed,
            guidance_scale=spec.guidance_scale,
            num_tokens=spec.num_tokens,
            full_map=(full_layer, args.step),
            callback=progress,
        )
    except CaptureError as err:
        raise RunFailed(str(err)) from None
    finally:
        progress.close()
    _say(args, f"rendering figures into {out}")
    with Outputs(out, "run") as outputs:
        links = save_run(out, record, viz.image)
        outputs.add(*(p for _, p in links))
        report = render_record(
            record,
            out,
            image=viz.image,
            results=viz.results,
            layer=args.layer,
            fps=args.fps,
            title=f"partattn run: {image.name}",
            thresholds=thresholds,
            links=links,
        )
        outputs.add(*(p for _, p in report["figures"]), report["metrics"], report["index"])
    print_results(viz.results, report["index"], len(report["figures"]))
    return 0


# ====================================================================== check
def _plugin_args() -> list[str]:
    """``-p partattn_checks.plugin`` unless the plugin is already registered through its entry point."""
    from importlib import metadata, util

    try:
        found = util.find_spec(PLUGIN_MODULE) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise UsageError(
            f"the pytest plugin ({PLUGIN_MODULE}) is not part of this install; "
            f"reinstall partattn-checks (pip install -e .)"
        )
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return ["-p", PLUGIN_MODULE]
    registered = any(ep.value.split(":")[0].strip() == PLUGIN_MODULE for ep in metadata.entry_points(group="pytest11"))
    return [] if registered else ["-p", PLUGIN_MODULE]


def check_args(
    model: Path, fixtures: Path, *, steps: int | None = None, device: str | None = None, extra: list[str] = ()
) -> list[str]:
    """The pytest command line that ``partattn check`` runs.

    Option values are joined with ``=``: pytest picks its rootdir (hence the ini file, the
    thresholds and the results folder) from the path-like arguments it sees before plugins are
    loaded, and a separate value token such as the model folder would count as one.
    """
    args = ["--partattn", f"--partattn-model={model}", f"--partattn-fixtures={fixtures}"]
    if steps is not None:
        args.append(f"--partattn-steps={steps}")
    if device is not None:
        args.append(f"--partattn-device={device}")
    extra = list(extra)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    return args + [str(fixtures), "-p", "no:cacheprovider", *extra]


def _cmd_check(args, extra) -> int:
    model = _model_dir(args.model)
    fixtures = Path(args.fixtures).expanduser() if args.fixtures else DEFAULT_FIXTURES
    if not fixtures.is_dir():
        raise UsageError(f"fixture folder not found: {fixtures} (pass --fixtures DIR, a folder of np<N>_*.png images)")
    _check_model(model)
    pytest_args = (
        _plugin_args()
        + ["-W", REWRITE_WARNING_FILTER]
        + check_args(model, fixtures, steps=args.steps, device=args.device, extra=extra)
    )
    import pytest

    return int(pytest.main(pytest_args))


if __name__ == "__main__":  # python -m partattn_checks.cli
    sys.exit(main())
