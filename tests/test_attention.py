"""The attention processors against an independent, plainly written reference.

The reference below is written from the description of PartCrafter's attention (docs/model.md), not
from ``partattn_checks.model.attention``: it projects with the raw weight matrices, slices every
head's columns out by hand, applies the per-head RMSNorm, and attends with two einsums per head
and per batch row, choosing each row's keys explicitly (own sequence, all parts of its CFG half,
or the first part of its CFG half). It runs in float64; the processors run in float32 inside the
real diffusers ``Attention`` modules of a ``PartCrafterBlock``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from partattn_checks.model.attention import (
    PartCrafterAttnProcessor,
    TripoSGAttnProcessor,
    fold_parts,
    unfold_parts,
)
from partattn_checks.model.transformer import PartCrafterBlock

RMS_EPS = 1e-6
#: fp32 rounding budget, relative to the output's magnitude (wrong math misses by O(0.1..1)).
RTOL = 1e-5
SETTINGS = settings(max_examples=40, deadline=None)


# --------------------------------------------------------------------------- the reference


def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + RMS_EPS) * weight


def head_slices(attn, x, ctx, h: int, *, as_cross: bool, naive: bool = False):
    """(q_h, k_h, v_h) of head ``h`` for every batch row, float64, before RMSNorm.

    heads first, cross: key/value columns [2dh, 2dh+d) / [2dh+d, 2dh+2d) of cat(to_k(ctx), to_v(ctx));
    heads first, self:  q/k/v columns 3dh + {0, d, 2d} (width d) of cat(q, k, v);
    naive:              columns [dh, dh+d) of to_q / to_k / to_v separately (the common bug).
    """
    d = attn.to_q.out_features // attn.heads
    source = x if ctx is None else ctx
    q = x @ attn.to_q.weight.detach().double().T
    k = source @ attn.to_k.weight.detach().double().T
    v = source @ attn.to_v.weight.detach().double().T
    if naive:
        cols = slice(d * h, d * (h + 1))
        return q[..., cols], k[..., cols], v[..., cols]
    if as_cross:
        kv = torch.cat([k, v], dim=-1)
        return (
            q[..., d * h : d * (h + 1)],
            kv[..., 2 * d * h : 2 * d * h + d],
            kv[..., 2 * d * h + d : 2 * d * h + 2 * d],
        )
    qkv = torch.cat([q, k, v], dim=-1)
    base = 3 * d * h
    return qkv[..., base : base + d], qkv[..., base + d : base + 2 * d], qkv[..., base + 2 * d : base + 3 * d]


def reference_attention(
    attn, x, ctx=None, *, num_parts: int, is_global: bool, as_cross: bool | None = None, naive: bool = False
) -> torch.Tensor:
    """Output of one attention module, computed the slow, obvious way in float64.

    Batch rows are ``[half 0 parts 0..N-1, half 1 parts 0..N-1]`` (one half without CFG).
    Local: row b attends to its own keys. Global self-attention: row b attends to the keys of
    all N parts of its half (the parts' sequences concatenated). Global cross-attention: row b
    attends to the image keys of the first part of its half.
    """
    as_cross = (ctx is not None) if as_cross is None else as_cross
    x = x.double()
    ctx = None if ctx is None else ctx.double()
    heads = attn.heads
    d = attn.to_q.out_features // heads
    batch, length = x.shape[:2]
    g_q = attn.norm_q.weight.detach().double()
    g_k = attn.norm_k.weight.detach().double()
    merged = torch.zeros(batch, length, heads * d, dtype=torch.float64)
    for h in range(heads):
        q_h, k_h, v_h = head_slices(attn, x, ctx, h, as_cross=as_cross, naive=naive)
        q_h, k_h = rms_norm(q_h, g_q), rms_norm(k_h, g_k)
        for b in range(batch):
            if not is_global:
                keys, values = k_h[b], v_h[b]
            else:
                first = (b // num_parts) * num_parts
                if as_cross:
                    keys, values = k_h[first], v_h[first]
                else:
                    rows = range(first, first + num_parts)
                    keys = torch.cat([k_h[r] for r in rows])
                    values = torch.cat([v_h[r] for r in rows])
            scores = torch.einsum("id,jd->ij", q_h[b], keys) / math.sqrt(d)
            probs = torch.softmax(scores, dim=-1)
            merged[b, :, d * h : d * (h + 1)] = torch.einsum("ij,jd->id", probs, values)
    out = attn.to_out[0]
    return merged @ out.weight.detach().double().T + out.bias.detach().double()


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    heads: int
    head_dim: int
    num_parts: int
    tokens: int  # latent tokens T; the attention modules see T + 1 (the time token)
    image_tokens: int
    cfg: bool
    cross_dim: int | None  # None: equal to the width (the ambiguous-shape setting)
    seed: int

    @property
    def width(self) -> int:
        return self.heads * self.head_dim

    @property
    def batch(self) -> int:
        return self.num_parts * (2 if self.cfg else 1)

    @property
    def context_dim(self) -> int:
        return self.width if self.cross_dim is None else self.cross_dim


cases = st.builds(
    Case,
    heads=st.integers(1, 4),
    head_dim=st.integers(2, 16),
    num_parts=st.integers(1, 4),
    tokens=st.integers(1, 9),
    image_tokens=st.integers(1, 10),
    cfg=st.booleans(),
    cross_dim=st.one_of(st.none(), st.integers(1, 24)),
    seed=st.integers(0, 2**31 - 1),
)

#: T + 1 == number of image tokens and context width == model width: a length/shape-based
#: "is this self-attention?" test cannot tell attn1 from attn2 here.
EDGE = Case(heads=4, head_dim=8, num_parts=3, tokens=6, image_tokens=7, cfg=True, cross_dim=None, seed=7)


def make_block(case: Case, *, is_global: bool) -> PartCrafterBlock:
    """A block with random weights everywhere, including the RMSNorm weights (random sign too)."""
    gen = torch.Generator().manual_seed(case.seed)
    block = PartCrafterBlock(case.width, case.heads, case.context_dim, use_skip=False, is_global=is_global)
    with torch.no_grad():
        for name, param in block.named_parameters():
            if ".norm_q." in name or ".norm_k." in name:
                sign = torch.randint(0, 2, param.shape, generator=gen) * 2 - 1
                param.copy_(sign * (0.5 + torch.rand(param.shape, generator=gen)))
            else:
                param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(param.shape[-1]))
    return block.eval()


def make_inputs(case: Case):
    gen = torch.Generator().manual_seed(case.seed + 1)
    x = torch.randn(case.batch, case.tokens + 1, case.width, generator=gen)
    ctx = torch.randn(case.batch, case.image_tokens, case.context_dim, generator=gen)
    return x, ctx


def run_module(attn, x, ctx, case: Case) -> torch.Tensor:
    with torch.no_grad():
        return attn(x, encoder_hidden_states=ctx, num_parts=case.num_parts)


def assert_close_to_reference(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    assert actual.dtype == torch.float32
    scale = max(1.0, expected.abs().max().item())
    err = (actual.double() - expected).abs().max().item()
    assert err <= RTOL * scale, f"{what}: max abs error {err:.3g} > {RTOL * scale:.3g}"


# --------------------------------------------------------------------------- processors == reference


@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("kind", ["self", "cross"])
@SETTINGS
@given(case=cases)
@example(case=EDGE)
@example(case=Case(heads=1, head_dim=2, num_parts=1, tokens=1, image_tokens=1, cfg=False, cross_dim=3, seed=0))
@example(case=Case(heads=4, head_dim=16, num_parts=4, tokens=9, image_tokens=10, cfg=True, cross_dim=24, seed=1))
def test_processor_matches_reference(scope, kind, case):
    is_global = scope == "global"
    block = make_block(case, is_global=is_global)
    attn = block.attn1 if kind == "self" else block.attn2
    expected_processor = PartCrafterAttnProcessor if is_global else TripoSGAttnProcessor
    assert type(attn.processor) is expected_processor
    x, ctx = make_inputs(case)
    ctx = ctx if kind == "cross" else None
    actual = run_module(attn, x, ctx, case)
    expected = reference_attention(attn, x, ctx, num_parts=case.num_parts, is_global=is_global)
    assert_close_to_reference(actual, expected, f"{scope} {kind} {case}")


def test_edge_time_token_length_equals_image_tokens():
    """T+1 == image tokens and equal widths: attn1 and attn2 see identically shaped inputs.

    Our processors decide self/cross by module, so both stay right; treating attn2 as
    self-attention (as a length comparison would here) gives a clearly different output.
    """
    case = EDGE
    assert case.tokens + 1 == case.image_tokens and case.context_dim == case.width
    block = make_block(case, is_global=True)
    x, ctx = make_inputs(case)
    assert x.shape == ctx.shape
    cross = run_module(block.attn2, x, ctx, case)
    expected = reference_attention(block.attn2, x, ctx, num_parts=case.num_parts, is_global=True)
    assert_close_to_reference(cross, expected, "global cross at the edge")
    as_if_self = reference_attention(block.attn2, x, ctx, num_parts=case.num_parts, is_global=True, as_cross=False)
    assert (as_if_self - expected).abs().max() > 1e3 * RTOL * max(1.0, expected.abs().max().item())
    selfattn = run_module(block.attn1, x, None, case)
    assert_close_to_reference(
        selfattn,
        reference_attention(block.attn1, x, num_parts=case.num_parts, is_global=True),
        "global self at the edge",
    )


# --------------------------------------------------------------------------- the reference would catch the bugs


def test_naive_head_split_gives_different_keys():
    """``view(..., heads, head_dim)`` of ``to_k`` alone: right key for head 0 only."""
    case = Case(heads=4, head_dim=8, num_parts=2, tokens=5, image_tokens=6, cfg=True, cross_dim=12, seed=3)
    block = make_block(case, is_global=False)
    attn = block.attn2
    x, ctx = make_inputs(case)
    naive_keys = attn.to_k(ctx).detach().view(case.batch, case.image_tokens, case.heads, case.head_dim)
    with torch.no_grad():
        prepared = attn.processor.prepare(attn, x, ctx)
    for h in range(case.heads):
        _, k_h, _ = head_slices(attn, x.double(), ctx.double(), h, as_cross=True)
        used = prepared.key[:, h].double()
        assert torch.allclose(used, rms_norm(k_h, attn.norm_k.weight.detach().double()), atol=1e-5)
        same_as_naive = torch.allclose(naive_keys[:, :, h].double(), k_h, atol=1e-5)
        assert same_as_naive == (h == 0), f"head {h}: naive split {'agrees' if same_as_naive else 'differs'}"

    # ... and the whole-output comparison tells the two apart by far more than the tolerance.
    actual = run_module(attn, x, ctx, case)
    naive = reference_attention(attn, x, ctx, num_parts=case.num_parts, is_global=False, naive=True)
    assert (actual.double() - naive).abs().max() > 1e3 * RTOL * max(1.0, naive.abs().max().item())


def test_naive_split_of_self_attention_differs():
    case = Case(heads=3, head_dim=4, num_parts=2, tokens=4, image_tokens=3, cfg=False, cross_dim=None, seed=5)
    block = make_block(case, is_global=True)
    x, _ = make_inputs(case)
    actual = run_module(block.attn1, x, None, case)
    naive = reference_attention(block.attn1, x, num_parts=case.num_parts, is_global=True, naive=True)
    assert (actual.double() - naive).abs().max() > 1e-2


def test_global_and_local_references_differ_so_folding_is_tested():
    case = Case(heads=2, head_dim=4, num_parts=3, tokens=3, image_tokens=4, cfg=True, cross_dim=5, seed=9)
    block = make_block(case, is_global=True)
    x, ctx = make_inputs(case)
    for attn, c in ((block.attn1, None), (block.attn2, ctx)):
        glob = reference_attention(attn, x, c, num_parts=case.num_parts, is_global=True)
        local = reference_attention(attn, x, c, num_parts=case.num_parts, is_global=False)
        assert (glob - local).abs().max() > 1e-2


# --------------------------------------------------------------------------- who attends to whom


def changed_rows(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    return [b for b in range(before.shape[0]) if not torch.equal(before[b], after[b])]


def test_global_cross_attention_uses_first_part_of_each_half():
    case = Case(heads=2, head_dim=4, num_parts=3, tokens=3, image_tokens=5, cfg=True, cross_dim=6, seed=11)
    block = make_block(case, is_global=True)
    x, ctx = make_inputs(case)
    base = run_module(block.attn2, x, ctx, case)
    other = ctx.clone()
    other[[1, 2, 4, 5]] += 1.0  # every part but the first of each half
    assert changed_rows(base, run_module(block.attn2, x, other, case)) == []
    first = ctx.clone()
    first[3] += 1.0  # first part of the conditional half
    assert changed_rows(base, run_module(block.attn2, x, first, case)) == [3, 4, 5]


def test_global_self_attention_mixes_parts_within_a_half_only():
    case = Case(heads=2, head_dim=4, num_parts=3, tokens=3, image_tokens=5, cfg=True, cross_dim=6, seed=12)
    x, _ = make_inputs(case)
    bumped = x.clone()
    bumped[4] += 1.0  # conditional part 1
    glob = make_block(case, is_global=True).attn1
    assert changed_rows(run_module(glob, x, None, case), run_module(glob, bumped, None, case)) == [3, 4, 5]
    local = make_block(case, is_global=False).attn1
    assert changed_rows(run_module(local, x, None, case), run_module(local, bumped, None, case)) == [4]


# --------------------------------------------------------------------------- small contracts


def test_prepared_shapes_fold_parts():
    case = Case(heads=2, head_dim=4, num_parts=3, tokens=4, image_tokens=6, cfg=True, cross_dim=5, seed=13)
    block = make_block(case, is_global=True)
    x, ctx = make_inputs(case)
    with torch.no_grad():
        self_p = block.attn1.processor.prepare(block.attn1, x, None, num_parts=3)
        cross_p = block.attn2.processor.prepare(block.attn2, x, ctx, num_parts=3)
    length = case.tokens + 1
    assert self_p.query.shape == (2, 2, 3 * length, 4) and self_p.key.shape == (2, 2, 3 * length, 4)
    assert cross_p.query.shape == (2, 2, 3 * length, 4) and cross_p.key.shape == (2, 2, 6, 4)
    assert self_p.num_parts == 3 and self_p.batch_size == 6


def test_fold_unfold_round_trip_and_order():
    t = torch.arange(6 * 2 * 3 * 1, dtype=torch.float32).view(6, 2, 3, 1)
    folded = fold_parts(t, 3)
    assert folded.shape == (2, 2, 9, 1)
    # folded position p*L + i of object o is row o*N + p, token i
    assert torch.equal(folded[1, 0, 3 * 2 + 1], t[1 * 3 + 2, 0, 1])
    assert torch.equal(unfold_parts(folded, 3), t)
    with pytest.raises(ValueError, match="not a multiple of num_parts=4"):
        fold_parts(t, 4)


def test_global_processor_requires_num_parts_and_refuses_masks():
    case = Case(heads=2, head_dim=4, num_parts=2, tokens=2, image_tokens=3, cfg=False, cross_dim=5, seed=14)
    block = make_block(case, is_global=True)
    x, ctx = make_inputs(case)
    with pytest.raises(ValueError, match="needs num_parts"):
        block.attn1(x)
    with pytest.raises(ValueError, match="no attention mask"):
        block.attn2(x, encoder_hidden_states=ctx, attention_mask=torch.ones(2, 3, 3), num_parts=2)
