"""``partattn compare A B``: the fixture images through two checkpoints with the same seed and settings;
per (layer, head) how far each part's key-marginal moved, side-by-side part panels of the most-changed
layer, each check on A and on B, and a one-paragraph verdict in ``compare.json`` and ``index.html``."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

from .args import add_fixture_run_options, resolved, say
from .io import COMPARE_OUTPUTS, Outputs, RunFailed, UsageError
from .launch import joined, launch, processes, shared_run
from .start import add_output_options, claim_output_folder, progress_bar, start_fixture_run

DEFAULT_OUT = Path("partattn-results") / "compare"


def add_parser(sub):
    parser = sub.add_parser(
        "compare",
        help="what changed between two checkpoints, per layer and head",
        description="Run the fixture images through checkpoints A and B with the same seed and settings; write "
        "the change of every part's key-marginal per (layer, head) (JS / log 2) as a heatmap, part panels of "
        "the most-changed layer on A and B, each check's value on both, and a verdict: compare.json and "
        "index.html.",
    )
    parser.add_argument(
        "a", metavar="A", help="first checkpoint folder (e.g. before a fine-tune) or Hugging Face repo id (owner/name)"
    )
    parser.add_argument("b", metavar="B", help="second checkpoint folder or repo id (wgsxm/PartCrafter@REV)")
    parser.add_argument(
        "--base",
        metavar="DIR",
        help="checkpoint (folder or repo id) that a transformer-only A or B (e.g. upstream's 000500/) borrows the rest "
        "from",
    )
    parser.add_argument(
        "--ema", action="store_true", help="judge the EMA weights (transformer_ema/) of A and B instead of transformer/"
    )
    add_fixture_run_options(parser)
    add_output_options(parser, DEFAULT_OUT.as_posix())
    parser.set_defaults(func=main)
    return parser


def main(args, extra) -> int:
    from ..analysis.compare import CompareError, compare_checkpoints
    from ..analysis.trend import TrendError, fixture_images
    from ..model.files import CheckpointError

    args.a, args.b, args.base = resolved(args.a, "A"), resolved(args.b, "B"), resolved(args.base, "--base")
    ranks = launch(args)
    for path in (args.a, args.b):
        if not Path(path).expanduser().is_dir():
            raise UsageError(f"checkpoint folder not found: {path}")
    run = start_fixture_run(args, ranks, DEFAULT_OUT, fixture_images, bad_images=(TrendError,))
    out = run.out
    paths = {spec.path.name: spec.path for spec in run.images}
    with joined(ranks, run.device):
        created = ranks.first(lambda: claim_output_folder(out, run.option, COMPARE_OUTPUTS))  # rank 0 writes
        say(args, f"{args.a} vs {args.b}: {len(run.images)} image(s) on {run.device} ({args.dtype})" + processes(ranks))
        bar = progress_bar(args, len(ranks.share(len(run.images))), label="compare")
        try:
            with shared_run(ranks, out, created, usage=(CompareError, TrendError, CheckpointError, ValueError)):
                comparison = compare_checkpoints(
                    args.a,
                    args.b,
                    run.images,
                    steps=args.steps,
                    seed=args.seed,
                    device=run.device,
                    dtype=args.dtype,
                    thresholds=run.thresholds,
                    base=args.base,
                    ema=args.ema,
                    progress=lambda done: bar(done - 1),
                    pipeline=args.pipeline,
                    keep=lambda name, ra, rb, pa, pb: Shown.of(paths[name], ra, rb, pa),
                    ranks=ranks,
                )
        finally:
            bar.close()
    if not ranks.main:  # rank 0 writes, speaks and carries the exit status
        return 0
    with Outputs(out, "compare") as outputs:
        written = write_comparison(comparison, comparison.kept, out)
        outputs.add(*written.values())
    print(comparison.verdict)
    print(f"wrote compare.json and {len(written) - 2} figures; open {out / written['index'].name}")
    if not comparison.finite:  # a broken checkpoint fails the command, like a failing check
        broken = [f"{side.upper()}: {', '.join(where)}" for side in "ab" if (where := comparison.nonfinite(side))]
        what = "; ".join(broken) or "the change"
        raise RunFailed(f"attention is not finite ({what}); see {out / written['json'].name}")
    return 0


@dataclass(frozen=True)
class Shown:
    """What the part panels need of one image, kept by ``compare_checkpoints`` (small, so it can
    travel between the ranks of a launch): its part count, patch grid and the encoder's view, and per
    layer each part's key-marginal on A and on B (mean over steps and heads)."""

    num_parts: int
    grid: tuple[int, int] | None
    view: object
    parts_a: list  # [layer] (parts, Nk)
    parts_b: list

    @classmethod
    def of(cls, image: Path, record_a, record_b, pipeline_a) -> Shown:
        """From ``image``'s two records; the view through A's pipeline (one part: none is shown)."""
        from ..present.views import renorm

        def parts(record) -> list:
            by_part = record.marginals_by_part()
            return [renorm(by_part[:, li].mean(0)) for li in range(record.num_layers)]

        view = pipeline_a.preprocessed_image(image) if record_a.num_parts >= 2 else None
        return cls(record_a.num_parts, record_a.patch_grid, view, parts(record_a), parts(record_b))


def _shown_image(comparison, kept, layer_index: int) -> tuple[str, str] | None:
    """The image the part panels show, and why: of the images with two or more parts, the one whose
    attention changed most in the most-changed layer (None: no such image)."""
    multi = [img for img in comparison.images if kept[img.image].num_parts >= 2]
    if not multi:
        return None
    shown = max(multi, key=lambda img: _finite_or_low(sum(img.change[layer_index])))
    change = sum(shown.change[layer_index]) / len(shown.change[layer_index])
    why = (
        f"Shown: {shown.image}, the image whose attention changed most in {comparison.layers[layer_index]} "
        f"(JS/log 2 {change:.3f}, mean over heads) of the {len(multi)} images with two or more parts. "
        f"Each panel is one part's key-marginal over the image, mean over steps and heads."
    )
    return shown.image, why


def _finite_or_low(value: float) -> float:
    """``value`` for ``max``: a change that is not finite ranks below every measured one."""
    return value if math.isfinite(value) else -math.inf


def check_panels(comparison) -> list:
    """Each check on A and on B as a figure panel (``render.training.CheckPanel``), in registry order;
    every check is kept, the count of non-finite values too."""
    import numpy as np

    from ..analysis.trend import COUNT_CHECKS
    from ..checks import REGISTRY
    from ..render.training import CheckPanel

    panels = []
    for name in comparison.check_means("a"):
        values = [[math.nan if v is None else v for v in comparison.check_values(side, name)] for side in "ab"]
        check = REGISTRY.get(name)
        panels.append(
            CheckPanel(
                name,
                check.label if check else name,
                np.array(values, dtype=float),
                [comparison.check_verdicts(side, name) for side in "ab"],
                comparison.threshold(name),
                check.op if check else "",
                count=name in COUNT_CHECKS,
            )
        )
    return panels


def write_comparison(comparison, kept, out: Path) -> dict[str, Path]:
    """``compare.json``, the figures and ``index.html`` in ``out``; ``{what: path}``. The page opens
    with the verdict, the checks on both sides and the change per (layer, head)."""
    from .. import render
    from ..base.atomic import atomic_write_text
    from ..present.pages.page import Page
    from ..render import training as figures

    out = Path(out).resolve()  # the page links its figures relative to itself, whatever --out was
    doc = json.dumps(comparison.to_dict(), indent=1, allow_nan=False)  # JSON has no NaN: to_dict writes null
    written = {"json": atomic_write_text(out / "compare.json", doc + "\n")}
    name_a, name_b = Path(comparison.a).name, Path(comparison.b).name
    with warnings.catch_warnings():  # cells that are not finite stay blank and read "nan"
        warnings.simplefilter("ignore", RuntimeWarning)
        written["heatmap"] = figures.change_heatmap(
            comparison.change,
            comparison.layers,
            out / "change_heatmap.png",
            title=f"change of key-marginals {name_a} → {name_b}",
        )
    checks = check_panels(comparison)
    written["checks"] = figures.check_values(
        checks,
        out / "check_values.png",
        title=f"each check on A ({name_a}) and on B ({name_b}), {len(comparison.images)} images",
    )
    per_layer = comparison.layer_change
    li = max(range(len(per_layer)), key=lambda i: _finite_or_low(per_layer[i]))
    layer = comparison.layers[li]
    shown = _shown_image(comparison, kept, li)
    panels = []
    if shown is not None:
        image_name, why = shown
        shown_parts = kept[image_name]
        for side, label in (("a", name_a), ("b", name_b)):
            written[f"parts_{side}"] = render.part_panel(
                getattr(shown_parts, f"parts_{side}")[li],
                shown_parts.grid,
                shown_parts.view,
                title=f"{side.upper()}: {label} · {image_name}",
                layer=layer,
                path=out / f"parts_{side}.png",
            )
            panels.append(
                (
                    f"{side.upper()}: {label} · layer {layer} · {image_name}, the image that changed most there",
                    written[f"parts_{side}"],
                )
            )

    page = Page(f"partattn compare: {name_a} vs {name_b}", out.resolve())
    page.heading("Verdict").paragraph(comparison.verdict)
    page.figures(
        [
            ("each check on A and on B: threshold dashed, pass/fail over each bar", written["checks"]),
            (f"change of key-marginals per (layer, head); {_most_changed(comparison)}", written["heatmap"]),
        ]
    )
    page.note(
        f"A = {comparison.a}, B = {comparison.b}; {len(comparison.images)} fixture images, seed "
        f"{comparison.settings['seed']}, steps {comparison.settings['steps'] or 'the checkpoint default'}, "
        f"{comparison.settings['device']} {comparison.settings['dtype']}; weights judged: "
        f"{comparison.settings['weights']}. Change: JS(ā_A, ā_B) / log 2 of each "
        f"part's key-marginal, per (layer, head), mean over steps, parts and images (0: unchanged, 1: disjoint)."
    )
    a_means, b_means = comparison.check_means("a"), comparison.check_means("b")
    page.heading("Checks on A and on B (mean over images)").table(
        ["check", "pass when", "A", "B", "A failing images", "B failing images"],
        [
            [p.name, p.pass_when.removeprefix("pass: "), a_means[p.name], b_means[p.name]]
            + [f"{fails}/{judged}" for fails, judged in zip(p.fails(), p.judged(), strict=True)]
            for p in checks
        ],
    )
    page.heading("Change per layer and head").table(
        ["layer", "mean over heads", *[f"head {h}" for h in range(comparison.num_heads)]],
        [[name, per_layer[i], *comparison.change[i]] for i, name in enumerate(comparison.layers)],
    )
    if panels:
        page.heading(f"Parts in the most-changed layer ({layer})")
        page.note(why).figures(panels)
    page.heading("Files").links([("compare.json", written["json"])])
    written["index"] = page.write(out / "index.html")
    return written


def _most_changed(comparison) -> str:
    layers = comparison.most_changed_layers
    return f"moved most (mean over heads): {', '.join(layers)}" if layers else "no layer moved"
