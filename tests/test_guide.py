"""The cross-attention visualization guide's code blocks, run as the guide writes them.

The guide (``../shared/reference/cross_attention_visualization_guide.md``) is how users will call
us. Its eight Python blocks are copied below verbatim (trailing blanks stripped;
:func:`test_these_are_the_guides_blocks` compares them with the guide when it is there) and
executed in one namespace, top to bottom, as a reader would run them. Supplied: what the guide
leaves undefined (``model``, ``pipeline``, ``image``, ``image_paths``, ``input_data``,
``hidden_states``, ``encoder_hidden_states``, ``output_dir``, ``attention_weights_sequence``,
``torch``, ``Image``), from the embedded tiny model and the fixture images. Changed, each by one
:func:`edited` replacement that fails when the guide's text moves (docs/visualization.md lists them):

* the import line (``src.utils.attention_visualization`` -> ``partattn_checks``);
* ``num_inference_steps=20`` -> ``STEPS`` (few steps: 20 heatmaps per layer and image are slow);
* the Part-wise call is a syntax error as written (a positional argument after ``num_parts=8``):
  it runs corrected, with the tiny model's 4 parts for 8;
* ``layer_idx=5`` -> 4 (the tiny model has 5 cross-attention layers, 0-4);
* the statistics read ``attention_weights`` (a dict after Basic Usage) where they mean the
  ``layer_attention`` just extracted.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from helpers import more_colours_than
from PIL import Image

from partattn_checks import EMBEDDED_MODEL
from partattn_checks.model.pipeline import PartCrafterPipeline

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO.parent / "shared" / "reference" / "cross_attention_visualization_guide.md"
IMAGES = REPO / "fixtures" / "images"
LAYERS = [f"blocks.{i}.attn2" for i in range(5)]  # the embedded model's cross-attention layers
STEPS = 2
NUM_PARTS = 4  # the most the embedded model takes under CFG (2 x 4 part ids = max_num_parts 8)
TOKENS = 16  # latent tokens per part (the embedded model's default)
KEYS = 65  # CLS + 8 x 8 patches
DEFAULT_STEPS = 10  # the embedded model's default, used by `model(input_data)`

# ----------------------------------------------------------------------------- the guide's blocks
BASIC = """\
from src.utils.attention_visualization import AttentionVisualizer

# Create visualizer
visualizer = AttentionVisualizer()

# Register hooks to capture attention weights
visualizer.register_hooks(model)

# Run inference
with torch.no_grad():
    result = model(input_data)

# Extract attention weights
attention_weights = visualizer.extract_attention_weights(
    model, hidden_states, encoder_hidden_states
)

# Create visualizations
for layer_name, weights in attention_weights.items():
    # Heatmap
    visualizer.visualize_attention_heatmap(
        weights,
        f"heatmap_{layer_name}.png",
        title=f"Cross Attention - {layer_name}"
    )

    # Multi-head visualization
    visualizer.visualize_multi_head_attention(
        weights,
        f"multihead_{layer_name}.png",
        title=f"Multi-Head - {layer_name}"
    )

# Clean up
visualizer.clear_hooks()
"""

DURING_INFERENCE = """\
def visualize_during_inference(pipeline, model, image, output_dir):
    visualizer = AttentionVisualizer()
    visualizer.register_hooks(model)

    # Run inference with callback
    attention_sequence = []

    def callback_fn(step, timestep, latents):
        # Capture attention at each step
        if hasattr(model, 'attention_maps'):
            attention_sequence.append(model.attention_maps.copy())

    result = pipeline(
        image,
        num_inference_steps=20,
        callback=callback_fn,
        callback_steps=1
    )

    # Create visualizations for each step
    for step, attention_weights in enumerate(attention_sequence):
        for layer_name, weights in attention_weights.items():
            visualizer.visualize_attention_heatmap(
                weights,
                f"{output_dir}/step_{step:03d}_{layer_name}.png"
            )

    visualizer.clear_hooks()
    return attention_sequence
"""

HEATMAP = """\
visualizer.visualize_attention_heatmap(
    attention_weights,
    "heatmap.png",
    title="Cross Attention Heatmap"
)
"""

MULTI_HEAD = """\
visualizer.visualize_multi_head_attention(
    attention_weights,
    "multihead.png",
    title="Multi-Head Cross Attention"
)
"""

PART_WISE = """\
visualizer.visualize_part_attention(
    attention_weights,
    num_parts=8,
    "part_attention.png",
    title="Part-wise Cross Attention"
)
"""

ANIMATION = """\
visualizer.create_attention_animation(
    attention_weights_sequence,
    "attention_animation.gif",
    fps=2
)
"""

CUSTOM = """\
# Extract specific layer attention
layer_attention = visualizer.extract_attention_weights(
    model, hidden_states, encoder_hidden_states, layer_idx=5
)

# Analyze attention statistics
attention_stats = {
    'mean': attention_weights.mean().item(),
    'max': attention_weights.max().item(),
    'sparsity': (attention_weights < 0.01).float().mean().item(),
    'entropy': -(attention_weights * torch.log(attention_weights + 1e-8)).sum(dim=-1).mean().item()
}
"""

BATCH = """\
# Process multiple images
for image_path in image_paths:
    image = Image.open(image_path)
    attention_weights = visualize_during_inference(pipeline, model, image, output_dir)

    # Save results
    torch.save(attention_weights, f"attention_{image_path.stem}.pt")
"""

BLOCKS = [BASIC, DURING_INFERENCE, HEATMAP, MULTI_HEAD, PART_WISE, ANIMATION, CUSTOM, BATCH]

# ----------------------------------------------------------------------------- the edits
IMPORT = ("from src.utils.attention_visualization import", "from partattn_checks import")
FEW_STEPS = ("num_inference_steps=20", "num_inference_steps=STEPS")
PART_WISE_FIXED = ("    num_parts=8,\n", f"    {NUM_PARTS},\n")  # drop the keyword: the positional call
LAYER_4 = ("layer_idx=5", "layer_idx=4")
STATS_OF_THE_LAYER = ("attention_weights", "layer_attention")


def edited(block: str, *edits: tuple[str, str]) -> str:
    for old, new in edits:
        assert old in block, f"the guide's block no longer holds {old!r}: update this test and docs/visualization.md"
        block = block.replace(old, new)
    return block


def run(block: str, namespace: dict, name: str) -> None:
    exec(compile(block, f"<guide: {name}>", "exec"), namespace)


def stats_block() -> str:
    """The Custom Attention Analysis block, with its statistics on the extracted layer."""
    extract, stats = edited(CUSTOM, LAYER_4).split("# Analyze attention statistics")
    return extract + edited(stats, STATS_OF_THE_LAYER)


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def pipeline():
    return PartCrafterPipeline.from_pretrained(EMBEDDED_MODEL, device="cpu")


def model_inputs(pipeline, image, num_parts: int):
    """The transformer's inputs for one step, as the pipeline builds them: latents and [uncond, cond] tokens."""
    tokens = pipeline.encode_image(image).expand(num_parts, -1, -1)
    latents = pipeline.initial_latents(num_parts, TOKENS, 0).repeat(2, 1, 1)
    return latents, torch.cat([torch.zeros_like(tokens), tokens])


def assert_figure(path, fmt="PNG", frames=None) -> None:
    with Image.open(path) as im:
        assert im.format == fmt, (path, im.format)
        assert min(im.size) >= 200, (path, im.size)
        if frames is not None:
            assert im.n_frames == frames, (path, im.n_frames)
        assert more_colours_than(im, 8), f"{path} is nearly blank"


def assert_sequence(sequence, num_parts: int) -> None:
    """What the During Inference recipe returns: one dict per step, every layer, row-stochastic maps."""
    assert isinstance(sequence, list) and len(sequence) == STEPS
    for maps in sequence:
        assert type(maps) is dict and list(maps) == LAYERS
        for weights in maps.values():
            assert weights.dtype == torch.float32 and weights.shape == (num_parts, 4, TOKENS, KEYS)
            torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]), rtol=0, atol=2e-3)
    assert not torch.equal(sequence[0][LAYERS[-1]], sequence[-1][LAYERS[-1]]), "every step holds the same maps"


def assert_step_figures(output_dir: Path) -> None:
    """A heatmap per step and layer, as the recipe names them."""
    expected = {f"step_{step:03d}_{layer}.png" for step in range(STEPS) for layer in LAYERS}
    assert {p.name for p in output_dir.glob("step_*.png")} == expected
    assert_figure(output_dir / f"step_{STEPS - 1:03d}_{LAYERS[-1]}.png")


# ----------------------------------------------------------------------------- tests
def test_these_are_the_guides_blocks():
    if not GUIDE.is_file():
        pytest.skip(f"{GUIDE} is not here; the copies in this file stand for it")
    found = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)
    assert ["".join(line.rstrip() + "\n" for line in block.splitlines()) for block in found] == BLOCKS


def test_the_guide_top_to_bottom(tmp_path, monkeypatch, pipeline):
    """Every block in the guide's order, in one namespace; ``model`` is the pipeline, which
    ``model(input_data)`` (Basic Usage) needs; the guide's relative paths land in ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    output_dir = tmp_path / "steps"
    output_dir.mkdir()
    image = Image.open(IMAGES / "np2_circle_square.png")
    hidden_states, encoder_hidden_states = model_inputs(pipeline, image, NUM_PARTS)
    ns = {
        "torch": torch,
        "Image": Image,
        "STEPS": STEPS,
        "model": pipeline,
        "pipeline": pipeline,
        "image": image,
        "input_data": image,
        "hidden_states": hidden_states,
        "encoder_hidden_states": encoder_hidden_states,
        "output_dir": str(output_dir),
        # One image: the batch's loop is the guide's; what it runs is visualize_during_inference again on the
        # same pipeline, after the During Inference call (10 heatmaps an image: a second one costs some 5 s).
        "image_paths": [IMAGES / "np1_circle.png"],
    }

    run(edited(BASIC, IMPORT), ns, "Basic Usage")
    visualizer, weights = ns["visualizer"], ns["attention_weights"]
    assert visualizer.pipeline is pipeline  # bound by register_hooks(model)
    assert list(weights) == LAYERS and weights[LAYERS[0]].shape == (NUM_PARTS, 4, TOKENS, KEYS)
    for layer in LAYERS:
        assert_figure(tmp_path / f"heatmap_{layer}.png")
        assert_figure(tmp_path / f"multihead_{layer}.png")
    hooked = visualizer.record  # the hooked `model(input_data)`: one step per forward
    assert hooked.steps == list(range(DEFAULT_STEPS)) and hooked.num_parts == 1 and hooked.timesteps[0] == 1000.0
    assert not visualizer.hooks_registered and not hasattr(pipeline, "attention_maps")

    run(edited(DURING_INFERENCE, FEW_STEPS), ns, "During Inference")
    ns["attention_weights_sequence"] = sequence = ns["visualize_during_inference"](
        pipeline, pipeline, image, str(output_dir)
    )
    assert_sequence(sequence, num_parts=1)
    assert_step_figures(output_dir)

    run(HEATMAP, ns, "Attention Heatmap")
    run(MULTI_HEAD, ns, "Multi-head Visualization")
    run(edited(PART_WISE, PART_WISE_FIXED), ns, "Part-wise Analysis, corrected")
    run(ANIMATION, ns, "Temporal Animation")
    for name in ("heatmap.png", "multihead.png", "part_attention.png"):
        assert_figure(tmp_path / name)
    assert_figure(tmp_path / "attention_animation.gif", fmt="GIF", frames=STEPS)

    run(stats_block(), ns, "Custom Attention Analysis")
    assert torch.equal(ns["layer_attention"], weights[LAYERS[4]])
    stats = ns["attention_stats"]
    assert set(stats) == {"mean", "max", "sparsity", "entropy"} and all(math.isfinite(v) for v in stats.values())
    assert stats["mean"] == pytest.approx(1 / KEYS, rel=1e-3)  # rows sum to 1 over CLS + 64 patch keys
    assert 0 < stats["entropy"] < math.log(KEYS)

    run(BATCH, ns, "Batch Processing")
    for path in ns["image_paths"]:
        saved = torch.load(tmp_path / f"attention_{path.stem}.pt", weights_only=True)
        assert_sequence(saved, num_parts=1)
    last = torch.load(tmp_path / "attention_np1_circle.pt", weights_only=True)
    assert all(torch.equal(a[n], b[n]) for a, b in zip(last, ns["attention_weights"], strict=True) for n in LAYERS)
    assert not torch.equal(last[0][LAYERS[-1]], sequence[0][LAYERS[-1]])  # its own image, not the one before
    assert not hasattr(pipeline, "attention_maps") and not hasattr(pipeline.transformer, "attention_maps")


def test_during_inference_and_batch_with_the_transformer_as_model(tmp_path, monkeypatch, pipeline):
    """``visualize_during_inference(pipeline, model, ...)`` with ``model`` the pipeline's transformer,
    whose ``attention_maps`` the callback reads."""
    monkeypatch.chdir(tmp_path)
    ns = {
        "torch": torch,
        "Image": Image,
        "STEPS": STEPS,
        "model": pipeline.transformer,
        "pipeline": pipeline,
        "output_dir": str(tmp_path),
        "image_paths": [IMAGES / "np3_three_shapes.png"],
    }
    run(edited("from src.utils.attention_visualization import AttentionVisualizer\n", IMPORT), ns, "import")
    run(edited(DURING_INFERENCE, FEW_STEPS), ns, "During Inference")
    run(BATCH, ns, "Batch Processing")
    assert_sequence(ns["attention_weights"], num_parts=1)
    assert_step_figures(tmp_path)
    saved = torch.load(tmp_path / "attention_np3_three_shapes.pt", weights_only=True)
    assert all(torch.equal(a[n], b[n]) for a, b in zip(saved, ns["attention_weights"], strict=True) for n in LAYERS)
    assert not hasattr(pipeline.transformer, "attention_maps")


def test_part_wise_block_as_written_and_corrected(tmp_path, monkeypatch, pipeline):
    """The guide's Part-wise call does not parse; both ways to fix it run."""
    with pytest.raises(SyntaxError, match="positional argument follows keyword argument"):
        compile(PART_WISE, "<guide: Part-wise Analysis>", "exec")
    monkeypatch.chdir(tmp_path)
    from partattn_checks import AttentionVisualizer

    visualizer = AttentionVisualizer(pipeline)
    attention_weights = visualizer.extract_attention_weights(
        pipeline.transformer, *model_inputs(pipeline, IMAGES / "np4_four_shapes.png", NUM_PARTS)
    )
    ns = {"visualizer": visualizer, "attention_weights": attention_weights}
    run(edited(PART_WISE, PART_WISE_FIXED), ns, "Part-wise Analysis, positional")
    keyword = ('    num_parts=8,\n    "part_attention.png",', f'    num_parts={NUM_PARTS},\n    path="by_name.png",')
    run(edited(PART_WISE, keyword), ns, "Part-wise Analysis, by name")
    assert_figure(tmp_path / "part_attention.png")
    assert_figure(tmp_path / "by_name.png")
    with pytest.raises(ValueError, match="num_parts=8 but the attention holds 4 parts"):
        run(edited(PART_WISE, ("    num_parts=8,\n", "    8,\n")), ns, "Part-wise Analysis, 8 parts")


def test_layer_idx_5_needs_a_model_with_six_layers(pipeline):
    from partattn_checks import AttentionVisualizer

    hidden_states, encoder_hidden_states = model_inputs(pipeline, IMAGES / "np1_circle.png", 1)
    ns = {
        "torch": torch,
        "visualizer": AttentionVisualizer(pipeline),
        "model": pipeline,
        "hidden_states": hidden_states,
        "encoder_hidden_states": encoder_hidden_states,
    }
    extract = CUSTOM.split("# Analyze attention statistics")[0]
    with pytest.raises(ValueError, match="layer index 5 out of range: the model has 5 cross-attention layers"):
        run(extract, ns, "Custom Attention Analysis, layer_idx=5")
