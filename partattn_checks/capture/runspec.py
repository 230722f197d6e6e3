"""Run settings, resolved once per run into a frozen, validated :class:`RunSpec`.

Each setting comes from the first of these, read from the last to the first (later wins):

1. the checkpoint's defaults: its ``partattn.json`` ``run_defaults`` (a loaded pipeline's
   ``run_defaults``; without the file, ``partattn_checks.model.files.RUN_DEFAULTS``), and the seed
   :data:`~partattn_checks.base.seeds.DEFAULT_SEED`;
2. the options: ``--partattn-*`` and their ini twins (plugin), the ``partattn run`` arguments;
3. the image's sidecar ``<stem>.toml`` (it pins the settings its baseline was made with);
4. the call's arguments (``partattn(image, steps=...)``, ``record_attention(..., steps=...)``).

Device and dtype are resolved in the same step: a spec holds the concrete device (``cpu``,
``cuda:1``) and the dtype's name the pipeline runs with. The pipeline, the recorder, the record's
``meta`` (hence the baseline fingerprint) and the plugin's header all take their values from here.

:func:`problem` is the one validation of a run setting's value: the plugin's options, the sidecar
and the ``partattn`` command word their errors around it. :func:`tokens_problem` refuses a number of
latent tokens whose run clearly cannot fit in the device's memory (a lower bound of what one run
holds, :func:`run_memory`, against what is free, :func:`free_memory`), :func:`steps_problem` a number
of steps whose attention record cannot (:func:`record_memory`); :func:`for_pipeline` applies both to
every run. Importing this module imports no torch; :func:`resolve_device` (but for ``cpu``),
:func:`torch_dtype` and :func:`free_memory` on a CUDA device import it when called.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..base.seeds import DEFAULT_SEED as DEFAULT_SEED  # re-exported: the commands' --seed default
from ..base.seeds import MIN_SEED
from ..errors import PartattnError

if TYPE_CHECKING:
    import torch

#: What a device option may say; ``auto`` picks CUDA when present.
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
DTYPES = ("float32", "float16", "bfloat16")
#: The settings of one run, in the order a spec lists them.
RUN_KEYS = ("num_parts", "steps", "seed", "guidance_scale", "num_tokens")
#: (kind, least value) per setting.
_RULES = {
    "num_parts": (int, 1),
    "steps": (int, 1),
    "seed": (int, MIN_SEED),
    "guidance_scale": (float, 0),
    "num_tokens": (int, 1),
}
LAYERS = ("checkpoint", "options", "sidecar", "call")


class RunSpecError(PartattnError, ValueError):
    """A run setting that cannot be used; the message names where it came from and the fix."""


def problem(name: str, value: object) -> str | None:
    """What is wrong with ``value`` as run setting ``name`` (``"must be at least 1"``), else ``None``."""
    kind, least = _RULES[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        return "must be a whole number" if kind is int else "must be a number"
    if not math.isfinite(value):
        return "must be a finite number"
    if value < least:
        cfg = " (1 or less turns classifier-free guidance off)" if name == "guidance_scale" else ""
        return f"must be at least {least}{cfg}"
    return None


def device_problem(text: str) -> str | None:
    """What is wrong with a requested device name, else ``None``."""
    return None if DEVICE_PATTERN.match(str(text)) else f"unknown device; use {DEVICE_CHOICES}"


def dtype_problem(text: str) -> str | None:
    return None if text in DTYPES else f"unknown dtype; use {', '.join(DTYPES[:-1])} or {DTYPES[-1]}"


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides one denoising run besides the model and the image. Hashable: the
    session's record cache is keyed by ``(model, image, spec)``."""

    num_parts: int
    steps: int
    seed: int
    guidance_scale: float
    num_tokens: int
    device: str = "cpu"  # concrete: "cpu", "cuda", "cuda:N"
    dtype: str = "float32"

    @property
    def cfg(self) -> bool:
        """Classifier-free guidance is on (the batch is ``[uncond, cond]``)."""
        return self.guidance_scale > 1.0

    def run_kwargs(self) -> dict[str, Any]:
        """The pipeline call's keyword arguments."""
        return {
            "steps": self.steps,
            "seed": self.seed,
            "guidance_scale": self.guidance_scale,
            "num_tokens": self.num_tokens,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_run(
    checkpoint: Mapping[str, Any],
    options: Mapping[str, Any] | None = None,
    sidecar: Mapping[str, Any] | None = None,
    call: Mapping[str, Any] | None = None,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    labels: Mapping[str, str] | None = None,
    loaded: bool = False,
) -> RunSpec:
    """The one resolver: ``checkpoint`` defaults, then ``options``, then ``sidecar``, then ``call``
    (each a mapping of :data:`RUN_KEYS`; ``None`` values are unset). ``device``: a concrete device or
    a request (``auto`` is resolved here); ``dtype``: a name of :data:`DTYPES`. A bad value raises
    :class:`RunSpecError` naming its source (``labels[layer]``, e.g. the sidecar's path).
    ``loaded``: ``device`` and ``dtype`` are those of a loaded pipeline, taken as they are."""
    names = _layer_names(labels)
    values: dict[str, Any] = {"seed": DEFAULT_SEED}
    for layer, given in zip(LAYERS, (checkpoint, options, sidecar, call), strict=True):
        for key, value in (given or {}).items():
            if value is None or (layer == "checkpoint" and key not in RUN_KEYS):
                continue  # a checkpoint's partattn.json may say more than we use
            if key not in RUN_KEYS:
                raise RunSpecError(f"{names[layer]}: unknown run setting {key!r} (known: {', '.join(RUN_KEYS)})")
            wrong = problem(key, value)
            if wrong:
                raise RunSpecError(f"{names[layer]}: {key} = {value!r} {wrong}")
            values[key] = value
    missing = [key for key in RUN_KEYS if key not in values]
    if missing:
        raise RunSpecError(
            f"no {missing[0]} for this run: pass {missing[0]}="
            + (
                "N, name the image np<N>_<name> or add a sidecar with 'num_parts = N'"
                if missing[0] == "num_parts"
                else "... or set it in the checkpoint's partattn.json"
            )
        )
    if not loaded:
        for what, value, wrong in (("dtype", dtype, dtype_problem(dtype)), ("device", device, device_problem(device))):
            if wrong:
                raise RunSpecError(f"{what} {value!r}: {wrong}")
        device = resolve_device(device).device if device == "auto" else device
    ints = {k: int(values[k]) for k in ("num_parts", "steps", "seed", "num_tokens")}
    return RunSpec(**ints, guidance_scale=float(values["guidance_scale"]), device=str(device), dtype=dtype)


def _layer_names(labels: Mapping[str, str] | None) -> dict[str, str]:
    """How errors name each layer of a run's settings (``labels`` override, e.g. a sidecar's path)."""
    names = {
        "checkpoint": "the checkpoint's run_defaults",
        "options": "options",
        "sidecar": "sidecar",
        "call": "argument",
    }
    return {**names, **(labels or {})}


class LoadedPipeline(Protocol):
    """What the run settings and a record's meta read from a loaded pipeline (ours, an upstream one)."""

    @property
    def run_defaults(self) -> Mapping[str, Any]: ...
    @property
    def device(self) -> object: ...  # a torch.device
    @property
    def dtype(self) -> object: ...  # a torch.dtype
    @property
    def checkpoint(self) -> Any: ...  # its .path names the model
    @property
    def transformer(self) -> Any: ...  # a torch module with a diffusers config


def for_pipeline(
    pipeline: LoadedPipeline,
    options: Mapping[str, Any] | None = None,
    sidecar: Mapping[str, Any] | None = None,
    call: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
) -> RunSpec:
    """:func:`resolve_run` for a loaded pipeline: its ``run_defaults``, its device and its dtype; a
    ``num_tokens`` or ``steps`` whose run clearly cannot fit in the device's memory is refused before it starts."""
    spec = resolve_run(
        pipeline.run_defaults,
        options,
        sidecar,
        call,
        device=str(pipeline.device),
        dtype=dtype_name(pipeline.dtype),
        labels=labels,
        loaded=True,
    )
    config = getattr(getattr(pipeline, "transformer", None), "config", None)
    grid = getattr(pipeline, "patch_grid", None)
    problems = {
        "num_tokens": tokens_problem(
            spec.num_tokens, config, spec.device, num_parts=spec.num_parts, cfg=spec.cfg, dtype=spec.dtype
        ),
        "steps": steps_problem(
            spec.steps, config, spec.device, num_parts=spec.num_parts, patch_keys=grid[0] * grid[1] if grid else None
        ),
    }
    for key, wrong in problems.items():
        if wrong:
            given = {"call": call, "sidecar": sidecar, "options": options}  # the last layer that set it wins
            source = next((k for k, v in given.items() if (v or {}).get(key) is not None), "checkpoint")
            raise RunSpecError(f"{_layer_names(labels)[source]}: {key} = {getattr(spec, key)} {wrong}")
    return spec


# ---------------------------------------------------------------------------- memory of a run
#: A transformer's config (a mapping) or a checkpoint folder.
TransformerConfig = Mapping[str, Any] | str | Path | None
#: Bytes per element of each dtype.
_ITEM_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def run_memory(
    config: TransformerConfig, num_tokens: int, num_parts: int = 1, *, cfg: bool = True, dtype: str = "float32"
) -> int | None:
    """A lower bound on the bytes one denoising run holds at once with ``num_tokens`` latent tokens per
    part: the float32 initial latents (parts x tokens x ``in_channels``) and, in any attention layer,
    the hidden states, queries, keys and values of the whole batch (parts, twice with guidance, x
    tokens x ``width``, in ``dtype``). Attention maps, the MLP and the image encoder come on top.
    ``config``: the transformer's config (a mapping) or a checkpoint folder; None when it says no width."""
    config = _transformer_config(config)
    if config is None:
        return None
    width, channels = config["width"], config["in_channels"]
    batch = num_parts * (2 if cfg else 1)
    return num_parts * num_tokens * channels * 4 + 4 * batch * num_tokens * width * _ITEM_BYTES.get(dtype, 4)


def free_memory(device: str) -> tuple[int, str] | None:
    """``(bytes, what)`` a run on ``device`` can use now: on CUDA the free memory
    (``torch.cuda.mem_get_info``), on the CPU the available RAM (``MemAvailable`` of /proc/meminfo,
    else ``os.sysconf``'s free pages); None when it cannot be told."""
    if str(device).startswith("cuda"):
        import torch

        try:
            return int(torch.cuda.mem_get_info(torch.device(device))[0]), "free"
        except (RuntimeError, AssertionError, ValueError):
            return None
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "of RAM available"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "of RAM available"
    except (ValueError, OSError, AttributeError):
        return None


def tokens_problem(
    num_tokens: int,
    config: TransformerConfig,
    device: str,
    *,
    num_parts: int = 1,
    cfg: bool = True,
    dtype: str = "float32",
) -> str | None:
    """Why a run with ``num_tokens`` per part clearly cannot fit on ``device`` (its lower bound,
    :func:`run_memory`, is more than :func:`free_memory`), else None (also when either is unknown)."""
    need = run_memory(config, num_tokens, num_parts, cfg=cfg, dtype=dtype)
    free = free_memory(device) if need is not None else None
    if need is None or free is None or need <= free[0]:
        return None
    width = (_transformer_config(config) or {}).get("width")
    parts = f"{num_parts} part{'s' if num_parts != 1 else ''}{' x 2 (guidance)' if cfg else ''}"
    return (
        f"cannot fit: one run needs at least {_size(need)} ({parts} x {num_tokens} tokens x width {width}: the "
        f"latents, hidden states, queries, keys and values), and {device} has {_size(free[0])} {free[1]}; "
        f"pass fewer tokens"
    )


#: Float16 statistics a record keeps per (step, layer, part, head) besides the key marginal.
RECORD_SCALARS = 4


def record_memory(
    config: TransformerConfig, steps: int, num_parts: int = 1, patch_keys: int | None = None
) -> int | None:
    """A lower bound on the bytes the record of a ``steps``-step run holds: per step, cross-attention
    layer (``num_layers``), part and head (``num_attention_heads``), :data:`RECORD_SCALARS` float16
    statistics and the float16 key marginal (``patch_keys`` values; a checkpoint folder says them,
    else 1). None when the config does not say its layers and heads."""
    shape = _transformer_config(config, ("num_layers", "num_attention_heads"))
    if shape is None:
        return None
    keys = patch_keys or _patch_keys(config) or 1
    return steps * shape["num_layers"] * num_parts * shape["num_attention_heads"] * (RECORD_SCALARS + keys) * 2


def steps_problem(
    steps: int, config: TransformerConfig, device: str, *, num_parts: int = 1, patch_keys: int | None = None
) -> str | None:
    """Why a run of ``steps`` steps clearly cannot fit on ``device``: the record it builds (its lower
    bound, :func:`record_memory`) is more than :func:`free_memory`; else None (also when unknown)."""
    need = record_memory(config, steps, num_parts, patch_keys)
    free = free_memory(device) if need is not None else None
    if need is None or free is None or need <= free[0]:
        return None
    shape = _transformer_config(config, ("num_layers", "num_attention_heads")) or {}
    keys = patch_keys or _patch_keys(config) or 1
    parts = f"{num_parts} part{'s' if num_parts != 1 else ''}"
    return (
        f"cannot fit: the attention record of {steps} steps needs at least {_size(need)} ({steps} steps x "
        f"{shape.get('num_layers')} layers x {parts} x {shape.get('num_attention_heads')} heads x "
        f"{RECORD_SCALARS + keys} float16 values), and {device} has {_size(free[0])} {free[1]}; pass fewer steps "
        f"(the checkpoint's default is a good start)"
    )


def _transformer_config(
    config: TransformerConfig, keys: tuple[str, ...] = ("width", "in_channels")
) -> dict[str, int] | None:
    """``keys`` (default ``width`` and ``in_channels``) of a transformer config (a mapping, or a
    checkpoint folder's ``transformer/config.json``) as whole numbers, None when it does not say them."""
    if isinstance(config, (str, Path)):
        config = _json_file(Path(config) / "transformer" / "config.json")
    if not isinstance(config, Mapping):
        return None
    try:
        return {key: int(config[key]) for key in keys}
    except (KeyError, TypeError, ValueError):
        return None


def _patch_keys(config: TransformerConfig) -> int | None:
    """Patch keys of a checkpoint folder's image encoder (its crop over its patch size, squared)."""
    if not isinstance(config, (str, Path)):
        return None
    encoder = _json_file(Path(config) / "image_encoder_dinov2" / "config.json")
    extractor = _json_file(Path(config) / "feature_extractor_dinov2" / "preprocessor_config.json")
    try:
        patch, crop = int(encoder["patch_size"]), extractor["crop_size"]
        return (int(crop["height"]) // patch) * (int(crop["width"]) // patch) or None
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def _json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def checkpoint_defaults(model: str | Path) -> dict[str, Any]:
    """A checkpoint folder's default run settings without loading it (no torch); the built-in ones
    when the folder or its ``partattn.json`` cannot be read (the pre-flight reports that)."""
    from ..model.files import RUN_DEFAULTS, read_run_defaults

    try:
        return read_run_defaults(model)
    except (PartattnError, ValueError, TypeError, AttributeError):
        return dict(RUN_DEFAULTS)


# ---------------------------------------------------------------------------- device and dtype
@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cpu", "cuda:0", ...
    note: str = ""  # e.g. "CUDA not found, fell back to CPU"


def resolve_device(requested: str = "auto", worker: str | None = None, spread: bool = False) -> DeviceChoice:
    """The one device resolver. ``auto`` picks CUDA when present, else the CPU; ``cuda`` without
    CUDA, or an index past the last GPU, is a :class:`RunSpecError` that says so. ``cpu`` needs no
    look at the machine and imports no torch (an xdist controller given ``--partattn-device=cpu``
    runs no model: it saves the seconds torch's import takes); ``auto`` and ``cuda`` import torch.

    Under pytest-xdist, ``auto``/``cuda`` spread workers over the GPUs: worker ``gwN`` takes
    ``cuda:(N mod device count)``; an explicit ``cuda:N`` is used as given. ``spread``: this is
    the xdist controller (only the note changes).
    """
    wrong = device_problem(requested)
    if wrong:
        raise RunSpecError(wrong)
    if requested == "cpu":
        return DeviceChoice("cpu")
    import torch

    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    if requested == "auto" and not available:
        return DeviceChoice("cpu", "CUDA not found, fell back to CPU")
    if not available:
        raise RunSpecError(f"CUDA is not available here (torch {torch.__version__}); use cpu or auto")
    if ":" in requested:
        index = int(requested.split(":", 1)[1])
        if index >= count:
            raise RunSpecError(
                f"there {'is' if count == 1 else 'are'} only {count} CUDA device"
                f"{'s' if count != 1 else ''} here (cuda:0..cuda:{count - 1})"
            )
        return DeviceChoice(requested)
    index = 0
    if worker and worker.startswith("gw") and worker[2:].isdigit():
        index = int(worker[2:]) % count
    note = "auto: CUDA found" if requested == "auto" else ""
    if spread and count > 1:  # the xdist controller: say how workers will pick their GPU
        note = (note + "; " if note else "") + f"xdist worker gwN uses cuda:(N mod {count})"
    if worker:
        note = (note + "; " if note else "") + f"xdist worker {worker} -> cuda:{index}"
    return DeviceChoice(f"cuda:{index}", note)


def torch_dtype(name: str) -> torch.dtype:
    """``"float16"`` -> ``torch.float16`` (imports torch)."""
    wrong = dtype_problem(name)
    if wrong:
        raise RunSpecError(f"dtype {name!r}: {wrong}")
    import torch

    dtype: torch.dtype = getattr(torch, name)
    return dtype


def dtype_name(dtype: object) -> str:
    """``torch.float16`` or ``"float16"`` -> ``"float16"`` (as records and fingerprints write it)."""
    return str(dtype).replace("torch.", "")


def _default_steps(pipeline: LoadedPipeline) -> int | None:
    """The pipeline's default step count (its checkpoint's), None when it does not say one."""
    steps = dict(pipeline.run_defaults).get("steps")
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else None


def run_meta(pipeline: LoadedPipeline, image: object, spec: RunSpec) -> dict[str, Any]:
    """What a record remembers about the run that made it (``AttentionRecord.meta``; the baseline
    fingerprint is read from it): the model (with its repo id and commit when it came from the Hugging Face
    hub cache), its config, the image and ``spec``'s settings."""
    import diffusers
    import torch
    import transformers

    from .. import __version__
    from ..model.files import weights_digest
    from ..model.hub import provenance

    return {
        "model": str(pipeline.checkpoint.path),
        **provenance(pipeline.checkpoint.path),  # repo_id and commit of a Hugging Face hub snapshot
        "weights": weights_digest(pipeline.checkpoint.path),
        "config": dict(pipeline.transformer.config),
        "image": str(image) if not hasattr(image, "size") else getattr(image, "filename", "") or "<PIL image>",
        "num_parts": spec.num_parts,
        "steps": spec.steps,
        "default_steps": _default_steps(pipeline),  # the step count thresholds mean (checks.stability)
        "num_tokens": spec.num_tokens,
        "guidance_scale": spec.guidance_scale,
        "seed": spec.seed,
        "dtype": spec.dtype,
        "device": spec.device,
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "partattn_checks": __version__,
        },
    }
