"""Property tests of the attention metrics (pure tensor functions)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from partattn_checks.capture import metrics as M

SETTINGS = settings(max_examples=50, deadline=None)
TOL = 1e-4


@st.composite
def stochastic(draw, min_k=1, max_k=9, max_q=5, batch=True, zeros=True):
    """Row-stochastic (B?, Q, K) fp32 tensor; rows may contain exact zeros."""
    b = draw(st.integers(1, 3)) if batch else None
    q = draw(st.integers(1, max_q))
    k = draw(st.integers(min_k, max_k))
    shape = (b, q, k) if batch else (q, k)
    lo = 0.0 if zeros else 1e-3
    elems = st.one_of(st.just(0.0), st.floats(lo, 1.0, width=32)) if zeros else st.floats(lo, 1.0, width=32)
    x = torch.from_numpy(draw(arrays(np.float32, shape, elements=elems)))
    s = x.sum(-1, keepdim=True)
    x = torch.where(s > 0, x / torch.where(s > 0, s, torch.ones_like(s)), torch.full_like(x, 1.0 / k))
    return x


@st.composite
def distributions(draw, n=2, min_k=1, max_k=9):
    """n distributions over the same K keys, stacked as (n, K)."""
    k = draw(st.integers(min_k, max_k))
    x = torch.from_numpy(
        draw(arrays(np.float32, (n, k), elements=st.one_of(st.just(0.0), st.floats(0.0, 1.0, width=32))))
    )
    x[:, 0] += (x.sum(-1) == 0).float()  # no all-zero rows
    return x / x.sum(-1, keepdim=True)


@SETTINGS
@given(stochastic())
def test_bounds(A):
    ent, pk, eff = M.normalized_entropy(A), M.peak(A), M.effective_keys_ratio(A)
    K = A.shape[-1]
    assert ent.shape == pk.shape == eff.shape == A.shape[:-2]
    assert ((ent >= 0) & (ent <= 1)).all()
    assert ((pk >= 1 / K - TOL) & (pk <= 1 + TOL)).all()
    assert ((eff >= 1 / K - TOL) & (eff <= 1)).all()
    marg = M.key_marginal(A)
    assert marg.shape == A.shape[:-2] + (K,)
    torch.testing.assert_close(marg.sum(-1), torch.ones(A.shape[:-2]), atol=TOL, rtol=0)


@SETTINGS
@given(st.integers(2, 300), st.integers(1, 4))
def test_uniform_rows(k, q):
    A = torch.full((q, k), 1.0 / k)
    assert M.normalized_entropy(A) == pytest.approx(1.0, abs=TOL)
    assert M.effective_keys_ratio(A) == pytest.approx(1.0, abs=TOL)
    assert M.peak(A) == pytest.approx(1.0 / k, abs=TOL)


@SETTINGS
@given(st.integers(1, 300), st.lists(st.integers(0, 10_000), min_size=1, max_size=5))
def test_one_hot_rows(k, picks):
    A = torch.zeros(len(picks), k)
    A[torch.arange(len(picks)), torch.tensor(picks) % k] = 1.0
    assert M.normalized_entropy(A) == 0.0
    assert M.peak(A) == 1.0
    assert M.effective_keys_ratio(A) == pytest.approx(1.0 / k)


def test_single_key_entropy_is_zero():
    assert M.normalized_entropy(torch.ones(3, 4, 1)).tolist() == [0.0, 0.0, 0.0]


@SETTINGS
@given(stochastic(), st.randoms(use_true_random=False))
def test_key_permutation_invariance(A, rnd):
    perm = list(range(A.shape[-1]))
    rnd.shuffle(perm)
    B = A[..., perm]
    torch.testing.assert_close(M.normalized_entropy(B), M.normalized_entropy(A), atol=1e-5, rtol=0)
    torch.testing.assert_close(M.peak(B), M.peak(A))
    torch.testing.assert_close(M.effective_keys_ratio(B), M.effective_keys_ratio(A), atol=1e-5, rtol=0)
    torch.testing.assert_close(M.key_marginal(B), M.key_marginal(A)[..., perm])


@SETTINGS
@given(distributions(n=2))
def test_js_symmetric_bounded(pq):
    p, q = pq[0], pq[1]
    d_pq, d_qp = M.js_distance_normalized(p, q), M.js_distance_normalized(q, p)
    assert 0.0 <= float(d_pq) <= 1.0
    assert float(M.js_divergence(p, q)) <= math.log(2) + 1e-6
    torch.testing.assert_close(d_pq, d_qp, atol=1e-6, rtol=0)
    assert float(M.js_distance_normalized(p, p)) == pytest.approx(0.0, abs=1e-6)


def test_js_known_values():
    p, q = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert float(M.js_distance_normalized(p, q)) == pytest.approx(1.0)
    assert float(M.js_divergence(p, q)) == pytest.approx(math.log(2))
    # fp16 input and an unnormalised vector are accepted
    assert float(M.js_distance_normalized(p.half(), 2 * p)) == pytest.approx(0.0, abs=1e-7)


@SETTINGS
@given(distributions(n=1), st.integers(2, 6))
def test_identical_parts_have_zero_separation(d, n_parts):
    m = d.expand(n_parts, -1)
    assert float(M.part_separation(m)) == pytest.approx(0.0, abs=1e-6)


@SETTINGS
@given(st.integers(2, 6), st.integers(1, 4))
def test_disjoint_parts_have_full_separation(n_parts, width):
    m = torch.zeros(n_parts, n_parts * width)
    for p in range(n_parts):
        m[p, p * width : (p + 1) * width] = 1.0 / width
    assert float(M.part_separation(m)) == pytest.approx(1.0, abs=1e-6)
    pair = M.pairwise_separation(m)
    torch.testing.assert_close(pair, 1.0 - torch.eye(n_parts), atol=1e-6, rtol=0)


def test_part_separation_needs_two_parts():
    with pytest.raises(ValueError, match="at least 2 parts"):
        M.part_separation(torch.ones(3, 1, 5) / 5)


def test_part_separation_batched_shape():
    m = torch.softmax(torch.randn(4, 3, 2, 7), -1)
    assert M.part_separation(m).shape == (4, 3)


def test_timestep_jumps():
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    m = torch.stack([a, a, b, b])[:, None, :].expand(4, 2, 3)  # (S, parts, K)
    jumps = M.timestep_jumps(m)
    assert jumps.shape == (3, 2)
    torch.testing.assert_close(jumps, torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]), atol=1e-6, rtol=0)


@SETTINGS
@given(stochastic(min_k=2), st.booleans())
def test_split_cls_rows_sum_to_one(P, zero_patch_row):
    if zero_patch_row:  # one query puts everything on CLS
        P = P.clone()
        P[..., 0, :] = 0.0
        P[..., 0, 0] = 1.0
    rows, cls = M.split_cls(P)
    assert rows.shape == P.shape[:-1] + (P.shape[-1] - 1,)
    torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[:-1]), atol=TOL, rtol=0)
    torch.testing.assert_close(cls, P[..., 0].mean(-1))
    assert torch.isfinite(rows).all()


@SETTINGS
@given(stochastic(min_k=2), st.booleans(), st.booleans())
def test_row_stats_matches_separate_functions(P, has_cls, half):
    if half:
        P = P.half()
    stats = M.row_stats(P, has_cls=has_cls)
    rows, cls = M.split_cls(P, has_cls=has_cls)
    expect = {
        "entropy": M.normalized_entropy(rows),
        "peak": M.peak(rows),
        "eff_keys": M.effective_keys_ratio(rows),
        "cls_mass": cls,
        "marginal": M.key_marginal(rows),
    }
    assert set(stats) == set(expect)
    for key, value in expect.items():
        assert stats[key].dtype == torch.float32
        torch.testing.assert_close(stats[key], value, atol=1e-4, rtol=1e-4, msg=key)


def test_row_stats_all_mass_on_cls_gives_uniform_patch_rows():
    P = torch.zeros(2, 3, 5)
    P[..., 0] = 1.0
    s = M.row_stats(P)
    torch.testing.assert_close(s["entropy"], torch.ones(2))
    torch.testing.assert_close(s["cls_mass"], torch.ones(2))
    torch.testing.assert_close(s["marginal"], torch.full((2, 4), 0.25))


def test_row_stats_propagates_nan():
    P = torch.softmax(torch.randn(2, 4, 6), -1)
    P[1, 2, 3] = float("nan")
    s = M.row_stats(P)
    assert torch.isfinite(s["entropy"][0]) and torch.isnan(s["entropy"][1])


def test_summarize_keys():
    S, L, P, H, K = 3, 2, 2, 4, 6
    marg = torch.softmax(torch.randn(S, L, P, H, K), -1)
    ent = torch.rand(S, L, P, H)
    out = M.summarize(ent, ent, ent, marg, ent)
    assert set(out) == {
        "entropy_mean",
        "entropy_min",
        "entropy_max",
        "peak_mean",
        "cls_mass_max",
        "eff_keys_mean",
        "separation",
        "stability_max_jump",
    }
    assert all(isinstance(v, float) for v in out.values())
    single = M.summarize(ent[:1, :, :1], ent[:1, :, :1], ent[:1, :, :1], marg[:1, :, :1])
    assert "separation" not in single and "stability_max_jump" not in single


def test_reduce_rejects_unknown():
    with pytest.raises(ValueError, match="unknown reduction 'median'"):
        M.reduce(torch.ones(3), "median", 0)


def test_row_stats_stays_finite_when_patch_mass_is_denormal():
    """A row with (almost) all weight on CLS: a denormal patch mass must not turn into NaN."""
    P = torch.zeros(1, 2, 5)
    P[0, 0, 0] = 1.0
    P[0, 0, 3] = 1e-42  # denormal fp32
    P[0, 1] = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2])
    stats = M.row_stats(P, has_cls=True)
    for name, value in stats.items():
        assert torch.isfinite(value).all(), name
    assert torch.allclose(stats["marginal"].sum(-1), torch.ones(1))


@settings(max_examples=50, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 7), st.integers(2, 12)),
    spread=st.floats(0.0, 12.0),
    has_cls=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_row_stats_from_logits_equals_row_stats_of_the_softmax(shape, spread, has_cls, seed):
    """The recorder's logit path gives the same statistics as softmax followed by row_stats."""
    S = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * spread
    from_logits = M.row_stats_from_logits(S, has_cls=has_cls)
    from_probs = M.row_stats(torch.softmax(S, -1), has_cls=has_cls)
    assert set(from_logits) == set(from_probs)
    for key, value in from_probs.items():
        torch.testing.assert_close(from_logits[key], value, atol=2e-5, rtol=1e-4, msg=key)


def test_row_stats_from_logits_renormalises_patch_rows_when_cls_takes_everything():
    """Where softmax underflows every patch key to 0, the logits still give the patch distribution."""
    S = torch.tensor([[[200.0, 0.0, 0.0, 3.0]]])
    stats = M.row_stats_from_logits(S)
    r = torch.softmax(S[..., 1:], -1)
    torch.testing.assert_close(stats["marginal"], r.mean(-2))
    torch.testing.assert_close(stats["cls_mass"], torch.ones(1))
    torch.testing.assert_close(stats["entropy"], M.normalized_entropy(r))
    assert torch.isnan(M.row_stats_from_logits(torch.tensor([[[float("nan"), 1.0, 2.0]]]))["cls_mass"]).all()
