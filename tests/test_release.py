"""Release-shaped random checkpoints (partattn_checks.model.release): the release's names and shapes,
the release layout, streamed fp16 writing, and loading at the release's image-encoder geometry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import FIXTURE_IMAGES, read_keys_tsv, reference_keys_path
from safetensors.torch import load_file

from partattn_checks.model.files import checkpoint_problems, read_safetensors_header
from partattn_checks.model.pipeline import PartCrafterPipeline
from partattn_checks.model.release import (
    RELEASE_DINOV2,
    RELEASE_PREPROCESSOR,
    WEIGHT_STD,
    meta_image_encoder,
    meta_transformer,
    tensor_specs,
    weight_count,
    write_fp16_safetensors,
    write_release_checkpoint,
)
from partattn_checks.model.tiny import TINY_TRANSFORMER

IMAGE = FIXTURE_IMAGES / "np2_circle_square.png"
#: DINOv2-large's width and depth at the release's image geometry, small enough for a test.
NARROW_RELEASE_ENCODER = {**RELEASE_DINOV2, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
SMALL = dict(
    transformer_config={**TINY_TRANSFORMER, "cross_attention_dim": 64},
    encoder_config=NARROW_RELEASE_ENCODER,
    run_defaults={"num_tokens": 8, "steps": 2, "guidance_scale": 7.0},
)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return write_release_checkpoint(tmp_path_factory.mktemp("release") / "small", seed=5, **SMALL)


def test_release_transformer_names_and_shapes_equal_the_release_files():
    assert tensor_specs(meta_transformer()) == read_keys_tsv(reference_keys_path())


def test_release_encoder_is_dinov2_large_under_the_release_names():
    specs = tensor_specs(meta_image_encoder())
    assert sum(torch.Size(s).numel() for s in specs.values()) == 304_368_640  # DINOv2-large
    assert len([n for n in specs if n.endswith("attention.attention.query.weight")]) == 24
    assert not any(".q_proj." in n for n in specs)  # the release (transformers 4.x) names, on any version
    assert specs["embeddings.position_embeddings"] == (1, 37 * 37 + 1, 1024)  # 518 / 14 = 37
    crop = RELEASE_PREPROCESSOR["crop_size"]
    assert RELEASE_PREPROCESSOR["size"] == {"shortest_edge": 256} and crop == {"height": 224, "width": 224}


def test_written_folder_is_the_release_layout_in_fp16(small):
    assert checkpoint_problems(small) == []
    assert sorted(p.relative_to(small).as_posix() for p in small.rglob("*") if p.is_file()) == [
        "feature_extractor_dinov2/preprocessor_config.json",
        "image_encoder_dinov2/config.json",
        "image_encoder_dinov2/model.safetensors",
        "model_index.json",
        "partattn.json",
        "scheduler/scheduler_config.json",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
    ]
    for component, module in (
        ("transformer/diffusion_pytorch_model.safetensors", meta_transformer(SMALL["transformer_config"])),
        ("image_encoder_dinov2/model.safetensors", meta_image_encoder(NARROW_RELEASE_ENCODER)),
    ):
        header = read_safetensors_header(small / component)
        on_disk = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
        assert on_disk == tensor_specs(module)
        assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F16"}
        # the safetensors library reads our streamed files as its own
        assert {k: tuple(t.shape) for k, t in load_file(str(small / component)).items()} == on_disk
    preprocessor = json.loads((small / "feature_extractor_dinov2/preprocessor_config.json").read_text())
    assert preprocessor["crop_size"] == {"height": 224, "width": 224} and preprocessor["size"]["shortest_edge"] == 256
    assert weight_count(small) == sum(
        torch.Size(s).numel()
        for m in (meta_transformer(SMALL["transformer_config"]), meta_image_encoder(NARROW_RELEASE_ENCODER))
        for s in tensor_specs(m).values()
    )


def test_weights_follow_the_rule_and_the_seed(small, tmp_path):
    state = load_file(str(small / "transformer/diffusion_pytorch_model.safetensors"))
    assert torch.equal(state["blocks.0.norm1.weight"], torch.ones_like(state["blocks.0.norm1.weight"]))
    assert torch.equal(state["blocks.0.attn1.norm_q.weight"], torch.ones_like(state["blocks.0.attn1.norm_q.weight"]))
    assert not state["proj_in.bias"].any()
    big = state["blocks.0.ff.net.0.proj.weight"].float()
    assert abs(big.std().item() - WEIGHT_STD) < 0.1 * WEIGHT_STD and abs(big.mean().item()) < 0.1 * WEIGHT_STD
    encoder = load_file(str(small / "image_encoder_dinov2/model.safetensors"))
    assert torch.equal(encoder["encoder.layer.0.layer_scale1.lambda1"], torch.ones(64, dtype=torch.float16))
    again = write_release_checkpoint(tmp_path / "again", seed=5, **SMALL)
    other = write_release_checkpoint(tmp_path / "other", seed=6, **SMALL)
    weights = "transformer/diffusion_pytorch_model.safetensors"
    assert (again / weights).read_bytes() == (small / weights).read_bytes()
    assert (other / weights).read_bytes() != (small / weights).read_bytes()


def test_release_geometry_gives_257_image_tokens_and_runs(small):
    """The release preprocessor and patch size (resize 256, crop 224, patch 14, position embeddings
    for 518 px interpolated to the 16 x 16 grid): 1 + 16 x 16 tokens, and a denoising run works."""
    pipe = PartCrafterPipeline.from_pretrained(small, dtype=torch.bfloat16)
    assert pipe.patch_grid == (16, 16)
    assert pipe.preprocess(IMAGE).shape == (1, 3, 224, 224)
    assert pipe.encode_image(IMAGE).shape == (1, 257, 64)
    result = pipe(IMAGE, 2)
    assert result.latents.shape == (2, 8, 8) and torch.isfinite(result.latents).all()


def test_streamed_writer_checks_each_value_and_writes_valid_headers(tmp_path):
    specs = {"b": (3, 2), "a": (4,), "empty": (0, 5)}
    size = write_fp16_safetensors(tmp_path / "w.safetensors", specs, lambda name, shape: torch.full(shape, 2.0))
    assert size == (tmp_path / "w.safetensors").stat().st_size
    loaded = load_file(str(tmp_path / "w.safetensors"))
    assert {k: tuple(v.shape) for k, v in loaded.items()} == specs
    assert all(v.dtype == torch.float16 and bool((v == 2).all()) for v in loaded.values())
    with pytest.raises(ValueError, match=r"a: value has shape \(5,\), expected \(4,\)"):
        write_fp16_safetensors(tmp_path / "bad.safetensors", specs, lambda name, shape: torch.zeros(5))
