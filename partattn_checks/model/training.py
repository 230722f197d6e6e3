"""Train a tiny PartCrafter-format model on the synthetic part/region task (CPU, minutes).

PartCrafter's flow objective: for a clean part latent ``x0``, noise ``e`` and ``sigma ~ U(0, 1)``
the model sees ``x = sigma * e + (1 - sigma) * x0`` at timestep ``1000 * sigma`` and predicts the
velocity ``x0 - e``. In the synthetic task (``partattn_checks.model.synthetic``) part k's latent is the
outline of the shape whose colour belongs to that part, so the model can only solve it by looking
at that shape: a healthy model's cross-attention for part k sits on part k's region.

Batches put many objects side by side with the part-embedding ids they get at inference under
CFG: conditional parts ``N..2N-1`` with the image, and (with probability ``uncond_prob`` per
object) unconditional parts ``0..N-1`` with all-zero image tokens, as the inference batch has.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from . import synthetic
from .loading import feature_extractor_from_config
from .tiny import TINY_PREPROCESSOR, build_image_encoder, build_transformer


@dataclass
class TrainConfig:
    seed: int = 0
    iterations: int = 3000
    objects_per_batch: int = 16
    part_counts: tuple[int, ...] = (1, 2, 2, 3, 3, 4, 4)
    lr: float = 2e-3
    warmup: int = 100
    norm_lr_scale: float = 10.0
    uncond_prob: float = 0.1
    num_tokens: int = 16
    log_every: int = 100
    threads: int = 1


@dataclass
class TrainLog:
    config: dict
    curve: list[dict] = field(default_factory=list)  # {"iteration", "loss", "seconds"}
    seconds: float = 0.0


def make_batch(rng: np.random.Generator, processor, num_parts: int, objects: int, num_tokens: int):
    """Pixels (B, 3, H, W), clean latents (B·N, T, C) for ``objects`` scenes with ``num_parts`` parts."""
    scenes = [synthetic.draw_scene(rng, num_parts, num_tokens=num_tokens) for _ in range(objects)]
    pixels = processor([s.image for s in scenes], return_tensors="pt").pixel_values
    x0 = torch.from_numpy(np.concatenate([s.targets for s in scenes]))
    return pixels, x0


def flow_loss(transformer, encoder, pixels, x0, num_parts: int, uncond_prob: float, generator: torch.Generator):
    objects = pixels.shape[0]
    tokens = encoder(pixels).last_hidden_state
    uncond = torch.rand(objects, generator=generator) < uncond_prob
    tokens = torch.where(uncond.view(-1, 1, 1), torch.zeros_like(tokens), tokens)
    tokens = tokens.repeat_interleave(num_parts, dim=0)
    # Inference ids under CFG: uncond part k -> k, cond part k -> N + k (upstream's arange(2N)).
    part = torch.arange(num_parts).repeat(objects)
    ids = part + num_parts * (~uncond).long().repeat_interleave(num_parts)
    sigma = torch.rand(objects, generator=generator).repeat_interleave(num_parts)
    noise = torch.randn(x0.shape, generator=generator)
    s = sigma.view(-1, 1, 1)
    noisy = s * noise + (1 - s) * x0
    pred = transformer(noisy, 1000 * sigma, tokens, attention_kwargs={"num_parts": num_parts}, part_ids=ids).sample
    return torch.nn.functional.mse_loss(pred, x0 - noise)


def param_groups(transformer, encoder, config: TrainConfig) -> list[dict]:
    """The q/k RMSNorm gains learn ``norm_lr_scale`` times faster than the rest.

    With head_dim 16 and unit gains a logit is at most sqrt(16) = 4, too flat to single out a
    region among 64 patches; the release model (head_dim 128) starts at sqrt(128). Letting the
    gains grow quickly gives the tiny model the same room for sharp attention early in training.
    """
    gains = [p for n, p in transformer.named_parameters() if n.endswith(("norm_q.weight", "norm_k.weight"))]
    ids = {id(p) for p in gains}
    rest = [p for p in list(transformer.parameters()) + list(encoder.parameters()) if id(p) not in ids]
    return [{"params": rest}, {"params": gains, "lr": config.lr * config.norm_lr_scale}]


def train(config: TrainConfig, progress=print, callback=None, stop_after: int | None = None):
    """Train from scratch; return ``(transformer, image_encoder, TrainLog)``.

    Deterministic per seed and thread count. ``callback(iteration, transformer, image_encoder)`` is
    called after each optimizer step (``iteration`` counts from 1; the modules are in training
    mode): an attention monitor, checkpoint saving. ``stop_after``: stop after that many iterations
    of ``config``'s schedule (the learning rate still follows ``config.iterations``), so the first
    iterations of a long run can be reproduced without running it all."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    transformer = build_transformer(seed=config.seed).train()
    encoder = build_image_encoder(seed=config.seed + 1).train()
    processor = feature_extractor_from_config(TINY_PREPROCESSOR)
    params = list(transformer.parameters()) + list(encoder.parameters())
    optimizer = torch.optim.AdamW(param_groups(transformer, encoder, config), lr=config.lr, weight_decay=0.0)

    def lr_factor(it):
        if it < config.warmup:
            return (it + 1) / config.warmup
        return 0.5 * (1 + math.cos(math.pi * (it - config.warmup) / max(1, config.iterations - config.warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    log = TrainLog(config=asdict(config))
    start, running = time.perf_counter(), []
    last = config.iterations if stop_after is None else min(int(stop_after), config.iterations)
    for it in range(last):
        num_parts = config.part_counts[it % len(config.part_counts)]
        pixels, x0 = make_batch(rng, processor, num_parts, config.objects_per_batch, config.num_tokens)
        loss = flow_loss(transformer, encoder, pixels, x0, num_parts, config.uncond_prob, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        running.append(loss.item())
        if callback is not None:
            callback(it + 1, transformer, encoder)
        if (it + 1) % config.log_every == 0 or it + 1 == last:
            point = {
                "iteration": it + 1,
                "loss": float(np.mean(running)),
                "seconds": round(time.perf_counter() - start, 1),
            }
            log.curve.append(point)
            running = []
            progress(json.dumps(point))
    log.seconds = round(time.perf_counter() - start, 1)
    return transformer.eval(), encoder.eval(), log
