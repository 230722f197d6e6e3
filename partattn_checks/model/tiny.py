"""Tiny PartCrafter-format checkpoints: same folder layout, safetensors, fp16, a few hundred KB.

They stand in for the 3.7 GB release weights in tests and in the default run, so the same
loading code runs on both. Building is deterministic from a seed, and files are written with
sorted JSON and no version stamps, so the same seed regenerates the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .encoder_names import to_model_names, to_release_names
from .transformer import PartCrafterDiTModel

TINY_TRANSFORMER = {
    "num_attention_heads": 4,
    "width": 64,
    "in_channels": 8,
    "num_layers": 5,
    "cross_attention_dim": 64,
    "max_num_parts": 8,
    "enable_part_embedding": True,
    "enable_local_cross_attn": True,
    "enable_global_cross_attn": True,
    "global_attn_block_ids": [0, 2, 4],
    "global_attn_block_id_range": None,
}
TINY_DINOV2 = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "mlp_ratio": 4,
    "image_size": 112,
    "patch_size": 14,
    "num_channels": 3,
    "layerscale_value": 1.0,
}
TINY_PREPROCESSOR = {
    "do_resize": True,
    "size": {"shortest_edge": 112},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 112, "width": 112},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "do_convert_rgb": True,
    "image_processor_type": "BitImageProcessor",
}
#: Upstream names components by module path; we accept the class name only (see loading.py).
MODEL_INDEX = {
    "_class_name": "PartCrafterPipeline",
    "feature_extractor_dinov2": ["transformers", "BitImageProcessor"],
    "image_encoder_dinov2": ["transformers", "Dinov2Model"],
    "scheduler": ["src.schedulers.scheduling_rectified_flow", "RectifiedFlowScheduler"],
    "transformer": ["src.models.transformers.partcrafter_transformer", "PartCrafterDiTModel"],
}
SCHEDULER_CONFIG = {"_class_name": "RectifiedFlowScheduler", "num_train_timesteps": 1000, "shift": 1.0}
TINY_RUN_DEFAULTS = {"num_tokens": 16, "steps": 10, "guidance_scale": 7.0}


def build_transformer(config: dict | None = None, seed: int = 0) -> PartCrafterDiTModel:
    """A randomly initialised transformer; the part embedding is drawn N(0, 0.02) as upstream does."""
    torch.manual_seed(seed)
    model = PartCrafterDiTModel(**(config or TINY_TRANSFORMER))
    if model.config.enable_part_embedding:
        torch.nn.init.normal_(model.part_embedding.weight, std=0.02)
    return model.eval()


#: The DINOv2 config keys a checkpoint is written with: the model's own, the same on every
#: supported transformers version (its generic keys differ from version to version).
DINOV2_CONFIG_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "mlp_ratio",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
    "layer_norm_eps",
    "image_size",
    "patch_size",
    "num_channels",
    "qkv_bias",
    "layerscale_value",
    "drop_path_rate",
    "use_swiglu_ffn",
    "apply_layernorm",
)


def build_image_encoder(config: dict | None = None, seed: int = 0):
    """A DINOv2 encoder with weights drawn by our own rule (not transformers' initialisation, which
    changes between versions), so a seed gives the same weights on every transformers version."""
    from transformers import Dinov2Config, Dinov2Model

    encoder = Dinov2Model(Dinov2Config(**(config or TINY_DINOV2))).eval()
    generator = torch.Generator().manual_seed(seed)
    params = dict(encoder.named_parameters())
    with torch.no_grad():
        for name in sorted(to_release_names({n: n for n in params})):  # the same order everywhere
            param = params[to_model_names({name: name}, params).popitem()[0]]
            if name.endswith("lambda1"):
                param.fill_(encoder.config.layerscale_value)
            elif "norm" in name.rsplit(".", 2)[-2] and name.endswith("weight"):
                param.fill_(1.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * encoder.config.initializer_range)
    return encoder


def dinov2_config_dict(encoder) -> dict:
    config = encoder.config.to_dict()
    return {"architectures": ["Dinov2Model"], **{k: config[k] for k in DINOV2_CONFIG_KEYS}}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _write_weights(path: Path, module: torch.nn.Module) -> None:
    """fp16 safetensors, under the names the released checkpoints use (whatever transformers is installed)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in module.state_dict().items()}
    save_file(to_release_names(state), str(path))


def write_checkpoint(
    out: str | Path,
    transformer: PartCrafterDiTModel,
    image_encoder,
    *,
    preprocessor: dict | None = None,
    run_defaults: dict | None = None,
    description: str = "",
) -> Path:
    """Write a checkpoint folder in the release layout (fp16 safetensors).

    The folder is assembled next to ``out`` and moved into place at the end, so an interrupted
    write never leaves a half checkpoint behind.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a checkpoint folder is meant to be shared
    try:
        _write_json(staging / "model_index.json", MODEL_INDEX)
        transformer_config = {"_class_name": "PartCrafterDiTModel", **dict(transformer.config)}
        _write_json(
            staging / "transformer" / "config.json",
            {k: v for k, v in transformer_config.items() if not k.startswith("_") or k == "_class_name"},
        )
        _write_weights(staging / "transformer" / "diffusion_pytorch_model.safetensors", transformer)
        _write_json(staging / "image_encoder_dinov2" / "config.json", dinov2_config_dict(image_encoder))
        _write_weights(staging / "image_encoder_dinov2" / "model.safetensors", image_encoder)
        _write_json(
            staging / "feature_extractor_dinov2" / "preprocessor_config.json", preprocessor or TINY_PREPROCESSOR
        )
        _write_json(staging / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
        _write_json(
            staging / "partattn.json",
            {
                "description": description,
                "run_defaults": run_defaults or TINY_RUN_DEFAULTS,
            },
        )
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def write_tiny_checkpoint(out: str | Path, seed: int = 0) -> Path:
    """A random-init tiny PartCrafter checkpoint, deterministic from ``seed``."""
    return write_checkpoint(
        out,
        build_transformer(seed=seed),
        build_image_encoder(seed=seed + 1),
        description=f"random-init tiny PartCrafter (seed {seed}), written by partattn_checks.model.tiny",
    )
