"""The PartCrafter DiT, written from its published architecture (docs/model.md).

At the release config its state dict has exactly the names and shapes of the released
``transformer/diffusion_pytorch_model.safetensors`` (555 tensors, 1,439,621,696 parameters), so the
release weights load into it unchanged.

Forward, in order: sinusoidal timestep embedding -> ``time_proj`` MLP, prepended as one extra token
(T latent tokens become T+1); ``proj_in``; part embedding added to all T+1 tokens; pre-norm blocks
(self-attention, cross-attention to the image tokens, feed-forward) with U-skips from the first half
into the second; ``norm_out``; drop the time token; ``proj_out``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from diffusers.utils import BaseOutput
from torch import nn

from .attention import PartCrafterAttnProcessor, TripoSGAttnProcessor
from .files import ModelError

#: Config of the released ``wgsxm/PartCrafter`` transformer (``transformer/config.json``).
RELEASE_CONFIG = {
    "num_attention_heads": 16,
    "width": 2048,
    "in_channels": 64,
    "num_layers": 21,
    "cross_attention_dim": 1024,
    "max_num_parts": 32,
    "enable_part_embedding": True,
    "enable_local_cross_attn": True,
    "enable_global_cross_attn": True,
    "global_attn_block_ids": list(range(0, 21, 2)),
    "global_attn_block_id_range": None,
}


@dataclass
class PartCrafterTransformerOutput(BaseOutput):
    sample: torch.Tensor


class PartCrafterBlock(nn.Module):
    """One pre-norm DiT block; blocks in the second half first merge a U-skip."""

    def __init__(self, width: int, heads: int, cross_attention_dim: int, *, use_skip: bool, is_global: bool):
        super().__init__()
        processor = PartCrafterAttnProcessor if is_global else TripoSGAttnProcessor
        self.is_global = is_global
        # Definition order follows the released state dict: norms, attn1, attn2, ff, skip.
        self.norm1 = FP32LayerNorm(width, eps=1e-5, elementwise_affine=True)
        self.norm2 = FP32LayerNorm(width, eps=1e-5, elementwise_affine=True)
        self.norm3 = FP32LayerNorm(width, eps=1e-5, elementwise_affine=True)
        self.attn1 = Attention(
            query_dim=width,
            dim_head=width // heads,
            heads=heads,
            qk_norm="rms_norm",
            eps=1e-6,
            bias=False,
            processor=processor(),  # type: ignore[arg-type]  # diffusers annotates its own AttnProcessor; any works
        )
        self.attn2 = Attention(
            query_dim=width,
            cross_attention_dim=cross_attention_dim,
            dim_head=width // heads,
            heads=heads,
            qk_norm="rms_norm",
            eps=1e-6,
            bias=False,
            processor=processor(),  # type: ignore[arg-type]  # as above
        )
        self.ff = FeedForward(width, activation_fn="gelu", inner_dim=4 * width, bias=True)
        self.skip_linear: nn.Linear | None
        if use_skip:
            self.skip_norm = FP32LayerNorm(width, eps=1e-5, elementwise_affine=True)
            self.skip_linear = nn.Linear(2 * width, width)
        else:
            self.skip_linear = None

    def forward(self, hidden_states, image_tokens, skip=None, attention_kwargs=None):
        kwargs = attention_kwargs or {}
        if self.skip_linear is not None:
            hidden_states = self.skip_norm(self.skip_linear(torch.cat([skip, hidden_states], dim=-1)))
        hidden_states = hidden_states + self.attn1(self.norm1(hidden_states), **kwargs)
        hidden_states = hidden_states + self.attn2(
            self.norm2(hidden_states), encoder_hidden_states=image_tokens, **kwargs
        )
        return hidden_states + self.ff(self.norm3(hidden_states))


class PartCrafterDiTModel(ModelMixin, ConfigMixin):  # type: ignore[misc]  # diffusers' bases type config_name apart
    """PartCrafter's denoising transformer with the config keys of the released ``config.json``."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 16,
        width: int = 2048,
        in_channels: int = 64,
        num_layers: int = 21,
        cross_attention_dim: int = 1024,
        max_num_parts: int = 32,
        enable_part_embedding: bool = True,
        enable_local_cross_attn: bool = True,
        enable_global_cross_attn: bool = True,
        global_attn_block_ids: list[int] | None = None,
        global_attn_block_id_range: list[int] | None = None,
    ):
        super().__init__()
        if width % num_attention_heads:
            raise ModelError(f"width {width} must be a multiple of num_attention_heads {num_attention_heads}")
        self.global_block_ids = _global_block_ids(global_attn_block_ids, global_attn_block_id_range)
        self.time_embed = Timesteps(width, flip_sin_to_cos=False, downscale_freq_shift=0)
        self.time_proj = TimestepEmbedding(width, 4 * width, act_fn="gelu", out_dim=width)
        if enable_part_embedding:
            self.part_embedding = nn.Embedding(max_num_parts, width)
        self.proj_in = nn.Linear(in_channels, width)
        self.blocks = nn.ModuleList(
            PartCrafterBlock(
                width,
                num_attention_heads,
                cross_attention_dim,
                use_skip=layer > num_layers // 2,
                is_global=layer in self.global_block_ids,
            )
            for layer in range(num_layers)
        )
        self.norm_out = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, in_channels)

    def part_ids(self, batch: int, device) -> torch.Tensor:
        """Part-embedding ids: ``arange(batch)``, as upstream does.

        Under classifier-free guidance the batch is ``[uncond parts, cond parts]`` = 2N, so the
        unconditional parts get ids 0..N-1 and the conditional ones N..2N-1. This is an upstream
        quirk kept on purpose so outputs match the released model (docs/model.md).
        """
        if batch > self.config["max_num_parts"]:
            raise ModelError(
                f"batch of {batch} part latents needs part ids up to {batch - 1}, but the checkpoint has "
                f"max_num_parts={self.config['max_num_parts']}; use fewer parts (2*N <= max_num_parts under CFG)"
            )
        return torch.arange(batch, device=device)

    def forward(
        self,
        hidden_states,
        timestep,
        encoder_hidden_states,
        attention_kwargs=None,
        return_dict=True,
        part_ids: torch.Tensor | None = None,
    ):
        """``hidden_states`` (B, T, C) part latents; ``encoder_hidden_states`` (B, K, D) image tokens;
        ``attention_kwargs={"num_parts": N}`` with B a multiple of N (B = 2N under CFG).

        ``part_ids`` (B,) overrides upstream's ``arange(B)``; only training uses it, to put many
        objects in one batch with the ids they get at inference."""
        cfg = self.config
        attention_kwargs = dict(attention_kwargs or {})
        if self.global_block_ids and "num_parts" not in attention_kwargs:
            raise ModelError("PartCrafterDiTModel.forward needs attention_kwargs={'num_parts': N}")
        batch, tokens, _ = hidden_states.shape
        timestep = torch.as_tensor(timestep, device=hidden_states.device).reshape(-1).expand(batch)
        time_token = self.time_proj(self.time_embed(timestep).to(hidden_states.dtype)).unsqueeze(1)
        hidden_states = torch.cat([time_token, self.proj_in(hidden_states)], dim=1)
        if cfg["enable_part_embedding"]:
            ids = self.part_ids(batch, hidden_states.device) if part_ids is None else part_ids.to(hidden_states.device)
            hidden_states = hidden_states + self.part_embedding(ids).unsqueeze(1)

        no_image = torch.zeros_like(encoder_hidden_states)
        skips: list[torch.Tensor] = []
        for layer, block in enumerate(self.blocks):
            skip = skips.pop() if block.skip_linear is not None else None
            sees_image = cfg["enable_global_cross_attn"] if block.is_global else cfg["enable_local_cross_attn"]
            if not self.global_block_ids:
                sees_image = True
            hidden_states = block(
                hidden_states,
                encoder_hidden_states if sees_image else no_image,
                skip=skip,
                attention_kwargs=attention_kwargs if block.is_global else None,
            )
            if layer < cfg["num_layers"] // 2:
                skips.append(hidden_states)

        hidden_states = self.norm_out(hidden_states)[:, -tokens:]
        sample = self.proj_out(hidden_states)
        return PartCrafterTransformerOutput(sample=sample) if return_dict else (sample,)


def _global_block_ids(ids, id_range) -> list[int]:
    if ids is not None:
        return list(ids)
    if id_range is not None:
        return list(range(id_range[0], id_range[1] + 1))
    return []
