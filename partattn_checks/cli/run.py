"""``partattn run IMAGE``: denoise one image with capture on; write figures, GIFs, ``metrics.json``,
the record and an ``index.html``."""

from __future__ import annotations

from pathlib import Path

from ..capture import runspec
from .args import (
    MODEL_HELP,
    add_pipeline_option,
    add_run_options,
    check_model,
    layer_arg,
    model_dir,
    number_arg,
    run_device,
    say,
    setting_arg,
)
from .io import Outputs, RunFailed, UsageError, print_results, read_thresholds, remove_created
from .start import add_output_options, claim_output_folder, output_folder, progress_bar

DEFAULT_RESULTS = Path("partattn-results")
#: Files every run writes (checked before it starts; the figures' names are checked before they are moved in).
FIXED_OUTPUTS = ("metrics.json", "index.html", "parts.png", "record.json", "record.safetensors", "input.png")


def add_parser(sub):
    parser = sub.add_parser(
        "run",
        help="denoise one image with capture; write figures, GIFs, metrics and index.html",
        description="Denoise IMAGE with capture on, judge its attention with the checks, and write figures "
        "(overlay per part, part panel, multi-head grids, timelines), one GIF per part over steps, "
        "metrics.json, the saved record and an index.html that links them all.",
    )
    parser.add_argument("image", metavar="IMAGE", help="input image (PNG/JPEG; transparency is put on white)")
    parser.add_argument("--model", metavar="DIR", help=MODEL_HELP)
    parser.add_argument(
        "--num-parts",
        type=setting_arg("num_parts"),
        metavar="N",
        help="number of parts; default: from an np<N>_ file-name prefix (np3_chair.png -> 3)",
    )
    add_run_options(parser, num_tokens=True)
    add_pipeline_option(parser)
    parser.add_argument(
        "--guidance",
        type=setting_arg("guidance_scale"),
        metavar="G",
        help="guidance scale (default: the checkpoint's; <= 1 turns classifier-free guidance off)",
    )
    add_output_options(parser, f"{DEFAULT_RESULTS}/<image stem>")
    parser.add_argument(
        "--layer",
        type=layer_arg,
        metavar="L",
        help="layer to show, as an index or a module name; default: the most part-separated "
        "layer for the part figures and the last layer for the multi-head grids",
    )
    parser.add_argument(
        "--step",
        type=int,
        default=-1,
        metavar="K",
        help="step whose full query x key maps are kept for the multi-head grids (default: -1, the last)",
    )
    parser.add_argument("--fps", type=number_arg, default=2.0, help="frames per second of the GIFs (default: 2)")
    parser.set_defaults(func=main)
    return parser


def main(args, extra) -> int:
    image = Path(args.image).expanduser()
    if not image.is_file():
        raise UsageError(f"image not found: {image}")
    from ..runs.sidecar import parts_from_name

    num_parts = args.num_parts or parts_from_name(image)
    if num_parts is None:
        raise UsageError(
            f"{image}: cannot tell the number of parts; pass --num-parts N or name the file np<N>_{image.name}"
        )
    model = model_dir(args.model)
    check_model(model)
    thresholds = read_thresholds(args.thresholds)
    out, option = output_folder(args, DEFAULT_RESULTS / image.stem)
    created = claim_output_folder(out, option, FIXED_OUTPUTS)
    try:
        return _run(args, image, num_parts, model, thresholds, out, option)
    except BaseException:
        remove_created(out, created)
        raise


def _run(args, image: Path, num_parts: int, model: Path, thresholds, out: Path, option: str) -> int:
    from ..capture.recorder import CaptureError, cross_attention_modules
    from ..capture.upstream import PipelineError
    from ..model.loading import CheckpointError, check_num_parts
    from ..model.pipeline import open_image
    from ..present.pages.run_page import render_record, save_run
    from ..present.visualizer import AttentionVisualizer

    try:
        open_image(image)
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from None
    device = run_device(args.device)
    say(args, f"loading {model} on {device} ({args.dtype})" + (f" with {args.pipeline}" if args.pipeline else ""))
    try:
        if args.pipeline:
            from ..capture.upstream import build_pipeline

            pipe = build_pipeline(args.pipeline, Path.cwd(), model, device, args.dtype, "--pipeline")
            viz = AttentionVisualizer(pipe, thresholds=thresholds)
        else:
            viz = AttentionVisualizer.from_pretrained(
                model, device=device, dtype=runspec.torch_dtype(args.dtype), thresholds=thresholds
            )
    except (CheckpointError, PipelineError) as err:
        raise UsageError(str(err)) from None
    try:  # the checkpoint's defaults, then the arguments: the run's settings, resolved once
        spec = runspec.for_pipeline(
            viz.pipeline,
            {"steps": args.steps, "seed": args.seed, "guidance_scale": args.guidance},
            call={"num_parts": num_parts, "num_tokens": args.num_tokens},
        )
        check_num_parts(viz.pipeline.transformer.config, num_parts, cfg=spec.cfg)
    except ValueError as err:
        raise UsageError(str(err)) from None
    steps = spec.steps
    full_layer = args.layer if args.layer is not None else -1
    names = [name for name, _ in cross_attention_modules(viz.pipeline.transformer)]
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

    progress = progress_bar(args, steps)
    say(args, f"{image.name}: {num_parts} part(s), {steps} steps, seed {spec.seed}, guidance {spec.guidance_scale:g}")
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
    say(args, f"rendering figures into {out}")
    with Outputs(out, "run", option) as outputs:  # rendered aside, moved in when no file is in the way
        stage = outputs.stage()
        links = save_run(stage, record, viz.image)
        report = render_record(
            record,
            stage,
            image=viz.image,
            results=viz.results,
            layer=args.layer,
            fps=args.fps,
            title=f"partattn run: {image.name}",
            thresholds=thresholds,
            links=links,
        )
    print_results(viz.results, out / report["index"].relative_to(stage), len(report["figures"]))
    return 0
