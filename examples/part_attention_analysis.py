"""Where does each part look? A denoising run of a multi-part image, part by part and layer by layer.

    python examples/part_attention_analysis.py OUT_DIR [--image PATH [--num-parts N]] [--steps S]

A healthy PartCrafter looks at a different region of the image for every part; a model whose part
embedding was lost looks at the same region for all. This runs the embedded tiny model with
capture on, then writes into OUT_DIR: ``parts.png`` (every part's key marginal on the image, mean
over steps, the most part-separated layer), ``parts_<layer>.png`` for every layer,
``separation.json`` (part separation per layer, the pairwise separation of the best layer and the
plugin's check verdicts) and ``scene.png`` when no ``--image`` is given. The part count of an image
is ``--num-parts`` or its ``np<N>_`` name prefix.
"""

import argparse
import json
from pathlib import Path

import numpy as np
from _inputs import checked_inputs, positive_int  # examples/_inputs.py: one-line errors, exit status 2

from partattn_checks import EMBEDDED_MODEL, AttentionVisualizer
from partattn_checks.capture import metrics
from partattn_checks.model.synthetic import draw_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder for the results (created when missing)")
    parser.add_argument("--image", type=Path, help="an image (default: a drawn 3-part scene)")
    parser.add_argument(
        "--num-parts",
        type=positive_int,
        help="parts in the image (default: its np<N>_ name prefix; 3 for the drawn scene; the tiny model: 1-4)",
    )
    parser.add_argument("--steps", type=positive_int, default=10, help="denoising steps (default 10)")
    args = parser.parse_args()
    num_parts = checked_inputs(parser, args, drawn_parts=3)
    out = args.out_dir
    image = args.image
    if image is None:  # part k is painted in the colour the tiny model ties to part k
        image = out / "scene.png"
        draw_scene(np.random.default_rng(1), num_parts, scale=2).image.save(image)

    # A full denoising run with every step of every cross-attention layer recorded (streamed
    # reductions: per-head key marginals, entropy, ...) and the plugin's checks run on it.
    viz = AttentionVisualizer.from_pretrained(EMBEDDED_MODEL, device="cpu")
    record = viz.run(image, num_parts, steps=args.steps)

    # Part separation: mean Jensen-Shannon distance between the parts' key marginals (0 = all
    # parts look at the same keys, 1 = disjoint regions), per step and layer, then over steps.
    per_part = record.marginals_by_part()  # (steps, layers, parts, patch keys), heads averaged
    per_layer = metrics.part_separation(per_part).mean(0)  # (layers,)
    best = int(per_layer.argmax())
    for name, value in zip(record.layers, per_layer.tolist(), strict=True):
        print(f"{name}: part separation {value:.3f}" + ("  <- most separated" if name == record.layers[best] else ""))

    # Figures: every part's key marginal on the encoder's view of the image (mean over steps).
    viz.visualize_part_attention(record, record.num_parts, out / "parts.png")  # the best layer
    for name in record.layers:
        viz.visualize_part_attention(record, record.num_parts, out / f"parts_{name}.png", layer=name)

    pairwise = metrics.pairwise_separation(per_part[:, best].mean(0))  # (parts, parts)
    summary = {
        "image": str(image),
        "separation_per_layer": dict(zip(record.layers, per_layer.tolist(), strict=True)),
        "most_separated_layer": record.layers[best],
        "pairwise_separation": pairwise.tolist(),
        "checks": {name: result.verdict for name, result in viz.results.items()},
    }
    (out / "separation.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("checks:", summary["checks"])


if __name__ == "__main__":
    main()
