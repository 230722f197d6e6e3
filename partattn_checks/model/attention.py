"""PartCrafter's attention math as diffusers attention processors.

Two facts make this math easy to get wrong (docs/model.md):

* Heads are split *heads first*. Cross-attention views ``cat(to_k(ctx), to_v(ctx))`` as
  ``(..., heads, 2 * head_dim)``: head ``h`` takes its key from columns ``2·d·h .. 2·d·h + d`` and
  its value from the next ``d`` columns. Self-attention does the same with ``cat(q, k, v)`` viewed
  as ``(..., heads, 3 * head_dim)``. A plain ``view(..., heads, head_dim)`` of ``to_k`` alone gives
  the wrong keys for every head but the first.
* Global blocks fold the parts of an object into one sequence: queries ``(b·N, h, T+1, d)`` become
  ``(b, h, N·(T+1), d)``; self-attention keys/values are folded the same way and cross-attention
  uses the keys/values of the first part of each CFG half (``key[::N]``).

Upstream decides "self or cross" inside the global processor by comparing sequence lengths, which
is ambiguous when ``T + 1`` equals the number of image tokens; we decide by module
(``attn.is_cross_attention``), which is what the module was built for.

Each processor exposes ``prepare`` (everything up to the tensors handed to scaled-dot-product
attention) and ``finish`` (everything after it), so the capture code can run the very same steps
and see the very same ``q`` and ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .files import ModelError


@dataclass
class PreparedAttention:
    """The tensors a processor hands to scaled-dot-product attention, and how to undo its folding.

    ``query``/``key``/``value`` have shape ``(batch, heads, length, head_dim)`` as used by the
    attention kernel; ``num_parts`` is the fold factor (``None`` for unfolded local attention) and
    ``batch_size`` the batch of the module input.
    """

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    num_parts: int | None
    batch_size: int


def split_heads_first(attn, hidden_states: torch.Tensor, context: torch.Tensor | None):
    """Project and split q, k, v heads-first; return each as ``(batch, heads, length, head_dim)``."""
    batch = hidden_states.shape[0]
    heads = attn.heads
    query = attn.to_q(hidden_states)
    source = hidden_states if context is None else context
    key = attn.to_k(source)
    value = attn.to_v(source)
    if attn.is_cross_attention:
        kv = torch.cat((key, value), dim=-1)
        head_dim = kv.shape[-1] // heads // 2
        kv = kv.view(batch, -1, heads, 2 * head_dim)
        key, value = kv.split(head_dim, dim=-1)
        query = query.view(batch, -1, heads, head_dim)
    else:
        qkv = torch.cat((query, key, value), dim=-1)
        head_dim = qkv.shape[-1] // heads // 3
        qkv = qkv.view(batch, -1, heads, 3 * head_dim)
        query, key, value = qkv.split(head_dim, dim=-1)
    query, key, value = (t.transpose(1, 2) for t in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return query, key, value


def fold_parts(tensor: torch.Tensor, num_parts: int) -> torch.Tensor:
    """``(b·N, h, L, d) -> (b, h, N·L, d)``: the parts of one object become one sequence."""
    bn, heads, length, dim = tensor.shape
    if bn % num_parts:
        raise ModelError(f"batch {bn} is not a multiple of num_parts={num_parts}")
    b = bn // num_parts
    return tensor.view(b, num_parts, heads, length, dim).transpose(1, 2).reshape(b, heads, num_parts * length, dim)


def unfold_parts(tensor: torch.Tensor, num_parts: int) -> torch.Tensor:
    """Inverse of :func:`fold_parts`: ``(b, h, N·L, d) -> (b·N, h, L, d)``."""
    b, heads, nl, dim = tensor.shape
    length = nl // num_parts
    return tensor.view(b, heads, num_parts, length, dim).transpose(1, 2).reshape(b * num_parts, heads, length, dim)


def _check_plain_call(attn, attention_mask, image_rotary_emb):
    if attention_mask is not None:
        raise ModelError(f"{type(attn.processor).__name__}: PartCrafter attention takes no attention mask")
    if image_rotary_emb is not None:
        raise ModelError(f"{type(attn.processor).__name__}: PartCrafter attention uses no rotary embedding")


class TripoSGAttnProcessor:
    """Local attention (every block not in ``global_attn_block_ids``): each part on its own."""

    def prepare(self, attn, hidden_states, encoder_hidden_states=None, num_parts=None) -> PreparedAttention:
        q, k, v = split_heads_first(attn, hidden_states, encoder_hidden_states)
        return PreparedAttention(q, k, v, None, hidden_states.shape[0])

    @staticmethod
    def attend(prepared: PreparedAttention) -> torch.Tensor:
        return F.scaled_dot_product_attention(prepared.query, prepared.key, prepared.value)

    @staticmethod
    def finish(attn, prepared: PreparedAttention, attended: torch.Tensor, dtype) -> torch.Tensor:
        """Merge heads (which also unfolds folded parts) and apply ``to_out``."""
        heads, dim = attended.shape[1], attended.shape[3]
        merged = attended.transpose(1, 2).reshape(prepared.batch_size, -1, heads * dim).to(dtype)
        out = attn.to_out[0](merged)
        return attn.to_out[1](out)

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        image_rotary_emb=None,
        num_parts=None,
    ):
        _check_plain_call(attn, attention_mask, image_rotary_emb)
        prepared = self.prepare(attn, hidden_states, encoder_hidden_states, num_parts)
        return self.finish(attn, prepared, self.attend(prepared), prepared.query.dtype)


class PartCrafterAttnProcessor(TripoSGAttnProcessor):
    """Global attention: the parts of an object attend as one sequence (docs/model.md)."""

    def prepare(self, attn, hidden_states, encoder_hidden_states=None, num_parts=None) -> PreparedAttention:
        if num_parts is None:
            raise ModelError("PartCrafterAttnProcessor needs num_parts (pass attention_kwargs={'num_parts': N})")
        num_parts = int(num_parts)
        q, k, v = split_heads_first(attn, hidden_states, encoder_hidden_states)
        if attn.is_cross_attention:
            # Every part of a CFG half carries the same image tokens: keep the first part's.
            k, v = k[::num_parts], v[::num_parts]
        else:
            k, v = fold_parts(k, num_parts), fold_parts(v, num_parts)
        q = fold_parts(q, num_parts)
        return PreparedAttention(q, k, v, num_parts, hidden_states.shape[0])
