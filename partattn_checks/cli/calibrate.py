"""``partattn calibrate --model DIR``: thresholds from a known-good checkpoint and its broken variants.

Loads the checkpoint once, runs the fixture images on it and on each broken variant (a weight edit
applied in memory and undone after its images), picks each check's threshold between the healthy
worst image and the variant's least-failing image (partattn_checks/calibrate.py has the rule), runs
every level of the graded degradations to report the smallest one each new threshold catches (not
with ``--no-graded``), and writes ``thresholds.toml`` (with its provenance),
``model-matrix.md``/``.json``/``.png``; with ``--baselines DIR`` it then runs the gate in update mode
to write the fixture images' baselines. Every run goes through the fixture-set runner
(``session.Session``), so each image's sidecar settings and ``[thresholds.*]`` overrides apply.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .. import runspec
from ..noise import BASELINE_SEED_OFFSET
from ..options import ci_is_set
from .args import (
    MODEL_HELP,
    add_fixture_run_options,
    check_model,
    fixtures_dir,
    model_dir,
    number_arg,
    run_device,
    say,
)
from .check import REWRITE_WARNING_FILTER, _plugin_args, check_args
from .io import RunFailed, UsageError, read_thresholds, remove_created, writable_folder

DEFAULT_OUT = Path("partattn-calibration")
OUTPUTS = ("thresholds.toml", "model-matrix.md", "model-matrix.json", "model-matrix.png")


def add_parser(sub):
    parser = sub.add_parser(
        "calibrate",
        help="derive thresholds from a known-good checkpoint and its in-memory broken variants",
        description="Run the fixture images on a known-good checkpoint and on each of its broken variants "
        "(weight edits applied in memory, undone after use), pick each check's threshold between the healthy "
        "model's worst image and the variant's least-failing image, and write thresholds.toml (with its "
        "provenance), the model matrix (model-matrix.md/.json/.png) and, with --baselines, the fixture "
        "images' baselines. A check whose two sides overlap keeps its previous threshold (said on stderr). "
        "Each check's smallest caught graded degradation (every level of each, in memory) is reported too.",
    )
    parser.add_argument("--model", metavar="DIR", help=MODEL_HELP)
    add_fixture_run_options(parser, num_tokens=True)
    parser.add_argument("--out", metavar="DIR", help=f"output folder (default: ./{DEFAULT_OUT})")
    parser.add_argument(
        "--margin",
        type=number_arg,
        default=0.5,
        metavar="F",
        help="where the threshold sits between the healthy worst (0) and the variant's least-failing image (1); "
        "default 0.5, the midpoint",
    )
    parser.add_argument(
        "--thresholds",
        metavar="TOML",
        help="the previous thresholds (kept where a check cannot be calibrated; "
        "they also set the fields that are not calibrated); default: the built-in defaults",
    )
    parser.add_argument(
        "--baselines", metavar="DIR", help="also write the fixture images' baselines here (the gate in update mode)"
    )
    parser.add_argument(
        "--baseline-seeds",
        type=int,
        metavar="K",
        help="noise seeds each baseline is written with (the gate's --partattn-baseline-seeds; needs --baselines)",
    )
    parser.add_argument(
        "--no-graded",
        action="store_true",
        help="skip the graded degradations (every level of each on every image: the longest part of a calibration)",
    )
    parser.add_argument(
        "--random",
        metavar="DIR",
        help="a random-init checkpoint shown as an extra matrix row (not used for thresholds)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no status lines and no matrix on stdout")
    parser.set_defaults(func=main)
    return parser


def main(args, extra) -> int:
    model = model_dir(args.model)
    check_model(model)
    if args.random:
        check_model(model_dir(args.random))
    if not 0.0 < args.margin < 1.0:
        raise UsageError(f"--margin {args.margin:g}: must be between 0 and 1 (exclusive); 0.5 is the midpoint")
    if args.baseline_seeds is not None:
        if not args.baselines:
            raise UsageError("--baseline-seeds says how the baselines are written: it needs --baselines DIR")
        if not 2 <= args.baseline_seeds <= BASELINE_SEED_OFFSET:
            raise UsageError(
                f"--baseline-seeds {args.baseline_seeds}: must be between 2 and {BASELINE_SEED_OFFSET} "
                "(a spread needs two seeds)"
            )
    fixtures = fixtures_dir(args.fixtures)
    base = read_thresholds(args.thresholds)
    if args.baselines and ci_is_set():
        raise UsageError(
            f"--baselines updates baselines, which the gate refuses while the CI environment variable is set "
            f"(CI={os.environ.get('CI')}): calibrate on a workstation or in a job without CI set, then commit the "
            f"thresholds and baselines (or leave out --baselines)"
        )
    from ..sidecar import fixture_specs

    try:
        images = fixture_specs(fixtures)
    except ValueError as err:
        raise UsageError(str(err)) from None
    out = Path(args.out).expanduser() if args.out else DEFAULT_OUT
    created = writable_folder(out, "--out" if args.out else "output folder")
    try:
        if args.baselines:
            writable_folder(Path(args.baselines).expanduser(), "--baselines")
        toml = _calibrate(args, model, images, base, out)
    except BaseException:
        remove_created(out, created)
        raise
    if args.baselines:
        return _write_baselines(args, model, fixtures, toml)
    return 0


def _calibrate(args, model: Path, images, base, out: Path) -> Path:
    from .. import calibration_report as report
    from ..atomic import atomic_write_bytes, atomic_write_text
    from ..calibrate import CalibrationError, calibrated, decide, graded_summary, summarize
    from ..model.loading import CheckpointError
    from ..model.pipeline import PartCrafterPipeline
    from ..session import CaseError
    from ..upstream import PipelineError
    from ..zoo import by_name, image_name, measure, measure_graded, session

    device = run_device(args.device)
    dtype = runspec.torch_dtype(args.dtype)

    def load(path):
        say(args, f"loading {path} on {device} ({args.dtype})" + (f" with {args.pipeline}" if args.pipeline else ""))
        try:
            if args.pipeline:
                from ..upstream import build_pipeline

                return build_pipeline(args.pipeline, Path.cwd(), path, device, args.dtype, "--pipeline")
            return PartCrafterPipeline.from_pretrained(path, device=device, dtype=dtype)
        except (CheckpointError, PipelineError) as err:
            raise UsageError(str(err)) from None

    pipeline = load(model)
    options = {"steps": args.steps, "seed": args.seed, "num_tokens": args.num_tokens}
    named = by_name(images)
    others = {"random": lambda: load(model_dir(args.random))} if args.random else None

    def progress(name, image):
        say(args, f"{name}: {image}")

    def warn(text):
        print(f"partattn calibrate: {text}", file=sys.stderr)

    graded = None
    try:
        spec = session(pipeline, options=options).image_spec(images[0])
        matrix = measure(
            pipeline, images, options=options, thresholds=base, others=others, progress=progress, warn=warn
        )
        decisions = decide(matrix, base, args.margin, named)
        thresholds = calibrated(base, decisions)
        if not args.no_graded:
            graded = measure_graded(
                pipeline, images, options=options, thresholds=thresholds, progress=progress, warn=warn
            )
    except (CalibrationError, CaseError) as err:
        raise RunFailed(str(err)) from None
    except ValueError as err:  # a run setting or a variant that does not fit this model
        raise UsageError(str(err)) from None
    del pipeline
    table = summarize(matrix, thresholds, named)
    settings = {k: getattr(spec, k) for k in ("steps", "seed", "num_tokens", "guidance_scale", "dtype", "device")}
    prov = report.provenance(
        model, [image_name(i) for i in images], settings, args.margin, args.thresholds or "built-in defaults"
    )
    for d in decisions:
        if not d.calibrated and d.field:
            print(d.note, file=sys.stderr)
    text = report.markdown(table, decisions)
    graded_doc = None
    if graded is not None:
        catches, failing = graded_summary(graded, matrix, thresholds, named)
        graded_doc = report.graded_doc(catches, failing)
        text += "\n\n" + report.graded_markdown(catches)
    header = (
        "# Model matrix: every check on the healthy model, its broken variants"
        + (" and the random-init model" if args.random else "")
        + f"\n\nGenerated by `{command_line(args)}` ({prov['date']}, {prov['machine']}, {len(images)} fixture "
        f"images; settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()) + "). The calibrated "
        "thresholds are in thresholds.toml next to this file.\n\n"
    )
    toml = atomic_write_text(out / "thresholds.toml", report.thresholds_toml(thresholds, decisions, prov))
    atomic_write_text(out / "model-matrix.md", header + text + "\n")
    atomic_write_text(out / "model-matrix.json", report.matrix_json(table, decisions, thresholds, prov, graded_doc))
    atomic_write_bytes(out / "model-matrix.png", report.figure(table, decisions, f"{model.name}: {len(images)} images"))
    if not args.quiet:
        print(text)
    say(args, f"wrote {', '.join(str(out / name) for name in OUTPUTS)}")
    return toml


def command_line(args) -> str:
    """The command as the user would type it again (paths as given)."""
    words = ["partattn", "calibrate"]
    for flag, value in (
        ("--model", args.model),
        ("--fixtures", args.fixtures),
        ("--random", args.random),
        ("--steps", args.steps),
        ("--num-tokens", args.num_tokens),
        ("--thresholds", args.thresholds),
        ("--out", args.out),
    ):
        if value is not None:
            words += [flag, str(value)]
    if args.no_graded:
        words.append("--no-graded")
    for flag, value, default in (
        ("--seed", args.seed, runspec.DEFAULT_SEED),
        ("--dtype", args.dtype, "float32"),
        ("--margin", args.margin, 0.5),
    ):
        if value != default:
            words += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return " ".join(words)


def _write_baselines(args, model: Path, fixtures: Path, toml: Path) -> int:
    """The gate (``pytest --partattn``) in update mode with the new thresholds: the baselines are
    written by the plugin itself, in whatever format it stores."""
    baselines = Path(args.baselines).expanduser().resolve()
    extra = [f"--partattn-pipeline={args.pipeline}"] if args.pipeline else []
    extra += [
        "--partattn-update=all",
        f"--partattn-baselines={baselines}",
        f"--partattn-thresholds={toml.resolve()}",
        f"--partattn-seed={args.seed}",
        f"--partattn-dtype={args.dtype}",
        f"--partattn-results={(toml.parent / 'gate-results').resolve()}",
        "-q",
    ]
    if args.num_tokens is not None:
        extra.append(f"--partattn-num-tokens={args.num_tokens}")
    if args.baseline_seeds is not None:
        extra.append(f"--partattn-baseline-seeds={args.baseline_seeds}")
    say(args, f"writing baselines into {baselines} (pytest --partattn --partattn-update=all)")
    import pytest

    code = int(
        pytest.main(
            _plugin_args()
            + ["-W", REWRITE_WARNING_FILTER]
            + check_args(model, fixtures, steps=args.steps, device=args.device, extra=extra)
        )
    )
    if code != 0:
        raise RunFailed(f"the gate exited with status {code} while writing the baselines into {baselines}")
    return 0
