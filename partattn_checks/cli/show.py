"""``partattn show RECORD``: render a saved attention record (figures, GIFs, ``index.html``)."""

from __future__ import annotations

import sys
from pathlib import Path

from .args import layer_arg, number_arg
from .io import Outputs, UsageError, print_results, read_thresholds, refuse_foreign, remove_created, writable_folder
from .start import output_folder

#: Files every ``show`` writes (checked before it starts; the figures' names before they are moved in).
FIXED_OUTPUTS = ("metrics.json", "index.html", "parts.png")


def add_parser(sub):
    parser = sub.add_parser(
        "show",
        help="render a saved attention record (figures, metrics.json, index.html)",
        description="Render the figures, metrics.json and index.html of a record saved by 'partattn run', "
        "the pytest plugin or AttentionRecord.save. The overlays use input.png next to the "
        "record, else the record's image and model when they still exist, else --image.",
    )
    parser.add_argument(
        "record",
        metavar="RECORD",
        help="record: its .json or .safetensors file, their common stem, or a folder holding record.json",
    )
    parser.add_argument("--out", metavar="DIR", help="output folder (default: the record's folder)")
    parser.add_argument("--image", metavar="PATH", help="input image for the overlays (default: see above)")
    parser.add_argument("--layer", type=layer_arg, metavar="L", help="layer to show (default: the most part-separated)")
    parser.add_argument("--thresholds", metavar="TOML", help="thresholds file for the checks")
    parser.add_argument("--fps", type=number_arg, default=2.0, help="frames per second of the GIFs (default: 2)")
    parser.set_defaults(func=main)
    return parser


def main(args, extra) -> int:
    from ..capture.record import AttentionRecord
    from ..checks import run_checks
    from ..present.pages.run_page import render_record

    path = Path(args.record).expanduser()
    try:
        record = AttentionRecord.load(path)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    if path.is_dir():
        stem = path / "record"
    elif path.suffix in (".json", ".safetensors"):
        stem = path.with_suffix("")
    else:
        stem = path
    folder = stem.parent
    out, option = output_folder(args, folder, named="output folder (the record's)")
    thresholds = read_thresholds(args.thresholds)
    if args.layer is not None:
        try:
            record.layer_index(args.layer)
        except ValueError as err:
            raise UsageError(str(err)) from None
    view, note = _image_for(record, folder, args.image)
    created = writable_folder(out, option)
    links = [
        ("record (json)", stem.with_name(stem.name + ".json")),
        ("record (tensors)", stem.with_name(stem.name + ".safetensors")),
    ]
    try:
        refuse_foreign(out, FIXED_OUTPUTS, option)  # a user's own index.html stays theirs
        results = {r.name: r for r in run_checks(record, thresholds)}
        with Outputs(out, "show", option) as outputs:  # rendered aside, moved in when no file is in the way
            stage = outputs.stage()
            report = render_record(
                record,
                stage,
                base=out,
                image=view,
                results=results,
                layer=args.layer,
                fps=args.fps,
                title=f"partattn show: {path.name}",
                thresholds=thresholds,
                links=links,
                note=note,
            )
    except BaseException:
        remove_created(out, created)
        raise
    print_results(results, out / report["index"].relative_to(stage), len(report["figures"]))
    return 0


def _image_for(record, folder: Path, image_arg: str | None):
    """(encoder view or None, note) for overlays of a loaded record.

    ``--image`` must be readable (else a usage error naming it); an unreadable ``input.png`` or
    recorded image is skipped with a warning, and the figures fall back to the patch grid.
    """
    from ..model.loading import CheckpointError, load_feature_extractor
    from ..model.pipeline import open_image
    from ..present.visualizer import encoder_view

    model = Path(str(record.meta.get("model", ""))) if record.meta.get("model") else None
    extractor = None
    if model is not None and (model / "feature_extractor_dinov2").is_dir():
        try:
            extractor = load_feature_extractor(model / "feature_extractor_dinov2")
        except CheckpointError:
            extractor = None
    if image_arg is not None:
        image = Path(image_arg).expanduser()
        if not image.is_file():
            raise UsageError(f"image not found: {image}")
        try:
            if extractor is not None:
                return encoder_view(extractor, image), f"Input image {image}, preprocessed like the model's encoder."
            return open_image(image), f"Input image {image} (as given: the record's model was not found)."
        except (OSError, ValueError) as err:
            raise UsageError(str(err) if str(image) in str(err) else f"{image}: not a readable image ({err})") from None
    saved = folder / "input.png"
    original = Path(str(record.meta.get("image", "")))
    candidates = [(saved, None)] if saved.is_file() else []
    if extractor is not None and record.meta.get("image") and original.is_file():
        candidates.append((original, extractor))
    for image, preprocess in candidates:
        try:
            return (open_image(image) if preprocess is None else encoder_view(preprocess, image)), None
        except (OSError, ValueError) as err:
            print(f"partattn show: warning: skipping {image} for the overlays: {err}", file=sys.stderr)
    if candidates:
        return None, (
            f"The input image could not be read ({', '.join(str(c) for c, _ in candidates)}): pass "
            f"--image PATH for overlays."
        )
    return None, "The input image was not found (pass --image PATH for overlays)."
