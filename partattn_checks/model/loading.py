"""Open a PartCrafter checkpoint folder in the released (hub) layout (a repo id: :mod:`.hub`).

Layout (``wgsxm/PartCrafter``)::

    model_index.json
    transformer/{config.json, diffusion_pytorch_model.safetensors}
    image_encoder_dinov2/{config.json, model.safetensors}
    feature_extractor_dinov2/preprocessor_config.json
    scheduler/scheduler_config.json
    vae/...                      (optional: no mesh decoding here)
    partattn.json                (optional, ours: default num_tokens/steps/guidance for the model)

Only safetensors weights are read; class names in ``model_index.json`` are mapped onto our
classes through an allowlist and no module named by a file is ever imported.
"""

from __future__ import annotations

import inspect
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .encoder_names import to_model_names
from .files import (  # noqa: F401  (re-exported: the layout and its errors are part of this module's API)
    ALLOWED_CLASSES,
    PICKLE_SUFFIXES,
    REQUIRED_FILES,
    RUN_DEFAULTS,
    WEIGHT_FILES,
    CheckpointError,
    ModelError,
    check_component_classes,
    checkpoint_problems,
    find_weights,
    format_problems,
    read_json,
    read_run_defaults,
    read_safetensors_header,
)
from .hub import model_folder
from .transformer import PartCrafterDiTModel

if TYPE_CHECKING:
    from transformers import Dinov2Model


@dataclass
class Checkpoint:
    """The parts of a PartCrafter checkpoint this project runs (no VAE)."""

    path: Path
    transformer: PartCrafterDiTModel
    image_encoder: Dinov2Model
    feature_extractor: Any  # a transformers image processor (BitImageProcessor), as preprocessor_config.json says
    scheduler_config: dict
    model_index: dict
    run_defaults: dict = field(default_factory=lambda: dict(RUN_DEFAULTS))


#: safetensors dtype name -> torch dtype attribute (what this loader reads).
SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn",
}

#: Bytes read per file read when a tensor is cast or moved (one staging buffer of this size).
CHUNK_BYTES = 8 << 20


def iter_tensors(
    file: Path, dtype: torch.dtype, device: str | torch.device = "cpu"
) -> Iterator[tuple[str, torch.Tensor]]:
    """Each tensor of one safetensors ``file``, floats cast to ``dtype``, on ``device``, one at a time.

    Tensors are read with plain file reads (no memory map: the pages of a mapped file count in the
    process's resident memory while it is open). A tensor already in ``dtype`` on the CPU is read
    straight into its final place; any other is allocated in ``dtype`` on ``device`` and filled
    chunk by chunk through one reused staging buffer of :data:`CHUNK_BYTES`. So loading holds the
    weights in the run dtype plus 8 MiB, never a second copy of the model nor of a whole tensor.
    The cast is ``Tensor.copy_`` (what ``Tensor.to`` does): the same bits as casting a
    ``safetensors.torch.load_file`` result.
    """
    header = read_safetensors_header(file)  # validated: offsets tile the data, the file is complete
    entries = sorted(
        ((name, entry) for name, entry in header.items() if name != "__metadata__"),
        key=lambda item: item[1]["data_offsets"][0],
    )
    stored_dtypes = {}
    for name, entry in entries:
        if entry["dtype"] not in SAFETENSORS_DTYPES or not hasattr(torch, SAFETENSORS_DTYPES[entry["dtype"]]):
            raise CheckpointError(
                f"{file}: cannot be read as safetensors (tensor {name!r} has dtype {entry['dtype']!r}, "
                f"which this loader does not read); {CheckpointError.fix}."
            )
        stored_dtypes[name] = getattr(torch, SAFETENSORS_DTYPES[entry["dtype"]])
    device = torch.device(device)
    staging = None
    try:
        with open(file, "rb", buffering=0) as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            fh.seek(8 + length)
            for name, entry in entries:
                shape, stored = tuple(entry["shape"]), stored_dtypes[name]
                target = dtype if stored.is_floating_point else stored
                if target == stored and device.type == "cpu":
                    tensor = torch.empty(shape, dtype=stored)
                    _read_exactly(fh, tensor.view(-1).view(torch.uint8), file)
                    yield name, tensor
                    continue
                if staging is None:
                    staging = torch.empty(CHUNK_BYTES, dtype=torch.uint8)
                tensor = torch.empty(shape, dtype=target, device=device)
                flat, size = tensor.view(-1), stored.itemsize
                step = CHUNK_BYTES // size
                for start in range(0, flat.numel(), step):
                    count = min(step, flat.numel() - start)
                    raw = staging[: count * size]
                    _read_exactly(fh, raw, file)
                    flat[start : start + count].copy_(raw.view(stored))
                yield name, tensor
    except OSError as err:
        raise CheckpointError(f"{file}: cannot be read as safetensors ({err}); {CheckpointError.fix}.") from None


def _read_exactly(fh, buffer: torch.Tensor, file: Path) -> None:
    """Fill the uint8 tensor ``buffer`` from ``fh`` (short reads are retried; EOF is an error)."""
    view = buffer.numpy().data if buffer.numel() else memoryview(b"")
    done = 0
    while done < len(view):
        got = fh.readinto(view[done:])
        if not got:
            raise CheckpointError(f"{file}: ended early while reading tensor data; {CheckpointError.fix}.")
        done += got


def read_state_dict(
    files: list[Path], dtype: torch.dtype, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors ``files``, floats cast to ``dtype``, on ``device``.

    Streamed tensor by tensor (:func:`iter_tensors`): peak memory is the state dict in ``dtype``
    plus an 8 MiB staging buffer. Each header is validated first (``read_safetensors_header``:
    truncated or foreign files are named with the fix); a dtype this loader cannot read is a
    ``CheckpointError`` naming the file.
    """
    state = {}
    for file in files:
        for name, tensor in iter_tensors(file, dtype, device):
            state[name] = tensor
    return state


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """Load a state dict into a module built on the meta device, with errors that list offenders."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched[:5]))
    if missing:
        problems.append("missing keys: " + ", ".join(missing[:5]))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected[:5]))
    if problems:
        raise CheckpointError(
            f"{where}: weights do not fit config.json ({' | '.join(problems)}"
            f"{' ...' if max(len(mismatched), len(missing), len(unexpected)) > 5 else ''}); "
            f"the config and weights come from different models: re-download the folder"
        )
    module.load_state_dict(state, strict=True, assign=True)


def load_transformer(folder: Path, dtype: torch.dtype, device: str | torch.device = "cpu") -> PartCrafterDiTModel:
    config = read_json(folder / "config.json")
    known = set(inspect.signature(PartCrafterDiTModel.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in config.items() if k in known}
    with torch.device("meta"):
        model = PartCrafterDiTModel(**kwargs)
    load_into(model, read_state_dict(find_weights(folder, WEIGHT_FILES["transformer"]), dtype, device), folder)
    return model.eval()


def load_image_encoder(folder: Path, dtype: torch.dtype, device: str | torch.device = "cpu"):
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config.from_dict(read_json(folder / "config.json"))
    with torch.device("meta"):
        model = Dinov2Model(config)
    state = read_state_dict(find_weights(folder, WEIGHT_FILES["image_encoder_dinov2"]), dtype, device)
    load_into(model, to_model_names(state, model.state_dict()), folder)
    return model.eval()


def feature_extractor_from_config(config: dict):
    """A DINOv2 ``BitImageProcessor`` from a ``preprocessor_config.json`` dict."""
    import transformers

    # transformers >= 5: the PIL backend needs no torchvision
    processor = getattr(transformers, "BitImageProcessorPil", None) or transformers.BitImageProcessor
    return processor(**{k: v for k, v in config.items() if k not in ("image_processor_type", "processor_class")})


def load_feature_extractor(folder: Path):
    return feature_extractor_from_config(read_json(folder / "preprocessor_config.json"))


def load_checkpoint(
    path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Checkpoint:
    """Load a PartCrafter checkpoint folder (or a Hugging Face repo id, ``owner/name[@revision]``, resolved
    through the hub cache: :mod:`~partattn_checks.model.hub`); weights (fp16 on disk at release) are cast to ``dtype``.

    Modules are built on the ``meta`` device (no random initialisation, no memory) and each stored
    tensor is read, cast to ``dtype`` and put on ``device`` one at a time, then assigned: peak
    memory is the weights in ``dtype`` plus one tensor (docs/model.md, "Loading")."""
    root = model_folder(path)  # a local folder, or a Hugging Face repo id's snapshot in the hub cache
    problems = checkpoint_problems(root)  # milliseconds: layout, JSON, safetensors headers, no weights
    if problems:
        raise CheckpointError(format_problems(problems))
    model_index = read_json(root / "model_index.json")
    run_defaults = read_run_defaults(root)
    return Checkpoint(
        path=root,
        transformer=load_transformer(root / "transformer", dtype, device),
        image_encoder=load_image_encoder(root / "image_encoder_dinov2", dtype, device),
        feature_extractor=load_feature_extractor(root / "feature_extractor_dinov2"),
        scheduler_config=read_json(root / "scheduler" / "scheduler_config.json"),
        model_index=model_index,
        run_defaults=run_defaults,
    )


def check_num_parts(config, num_parts: int, *, cfg: bool) -> None:
    """Refuse a part count the checkpoint's part embedding cannot serve (ids run to 2N-1 under CFG)."""
    if num_parts < 1:
        raise ModelError(f"num_parts must be at least 1, got {num_parts}")
    needed = 2 * num_parts if cfg else num_parts
    if needed > config.max_num_parts:
        limit = config.max_num_parts // 2 if cfg else config.max_num_parts
        raise ModelError(
            f"num_parts={num_parts} needs {needed} part-embedding ids"
            f"{' (classifier-free guidance doubles the batch)' if cfg else ''}, but the checkpoint has "
            f"max_num_parts={config.max_num_parts}: use at most {limit} parts"
        )
