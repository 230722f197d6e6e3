"""``partattn trend CKPT [CKPT ...]``: the fixture images through every checkpoint of a training run;
a figure of each check against the training step, ``trend.json`` and an ``index.html``. Exits 1 when
the last checkpoint fails a check."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .args import add_fixture_run_options, resolved, say
from .io import Outputs, UsageError
from .launch import joined, launch, processes, shared_run
from .start import add_output_options, claim_output_folder, progress_bar, start_fixture_run

DEFAULT_OUT = Path("partattn-results") / "trend"
#: What ``trend`` writes (checked before it starts, and again before the files are moved in).
OUTPUTS = ("trend.json", "trend_checks.png", "trend_metrics.png", "index.html")


def add_parser(sub):
    parser = sub.add_parser(
        "trend",
        help="attention health over training: every check against the training step",
        description="Run the fixture images through each checkpoint (folders, or a training output folder of "
        "step subfolders: checkpoint-N/ or upstream PartCrafter's 000500/, ordered by step), judge them with the "
        "checks, and write a figure of each check against the training step, trend.json and index.html. Folders "
        "given one by one keep their order unless every name is a step (checkpoint-N or digits). Prints the first "
        "checkpoint at which each check fails; exits 1 when the last checkpoint fails a check.",
    )
    parser.add_argument(
        "checkpoints",
        metavar="CKPT",
        nargs="+",
        help="a checkpoint folder, or a folder of checkpoint-N/ or 000500/ subfolders (each in the release layout, "
        "or holding only transformer/ and/or transformer_ema/ with --base; optimizer and RNG files are never read)",
    )
    parser.add_argument(
        "--base",
        metavar="DIR",
        help="checkpoint (a folder, or a Hugging Face repo id such as wgsxm/PartCrafter) that transformer-only "
        "checkpoints borrow the image encoder, feature extractor and scheduler from",
    )
    parser.add_argument(
        "--ema",
        action="store_true",
        help="judge the EMA weights (transformer_ema/, saved by upstream's training script with EMA on) "
        "instead of transformer/",
    )
    add_fixture_run_options(parser)
    add_output_options(parser, DEFAULT_OUT.as_posix())
    parser.set_defaults(func=main)
    return parser


def main(args, extra) -> int:
    from ..analysis.trend import TrendError, find_checkpoints, fixture_images, run_trend
    from ..model.files import CheckpointError

    args.base = resolved(args.base, "--base")  # Hugging Face repo ids: their hub-cache snapshots
    args.checkpoints = [resolved(c, "CKPT") for c in args.checkpoints]
    ranks = launch(args)
    try:
        checkpoints = find_checkpoints(args.checkpoints, base=args.base, ema=args.ema)
    except TrendError as err:
        raise UsageError(str(err)) from None
    run = start_fixture_run(args, ranks, DEFAULT_OUT, fixture_images, bad_images=(TrendError,))
    out = run.out
    with joined(ranks, run.device):
        created = ranks.first(
            lambda: claim_output_folder(out, run.option, OUTPUTS)
        )  # rank 0 writes; the others hear how it went
        weights = checkpoints[0].weights
        say(
            args,
            f"{len(checkpoints)} checkpoint(s) ({weights}/) x {len(run.images)} image(s) on {run.device} ({args.dtype})"
            + processes(ranks),
        )
        bar = progress_bar(args, len(ranks.share(len(checkpoints) * len(run.images))), label="trend")
        try:
            with shared_run(ranks, out, created, usage=(TrendError, CheckpointError, ValueError)):
                trend = run_trend(
                    checkpoints,
                    run.images,
                    base=args.base,
                    steps=args.steps,
                    seed=args.seed,
                    device=run.device,
                    dtype=args.dtype,
                    thresholds=run.thresholds,
                    progress=lambda done: bar(done - 1),
                    pipeline=args.pipeline,
                    ranks=ranks,
                )
        finally:
            bar.close()
    if not ranks.main:  # rank 0 writes, speaks and carries the exit status
        return 0
    with Outputs(out, "trend", run.option) as outputs:  # rendered aside, moved in when no file is in the way
        stage = outputs.stage()
        written = write_trend(trend, stage)
    print_trend(trend, out / written["index"].relative_to(stage.resolve()))
    return 1 if trend.last_fails else 0


def check_panels(trend) -> list:
    """The checks' figure panels (``render.training.CheckPanel``): those that fail somewhere first
    (the verdict's story; non-finite values, the cause of others failing, before them), then in
    registry order; a check never measured is left out."""
    import numpy as np

    from ..analysis.trend import COUNT_CHECKS
    from ..checks import REGISTRY
    from ..render.training import CheckPanel

    panels = []
    for name in trend.checks:
        values = np.array([[math.nan if v is None else v for v in row] for row in trend.values(name)], dtype=float)
        if not np.isfinite(values).any():
            continue
        check = REGISTRY.get(name)
        panels.append(
            CheckPanel(
                name,
                check.label if check else name,
                values,
                trend.verdicts(name),
                trend.threshold(name),
                check.op if check else "",
                count=name in COUNT_CHECKS,
            )
        )
    first = trend.first_failures()

    def rank(panel) -> int:  # failing: non-finite values (the cause) first; never failing: counts last
        return (0 if panel.count else 1) if first.get(panel.name) is not None else (3 if panel.count else 2)

    return sorted(panels, key=rank)


def figure_caption(trend, what: str) -> str:
    """A trend figure's caption: ``what`` against what its x axis really shows."""
    from ..render.training import x_label

    xs = [c.step for c in trend.checkpoints] if trend.by_step else []
    axis = x_label(xs, trend.by_step)
    if trend.by_step:
        return f"{what} against the {axis}"
    return f"{what} per {axis}: not every folder name is a step (checkpoint-N or digits)"


def write_trend(trend, out: Path) -> dict[str, Path]:
    """``trend.json``, the two figures and ``index.html`` in ``out``; ``{what: path}``. The page
    opens with the verdict and the checks' figure."""
    from ..base.atomic import atomic_write_text
    from ..present.pages.page import Page
    from ..render import training as figures

    out = Path(out).resolve()  # the page links its figures relative to itself, whatever --out was
    by_step = trend.by_step
    xs = [c.step if by_step else i for i, c in enumerate(trend.checkpoints)]
    labels = [c.label for c in trend.checkpoints]
    written = {"json": atomic_write_text(out / "trend.json", json.dumps(trend.to_dict(), indent=1) + "\n")}
    written["checks"] = figures.trend_checks(xs, labels, check_panels(trend), out / "trend_checks.png", by_step=by_step)
    series = {k: [h.get(k, math.nan) for h in trend.headline] for k in trend.headline[0]} if trend.headline else {}
    written["metrics"] = figures.trend_metrics(xs, labels, series, out / "trend_metrics.png", by_step=by_step)

    page = Page(f"partattn trend: {len(trend.checkpoints)} checkpoints", out.resolve())
    page.heading("Verdict").paragraph(verdict_text(trend))
    page.note(
        f"{len(trend.images)} fixture images, seed {trend.settings['seed']}, "
        f"steps {trend.settings['steps'] or 'the checkpoint default'}, {trend.settings['device']} "
        f"{trend.settings['dtype']}; weights judged: {trend.settings['weights']}"
        f"{' (EMA)' if trend.settings['weights'] == 'transformer_ema' else ''}. "
        f"A check fails at a checkpoint when any image fails it."
    )
    page.figures([(figure_caption(trend, "each check"), written["checks"])])
    steps = any(c.step is not None for c in trend.checkpoints)  # a step column only when some step is known
    page.heading("Checks per checkpoint").table(
        ["checkpoint", *(["step"] if steps else []), *trend.checks],
        [
            [
                c.label,
                *([c.step if c.step is not None else "–"] if steps else []),
                *[_cell(trend, i, name) for name in trend.checks],
            ]
            for i, c in enumerate(trend.checkpoints)
        ],
    )
    first = trend.first_failures()
    page.heading("First failing checkpoint").table(
        ["check", "first fails at"], [[name, c.label if c else "never"] for name, c in first.items()]
    )
    if trend.headline:
        keys = list(trend.headline[0])
        page.heading("Headline metrics (mean over images)").table(
            ["checkpoint", *keys],
            [[c.label, *[trend.headline[i].get(k) for k in keys]] for i, c in enumerate(trend.checkpoints)],
        )
        page.figures([(figure_caption(trend, "headline metrics"), written["metrics"])])
    page.heading("Files").links([("trend.json", written["json"])])
    written["index"] = page.write(out / "index.html")
    return written


def _cell(trend, index: int, name: str):
    from ..present.pages.page import Cell

    verdicts = [per[name].verdict for per in trend.results[index].values()]
    fails = verdicts.count("fail")
    judged = len([v for v in verdicts if v != "skip"])
    if not judged:
        return Cell("skip", "skip")
    return Cell(f"fail ({fails}/{judged})" if fails else "pass", "fail" if fails else "pass")


def verdict_text(trend) -> str:
    first = trend.first_failures()
    last = trend.checkpoints[-1]
    failing_last = trend.failing(len(trend.checkpoints) - 1)
    parts = []
    sep = [h.get("separation") for h in trend.headline]
    if all(s is not None for s in sep) and len(sep) > 1:
        parts.append(
            f"Part separation (mean over images) goes {' -> '.join(f'{s:.3f}' for s in sep)} "
            f"from {trend.checkpoints[0].label} to {last.label}."
        )
    never = [n for n, c in first.items() if c is None]
    for name, c in first.items():
        if c is not None:
            state = "still fails at the last checkpoint" if name in failing_last else "passes at the last checkpoint"
            parts.append(f"{name} first fails at {c.label} and {state}.")
    if never:
        parts.append(f"Never failing: {', '.join(never)}.")
    parts.append(
        f"The last checkpoint ({last.label}) fails {', '.join(failing_last)}."
        if failing_last
        else f"The last checkpoint ({last.label}) passes every check."
    )
    return " ".join(parts)


def print_trend(trend, index: Path) -> None:
    first = trend.first_failures()
    width = max(len(n) for n in first)
    for name, c in first.items():
        print(f"  {name:<{width}}  first fails at: {c.label if c is not None else 'never'}")
    print(verdict_text(trend))
    print(f"wrote trend.json, 2 figures; open {index}")
