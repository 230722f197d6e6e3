"""The guide's basic flow: hooks on the model, one forward, its attention weights, three figures.

    python examples/attention_visualization_example.py OUT_DIR [--image PATH [--num-parts N]]

Runs the embedded tiny PartCrafter model (``partattn_checks.EMBEDDED_MODEL``) on the CPU in seconds.
Without ``--image`` it draws a 2-part scene with the project's synthetic image maker (the kind of
image the tiny model was trained on); the part count of an image is ``--num-parts`` or its ``np<N>_``
name prefix. Writes into OUT_DIR: ``scene.png`` (when drawn),
``heatmap.png`` (one head's queries x keys map), ``heads.png`` (each head's key marginal on the
image), ``parts.png`` (each part's key marginal on the image) and ``statistics.json``.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from _inputs import checked_inputs, positive_int  # examples/_inputs.py: one-line errors, exit status 2

from partattn_checks import EMBEDDED_MODEL, AttentionVisualizer
from partattn_checks.model.synthetic import draw_scene

DRAWN_PARTS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder for the figures (created when missing)")
    parser.add_argument("--image", type=Path, help=f"an image (default: a drawn scene of {DRAWN_PARTS} parts)")
    parser.add_argument("--num-parts", type=positive_int, help="parts in the image (default: its np<N>_ name prefix)")
    args = parser.parse_args()
    num_parts = checked_inputs(parser, args, drawn_parts=DRAWN_PARTS)
    out = args.out_dir
    image = args.image
    if image is None:  # part k is painted in the colour the tiny model ties to part k
        image = out / "scene.png"
        draw_scene(np.random.default_rng(0), num_parts, scale=2).image.save(image)

    viz = AttentionVisualizer.from_pretrained(EMBEDDED_MODEL, device="cpu")
    model = viz.model  # the PartCrafter transformer (DiT)

    # The transformer's inputs as the pipeline builds them: image tokens (DINOv2 CLS + patches), one
    # copy per part, and classifier-free guidance's batch [unconditional, conditional].
    tokens = viz.pipeline.encode_image(image).expand(num_parts, -1, -1)
    context = torch.cat([torch.zeros_like(tokens), tokens])
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(num_parts, 16, model.config.in_channels, generator=generator).repeat(2, 1, 1)

    # One forward with capture: {layer name: (parts, heads, queries, keys)} softmax probabilities of
    # the conditional half; key 0 is the image CLS token (figures show the patch keys, CLS apart).
    weights = viz.extract_attention_weights(model, latents, context, num_parts=num_parts, image=image)
    last = list(weights)[-1]
    print(f"{len(weights)} cross-attention layers; {last}: {tuple(weights[last].shape)}")

    # Figures plot attention x number of keys on one fixed scale: grey = uniform, red = more.
    viz.visualize_attention_heatmap(weights, out / "heatmap.png", layer=last, head=0, part=0)
    viz.visualize_multi_head_attention(weights, out / "heads.png", layer=last, part=1)
    viz.visualize_part_attention(weights, num_parts, out / "parts.png", layer=last, title="one forward (t = 1000)")

    # The guide's statistics per layer: entropy 1 = uniform, 0 = one key; sparsity; CLS mass.
    stats = viz.statistics(weights)
    for layer, s in stats.items():
        print(f"{layer}: entropy {s['entropy']:.3f}, sparsity {s['sparsity']:.3f}, CLS mass {s['cls_mass']:.3f}")
    (out / "statistics.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(f"wrote {sorted(p.name for p in out.iterdir())} to {out}")


if __name__ == "__main__":
    main()
