"""How attention changes over the denoising steps: timelines per layer and one GIF per part.

    python examples/temporal_attention_analysis.py OUT_DIR [--image PATH [--num-parts N]] [--steps S]

Runs the embedded tiny model with every step recorded, then writes into OUT_DIR:
``entropy.png`` (normalized entropy per layer over steps: 1 = uniform, lower = focused),
``jumps.png`` (how far each layer's part marginals move from one step to the next),
``part<k>.gif`` (part k's key marginal on the image, one frame per step), ``steps.json`` and
``scene.png`` when no ``--image`` is given. The part count of an image is ``--num-parts`` or its
``np<N>_`` name prefix.
"""

import argparse
import json
from pathlib import Path

import numpy as np
from _inputs import checked_inputs, positive_int  # examples/_inputs.py: one-line errors, exit status 2

from partattn_checks import EMBEDDED_MODEL, AttentionVisualizer, render
from partattn_checks.capture import metrics
from partattn_checks.model.synthetic import draw_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder for the results (created when missing)")
    parser.add_argument("--image", type=Path, help="an image (default: a drawn 2-part scene)")
    parser.add_argument(
        "--num-parts",
        type=positive_int,
        help="parts in the image (default: its np<N>_ name prefix; 2 for the drawn scene; the tiny model: 1-4)",
    )
    parser.add_argument("--steps", type=positive_int, default=10, help="denoising steps (default 10)")
    args = parser.parse_args()
    num_parts = checked_inputs(parser, args, drawn_parts=2)
    out = args.out_dir
    image = args.image
    if image is None:  # part k is painted in the colour the tiny model ties to part k
        image = out / "scene.png"
        draw_scene(np.random.default_rng(2), num_parts, scale=2).image.save(image)

    viz = AttentionVisualizer.from_pretrained(EMBEDDED_MODEL, device="cpu")
    record = viz.run(image, num_parts, steps=args.steps)  # every step, every layer

    # Entropy per step and layer, averaged over parts and heads: (steps, layers).
    entropy = record.entropy.float().mean(dim=(2, 3))
    render.timeline(entropy, record.steps, record.layers, title="entropy over steps", path=out / "entropy.png")

    # Step-to-step jump: JS distance of each part's key marginal from the previous step, worst part.
    jumps = metrics.timestep_jumps(record.marginals_by_part()).amax(-1)  # (steps - 1, layers)
    limit = viz.thresholds.stability.max_jump  # what the stability check allows
    render.timeline(
        jumps,
        record.steps[1:],
        record.layers,
        metric="jump from the previous step (JS / log 2)",
        threshold=limit,
        title="stability over steps",
        path=out / "jumps.png",
    )

    # One GIF per part: its key marginal on the image at every step (fixed colour scale).
    for part in range(record.num_parts):
        viz.create_attention_animation(record, out / f"part{part}.gif", fps=2, part=part)

    steps = [
        {"step": s, "timestep": t, "entropy": e, "max_jump": None if i == 0 else max(jumps[i - 1].tolist())}
        for i, (s, t, e) in enumerate(zip(record.steps, record.timesteps, entropy.mean(1).tolist(), strict=True))
    ]
    for row in steps:
        jump = "" if row["max_jump"] is None else f", largest jump {row['max_jump']:.3f}"
        print(f"step {row['step']} (t={row['timestep']:.0f}): entropy {row['entropy']:.3f}{jump}")
    (out / "steps.json").write_text(json.dumps({"stability_limit": limit, "steps": steps}, indent=2) + "\n")


if __name__ == "__main__":
    main()
