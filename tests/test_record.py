"""AttentionRecord: validation, indexing, save/load."""

import json
import os

import pytest
import torch

from partattn_checks.capture.record import RECORD_SCHEMA_VERSION, SCALARS, AttentionRecord, RecordError

S, L, P, H, NK, Q = 3, 2, 2, 4, 9, 5
LAYERS = ["blocks.0.attn2", "blocks.1.attn2"]


def make_record(with_maps=True, **overrides) -> AttentionRecord:
    g = torch.Generator().manual_seed(0)
    kw = dict(
        steps=[0, 5, 10],
        timesteps=[1000.0, 900.0, 800.0],
        layers=list(LAYERS),
        layer_kinds=["global", "local"],
        num_parts=P,
        num_heads=H,
        num_patch_keys=NK,
        has_cls=True,
        patch_grid=(3, 3),
        entropy=torch.rand(S, L, P, H, generator=g),
        peak=torch.rand(S, L, P, H, generator=g),
        eff_keys=torch.rand(S, L, P, H, generator=g),
        cls_mass=torch.rand(S, L, P, H, generator=g),
        marginals=torch.softmax(torch.randn(S, L, P, H, NK, generator=g), -1),
        full_maps={
            (5, "blocks.1.attn2"): torch.softmax(torch.randn(P, H, Q, NK + 1, generator=g), -1),
            (0, "blocks.0.attn2"): torch.softmax(torch.randn(P, H, Q, NK + 1, generator=g), -1),
        }
        if with_maps
        else {},
        nonfinite=[{"step": 5, "layer": "blocks.1.attn2", "where": "attention"}],
        meta={"model": "tiny", "seed": 3, "versions": {"torch": torch.__version__}},
    )
    kw.update(overrides)
    return AttentionRecord(**kw)


def test_tensors_are_stored_fp16_on_cpu():
    r = make_record()
    for name in ("entropy", "peak", "eff_keys", "cls_mass", "marginals"):
        assert getattr(r, name).dtype == torch.float16
    assert all(t.dtype == torch.float16 for t in r.full_maps.values())
    assert list(r.full_maps) == [(0, "blocks.0.attn2"), (5, "blocks.1.attn2")]  # ordered by (step, layer)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(timesteps=[1.0, 2.0]), "timesteps has 2 entries but steps has 3"),
        (dict(steps=[0, 5, 5]), "strictly increasing"),
        (dict(layer_kinds=["global"]), "layer_kinds has 1 entries"),
        (dict(layer_kinds=["global", "cross"]), "unknown layer kind 'cross'"),
        (dict(patch_grid=(2, 2)), "patch_grid"),
        (dict(entropy=torch.rand(S, L, P, H + 1)), r"entropy has shape \(3, 2, 2, 5\), expected \(3, 2, 2, 4\)"),
        (dict(marginals=torch.rand(S, L, P, H, NK - 1)), "marginals has shape"),
        (dict(full_maps={(7, "blocks.0.attn2"): torch.rand(P, H, Q, NK + 1)}), "step 7"),
        (dict(full_maps={(0, "blocks.9.attn2"): torch.rand(P, H, Q, NK + 1)}), "blocks.9.attn2"),
        (dict(full_maps={(0, "blocks.0.attn2"): torch.rand(P, H, Q, NK)}), "keys incl. CLS"),
        (dict(steps=[], timesteps=[]), "at least one step"),
        (dict(peak=torch.ones(S, L, P, H, dtype=torch.int64)), "floating-point"),
    ],
)
def test_validation_errors(change, message):
    with pytest.raises(ValueError, match=message):
        make_record(**change)


def test_indexing_and_select():
    r = make_record()
    assert r.step_index(10) == 2 and r.layer_index("blocks.1.attn2") == 1 and r.layer_index(-1) == 1
    with pytest.raises(ValueError, match="step 3 was not recorded"):
        r.step_index(3)
    with pytest.raises(ValueError, match="layer 'blocks.7.attn2' was not recorded"):
        r.layer_index("blocks.7.attn2")
    sel = r.select(step=5, layer="blocks.0.attn2", head=2)
    assert sel["entropy"].shape == (P,) and sel["marginals"].shape == (P, NK)
    assert torch.equal(sel["peak"], r.peak[1, 0, :, 2])
    assert r.select()["marginals"].shape == (S, L, P, H, NK)
    with pytest.raises(ValueError, match="part 2 is out of range"):
        r.select(part=2)


def test_marginals_by_part():
    r = make_record()
    m = r.marginals_by_part()
    assert m.shape == (S, L, P, NK) and m.dtype == torch.float32
    torch.testing.assert_close(m.sum(-1), torch.ones(S, L, P))
    assert r.marginals_by_part(head_average=False).shape == (S, L, P, H, NK)


def test_nbytes_and_summary():
    r = make_record()
    expected = 2 * (4 * S * L * P * H + S * L * P * H * NK + 2 * P * H * Q * (NK + 1))
    assert r.nbytes() == expected
    s = r.summary()
    assert {
        "entropy_mean",
        "entropy_min",
        "entropy_max",
        "peak_mean",
        "cls_mass_max",
        "separation",
        "stability_max_jump",
    } <= set(s)


def _assert_same(a: AttentionRecord, b: AttentionRecord):
    for name in (
        "steps",
        "timesteps",
        "layers",
        "layer_kinds",
        "num_parts",
        "num_heads",
        "num_patch_keys",
        "has_cls",
        "patch_grid",
        "nonfinite",
        "meta",
    ):
        assert getattr(a, name) == getattr(b, name), name
    for name in ("entropy", "peak", "eff_keys", "cls_mass", "marginals"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x.view(torch.int16), y.view(torch.int16)), name
    assert list(a.full_maps) == list(b.full_maps)
    for key in a.full_maps:
        assert torch.equal(a.full_maps[key].view(torch.int16), b.full_maps[key].view(torch.int16))


def _steps_of(r: AttentionRecord, i: int, j: int) -> AttentionRecord:
    """Steps ``i:j`` of ``r`` as a record of their own."""
    kept = set(r.steps[i:j])
    return AttentionRecord.assemble(
        steps=r.steps[i:j],
        timesteps=r.timesteps[i:j],
        layers=r.layers,
        layer_kinds=r.layer_kinds,
        tensors={name: t[i:j] for name, t in r.tensors().items() if not name.startswith("full/")},
        has_cls=r.has_cls,
        patch_grid=r.patch_grid,
        full_maps={k: v for k, v in r.full_maps.items() if k[0] in kept},
        nonfinite=[e for e in r.nonfinite if e["step"] in kept],
        meta=r.meta,
    )


def test_assemble_reads_the_counts_from_the_marginals():
    r = _steps_of(make_record(), 0, 3)
    _assert_same(r, make_record())


def test_concat_joins_steps_and_keeps_the_first_records_meta():
    whole = make_record()
    _assert_same(AttentionRecord.concat([_steps_of(whole, 0, 1), _steps_of(whole, 1, 3)]), whole)
    one = _steps_of(whole, 0, 1)
    assert AttentionRecord.concat([one]) is one
    with pytest.raises(RecordError, match="at least one record"):
        AttentionRecord.concat([])
    one_part = make_record(
        with_maps=False,
        steps=[20, 21, 22],
        num_parts=1,
        marginals=torch.rand(S, L, 1, H, NK),
        **{name: torch.rand(S, L, 1, H) for name in SCALARS},
    )
    assert not whole.same_shape(one_part)
    with pytest.raises(RecordError, match="cannot be joined: step 0 has 2 layers, 2 parts.*; step 20 2, 1, 4, 9"):
        AttentionRecord.concat([whole, one_part])
    with pytest.raises(RecordError, match="strictly increasing"):  # steps out of order
        AttentionRecord.concat([_steps_of(whole, 1, 3), _steps_of(whole, 0, 1)])


@pytest.mark.parametrize("how", ["stem", "json", "safetensors", "directory"])
def test_round_trip_is_bit_exact(tmp_path, how):
    r = make_record()
    r.entropy[0, 0, 0, 0] = float("nan")  # NaN bits survive too
    target = {
        "stem": tmp_path / "run",
        "json": tmp_path / "run.json",
        "safetensors": tmp_path / "run.safetensors",
        "directory": tmp_path,
    }[how]
    tensor_path, json_path = r.save(target)
    stem = "record" if how == "directory" else "run"
    assert (tensor_path.name, json_path.name) == (f"{stem}.safetensors", f"{stem}.json")
    _assert_same(r, AttentionRecord.load(target))
    assert sorted(os.listdir(tmp_path)) == [f"{stem}.json", f"{stem}.safetensors"]  # no temp files left


def test_round_trip_without_cls_or_grid(tmp_path):
    r = make_record(with_maps=False, has_cls=False, patch_grid=None, nonfinite=[])
    r.save(tmp_path / "x")
    _assert_same(r, AttentionRecord.load(tmp_path / "x"))


def test_views_sharing_storage_can_be_saved(tmp_path):
    base = torch.rand(4, S, L, P, H)
    r = make_record(entropy=base[0], peak=base[1], eff_keys=base[2], cls_mass=base[3])
    h = base[0].half()
    r.entropy, r.peak = h, h[...]  # deliberately aliased: safetensors refuses shared storage
    r.save(tmp_path / "a")
    assert torch.equal(AttentionRecord.load(tmp_path / "a").peak, r.peak)


def test_refuses_other_schema_version(tmp_path):
    _, json_path = make_record().save(tmp_path / "old")
    doc = json.loads(json_path.read_text())
    doc["schema_version"] = RECORD_SCHEMA_VERSION + 1
    json_path.write_text(json.dumps(doc))
    with pytest.raises(ValueError) as err:
        AttentionRecord.load(tmp_path / "old")
    msg = str(err.value)
    assert str(json_path) in msg and f"version {RECORD_SCHEMA_VERSION + 1}" in msg
    assert f"reads version {RECORD_SCHEMA_VERSION}" in msg and "re-record" in msg


def test_detects_mismatched_pair(tmp_path):
    make_record().save(tmp_path / "a")
    make_record().save(tmp_path / "b")
    os.replace(tmp_path / "b.safetensors", tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="does not belong to"):
        AttentionRecord.load(tmp_path / "a")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        AttentionRecord.load(tmp_path / "nope")


def test_failed_write_leaves_no_temp_file_and_keeps_old(tmp_path, monkeypatch):
    r = make_record()
    r.save(tmp_path / "run")
    before = (tmp_path / "run.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        make_record(meta={"other": 1}).save(tmp_path / "run")
    assert sorted(os.listdir(tmp_path)) == ["run.json", "run.safetensors"]
    assert (tmp_path / "run.safetensors").read_bytes() == before
    assert AttentionRecord.load(tmp_path / "run").meta == r.meta


# ------------------------------------------------------------------------ damaged records: RecordError naming the file
FIX = "re-save the record with partattn run"


def damaged(tmp_path, path_of, damage):
    make_record().save(tmp_path / "r")
    path = tmp_path / path_of
    damage(path)
    with pytest.raises(RecordError) as info:
        AttentionRecord.load(tmp_path / "r")
    message = str(info.value)
    assert str(path) in message and FIX in message, message
    return message


def test_record_error_is_a_value_error():
    from partattn_checks.model.files import RecordError as FromFiles

    assert RecordError is FromFiles and issubclass(RecordError, ValueError)


def test_truncated_tensor_file(tmp_path):
    def cut(path):
        path.write_bytes(path.read_bytes()[:-100])

    message = damaged(tmp_path, "r.safetensors", cut)
    assert "truncated:" in message and "the header promises" in message


@pytest.mark.parametrize(
    "content, phrase",
    [(b"", "empty file"), (b"\x00" * 40, "not a safetensors file"), (b"<html>404</html>", "not a safetensors file")],
)
def test_foreign_tensor_file(tmp_path, content, phrase):
    assert phrase in damaged(tmp_path, "r.safetensors", lambda p: p.write_bytes(content))


@pytest.mark.parametrize(
    "text, phrase", [('{"schema_version": 1, "pair', "not valid JSON"), (b"\xff\xfe binary", "not valid JSON")]
)
def test_broken_json_file(tmp_path, text, phrase):
    def write(path):
        path.write_bytes(text if isinstance(text, bytes) else text.encode())

    assert phrase in damaged(tmp_path, "r.json", write)


def test_json_missing_an_entry(tmp_path):
    def drop_layers(path):
        doc = json.loads(path.read_text())
        del doc["layers"]
        path.write_text(json.dumps(doc))

    assert "entry 'layers' is missing" in damaged(tmp_path, "r.json", drop_layers)


def test_json_that_does_not_fit_the_tensors(tmp_path):
    def more_parts(path):
        doc = json.loads(path.read_text())
        doc["num_parts"] = P + 1
        path.write_text(json.dumps(doc))

    assert "shape" in damaged(tmp_path, "r.json", more_parts)


def test_tensor_file_missing_a_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    from partattn_checks.model.files import read_safetensors_header

    def drop_peak(path):
        tensors = load_file(str(path))
        meta = read_safetensors_header(path)["__metadata__"]  # keep the pair id
        del tensors["peak"]
        save_file(tensors, str(path), metadata=meta)

    assert "tensor 'peak' is missing" in damaged(tmp_path, "r.safetensors", drop_peak)
