"""``partattn calibrate --model DIR``: thresholds from a known-good checkpoint and its broken variants.

Loads the checkpoint once, runs the fixture images on it and on each broken variant (a weight edit
applied in memory and undone after its images), picks each check's threshold between the healthy
worst image and the variant's least-failing image (partattn_checks/analysis/calibrate.py has the rule), runs
every level of the graded degradations to report the smallest one each new threshold catches (not
with ``--no-graded``), and writes ``thresholds.toml`` (with its provenance),
``model-matrix.md``/``.json``/``.png``; with ``--baselines DIR`` it then writes the fixture images'
baselines through the baseline runner the gate uses (``baselines.runner``, as ``--partattn-update=all``
does). Every run goes through the fixture-set runner (``session.Session``), so each image's sidecar
settings and ``[thresholds.*]`` overrides apply.

Everything is written into hidden staging folders (one in ``--out``, one in ``--baselines``) and moved
into place only when all of it is done: a failed or interrupted calibration leaves both folders as they
were. The baselines of the fixture images are written into their staging folder, seeded with their
stored ones (an unchanged value keeps its stored digits), so baselines of other images in
``--baselines`` are never touched. A file in ``--out``
that partattn did not write (no manifest lists it) is refused before any work.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from ..baselines.policy import (
    DEFAULT_BASELINE_SEEDS,
    DEFAULT_GATE_SEEDS,
    FLOOR_DTYPES,
    BaselinePolicy,
    PolicyError,
)
from ..capture import runspec
from ..gate.options import ci_is_set
from .args import (
    MODEL_HELP,
    add_fixture_run_options,
    check_model,
    check_num_tokens,
    model_dir,
    number_arg,
    run_device,
    say,
)
from .io import (
    CALIBRATE_OUTPUTS,
    Outputs,
    RunFailed,
    UsageError,
    remove_created,
    writable_folder,
)
from .launch import joined, launch
from .start import add_output_options, claim_output_folder, start_fixture_run

DEFAULT_OUT = Path("partattn-calibration")
OUTPUTS = CALIBRATE_OUTPUTS
#: Prefix of the staging folders (removed at the end; one left behind is a killed calibration's).
STAGING_PREFIX = ".partattn-calibrate-"


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
    parser.add_argument(
        "--margin",
        type=number_arg,
        default=0.5,
        metavar="F",
        help="where the threshold sits between the healthy worst (0) and the variant's least-failing image (1); "
        "default 0.5, the midpoint",
    )
    parser.add_argument(
        "--baselines",
        metavar="DIR",
        help="also write the fixture images' baselines here (as the gate's --partattn-update=all writes them)",
    )
    parser.add_argument(
        "--baseline-seeds",
        type=int,
        metavar="K",
        help="noise seeds each baseline is written with (the gate's --partattn-baseline-seeds; needs --baselines)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        metavar="R",
        help="paired seeds each baseline keeps: the runs per image the gate will judge (its --partattn-seeds; "
        "needs --baselines; default 1)",
    )
    parser.add_argument(
        "--floor-dtypes",
        metavar="DTYPES",
        help=f"model dtypes, besides --dtype, the numeric floor of the baselines covers, comma-separated ("
        f"{', '.join(FLOOR_DTYPES)}; the gate's --partattn-floor-dtypes; needs --baselines)",
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
    add_output_options(
        parser,
        f"./{DEFAULT_OUT}",
        thresholds_help="the previous thresholds (kept where a check cannot be calibrated; "
        "they also set the fields that are not calibrated); default: the built-in defaults",
        quiet_help="no status lines and no matrix on stdout",
    )
    parser.set_defaults(func=main)
    return parser


def main(args, extra) -> int:
    ranks = launch(args)
    model = model_dir(args.model)
    check_model(model)
    if args.random:
        check_model(model_dir(args.random))
    if not 0.0 < args.margin < 1.0:
        raise UsageError(f"--margin {args.margin:g}: must be between 0 and 1 (exclusive); 0.5 is the midpoint")
    policy = _policy(args)
    if args.num_tokens is not None:
        check_num_tokens(args.num_tokens, model, run_device(args.device), args.dtype)
    if args.baselines and ci_is_set():
        raise UsageError(
            f"--baselines updates baselines, which the gate refuses while the CI environment variable is set "
            f"(CI={os.environ.get('CI')}): calibrate on a workstation or in a job without CI set, then commit the "
            f"thresholds and baselines (or leave out --baselines)"
        )
    from ..runs.sidecar import fixture_specs

    run = start_fixture_run(args, ranks, DEFAULT_OUT, fixture_specs, bad_images=(ValueError,))
    images, base, out = run.images, run.thresholds, run.out
    baselines = Path(args.baselines).expanduser() if args.baselines else None
    created, created_baselines, lock, stages, done = None, None, None, [], False

    def prepare() -> None:  # rank 0's: the folders it writes, checked before any work
        nonlocal created, created_baselines, lock
        created = claim_output_folder(out, run.option, OUTPUTS)
        if baselines is not None:
            created_baselines = writable_folder(baselines, "--baselines")
            lock = _lock(baselines)
        stages.append(Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out)))

    with joined(ranks, run.device):
        try:
            ranks.first(prepare)  # the other ranks hear how it went
            toml = _calibrate(args, model, images, base, stages[0] if ranks.main else None, ranks)
            if not ranks.main:  # rank 0 writes (the baselines too, alone) and speaks
                return 0
            assert toml is not None  # rank 0 wrote it
            if baselines is not None:
                stages.append(Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=baselines)).resolve())
                written = _write_baselines(args, model, images, toml, stages[1], policy)
                _publish_baselines(stages[1], baselines)
            _publish_outputs(stages[0], out)
            done = True
        finally:  # failed or interrupted (Ctrl-C included): both folders stay as they were
            for stage in stages:
                shutil.rmtree(stage, ignore_errors=True)
            if lock is not None:
                lock.release()
            if not done and ranks.main:
                if baselines is not None:
                    remove_created(baselines, created_baselines)
                remove_created(out, created)
    say(args, f"wrote {', '.join(str(out / name) for name in OUTPUTS)}")
    if baselines is not None:
        say(args, f"wrote the baselines of {len(images)} image(s) into {baselines}:")
        for key in written:
            say(args, f"  {baselines / key}")
    return 0


def _policy(args) -> BaselinePolicy:
    """How the baselines are written (the gate's update=all), or a usage error naming the option."""
    given = {"--baseline-seeds": args.baseline_seeds, "--seeds": args.seeds, "--floor-dtypes": args.floor_dtypes}
    for flag, value in given.items():
        if value is not None and not args.baselines:
            raise UsageError(f"{flag} says how the baselines are written: it needs --baselines DIR")
    floor = tuple(d.strip() for d in (args.floor_dtypes or "").split(",") if d.strip())
    try:
        return BaselinePolicy(
            update="all",
            floor_dtypes=floor,
            baseline_seeds=DEFAULT_BASELINE_SEEDS if args.baseline_seeds is None else args.baseline_seeds,
            seeds=DEFAULT_GATE_SEEDS if args.seeds is None else args.seeds,
        )
    except PolicyError as err:
        flag = "--" + err.setting.replace("_", "-")
        raise UsageError(f"{flag} {getattr(args, err.setting)}: {err.what}") from None


def _lock(baselines: Path):
    """The gate's update lock on ``--baselines``, held while calibrate writes there."""
    from ..baselines.errors import BaselineError
    from ..baselines.store import UpdateLock

    lock = UpdateLock(baselines)
    try:
        lock.acquire()
    except BaselineError as err:
        raise UsageError(str(err)) from None
    return lock


def _publish_outputs(stage: Path, out: Path) -> None:
    """Move the staged outputs into ``out``, listed in its manifest."""
    with Outputs(out, "calibrate") as outputs:
        for name in OUTPUTS:
            os.replace(stage / name, out / name)
            outputs.add(out / name)


def _calibrate(args, model: Path, images, base, out: Path | None, ranks) -> Path | None:
    """Measure, decide and (``out``: rank 0's staging folder) write; under a launch every rank
    measures its share of the runs and gets the whole matrix; ``out`` None: write nothing."""
    from ..analysis import calibration_page as report
    from ..analysis.calibrate import CalibrationError, calibrated, decide, graded_summary, summarize
    from ..analysis.zoo import by_name, image_name, measure, measure_graded, session
    from ..base.atomic import atomic_write_bytes, atomic_write_text
    from ..runs.session import CaseError

    load = _loader(args, device=ranks.device(run_device(args.device)))
    pipeline = ranks.each(lambda: load(model), label=f"loading {model}")  # a rank that cannot stops all
    options = {"steps": args.steps, "seed": args.seed, "num_tokens": args.num_tokens}
    named = by_name(images)
    others = {"random": lambda: load(model_dir(args.random))} if args.random else None

    def progress(name, image):
        say(args, f"{name}: {image}")

    def warn(text):
        if ranks.main:
            print(f"partattn calibrate: {text}", file=sys.stderr)

    graded = None
    try:
        spec = session(pipeline, options=options).image_spec(images[0])
        matrix = measure(
            pipeline, images, options=options, thresholds=base, others=others, progress=progress, warn=warn, ranks=ranks
        )
        decisions = decide(matrix, base, args.margin, named)
        thresholds = calibrated(base, decisions)
        if not args.no_graded:
            graded = measure_graded(
                pipeline, images, options=options, thresholds=thresholds, progress=progress, warn=warn, ranks=ranks
            )
    except (CalibrationError, CaseError) as err:
        raise RunFailed(str(err)) from None
    except ValueError as err:  # a run setting or a variant that does not fit this model
        raise UsageError(str(err)) from None
    del pipeline
    if out is None:
        return None
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


def _loader(args, dtype: str | None = None, device: str | None = None):
    """``load(path)``: the checkpoint at ``path`` as ``--pipeline`` or the built-in pipeline loads it,
    on ``device`` (default ``--device``) in ``dtype`` (default ``--dtype``); a checkpoint that cannot
    load is a usage error."""
    from ..capture.upstream import PipelineError
    from ..model.loading import CheckpointError
    from ..model.pipeline import PartCrafterPipeline

    device, dtype = device or run_device(args.device), dtype or args.dtype

    def load(path):
        say(args, f"loading {path} on {device} ({dtype})" + (f" with {args.pipeline}" if args.pipeline else ""))
        try:
            if args.pipeline:
                from ..capture.upstream import build_pipeline

                return build_pipeline(args.pipeline, Path.cwd(), path, device, dtype, "--pipeline")
            return PartCrafterPipeline.from_pretrained(path, device=device, dtype=runspec.torch_dtype(dtype))
        except (CheckpointError, PipelineError) as err:
            raise UsageError(str(err)) from None

    return load


def _write_baselines(args, model: Path, images, toml: Path, staged: Path, policy) -> list[str]:
    """The fixture images' baselines, written by the baseline runner under ``policy`` (update=all) with
    the new thresholds into ``staged``, seeded with their stored baselines: an unchanged value keeps its
    stored digits, and baselines of other images are never touched. Returns the keys written."""
    from ..baselines.runner import BaselineRunner, BaselineStatus
    from ..baselines.store import BaselineStore
    from ..checks import load_thresholds
    from ..runs.session import CaseError, Session

    target = Path(args.baselines).expanduser().resolve()
    stored, store = BaselineStore(target), BaselineStore(staged)
    for image in images:
        for src, dst in zip(stored.paths(image.key).files(), store.paths(image.key).files(), strict=True):
            if src.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
    say(args, f"writing the baselines of {len(images)} image(s) for {target}")
    options = {"steps": args.steps, "seed": args.seed, "num_tokens": args.num_tokens}
    session = Session.around(
        _loader(args)(model),
        options=options,
        thresholds=load_thresholds(toml),
        load_in=lambda dtype: _loader(args, dtype)(model),
    )
    runner = BaselineRunner(store, None, policy)
    for image in images:
        try:
            outcome = runner.write(session.image_runs(image))
        except CaseError as err:
            raise RunFailed(str(err)) from None
        if outcome.status is BaselineStatus.REFUSED:
            raise RunFailed(f"{image.display}: {outcome.result.reason}")
        say(args, f"{image.display}: {outcome.result.reason}")
    return [image.key for image in images]


def _publish_baselines(staged: Path, target: Path) -> None:
    """Move the baselines the gate wrote into ``staged`` over those in ``target``, file by file (an
    unchanged file keeps its bytes and time); a file the gate removed is removed."""
    from ..baselines.store import BaselineStore

    for key in BaselineStore(staged).keys():
        pairs = zip(BaselineStore(staged).paths(key).files(), BaselineStore(target).paths(key).files(), strict=True)
        for new, old in pairs:
            if not new.is_file():
                old.unlink(missing_ok=True)
            elif not old.is_file() or new.read_bytes() != old.read_bytes():
                old.parent.mkdir(parents=True, exist_ok=True)
                os.replace(new, old)
