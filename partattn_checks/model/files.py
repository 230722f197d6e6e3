"""Cheap checks of the files partattn reads, before anything heavy reads them.

Standard library only (json, struct): no torch, no safetensors, no numpy, so the pytest plugin can
check a checkpoint folder at session start in milliseconds, and the loaders can refuse a damaged
file with a message that names it and says the fix instead of a raw ``SafetensorError``.

- :func:`read_safetensors_header`: the header of one ``.safetensors`` file, validated against the
  file's length (a truncated download is caught here, without reading any tensor data).
- :func:`checkpoint_problems`: a pre-flight of a checkpoint folder in the release layout; returns
  one stand-alone sentence per problem (empty list: the folder looks loadable).

The error classes live here and are re-exported where users meet them:
``CheckpointError`` (``partattn_checks.model.loading``), ``RecordError``
(``partattn_checks.capture.record``), ``ImageError`` (``partattn_checks.model.pipeline``).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from ..errors import PartattnError

__all__ = [
    "CheckpointError",
    "RecordError",
    "ImageError",
    "ImageNotFoundError",
    "ModelError",
    "ModelTypeError",
    "read_safetensors_header",
    "checkpoint_problems",
    "read_json",
    "check_component_classes",
    "find_weights",
    "format_problems",
    "ALLOWED_CLASSES",
    "REQUIRED_FILES",
    "WEIGHT_FILES",
    "PICKLE_SUFFIXES",
    "RUN_DEFAULTS",
    "read_run_defaults",
]


class CheckpointError(PartattnError, ValueError):
    """A checkpoint folder that cannot be loaded; the message names the path and the fix."""

    fix = "re-download or re-export the checkpoint"


class RecordError(PartattnError, ValueError):
    """An attention record that cannot be read or built, or lacks a step or layer asked of it; the
    message names the file or entry and the fix."""

    fix = "re-save the record with partattn run"


class ImageError(PartattnError, ValueError):
    """An input image that cannot be used; the message names the image and the fix."""


class ImageNotFoundError(ImageError, FileNotFoundError):
    """An input image that is not there (also a ``FileNotFoundError``)."""


class ModelError(PartattnError, ValueError):
    """The model or its pipeline given a value it cannot use (a part count, a device, a step count);
    the message names the value and the fix."""


class ModelTypeError(ModelError, TypeError):
    """A pipeline call with arguments that do not go together (one setting given twice, an unknown
    keyword); a ``TypeError`` as Python's own for a bad call."""


# ====================================================================== the release layout
#: model_index.json component -> class names we accept for it (the module path part is ignored).
ALLOWED_CLASSES = {
    "transformer": {"PartCrafterDiTModel"},
    "image_encoder_dinov2": {"Dinov2Model"},
    "feature_extractor_dinov2": {"BitImageProcessor", "BitImageProcessorFast"},
    "scheduler": {"RectifiedFlowScheduler", "FlowMatchEulerDiscreteScheduler"},
}
#: Component subfolder -> the JSON files loading reads from it.
REQUIRED_FILES = {
    "transformer": ["config.json"],
    "image_encoder_dinov2": ["config.json"],
    "feature_extractor_dinov2": ["preprocessor_config.json"],
    "scheduler": ["scheduler_config.json"],
}
#: Component subfolder -> stem of its weights (``<stem>.safetensors`` or a sharded index).
WEIGHT_FILES = {"transformer": "diffusion_pytorch_model", "image_encoder_dinov2": "model"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
RELEASE = "for the release: a local copy of wgsxm/PartCrafter"
#: Run settings of a checkpoint without a ``partattn.json`` (upstream PartCrafter's defaults). The only
#: place these numbers live: everything else reads a checkpoint's defaults through
#: :func:`read_run_defaults` (or a loaded pipeline's ``run_defaults``).
RUN_DEFAULTS = {"num_tokens": 1024, "steps": 50, "guidance_scale": 7.0}

# ====================================================================== safetensors headers
#: safetensors refuses headers larger than this (its MAX_HEADER_SIZE).
MAX_HEADER_BYTES = 100_000_000
#: Bytes per element of the whole-byte safetensors dtypes; other (sub-byte, future) dtypes are not
#: size-checked here: safetensors itself judges them when the tensors are read.
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "F8_E4M3FNUZ": 1,
    "F8_E5M2FNUZ": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}


def read_safetensors_header(path: str | os.PathLike, *, error: type[ValueError] = CheckpointError) -> dict:
    """Read and validate the header of a ``.safetensors`` file; return it as a dict.

    The file must start with an 8-byte little-endian header length and a JSON object whose
    entries (other than ``__metadata__``, a str -> str object) each have ``dtype``, ``shape`` and
    ``data_offsets``; the offsets must tile the data area without gaps or overlaps, and the file
    must be exactly ``8 + header length + largest end offset`` bytes long: a shorter file is
    reported as truncated. No tensor data is read. The returned dict is the parsed header as
    stored (``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}``).

    Raises ``error`` (default :class:`CheckpointError`; the record loader passes
    :class:`RecordError`) with a message naming the file, what is wrong and the fix (``error.fix``).
    """
    path = Path(path)
    fix = getattr(error, "fix", CheckpointError.fix)

    def fail(what: str) -> ValueError:
        return error(f"{path}: {what}; {fix}.")

    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise fail(
                    "empty file, not a safetensors file"
                    if size == 0
                    else f"not a safetensors file: only {size:,} bytes (a safetensors file starts with an "
                    f"8-byte header length)"
                )
            (length,) = struct.unpack("<Q", prefix)
            raw = fh.read(min(length, MAX_HEADER_BYTES))
    except FileNotFoundError:
        raise fail("file not found") from None
    except IsADirectoryError:
        raise fail("is a folder, not a safetensors file") from None
    except OSError as err:
        raise fail(f"cannot be read ({err.strerror or err})") from None

    looks_json = raw.lstrip()[:1] == b"{"
    if length == 0 or length > MAX_HEADER_BYTES or not looks_json:
        raise fail(
            f"not a safetensors file: the first 8 bytes give a header length of {length:,} bytes"
            + ("" if looks_json else " and no JSON header follows")
        )
    if 8 + length > size:
        raise fail(f"truncated: {size:,} bytes, the header alone promises {8 + length:,}")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise fail(f"corrupt safetensors header: not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise fail(f"not a safetensors file: the header is a JSON {type(header).__name__}, not an object")

    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise fail("corrupt safetensors header: __metadata__ is not an object of strings")
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        missing = [key for key in ("dtype", "shape", "data_offsets") if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise fail(f"corrupt safetensors header: tensor {name!r} has no {'/'.join(missing)}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str):
            raise fail(f"corrupt safetensors header: tensor {name!r} has dtype {dtype!r}, not a name")
        if not isinstance(shape, list) or not all(_count(d) for d in shape):
            raise fail(f"corrupt safetensors header: tensor {name!r} has shape {shape!r}, not a list of sizes")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(_count(o) for o in offsets)
            and offsets[0] <= offsets[1]
        ):
            raise fail(
                f"corrupt safetensors header: tensor {name!r} has data_offsets {offsets!r}, "
                f"not [begin, end] with begin <= end"
            )
        if dtype in DTYPE_BYTES:
            numel = 1
            for d in shape:
                numel *= d
            if numel * DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
                raise fail(
                    f"corrupt safetensors header: tensor {name!r} ({dtype}, shape {shape}) needs "
                    f"{numel * DTYPE_BYTES[dtype]:,} bytes but its data_offsets span "
                    f"{offsets[1] - offsets[0]:,}"
                )
        spans.append((offsets[0], offsets[1], name))

    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise fail(
                f"corrupt safetensors header: tensor {name!r} starts at byte {begin:,} of the data, "
                f"expected {end:,} (gap or overlap)"
            )
        end = stop
    promised = 8 + length + end
    if size < promised:
        raise fail(f"truncated: {size:,} bytes, the header promises {promised:,}")
    if size > promised:
        raise fail(
            f"corrupt: {size - promised:,} bytes after the last tensor ({size:,} bytes, the header "
            f"accounts for {promised:,})"
        )
    return header


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# ====================================================================== checkpoint folders
def read_json(path: str | os.PathLike, *, error: type[ValueError] = CheckpointError):
    """Parse a JSON file of a checkpoint; missing or invalid JSON raises ``error`` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: file not found; the checkpoint folder is incomplete (re-download it).") from None
    except IsADirectoryError:
        raise error(
            f"{path}: is a folder, not a JSON file; the checkpoint folder is damaged (re-download it)."
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{path}: not valid JSON ({err}); re-download or fix the file.") from None
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror or err}); check its permissions.") from None


def read_run_defaults(folder: str | os.PathLike) -> dict:
    """A checkpoint's default run settings: :data:`RUN_DEFAULTS` updated with the ``run_defaults`` of
    its ``partattn.json`` when there is one. Standard library only (the plugin's header reads it)."""
    defaults = dict(RUN_DEFAULTS)
    extra = Path(folder).expanduser() / "partattn.json"
    if extra.is_file():
        defaults.update(_read_object(extra).get("run_defaults", {}))
    return defaults


def _read_object(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path}: holds a JSON {type(data).__name__}, not an object; the file is damaged (re-download it)."
        )
    return data


def check_component_classes(root: str | os.PathLike, model_index: dict) -> None:
    """Refuse a model_index.json that lacks a component or names a class we do not know for it."""
    where = Path(root) / "model_index.json"
    for component, allowed in ALLOWED_CLASSES.items():
        entry = model_index.get(component)
        if entry is None:
            raise CheckpointError(
                f"{where}: no '{component}' entry; a PartCrafter checkpoint needs "
                f"{sorted(REQUIRED_FILES)} (re-download it)."
            )
        name = entry[-1] if isinstance(entry, (list, tuple)) and entry else str(entry)
        if name not in allowed:
            raise CheckpointError(
                f"{where}: unknown class '{name}' for '{component}' (known: {', '.join(sorted(allowed))}); point "
                f"the loader at a PartCrafter checkpoint, or supply your own pipeline through the "
                f"pytest_partattn_load_pipeline hook."
            )


def find_weights(folder: str | os.PathLike, stem: str) -> list[Path]:
    """The safetensors file(s) of a component (``<stem>.safetensors`` or the shards of
    ``<stem>.safetensors.index.json``); refuse pickle formats with the fix. Headers are not read."""
    folder = Path(folder)
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        weight_map = _read_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no weight_map (the shard list) in it; re-download the checkpoint.")
        shards = sorted({str(s) for s in weight_map.values()})
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointError(f"{index}: shard(s) missing: {', '.join(missing)}; re-download the checkpoint.")
        return [folder / s for s in shards]
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{folder}: refusing pickle-format weights ({', '.join(pickles)}): they can run arbitrary code. "
            f"Convert them to {stem}.safetensors (safetensors.torch.save_file) and try again."
        )
    raise CheckpointError(f"{folder}: no weights found (expected {single.name}); re-download the checkpoint.")


def checkpoint_problems(folder: str | os.PathLike) -> list[str]:
    """Everything wrong with a checkpoint folder that ``load_checkpoint`` would trip over, found
    without torch and without reading any weights (milliseconds, even for the 3.7 GB release).

    Checks the release layout: ``model_index.json`` (valid JSON, one known class per component),
    each component's config JSON, the ``transformer`` and ``image_encoder_dinov2`` weights
    (safetensors, single or sharded; pickles refused; every header validated against the file's
    length, so truncated downloads show up) and the optional ``partattn.json``. Returns one
    stand-alone sentence per problem, each naming the file and the fix; ``[]`` when the folder
    looks loadable. Problems that only loading can see (weights that do not fit the config) are
    not found here.
    """
    root = Path(folder).expanduser()
    if not root.exists():
        return [f"{root}: checkpoint folder not found; pass the folder that holds model_index.json ({RELEASE})."]
    if not root.is_dir():
        return [f"{root}: is a file, not a checkpoint folder; pass the folder that holds model_index.json ({RELEASE})."]
    try:
        empty = not any(root.iterdir())
    except OSError as err:
        return [f"{root}: cannot list the checkpoint folder ({err.strerror or err}); check its permissions."]
    if empty:
        return [f"{root}: the checkpoint folder is empty; download or copy the checkpoint into it ({RELEASE})."]

    problems: list[str] = []

    def collect(check, *args):
        try:
            return check(*args)
        except CheckpointError as err:
            problems.append(str(err))
            return None

    model_index = collect(_read_object, root / "model_index.json")
    if model_index is not None:
        collect(check_component_classes, root, model_index)
    for component, names in REQUIRED_FILES.items():
        sub = root / component
        if not sub.is_dir():
            problems.append(f"{sub}: subfolder missing; the checkpoint folder is incomplete (re-download it).")
            continue
        for name in names:
            if not (sub / name).is_file():
                problems.append(f"{sub / name}: file missing; the checkpoint folder is incomplete (re-download it).")
            else:
                collect(_read_object, sub / name)
        if component in WEIGHT_FILES:
            for weights in collect(find_weights, sub, WEIGHT_FILES[component]) or ():
                collect(read_safetensors_header, weights)
    extra = root / "partattn.json"
    if extra.exists():
        settings = collect(_read_object, extra)
        if settings is not None and not isinstance(settings.get("run_defaults", {}), dict):
            problems.append(
                f"{extra}: run_defaults is not an object of settings (num_tokens, steps, "
                f"guidance_scale); fix the file or delete it to use the built-in defaults."
            )
    return problems


def format_problems(problems: list[str], limit: int = 5) -> str:
    """Problems as one line: the first ``limit`` sentences, then how many more there are."""
    text = " ".join(problems[:limit])
    if len(problems) > limit:
        text += f" ({len(problems) - limit} more problem(s): run partattn_checks.model.files.checkpoint_problems.)"
    return text


_DIGESTS: dict[tuple[tuple[str, int, int], ...], str] = {}


def weights_digest(folder: str | os.PathLike) -> str | None:
    """A short SHA-256 of a checkpoint's weight files (the transformer's and the image encoder's, in
    that order): the same weights under another path give the same digest. None when the folder holds
    no readable weights. Cached per process by the files' paths, sizes and modification times (the
    release's 3.7 GB read once: seconds)."""
    import hashlib

    try:
        files = [f for component, stem in WEIGHT_FILES.items() for f in find_weights(Path(folder) / component, stem)]
        key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    except (CheckpointError, OSError):
        return None
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        try:
            for f in files:
                with open(f, "rb") as fh:
                    while chunk := fh.read(1 << 22):
                        digest.update(chunk)
        except OSError:
            return None
        _DIGESTS[key] = digest.hexdigest()[:16]
    return _DIGESTS[key]
