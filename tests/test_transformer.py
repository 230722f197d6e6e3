"""The PartCrafter DiT: release state dict, block wiring, time token, part ids and U-skips."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.normalization import FP32LayerNorm
from helpers import read_keys_tsv, reference_keys_path

from partattn_checks.model.attention import PartCrafterAttnProcessor, TripoSGAttnProcessor
from partattn_checks.model.tiny import TINY_TRANSFORMER, build_transformer
from partattn_checks.model.transformer import RELEASE_CONFIG, PartCrafterDiTModel

RELEASE_PARAMETERS = 1_439_621_696
RELEASE_TENSORS = 555


@pytest.fixture(scope="module")
def release_meta():
    """The release-config model on the meta device: the full architecture, no memory."""
    with torch.device("meta"):
        return PartCrafterDiTModel(**RELEASE_CONFIG)


@pytest.fixture(scope="module")
def tiny():
    return build_transformer(seed=0)


def tiny_inputs(model, batch: int, tokens: int = 5, image_tokens: int = 7, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    x = torch.randn(batch, tokens, cfg.in_channels, generator=gen)
    ctx = torch.randn(batch, image_tokens, cfg.cross_attention_dim, generator=gen)
    t = torch.full((batch,), 700.0)
    return x, t, ctx


def run_with_embedding_row_bumped(model, row, x, t, ctx, num_parts):
    """Forward with ``part_embedding[row] += 1``, restoring the exact weights afterwards."""
    saved = model.part_embedding.weight.detach().clone()
    with torch.no_grad():
        model.part_embedding.weight[row] += 1.0
    try:
        return run(model, x, t, ctx, num_parts)
    finally:
        with torch.no_grad():
            model.part_embedding.weight.copy_(saved)


def run(model, x, t, ctx, num_parts):
    with torch.no_grad():
        return model(x, t, ctx, attention_kwargs={"num_parts": num_parts}).sample


# --------------------------------------------------------------------------- release config


def test_release_state_dict_equals_reference_list(release_meta):
    reference = read_keys_tsv(reference_keys_path())
    ours = {name: tuple(t.shape) for name, t in release_meta.state_dict().items()}
    assert len(reference) == RELEASE_TENSORS, "the reference list itself changed"
    assert len(ours) == RELEASE_TENSORS
    missing = sorted(set(reference) - set(ours))
    extra = sorted(set(ours) - set(reference))
    assert not missing and not extra, f"missing from ours: {missing[:10]}; not in the release: {extra[:10]}"
    wrong = {n: (ours[n], reference[n]) for n in reference if ours[n] != reference[n]}
    assert not wrong, f"shape (ours, release): {dict(list(wrong.items())[:10])}"


def test_release_parameter_count(release_meta):
    reference = read_keys_tsv(reference_keys_path())
    assert sum(math.prod(s) for s in reference.values()) == RELEASE_PARAMETERS
    params = list(release_meta.parameters())
    assert sum(p.numel() for p in params) == RELEASE_PARAMETERS
    assert all(p.device.type == "meta" for p in params), "building the release config must not allocate"
    assert sum(b.numel() for b in release_meta.buffers()) == 0


def test_release_blocks_skips_and_processors(release_meta):
    blocks = release_meta.blocks
    assert len(blocks) == 21
    assert [i for i, b in enumerate(blocks) if b.skip_linear is not None] == list(range(11, 21))
    global_ids = list(range(0, 21, 2))
    for i, block in enumerate(blocks):
        expected = PartCrafterAttnProcessor if i in global_ids else TripoSGAttnProcessor
        for attn in (block.attn1, block.attn2):
            assert type(attn.processor) is expected, f"block {i}: {type(attn.processor).__name__}"
        assert block.is_global == (i in global_ids)
        assert block.attn2.is_cross_attention and not block.attn1.is_cross_attention
        assert block.attn1.heads == 16 and block.attn1.scale == pytest.approx(1 / math.sqrt(128))
        for norm in (block.norm1, block.norm2, block.norm3):
            assert isinstance(norm, FP32LayerNorm) and norm.eps == 1e-5
        assert block.attn1.norm_q.eps == 1e-6 and block.attn2.norm_k.eps == 1e-6
        assert block.ff.net[0].approximate == "none", "FF uses exact GELU"


def test_time_embedding_is_plain_sin_then_cos(tiny):
    """Sinusoidal embedding, no flip, shift 0: [sin(t f_i), cos(t f_i)], f_i = 10000^(-i/half)."""
    width = tiny.config.width
    t = torch.tensor([0.0, 1.0, 500.0, 1000.0])
    half = width // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    angles = t.double()[:, None] * freqs[None]
    expected = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    assert torch.allclose(tiny.time_embed(t).double(), expected, atol=1e-4)


# --------------------------------------------------------------------------- forward wiring (tiny)


def test_time_token_prepended_then_dropped(tiny):
    n = 2
    x, t, ctx = tiny_inputs(tiny, 2 * n, tokens=5)
    seen = {}
    pre = tiny.blocks[0].register_forward_pre_hook(lambda m, args, kw: seen.update({"in": args[0]}), with_kwargs=True)
    post = tiny.norm_out.register_forward_hook(lambda m, args, out: seen.update({"norm_out": out}))
    try:
        out = run(tiny, x, t, ctx, n)
    finally:
        pre.remove()
        post.remove()
    assert out.shape == x.shape, "output has T tokens: the time token is dropped"
    with torch.no_grad():
        parts = tiny.part_embedding(torch.arange(2 * n))[:, None]
        time_token = tiny.time_proj(tiny.time_embed(t))[:, None]
        assert torch.allclose(seen["in"][:, :1], time_token + parts, atol=1e-6)
        assert torch.allclose(seen["in"][:, 1:], tiny.proj_in(x) + parts, atol=1e-6)
        assert seen["norm_out"].shape[1] == x.shape[1] + 1
        assert torch.allclose(out, tiny.proj_out(seen["norm_out"][:, 1:]), atol=1e-6)


def test_scalar_timestep_broadcasts(tiny):
    x, t, ctx = tiny_inputs(tiny, 2)
    with torch.no_grad():
        scalar = tiny(x, 700.0, ctx, attention_kwargs={"num_parts": 1}).sample
    assert torch.equal(scalar, run(tiny, x, t, ctx, 1))


def test_u_skips_last_in_first_out(tiny):
    """Block L > n//2 merges the output of block n-1-L (5 layers: 3 <- 1, 4 <- 0)."""
    layers = tiny.config.num_layers
    outputs, skips, handles = {}, {}, []
    for i, block in enumerate(tiny.blocks):
        handles.append(block.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out)))
        handles.append(
            block.register_forward_pre_hook(
                lambda m, a, kw, i=i: skips.__setitem__(i, kw.get("skip")), with_kwargs=True
            )
        )
    try:
        run(tiny, *tiny_inputs(tiny, 2), 2)
    finally:
        for h in handles:
            h.remove()
    with_skip = [i for i in range(layers) if skips[i] is not None]
    assert with_skip == list(range(layers // 2 + 1, layers))
    for i in with_skip:
        assert skips[i] is outputs[layers - 1 - i], f"block {i} got a skip that is not block {layers - 1 - i}'s output"


def test_block_is_pre_norm_after_skip_merge(tiny):
    """h = skip_norm(skip_linear(cat[skip, h])); h += attn1(norm1 h); h += attn2(norm2 h, img); h += ff(norm3 h)."""
    block = tiny.blocks[-1]
    assert block.skip_linear is not None
    gen = torch.Generator().manual_seed(4)
    width = tiny.config.width
    h, skip = torch.randn(4, 3, width, generator=gen), torch.randn(4, 3, width, generator=gen)
    img = torch.randn(4, 5, tiny.config.cross_attention_dim, generator=gen)
    with torch.no_grad():
        x = block.skip_norm(block.skip_linear(torch.cat([skip, h], dim=-1)))
        x = x + block.attn1(block.norm1(x), num_parts=2)
        x = x + block.attn2(block.norm2(x), encoder_hidden_states=img, num_parts=2)
        x = x + block.ff(block.norm3(x))
        out = block(h, img, skip=skip, attention_kwargs={"num_parts": 2})
        swapped = block(skip, img, skip=h, attention_kwargs={"num_parts": 2})
    assert torch.allclose(out, x, atol=1e-6)
    assert not torch.allclose(out, swapped, atol=1e-3), "the concatenation order must matter"


def test_part_ids_are_arange_of_batch(tiny):
    assert torch.equal(tiny.part_ids(6, "cpu"), torch.arange(6))


def test_each_batch_row_uses_part_embedding_row_of_its_index():
    """Without global blocks rows are independent: output row b depends on embedding row b only."""
    local = build_transformer({**TINY_TRANSFORMER, "global_attn_block_ids": []}, seed=1)
    n = 3
    x, t, ctx = tiny_inputs(local, 2 * n)
    base = run(local, x, t, ctx, n)
    for row in range(2 * n):
        out = run_with_embedding_row_bumped(local, row, x, t, ctx, n)
        changed = [b for b in range(2 * n) if not torch.equal(base[b], out[b])]
        assert changed == [row]


def test_cfg_conditional_parts_use_ids_n_to_2n(tiny):
    """Upstream quirk: in the CFG batch [uncond, cond] the conditional part k gets id N+k.

    Changing embedding row N+k moves only conditional outputs (global blocks mix the parts of a
    half), changing row k only unconditional ones, and rows >= 2N are never used.
    """
    n = 3
    x, t, ctx = tiny_inputs(tiny, 2 * n)
    base = run(tiny, x, t, ctx, n)

    def changed_halves(row):
        out = run_with_embedding_row_bumped(tiny, row, x, t, ctx, n)
        return [not torch.equal(out[:n], base[:n]), not torch.equal(out[n:], base[n:])]

    for k in range(n):
        assert changed_halves(n + k) == [False, True], f"cond part {k} should use id {n + k}"
        assert changed_halves(k) == [True, False], f"uncond part {k} should use id {k}"
    assert changed_halves(2 * n) == [False, False]


def test_batch_beyond_max_num_parts_is_a_clear_error(tiny):
    limit = tiny.config.max_num_parts
    x, t, ctx = tiny_inputs(tiny, limit + 1, tokens=2, image_tokens=3)
    with pytest.raises(ValueError, match=rf"max_num_parts={limit}.*2\*N <= max_num_parts under CFG"):
        run(tiny, x, t, ctx, limit + 1)
    out = run(tiny, x[:limit], t[:limit], ctx[:limit], limit // 2)
    assert out.shape == (limit, 2, tiny.config.in_channels)


def test_forward_needs_num_parts(tiny):
    x, t, ctx = tiny_inputs(tiny, 2)
    with pytest.raises(ValueError, match="num_parts"):
        tiny(x, t, ctx)


def test_width_must_divide_into_heads():
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        PartCrafterDiTModel(**{**TINY_TRANSFORMER, "width": 66})
