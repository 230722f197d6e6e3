"""Loading tiny checkpoints in the release layout: round trip, bit-for-bit regeneration, clear errors."""

from __future__ import annotations

import importlib.util
import json
import re
import runpy
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import FIXTURE_IMAGES, REPO, TINY_FIXTURE, tree_bytes, tree_size
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from partattn_checks.model.files import checkpoint_problems, read_safetensors_header
from partattn_checks.model.loading import CheckpointError, check_num_parts, load_checkpoint
from partattn_checks.model.pipeline import PartCrafterPipeline
from partattn_checks.model.tiny import TINY_TRANSFORMER, build_transformer, write_tiny_checkpoint
from partattn_checks.model.transformer import PartCrafterDiTModel

SCRIPT = REPO / "scripts" / "make_tiny_checkpoint.py"
TRANSFORMER_WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"
ENCODER_WEIGHTS = "image_encoder_dinov2/model.safetensors"
IMAGE = FIXTURE_IMAGES / "np2_circle_square.png"


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """A tiny checkpoint freshly written by tiny.py (seed 0); never modified by tests."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("written") / "tiny", seed=0)


@pytest.fixture
def ckpt(written, tmp_path) -> Path:
    """A private copy of the written checkpoint that a test may break."""
    return Path(shutil.copytree(written, tmp_path / "ckpt"))


@pytest.fixture(scope="module")
def loaded(written):
    return load_checkpoint(written)


def load_script():
    spec = importlib.util.spec_from_file_location("make_tiny_checkpoint", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def raises_naming(path: Path, *fix_phrases: str, call):
    """``call()`` raises CheckpointError whose message names ``path`` and every fix phrase."""
    with pytest.raises(CheckpointError) as info:
        call()
    message = str(info.value)
    assert str(path) in message, f"message does not name {path}: {message}"
    for phrase in fix_phrases:
        assert phrase in message, f"message lacks {phrase!r}: {message}"
    return message


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_casts_fp16_weights_to_requested_dtype(written, dtype):
    checkpoint = load_checkpoint(written, dtype=dtype)
    source = build_transformer(seed=0).state_dict()  # what tiny.py wrote, before fp16
    state = checkpoint.transformer.state_dict()
    assert state.keys() == source.keys()
    for name, tensor in state.items():
        assert tensor.dtype == dtype and tensor.device.type == "cpu", name
        assert torch.equal(tensor, source[name].to(torch.float16).to(dtype)), name
    from partattn_checks.model.encoder_names import to_release_names

    on_disk = load_file(str(written / ENCODER_WEIGHTS))
    encoder_state = to_release_names(checkpoint.image_encoder.state_dict())  # the names on disk
    assert encoder_state.keys() == on_disk.keys()
    for name, tensor in encoder_state.items():
        assert on_disk[name].dtype == torch.float16, f"{name} is not fp16 on disk"
        assert tensor.dtype == dtype and torch.equal(tensor, on_disk[name].to(dtype)), name


def test_round_trip_configs_and_side_files(written, loaded):
    assert {k: loaded.transformer.config[k] for k in TINY_TRANSFORMER} == TINY_TRANSFORMER
    assert not loaded.transformer.training and not loaded.image_encoder.training
    disk_encoder = json.loads((written / "image_encoder_dinov2/config.json").read_text())
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size"):
        assert getattr(loaded.image_encoder.config, key) == disk_encoder[key]
    disk_pre = json.loads((written / "feature_extractor_dinov2/preprocessor_config.json").read_text())
    assert loaded.feature_extractor.crop_size == disk_pre["crop_size"]
    assert loaded.feature_extractor.size == disk_pre["size"]
    assert loaded.scheduler_config == json.loads((written / "scheduler/scheduler_config.json").read_text())
    assert loaded.model_index == json.loads((written / "model_index.json").read_text())
    assert loaded.run_defaults == json.loads((written / "partattn.json").read_text())["run_defaults"]
    assert loaded.path == written


def test_vae_folder_absent_is_fine_and_present_is_never_read(written, ckpt):
    assert not (written / "vae").exists()
    assert load_checkpoint(written).transformer is not None
    sentinel = ckpt.parent / "vae-was-unpickled"
    (ckpt / "vae").mkdir()
    torch.save({"evil": OpensFileWhenUnpickled(sentinel)}, ckpt / "vae" / "diffusion_pytorch_model.bin")
    load_checkpoint(ckpt)
    assert not sentinel.exists()


# ------------------------------------------------------------------------------- determinism and the committed fixture


def test_same_seed_regenerates_bit_for_bit(written, tmp_path):
    again = write_tiny_checkpoint(tmp_path / "again", seed=0)
    assert tree_bytes(again) == tree_bytes(written)


def test_different_seed_gives_different_weights(written, tmp_path):
    other = tree_bytes(write_tiny_checkpoint(tmp_path / "other", seed=1))
    mine = tree_bytes(written)
    assert other.keys() == mine.keys()
    for weights in (TRANSFORMER_WEIGHTS, ENCODER_WEIGHTS):
        assert other[weights] != mine[weights], weights
    assert other["transformer/config.json"] == mine["transformer/config.json"]


def test_committed_fixture_is_seed_0_byte_for_byte(written):
    committed, fresh = tree_bytes(TINY_FIXTURE), tree_bytes(written)
    assert committed.keys() == fresh.keys()
    stale = [name for name in fresh if committed[name] != fresh[name]]
    assert not stale, f"{TINY_FIXTURE} is stale in {stale}; run: python scripts/make_tiny_checkpoint.py"


def test_tiny_checkpoint_is_small():
    size = tree_size(TINY_FIXTURE)
    assert 0 < size < 5_000_000, f"{TINY_FIXTURE} is {size} bytes"


def test_script_check_passes_on_committed_fixture(monkeypatch, capsys):
    """``python scripts/make_tiny_checkpoint.py --check``, as docs/model.md gives it: the script run as
    ``__main__`` in this process (``sys.argv`` as python sets it; its exit status from SystemExit)."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--check"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    said = capsys.readouterr()
    assert done.value.code == 0, said.err
    assert "up to date" in said.out


def test_script_check_detects_and_regenerate_fixes(ckpt, capsys):
    script = load_script()
    weights = ckpt / TRANSFORMER_WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    (ckpt / "stray.txt").write_text("x")
    assert script.main(["--check", "--out", str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert f"differs: {weights}" in err and f"not made by this script: {ckpt / 'stray.txt'}" in err
    assert "make_tiny_checkpoint.py --out" in err
    assert script.main(["--out", str(ckpt), "--seed", "0"]) == 0
    assert script.main(["--check", "--out", str(ckpt)]) == 0
    assert script.main(["--check", "--out", str(ckpt), "--seed", "1"]) == 1


# ------------------------------------------------------------------------------------ errors name the path and the fix


def test_missing_folder(tmp_path):
    raises_naming(
        tmp_path / "nope", "model_index.json", "wgsxm/PartCrafter", call=lambda: load_checkpoint(tmp_path / "nope")
    )


def test_missing_model_index(ckpt):
    (ckpt / "model_index.json").unlink()
    raises_naming(ckpt / "model_index.json", "not found", "re-download", call=lambda: load_checkpoint(ckpt))


def test_invalid_json(ckpt):
    (ckpt / "scheduler/scheduler_config.json").write_text("{not json")
    raises_naming(ckpt / "scheduler/scheduler_config.json", "not valid JSON", call=lambda: load_checkpoint(ckpt))


@pytest.mark.parametrize("component", ["transformer", "image_encoder_dinov2", "feature_extractor_dinov2", "scheduler"])
def test_missing_subfolder(ckpt, component):
    shutil.rmtree(ckpt / component)
    raises_naming(ckpt / component, "subfolder missing", "re-download", call=lambda: load_checkpoint(ckpt))


@pytest.mark.parametrize(
    "name",
    [
        "transformer/config.json",
        "image_encoder_dinov2/config.json",
        "feature_extractor_dinov2/preprocessor_config.json",
        "scheduler/scheduler_config.json",
    ],
)
def test_missing_config_file(ckpt, name):
    (ckpt / name).unlink()
    raises_naming(ckpt / name, "missing", "re-download", call=lambda: load_checkpoint(ckpt))


@pytest.mark.parametrize("name", [TRANSFORMER_WEIGHTS, ENCODER_WEIGHTS])
def test_missing_weights(ckpt, name):
    (ckpt / name).unlink()
    raises_naming(
        (ckpt / name).parent, "no weights found", Path(name).name, "re-download", call=lambda: load_checkpoint(ckpt)
    )


def test_missing_shard_of_sharded_weights(ckpt):
    folder = ckpt / "transformer"
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"proj_in.weight": "diffusion_pytorch_model-00001-of-00002.safetensors"}})
    )
    raises_naming(
        folder / "diffusion_pytorch_model.safetensors.index.json",
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "re-download",
        call=lambda: load_checkpoint(ckpt),
    )


class OpensFileWhenUnpickled:
    """Unpickling this creates ``path``: proof that nobody unpickled it if the file stays absent."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_weights_are_refused_without_loading(ckpt, monkeypatch):
    folder = ckpt / "transformer"
    state = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    sentinel = ckpt.parent / "was-unpickled"
    torch.save({**state, "evil": OpensFileWhenUnpickled(sentinel)}, folder / "diffusion_pytorch_model.bin")

    def no_torch_load(*args, **kwargs):
        raise AssertionError("the loader called torch.load on a pickle file")

    monkeypatch.setattr(torch, "load", no_torch_load)
    raises_naming(
        folder,
        "refusing pickle-format weights",
        "diffusion_pytorch_model.bin",
        "Convert them to diffusion_pytorch_model.safetensors",
        call=lambda: load_checkpoint(ckpt),
    )
    assert not sentinel.exists()


def test_unknown_class_name_is_refused_and_never_imported(ckpt):
    edit_json(ckpt / "model_index.json", transformer=["evil_pkg_partattn.models", "EvilModel"])
    message = raises_naming(
        ckpt / "model_index.json",
        "unknown class 'EvilModel'",
        "PartCrafterDiTModel",
        "point the loader at a PartCrafter checkpoint",
        call=lambda: load_checkpoint(ckpt),
    )
    assert "'transformer'" in message
    assert not any(name.startswith("evil_pkg_partattn") for name in sys.modules)


def test_other_module_path_with_known_class_name_is_accepted(ckpt):
    """Class names are matched by class name; the module path in model_index.json is ignored."""
    edit_json(ckpt / "model_index.json", transformer=["some.fork.models.transformer", "PartCrafterDiTModel"])
    assert isinstance(load_checkpoint(ckpt).transformer, PartCrafterDiTModel)


def test_missing_component_entry(ckpt):
    index = json.loads((ckpt / "model_index.json").read_text())
    del index["scheduler"]
    (ckpt / "model_index.json").write_text(json.dumps(index))
    raises_naming(ckpt / "model_index.json", "no 'scheduler' entry", call=lambda: load_checkpoint(ckpt))


def first_mismatches(weights: Path, model: torch.nn.Module, count: int) -> list[str]:
    with safe_open(str(weights), "pt") as f:
        disk = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    return [n for n, t in model.state_dict().items() if n in disk and disk[n] != tuple(t.shape)][:count]


def test_config_weight_shape_mismatch_lists_first_offending_keys(ckpt):
    folder = ckpt / "transformer"
    edit_json(folder / "config.json", width=32)
    with torch.device("meta"):
        narrower = PartCrafterDiTModel(**{**TINY_TRANSFORMER, "width": 32})
    offenders = first_mismatches(folder / "diffusion_pytorch_model.safetensors", narrower, 6)
    assert len(offenders) == 6
    message = raises_naming(folder, "shape mismatch", "re-download", call=lambda: load_checkpoint(ckpt))
    for name in offenders[:5]:
        assert f"{name}: checkpoint" in message, name
    assert f"{offenders[5]}:" not in message, "only the first offending keys are listed"
    assert " ..." in message
    assert re.search(r"time_proj\.linear_1\.weight: checkpoint \(256, 64\) vs config \(128, 32\)", message)


def test_missing_tensor_is_named(ckpt):
    weights = ckpt / TRANSFORMER_WEIGHTS
    state = load_file(str(weights))
    del state["proj_out.bias"]
    save_file(state, str(weights))
    raises_naming(ckpt / "transformer", "missing keys: proj_out.bias", call=lambda: load_checkpoint(ckpt))


# -------------------------------------------------------------------------------- part counts the checkpoint can serve


def test_check_num_parts_limits(loaded):
    config = loaded.transformer.config
    limit = config.max_num_parts
    check_num_parts(config, limit // 2, cfg=True)
    check_num_parts(config, limit, cfg=False)
    with pytest.raises(
        ValueError,
        match=rf"num_parts={limit // 2 + 1} needs {limit + 2} .*classifier-free guidance"
        rf".*max_num_parts={limit}: use at most {limit // 2} parts",
    ):
        check_num_parts(config, limit // 2 + 1, cfg=True)
    with pytest.raises(ValueError, match=rf"max_num_parts={limit}: use at most {limit} parts"):
        check_num_parts(config, limit + 1, cfg=False)
    with pytest.raises(ValueError, match="at least 1"):
        check_num_parts(config, 0, cfg=False)


def test_pipeline_refuses_part_counts_the_checkpoint_cannot_serve(loaded):
    pipe = PartCrafterPipeline(loaded)
    limit = loaded.transformer.config.max_num_parts
    with pytest.raises(ValueError, match=f"use at most {limit // 2} parts"):
        pipe(IMAGE, limit // 2 + 1, steps=1)  # default guidance 7: CFG doubles the batch
    with pytest.raises(ValueError, match=f"use at most {limit} parts"):
        pipe(IMAGE, limit + 1, steps=1, guidance_scale=1.0)
    result = pipe(IMAGE, limit // 2 + 1, steps=1, num_tokens=4, guidance_scale=1.0)  # fine without CFG
    assert result.latents.shape == (limit // 2 + 1, 4, loaded.transformer.config.in_channels)


# ------------------------------------------------------------------- damaged weights: files.py, no raw SafetensorError


def write_safetensors(path: Path, header, data: bytes = b"", *, length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def test_checkpoint_error_lives_in_files_and_is_a_value_error():
    from partattn_checks.model import files, loading

    assert loading.CheckpointError is files.CheckpointError and issubclass(CheckpointError, ValueError)


def test_read_safetensors_header_matches_safetensors(written):
    weights = written / TRANSFORMER_WEIGHTS
    header = read_safetensors_header(weights)
    with safe_open(str(weights), "pt") as f:
        assert set(header) - {"__metadata__"} == set(f.keys())
        for name in f.keys():
            assert tuple(header[name]["shape"]) == tuple(f.get_slice(name).get_shape())


@pytest.mark.parametrize("name", [TRANSFORMER_WEIGHTS, ENCODER_WEIGHTS])
def test_truncated_weights_are_named_with_sizes_and_the_fix(ckpt, name):
    weights = ckpt / name
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])  # an interrupted download
    message = raises_naming(
        weights,
        f"truncated: {size // 2:,} bytes",
        f"the header promises {size:,}",
        "re-download or re-export the checkpoint",
        call=lambda: load_checkpoint(ckpt),
    )
    assert "SafetensorError" not in message
    assert checkpoint_problems(ckpt) == [message]


@pytest.mark.parametrize(
    "content, phrase",
    [
        (b"", "empty file"),
        (b"PK\x03\x04\x14\x00\x00\x00 a torch.save zip", "not a safetensors file"),
        (b"\x80\x02}q\x00(X\x04\x00\x00\x00a pickle", "not a safetensors file"),
        (struct.pack("<Q", 7) + b"[1,2,3]", "not a safetensors file"),  # JSON, but not an object
    ],
)
def test_foreign_files_named_safetensors_are_refused(ckpt, content, phrase):
    weights = ckpt / TRANSFORMER_WEIGHTS
    weights.write_bytes(content)
    raises_naming(weights, phrase, "re-download", call=lambda: load_checkpoint(ckpt))


@pytest.mark.parametrize(
    "header, data, phrase",
    [
        ({"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "tensor 'w' has no data_offsets"),
        (
            {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 6]}},
            b"\0" * 6,
            "needs 8 bytes but its data_offsets span 6",
        ),
        (
            {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
            b"\0" * 12,
            "corrupt: 4 bytes after the last tensor",
        ),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "gap or overlap"),
        ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "not a list of sizes"),
        ({"__metadata__": {"n": 1}}, b"", "__metadata__ is not an object of strings"),
        (b"{not json", b"", "not valid JSON"),
    ],
)
def test_corrupt_headers_are_named(tmp_path, header, data, phrase):
    path = write_safetensors(tmp_path / "w.safetensors", header, data)
    with pytest.raises(CheckpointError) as info:
        read_safetensors_header(path)
    assert str(path) in str(info.value) and phrase in str(info.value), str(info.value)


def test_header_length_beyond_the_file_is_truncation(tmp_path):
    path = write_safetensors(tmp_path / "w.safetensors", b'{"w": {"dtype": "F32"', length=500)
    with pytest.raises(CheckpointError, match=r"truncated: 29 bytes, the header alone promises 508"):
        read_safetensors_header(path)


def test_what_safetensors_still_refuses_is_wrapped(ckpt):
    """A header this project cannot judge (an unknown dtype) passes the pre-flight; safetensors refuses
    it on load, and the loader re-raises that as a CheckpointError naming the file."""
    from safetensors import SafetensorError

    weights = ckpt / TRANSFORMER_WEIGHTS
    header = read_safetensors_header(weights)
    raw = weights.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    first = next(name for name in header if name != "__metadata__")
    header[first]["dtype"] = "Q99"
    write_safetensors(weights, header, raw[8 + length :])
    assert checkpoint_problems(ckpt) == []
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ckpt)
    assert not isinstance(info.value, SafetensorError)
    message = str(info.value)
    assert str(weights) in message and "cannot be read as safetensors" in message and "re-download" in message


# ---------------------------------------------------------------------- checkpoint_problems: the torch-free pre-flight


def test_checkpoint_problems_of_good_checkpoints(written):
    from partattn_checks import EMBEDDED_MODEL

    assert checkpoint_problems(written) == []
    assert checkpoint_problems(TINY_FIXTURE) == []
    assert checkpoint_problems(EMBEDDED_MODEL) == []


def test_checkpoint_problems_lists_every_problem_as_a_sentence(ckpt):
    shutil.rmtree(ckpt / "scheduler")
    (ckpt / "transformer" / "config.json").write_text("{broken")
    truncated = ckpt / ENCODER_WEIGHTS
    truncated.write_bytes(truncated.read_bytes()[:100])
    (ckpt / "partattn.json").write_text(json.dumps({"run_defaults": [1, 2]}))
    problems = checkpoint_problems(ckpt)
    named = [ckpt / "transformer" / "config.json", truncated, ckpt / "scheduler", ckpt / "partattn.json"]
    assert len(problems) == len(named), problems
    for problem, path in zip(problems, named, strict=True):  # layout order, each a sentence that starts with its path
        assert problem.startswith(f"{path}: ") and problem.endswith("."), problem
    message = raises_naming(truncated, "truncated", call=lambda: load_checkpoint(ckpt))
    assert all(problem in message for problem in problems)  # load names them all, not only the first


def test_checkpoint_problems_of_missing_empty_and_file(tmp_path):
    assert checkpoint_problems(tmp_path / "nope") == [
        f"{tmp_path / 'nope'}: checkpoint folder not found; pass the folder that holds model_index.json "
        f"(for the release: a local copy of wgsxm/PartCrafter)."
    ]
    (tmp_path / "empty").mkdir()
    [problem] = checkpoint_problems(tmp_path / "empty")
    assert problem.startswith(f"{tmp_path / 'empty'}: the checkpoint folder is empty")
    (tmp_path / "file").write_text("x")
    [problem] = checkpoint_problems(tmp_path / "file")
    assert "not a checkpoint folder" in problem


def test_checkpoint_problems_sees_pickles_missing_shards_and_classes(ckpt):
    edit_json(ckpt / "model_index.json", scheduler=["x", "EvilScheduler"])
    (ckpt / TRANSFORMER_WEIGHTS).rename(ckpt / "transformer" / "diffusion_pytorch_model.bin")
    (ckpt / ENCODER_WEIGHTS).unlink()
    (ckpt / "image_encoder_dinov2" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}})
    )
    problems = " ".join(checkpoint_problems(ckpt))
    assert "unknown class 'EvilScheduler'" in problems
    assert "refusing pickle-format weights (diffusion_pytorch_model.bin)" in problems
    assert "shard(s) missing: model-00001-of-00002.safetensors" in problems


def test_files_module_imports_nothing_heavy_and_is_fast(written):
    code = (
        "import sys, time\n"
        "from partattn_checks.model.files import checkpoint_problems\n"
        "start = time.perf_counter()\n"
        f"assert checkpoint_problems({str(written)!r}) == []\n"
        "elapsed = time.perf_counter() - start\n"
        "heavy = [m for m in ('torch', 'numpy', 'safetensors', 'PIL', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert elapsed < 0.5, elapsed\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_encoder_weights_are_written_with_release_names_and_load_under_either_naming(ckpt):
    from partattn_checks.model.encoder_names import RENAMES
    from partattn_checks.model.loading import load_image_encoder

    weights = ckpt / ENCODER_WEIGHTS
    on_disk = load_file(str(weights))
    # the names of released checkpoints (saved with transformers 4.x), whatever transformers wrote them
    assert any(".attention.attention.query." in k for k in on_disk)
    assert not any(".attention.q_proj." in k for k in on_disk)
    reference = load_image_encoder(ckpt / "image_encoder_dinov2", torch.float32).state_dict()
    renamed = {}
    for name, tensor in on_disk.items():
        for release, current in RENAMES:
            name = name.replace(release, current)
        renamed[name] = tensor
    save_file(renamed, str(weights))  # as transformers >= 5.18 would have saved it
    other = load_image_encoder(ckpt / "image_encoder_dinov2", torch.float32).state_dict()
    assert other.keys() == reference.keys()
    assert all(torch.equal(other[k], reference[k]) for k in reference)


# ---------------------------------------------------------------------------------------------- streamed loading


def plain_full_load(folder: Path, dtype: torch.dtype):
    """The loading this project did before streaming: every file read whole (``load_file``), cast,
    then assigned into modules built on the meta device. The reference for bit-identity."""
    from transformers import Dinov2Config, Dinov2Model

    from partattn_checks.model.encoder_names import to_model_names

    def state(path):
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(path)).items()}

    config = json.loads((folder / "transformer/config.json").read_text())
    with torch.device("meta"):
        transformer = PartCrafterDiTModel(**{k: v for k, v in config.items() if not k.startswith("_")})
        encoder = Dinov2Model(
            Dinov2Config.from_dict(json.loads((folder / "image_encoder_dinov2/config.json").read_text()))
        )
    transformer.load_state_dict(state(folder / TRANSFORMER_WEIGHTS), assign=True)
    encoder.load_state_dict(to_model_names(state(folder / ENCODER_WEIGHTS), encoder.state_dict()), assign=True)
    return transformer.eval(), encoder.eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_streamed_loading_is_bit_identical_to_a_plain_full_load(written, dtype):
    transformer, encoder = plain_full_load(written, dtype)
    pipe = PartCrafterPipeline.from_pretrained(written, dtype=dtype)
    for mine, reference in ((pipe.transformer, transformer), (pipe.image_encoder, encoder)):
        ours, theirs = mine.state_dict(), reference.state_dict()
        assert ours.keys() == theirs.keys()
        for name in theirs:
            assert ours[name].dtype == theirs[name].dtype and torch.equal(ours[name], theirs[name]), name
    # and so the same outputs: the encoder on the image, the transformer on one step's input
    pixels = pipe.preprocess(IMAGE).to(dtype)
    tokens = pipe.image_encoder(pixels).last_hidden_state
    assert torch.equal(tokens, encoder(pixels).last_hidden_state)
    latents = pipe.initial_latents(2, 8, seed=3)
    image_tokens = torch.cat([torch.zeros_like(tokens), tokens]).repeat_interleave(2, dim=0)
    args = (torch.cat([latents, latents]), torch.full((4,), 700.0, dtype=dtype), image_tokens)
    kwargs = {"attention_kwargs": {"num_parts": 2}}
    with torch.no_grad():
        assert torch.equal(pipe.transformer(*args, **kwargs).sample, transformer(*args, **kwargs).sample)


def test_streamed_loading_reads_shards_and_keeps_integer_tensors(ckpt):
    """A sharded transformer (index + two files) with an int64 tensor added: every tensor arrives, in
    the run dtype for floats and as stored for integers."""
    from partattn_checks.model.loading import read_state_dict

    folder = ckpt / "transformer"
    state = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    names = sorted(state)
    half = len(names) // 2
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    extra = {"counter": torch.arange(5, dtype=torch.int64)}
    save_file({k: state[k] for k in names[:half]} | extra, str(folder / "a.safetensors"))
    save_file({k: state[k] for k in names[half:]}, str(folder / "b.safetensors"))
    files = [folder / "a.safetensors", folder / "b.safetensors"]
    loaded = read_state_dict(files, torch.bfloat16)
    assert loaded.keys() == state.keys() | {"counter"}
    assert loaded["counter"].dtype == torch.int64 and torch.equal(loaded["counter"], extra["counter"])
    assert all(torch.equal(loaded[k], state[k].to(torch.bfloat16)) for k in names)


@pytest.fixture(scope="module")
def mid_checkpoint(tmp_path_factory):
    """A release-layout checkpoint of ~50 M parameters (written once; the loads below only read it)."""
    from partattn_checks.model.release import write_release_checkpoint
    from partattn_checks.model.tiny import TINY_DINOV2, TINY_PREPROCESSOR

    return write_release_checkpoint(
        tmp_path_factory.mktemp("release") / "mid",
        transformer_config={**TINY_TRANSFORMER, "width": 768, "num_attention_heads": 6, "num_layers": 6},
        encoder_config=TINY_DINOV2,
        preprocessor=TINY_PREPROCESSOR,
    )


#: Loads the checkpoint ``argv[1]`` in each dtype of ``argv[2:]``, one after the other, and prints the peak
#: RSS (VmHWM) before and after each load and the weights' bytes (JSON, by dtype). The first load runs in a
#: process that has done nothing but import, as a fresh one; before each later load the previous model is
#: freed, the allocator gives its pages back (malloc_trim) and the peak starts again from the RSS of the
#: moment (Linux >= 4.0: writing 5 to /proc/self/clear_refs), so that load is measured from its own start.
MEASURE_LOADS = """
import ctypes, gc, json, sys
from pathlib import Path
import torch
import transformers, diffusers, safetensors
from partattn_checks.model.loading import load_checkpoint
def hwm():
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) * 1024
from transformers import Dinov2Model  # import every lazy module before measuring
got = {}
for i, dtype in enumerate(sys.argv[2:]):
    if i:
        gc.collect()
        ctypes.CDLL(None).malloc_trim(0)
        Path('/proc/self/clear_refs').write_text('5')
    before = hwm()
    ckpt = load_checkpoint(sys.argv[1], dtype=getattr(torch, dtype))
    weights = sum(t.numel() * t.element_size() for m in (ckpt.transformer, ckpt.image_encoder)
                  for t in m.state_dict().values())
    got[dtype] = {'before': before, 'after': hwm(), 'weights': weights}
    del ckpt
print(json.dumps(got))
"""


@pytest.fixture(scope="module")
def load_peaks(mid_checkpoint) -> dict:
    """Peak RSS around loading ``mid_checkpoint`` in float32, then in bfloat16: one subprocess
    (``MEASURE_LOADS``) pays the ~10 s of imports once for both. float32 is measured exactly as in a
    fresh process of its own; bfloat16 from the RSS after float32's model is freed, which leaves out
    the few MB of one-time state a first load keeps (measured: 1.044x of the weights instead of
    1.085x in a fresh process), far from the 2x that a second copy would show."""
    command = [sys.executable, "-c", MEASURE_LOADS, str(mid_checkpoint), "float32", "bfloat16"]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc (Linux) to read peak RSS")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_loading_holds_no_second_copy_of_the_weights(load_peaks, dtype):
    """Peak RSS grows by about the weights in the run dtype while loading, not by the weights plus
    a full copy as stored (the old loader: fp16 copy + cast copy = 1.5x in float32, 2x in bfloat16).
    A checkpoint of ~50 M parameters makes the weights dominate everything else the load allocates."""
    got = load_peaks[dtype]
    grown = got["after"] - got["before"]
    assert got["weights"] > 150e6 if dtype == "float32" else got["weights"] > 75e6
    assert grown <= 1.2 * got["weights"], (grown / got["weights"], got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_reads_cross_tensor_and_chunk_boundaries_bit_identically(written, monkeypatch, dtype):
    """With a staging buffer far smaller than the tensors (and not a multiple of their rows), every
    tensor is filled over many reads; the result still equals casting a whole ``load_file``."""
    from partattn_checks.model import loading

    monkeypatch.setattr(loading, "CHUNK_BYTES", 200)
    path = written / TRANSFORMER_WEIGHTS
    reference = load_file(str(path))
    assert max(t.numel() * t.element_size() for t in reference.values()) > 50 * loading.CHUNK_BYTES
    streamed = loading.read_state_dict([path], dtype)
    assert streamed.keys() == reference.keys()
    for name, tensor in reference.items():
        assert streamed[name].dtype == dtype and torch.equal(streamed[name], tensor.to(dtype)), name
