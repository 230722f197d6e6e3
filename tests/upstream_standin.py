"""A stand-in for upstream PartCrafter's pipeline, written the way upstream's is: its call signature
(``image=[img] * N``, ``attention_kwargs``, ``num_tokens``, ``num_inference_steps``,
``guidance_scale``, ``generator``), its processor class names on the transformer, its own loop
(one forward per step with the CFG batch concatenated, keyword ``encoder_hidden_states``), then
mesh decoding, which the adapter must never reach.

``factory(model, device, dtype)`` is what ``--partattn-pipeline=upstream_standin:factory`` calls.
``FORK_SCALE`` set to a number makes the local processors scale their scores by it (a fork's
regression inside ``scaled_dot_product_attention``).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from partattn_checks.model.attention import PartCrafterAttnProcessor as _Global
from partattn_checks.model.attention import TripoSGAttnProcessor as _Local
from partattn_checks.model.loading import load_checkpoint

#: Environment variable read by the local processors: a score factor (a fork's regression).
FORK_SCALE = "STANDIN_FORK_SCALE"


class TripoSGAttnProcessor2_0(_Local):
    """Named like upstream's local processor; with $STANDIN_FORK_SCALE it scales its scores."""

    @staticmethod
    def attend(prepared):
        factor = float(os.environ.get(FORK_SCALE, "1"))
        d = prepared.query.shape[-1]
        return F.scaled_dot_product_attention(prepared.query, prepared.key, prepared.value, scale=factor * d**-0.5)


class PartCrafterAttnProcessor(_Global):
    """Named like upstream's global processor."""


class MeshDecodingReached(AssertionError):
    """The adapter let the pipeline decode meshes (it must stop after denoising)."""


class UpstreamStylePipeline:
    def __init__(self, transformer, image_encoder_dinov2, feature_extractor_dinov2, scheduler_config):
        self.transformer = transformer
        self.image_encoder_dinov2 = image_encoder_dinov2
        self.feature_extractor_dinov2 = feature_extractor_dinov2
        self.num_train_timesteps = float(scheduler_config.get("num_train_timesteps", 1000))
        for i, block in enumerate(transformer.blocks):
            processor = PartCrafterAttnProcessor if i in transformer.global_block_ids else TripoSGAttnProcessor2_0
            block.attn1.set_processor(processor())
            block.attn2.set_processor(processor())

    @classmethod
    def from_pretrained(cls, folder, device="cpu", dtype=torch.float32):
        ckpt = load_checkpoint(folder, dtype=dtype, device=device)
        return cls(ckpt.transformer, ckpt.image_encoder, ckpt.feature_extractor, ckpt.scheduler_config)

    @property
    def device(self):
        return next(self.transformer.parameters()).device

    @property
    def dtype(self):
        return next(self.transformer.parameters()).dtype

    @torch.no_grad()
    def __call__(
        self,
        image,
        num_inference_steps=50,
        num_tokens=1024,
        guidance_scale=7.0,
        generator=None,
        attention_kwargs=None,
        output_type="trimesh",
    ):
        images = image if isinstance(image, list) else [image]
        pixels = self.feature_extractor_dinov2(images, return_tensors="pt").pixel_values
        embeds = self.image_encoder_dinov2(pixels.to(self.device, self.dtype)).last_hidden_state
        cfg = guidance_scale > 1.0
        if cfg:
            embeds = torch.cat([torch.zeros_like(embeds), embeds])
        shape = (len(images), num_tokens, self.transformer.config.in_channels)
        latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device, self.dtype)
        sigmas = [1.0 - i / num_inference_steps for i in range(num_inference_steps)] + [0.0]
        for i in range(num_inference_steps):
            model_input = torch.cat([latents] * 2) if cfg else latents
            timestep = torch.full((model_input.shape[0],), self.num_train_timesteps * sigmas[i], dtype=self.dtype)
            velocity = self.transformer(
                model_input, timestep, encoder_hidden_states=embeds, attention_kwargs=attention_kwargs
            ).sample.to(self.dtype)
            if cfg:
                uncond, cond = velocity.chunk(2)
                velocity = uncond + guidance_scale * (cond - uncond)
            latents = latents + (sigmas[i] - sigmas[i + 1]) * velocity
        raise MeshDecodingReached("the stand-in has no VAE: the adapter must stop after the last step")


def factory(model, device, dtype):
    from partattn_checks import EMBEDDED_MODEL

    return UpstreamStylePipeline.from_pretrained(model or EMBEDDED_MODEL, device=device, dtype=getattr(torch, dtype))
