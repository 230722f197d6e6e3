"""Attention health metrics: pure tensor functions (no model, no record).

Conventions (see docs/metrics.md):
- ``A`` is a row-stochastic map ``(..., Q, K)`` over patch keys (rows sum to 1, CLS excluded).
- ``P`` is a full softmax map ``(..., Q, K_total)`` whose key 0 is the image CLS token when
  ``has_cls`` is true.
- Any float dtype is accepted; all math runs in fp32 and results are fp32.
- Entropies use natural logs; JS divergences are reported normalised by log 2, so in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..errors import PartattnError

LOG2 = math.log(2.0)

__all__ = [
    "MetricError",
    "MetricTypeError",
    "normalized_entropy",
    "peak",
    "effective_keys_ratio",
    "key_marginal",
    "split_cls",
    "row_stats",
    "js_divergence",
    "js_distance_normalized",
    "pairwise_separation",
    "part_separation",
    "timestep_jumps",
    "head_averaged_marginals",
    "reduce",
    "summarize",
]


class MetricError(PartattnError, ValueError):
    """A metric given a tensor of the wrong shape or an unknown option; the message names both."""


class MetricTypeError(MetricError, TypeError):
    """A metric given a tensor that is not floating-point (also a ``TypeError``)."""


#: Patch mass at or below the smallest normal fp32 counts as none: dividing by a denormal
#: overflows to inf and turns the zeros of that row into NaN.
_TINY = 1.1754943508222875e-38


def _f32(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        raise MetricTypeError(f"expected a floating-point tensor, got dtype {x.dtype}")
    return x if x.dtype == torch.float32 else x.float()


def _row_entropy(A: torch.Tensor) -> torch.Tensor:
    """H_i = -sum_j A_ij log A_ij for each row, clamped to [0, log K]; shape (..., Q)."""
    K = A.shape[-1]
    return (-torch.xlogy(A, A).sum(-1)).clamp(0.0, math.log(K))


def _normalize_mean_entropy(h_mean: torch.Tensor, K: int) -> torch.Tensor:
    if K <= 1:
        return torch.zeros_like(h_mean)
    return (h_mean / math.log(K)).clamp(0.0, 1.0)


def normalized_entropy(A: torch.Tensor) -> torch.Tensor:
    """mean_i H_i / log K, in [0, 1]; 0 when K == 1. Shape (...)."""
    A = _f32(A)
    return _normalize_mean_entropy(_row_entropy(A).mean(-1), A.shape[-1])


def peak(A: torch.Tensor) -> torch.Tensor:
    """mean_i max_j A_ij: 1 for one-hot rows, 1/K for uniform rows. Shape (...)."""
    return _f32(A).amax(-1).mean(-1)


def effective_keys_ratio(A: torch.Tensor) -> torch.Tensor:
    """exp(mean_i H_i) / K: the share of keys a query effectively attends to. Shape (...)."""
    A = _f32(A)
    K = A.shape[-1]
    return (torch.exp(_row_entropy(A).mean(-1)) / K).clamp(max=1.0)


def key_marginal(A: torch.Tensor) -> torch.Tensor:
    """Mean over queries: a distribution over keys. Shape (..., K)."""
    return _f32(A).mean(-2)


def _patch_keys(P: torch.Tensor, has_cls: bool) -> torch.Tensor:
    """The patch columns of a full map ``(..., Q, K_total)`` (key 0 is CLS when ``has_cls``)."""
    if not has_cls:
        return P
    if P.shape[-1] < 2:
        raise MetricError(f"a map with a CLS key needs at least 2 keys, got shape {tuple(P.shape)}")
    return P[..., 1:]


def _patch_and_cls(P: torch.Tensor, has_cls: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 patch columns and the CLS mass ``(...)`` (mean over queries; zeros without CLS)."""
    P = _f32(P)
    if has_cls:
        return _patch_keys(P, True), P[..., 0].mean(-1)
    return P, torch.zeros(P.shape[:-2], dtype=torch.float32, device=P.device)


def split_cls(P: torch.Tensor, has_cls: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a full map into renormalised patch rows ``(..., Q, K-1)`` and CLS mass ``(...)``.

    A row whose patch mass is 0 (all weight on CLS) becomes uniform over the patch keys.
    With ``has_cls=False`` the map is only renormalised and the CLS mass is 0.
    """
    patch, cls_mass = _patch_and_cls(P, has_cls)
    mass = patch.sum(-1, keepdim=True)
    empty = mass <= _TINY
    rows = patch / torch.where(empty, torch.ones_like(mass), mass)
    rows = torch.where(empty, torch.full_like(rows, 1.0 / patch.shape[-1]), rows)
    return rows, cls_mass


def row_stats(P: torch.Tensor, has_cls: bool = True) -> dict[str, torch.Tensor]:
    """All per-map statistics of a full softmax map ``(..., Q, K_total)`` in one pass.

    Returns fp32 tensors: "entropy", "peak", "eff_keys", "cls_mass" of shape (...) and
    "marginal" of shape (..., Nk), all over the renormalised patch keys (same numbers as
    ``split_cls`` followed by the separate functions). Memory: an fp32 copy of ``P`` (if it is
    not fp32 already) plus one ``x log x`` temporary; the renormalised rows are never built,
    using H(p/s) = log s - sum(p log p)/s.
    """
    patch, cls_mass = _patch_and_cls(P, has_cls)
    Q, K = patch.shape[-2], patch.shape[-1]
    mass = patch.sum(-1)  # (..., Q)
    empty = mass <= _TINY  # (almost) all weight on CLS: treat the patch row as uniform
    safe = torch.where(empty, torch.ones_like(mass), mass)
    plogp = torch.xlogy(patch, patch).sum(-1)
    h = torch.where(empty, torch.full_like(mass, math.log(K)), torch.log(safe) - plogp / safe)
    h = h.clamp(0.0, math.log(K))
    h_mean = h.mean(-1)
    row_max = torch.where(empty, torch.full_like(mass, 1.0 / K), patch.amax(-1) / safe)
    inv = torch.where(empty, torch.zeros_like(mass), 1.0 / safe)
    marginal = (inv.unsqueeze(-2) @ patch).squeeze(-2)  # sum_i p_ij / s_i without a (Q, K) temp
    marginal = (marginal + empty.sum(-1, keepdim=True).float() / K) / Q
    return {
        "entropy": _normalize_mean_entropy(h_mean, K),
        "peak": row_max.mean(-1),
        "eff_keys": (torch.exp(h_mean) / K).clamp(max=1.0),
        "cls_mass": cls_mass,
        "marginal": marginal,
    }


def row_stats_from_logits(S: torch.Tensor, has_cls: bool = True) -> dict[str, torch.Tensor]:
    """The statistics of :func:`row_stats` applied to ``softmax(S)``, computed from the scaled
    logits ``S`` (..., Q, K_total) — what the streaming recorder uses.

    The patch rows are ``softmax(S[..., 1:])`` (the renormalised patch distribution, exact even when
    CLS takes almost all the mass), so with ``d = s - max s``, ``z = sum exp d``:
    H = log z - sum(exp(d) d)/z, peak = 1/z, CLS mass = sigmoid(s_cls - logsumexp(s_patch)).
    One exp pass and no log pass over (Q, K): about half the work of softmax + :func:`row_stats`.
    """
    S = _f32(S)
    patch = _patch_keys(S, has_cls)
    Q, K = patch.shape[-2], patch.shape[-1]
    top = patch.amax(-1, keepdim=True)
    d = patch - top
    e = torch.exp(d)
    z = e.sum(-1)  # (..., Q), >= 1
    h = (torch.log(z) - (e * d).sum(-1) / z).clamp(0.0, math.log(K))
    h_mean = h.mean(-1)
    inv = 1.0 / z
    if has_cls:
        lse_patch = top.squeeze(-1) + torch.log(z)
        cls_mass = torch.sigmoid(S[..., 0] - lse_patch).mean(-1)
    else:
        cls_mass = torch.zeros(S.shape[:-2], dtype=torch.float32, device=S.device)
    return {
        "entropy": _normalize_mean_entropy(h_mean, K),
        "peak": inv.mean(-1),
        "eff_keys": (torch.exp(h_mean) / K).clamp(max=1.0),
        "cls_mass": cls_mass,
        "marginal": (inv.unsqueeze(-2) @ e).squeeze(-2) / Q,  # sum_i r_ij / Q without a (Q, K) temp
    }


def _renormalize(p: torch.Tensor, dim: int) -> torch.Tensor:
    s = p.sum(dim, keepdim=True)
    return p / torch.where(s > 0, s, torch.ones_like(s))


def js_divergence(p: torch.Tensor, q: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Jensen-Shannon divergence in nats along ``dim``, in [0, log 2].

    Inputs are renormalised along ``dim`` first (fp16 marginals do not sum to exactly 1);
    zero entries are fine. Computed in float64 (returned in float32): in float32 the mixture of a
    subnormal entry and a zero underflows to 0 and the divergence would read as disjoint.
    """
    p = _renormalize(_f32(p).double(), dim)
    q = _renormalize(_f32(q).double(), dim)
    m = 0.5 * (p + q)
    kl_pm = (torch.xlogy(p, p) - torch.xlogy(p, m)).sum(dim)
    kl_qm = (torch.xlogy(q, q) - torch.xlogy(q, m)).sum(dim)
    return (0.5 * (kl_pm + kl_qm)).clamp(0.0, LOG2).float()


def js_distance_normalized(p: torch.Tensor, q: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """JS divergence / log 2, in [0, 1] (0: identical, 1: disjoint supports).

    Despite the name this is the normalised divergence, not its square root.
    """
    return (js_divergence(p, q, dim) / LOG2).clamp(0.0, 1.0)


def pairwise_separation(marginals: torch.Tensor) -> torch.Tensor:
    """Normalised JS between every pair of parts: ``(..., P, K)`` -> symmetric ``(..., P, P)``."""
    m = _f32(marginals)
    return js_distance_normalized(m.unsqueeze(-2), m.unsqueeze(-3))


def part_separation(marginals: torch.Tensor) -> torch.Tensor:
    """Mean over part pairs p<q of JS(a_p, a_q)/log 2: ``(..., P, K)`` -> ``(...)``."""
    m = _f32(marginals)
    if m.dim() < 2 or m.shape[-2] < 2:
        n = m.shape[-2] if m.dim() >= 2 else "no part axis"
        raise MetricError(
            f"part separation needs at least 2 parts on axis -2 of a (..., P, K) tensor, "
            f"got shape {tuple(m.shape)} ({n}); with one part there is nothing to separate"
        )
    i, j = torch.triu_indices(m.shape[-2], m.shape[-2], offset=1, device=m.device)
    return js_distance_normalized(m.index_select(-2, i), m.index_select(-2, j)).mean(-1)


def timestep_jumps(marginals: torch.Tensor) -> torch.Tensor:
    """Normalised JS between consecutive steps: ``(S, ..., K)`` -> ``(S-1, ...)``."""
    m = _f32(marginals)
    if m.dim() < 2:
        raise MetricError(f"timestep_jumps expects (S, ..., K), got shape {tuple(m.shape)}")
    return js_distance_normalized(m[:-1], m[1:])


def head_averaged_marginals(marginals: torch.Tensor) -> torch.Tensor:
    """``(..., H, K)`` per-head marginals -> ``(..., K)`` head average, renormalised, fp32."""
    return _renormalize(_f32(marginals).mean(-2), -1)


_REDUCERS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "mean": lambda x, d: x.mean(d),
    "max": lambda x, d: x.amax(d),
    "min": lambda x, d: x.amin(d),
}


def reduce(x: torch.Tensor, how: str, dim: int) -> torch.Tensor:
    """Reduce ``x`` along ``dim`` with "mean", "max" or "min"."""
    try:
        return _REDUCERS[how](x, dim)
    except KeyError:
        raise MetricError(f"unknown reduction {how!r} (known: {', '.join(_REDUCERS)})") from None


def summarize(
    entropy: torch.Tensor,
    peak: torch.Tensor,
    cls_mass: torch.Tensor,
    marginals: torch.Tensor,
    eff_keys: torch.Tensor | None = None,
) -> dict[str, float]:
    """Headline numbers of a record's tensors ((S, L, P, H) scalars, (S, L, P, H, K) marginals).

    "separation" (only when P >= 2) is the max over layers of the mean over steps of the part
    separation of head-averaged marginals; "stability_max_jump" (only when S >= 2) is the worst
    consecutive-step JS/log 2 of head-averaged marginals over all layers and parts.
    """
    out = {
        "entropy_mean": float(_f32(entropy).mean()),
        "entropy_min": float(_f32(entropy).amin()),
        "entropy_max": float(_f32(entropy).amax()),
        "peak_mean": float(_f32(peak).mean()),
        "cls_mass_max": float(_f32(cls_mass).amax()),
    }
    if eff_keys is not None:
        out["eff_keys_mean"] = float(_f32(eff_keys).mean())
    per_part = head_averaged_marginals(marginals)  # (S, L, P, K)
    if per_part.shape[2] >= 2:
        out["separation"] = float(part_separation(per_part).mean(0).amax())
    if per_part.shape[0] >= 2:
        out["stability_max_jump"] = float(timestep_jumps(per_part).amax())
    return out
