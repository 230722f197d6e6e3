"""Release-shaped random checkpoints: the release's shapes and layout, random weights.

The folder has what ``wgsxm/PartCrafter`` has (docs/model.md): the transformer at
:data:`~partattn_checks.model.transformer.RELEASE_CONFIG` (1,439,621,696 parameters, the release's
555 tensor names), a DINOv2-large-shaped image encoder (24 layers of width 1024, patch 14, the
release's weight names), a ``BitImageProcessor`` config that resizes the short edge to 256 and
center-crops 224 (257 image tokens), the scheduler config and ``model_index.json``, weights in fp16
safetensors. It exercises loading, memory and capture at full width without the release weights;
its attention means nothing (random weights).

Writing never builds a model: the modules are built on the ``meta`` device only to learn names and
shapes, and each tensor is drawn on ``device`` from one seeded generator, cast to fp16 and written
straight into its safetensors file. Peak memory is one tensor, on any device (the GPU script draws
on the GPU). The same seed gives the same bytes on the same kind of device (CPU and CUDA
generators draw different numbers).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from .encoder_names import to_release_names
from .files import RUN_DEFAULTS, ModelError
from .tiny import DINOV2_CONFIG_KEYS, MODEL_INDEX, SCHEDULER_CONFIG, TINY_PREPROCESSOR
from .transformer import RELEASE_CONFIG, PartCrafterDiTModel

#: The DINOv2-large encoder config (``facebook/dinov2-large``) PartCrafter's image encoder has.
RELEASE_DINOV2 = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "mlp_ratio": 4,
    "image_size": 518,
    "patch_size": 14,
    "num_channels": 3,
    "layerscale_value": 1.0,
    "qkv_bias": True,
    "use_swiglu_ffn": False,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-6,
    "initializer_range": 0.02,
}
#: ``BitImageProcessor``: short edge to 256 (bicubic), center crop 224, ImageNet mean and std.
RELEASE_PREPROCESSOR = {
    **TINY_PREPROCESSOR,
    "size": {"shortest_edge": 256},
    "crop_size": {"height": 224, "width": 224},
}
#: Standard deviation of the random weights (DINOv2's ``initializer_range``; the DiT's too).
WEIGHT_STD = 0.02
COMPONENT_WEIGHTS = {
    "transformer": "diffusion_pytorch_model.safetensors",
    "image_encoder_dinov2": "model.safetensors",
}


def meta_transformer(config: dict | None = None) -> PartCrafterDiTModel:
    """The transformer on the ``meta`` device: names, shapes and config, no memory."""
    with torch.device("meta"):
        return PartCrafterDiTModel(**(config or RELEASE_CONFIG))


def meta_image_encoder(config: dict | None = None):
    """The DINOv2 encoder on the ``meta`` device."""
    from transformers import Dinov2Config, Dinov2Model

    with torch.device("meta"):
        return Dinov2Model(Dinov2Config(**(config or RELEASE_DINOV2)))


def tensor_specs(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of a module's state dict under the names the release files use."""
    return {name: tuple(t.shape) for name, t in to_release_names(module.state_dict()).items()}


def initial_value(name: str, shape: tuple[int, ...], generator: torch.Generator, layerscale: float) -> torch.Tensor:
    """One tensor's random value (float32, on the generator's device): layer-scale factors at
    ``layerscale``, norm weights 1, biases 0, everything else N(0, WEIGHT_STD)."""
    device = generator.device
    owner = name.rsplit(".", 2)[-2] if name.count(".") else ""
    if name.endswith("lambda1"):
        return torch.full(shape, layerscale, device=device)
    if "norm" in owner and name.endswith("weight"):
        return torch.ones(shape, device=device)
    if name.endswith("bias"):
        return torch.zeros(shape, device=device)
    return torch.randn(shape, generator=generator, device=device) * WEIGHT_STD


def write_fp16_safetensors(
    path: Path, specs: dict[str, tuple[int, ...]], value: Callable[[str, tuple[int, ...]], torch.Tensor]
) -> int:
    """Write ``specs`` as an fp16 safetensors file, asking ``value(name, shape)`` for each tensor
    in turn and writing it before asking for the next (peak memory: one tensor). Returns the bytes.

    The format: an 8-byte little-endian header length, a JSON header (``{name: {dtype, shape,
    data_offsets}}`` plus ``__metadata__``, padded with spaces to a multiple of 8), then the data.
    """
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    names = sorted(specs)
    for name in names:
        numel = 1
        for d in specs[name]:
            numel *= d
        header[name] = {"dtype": "F16", "shape": list(specs[name]), "data_offsets": [offset, offset + 2 * numel]}
        offset += 2 * numel
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)
        for name in names:
            tensor = value(name, specs[name]).to(device="cpu", dtype=torch.float16).contiguous()
            if tuple(tensor.shape) != specs[name]:
                raise ModelError(f"{name}: value has shape {tuple(tensor.shape)}, expected {specs[name]}")
            fh.write(tensor.view(-1).view(torch.uint8).numpy().data)
    return 8 + len(text) + offset


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_release_checkpoint(
    out: str | Path,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    transformer_config: dict | None = None,
    encoder_config: dict | None = None,
    preprocessor: dict | None = None,
    run_defaults: dict | None = None,
) -> Path:
    """Write a release-shaped random checkpoint folder at ``out`` (replaced if present).

    Defaults: the release transformer, DINOv2-large, the 256/224 preprocessor and upstream's run
    settings (1024 tokens, 50 steps, guidance 7). Smaller configs give the same layout at any size
    (the tests use them). Tensors are drawn on ``device`` in sorted-name order per file from
    ``torch.Generator(device).manual_seed(seed)`` (transformer) and ``seed + 1`` (encoder). The
    folder is assembled next to ``out`` and moved into place at the end.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    transformer = meta_transformer(transformer_config)
    encoder = meta_image_encoder(encoder_config)
    layerscale = float(encoder.config.layerscale_value)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    staging.chmod(0o755)
    try:
        _write_json(staging / "model_index.json", MODEL_INDEX)
        config = {"_class_name": "PartCrafterDiTModel", **dict(transformer.config)}
        _write_json(
            staging / "transformer" / "config.json",
            {k: v for k, v in config.items() if not k.startswith("_") or k == "_class_name"},
        )
        encoder_dict = encoder.config.to_dict()
        _write_json(
            staging / "image_encoder_dinov2" / "config.json",
            {"architectures": ["Dinov2Model"], **{k: encoder_dict[k] for k in DINOV2_CONFIG_KEYS}},
        )
        _write_json(
            staging / "feature_extractor_dinov2" / "preprocessor_config.json", preprocessor or RELEASE_PREPROCESSOR
        )
        _write_json(staging / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
        _write_json(
            staging / "partattn.json",
            {
                "description": f"release-shaped random PartCrafter (seed {seed}), written by "
                f"partattn_checks.model.release: its attention means nothing",
                "run_defaults": run_defaults or dict(RUN_DEFAULTS),
            },
        )
        for component, module, component_seed in (
            ("transformer", transformer, seed),
            ("image_encoder_dinov2", encoder, seed + 1),
        ):
            generator = torch.Generator(device=device).manual_seed(component_seed)
            write_fp16_safetensors(
                staging / component / COMPONENT_WEIGHTS[component],
                tensor_specs(module),
                partial(initial_value, generator=generator, layerscale=layerscale),
            )
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def weight_count(folder: str | Path) -> int:
    """Parameters in a checkpoint folder's transformer and image encoder (from the headers only)."""
    from .files import WEIGHT_FILES as STEMS
    from .files import find_weights, read_safetensors_header

    total = 0
    for component, stem in STEMS.items():
        for file in find_weights(Path(folder) / component, stem):
            for name, entry in read_safetensors_header(file).items():
                if name != "__metadata__":
                    numel = 1
                    for d in entry["shape"]:
                        numel *= d
                    total += numel
    return total
