"""Release-size capture check on an NVIDIA GPU, offline: exactness, step time, overhead, peak memory.

Builds the PartCrafter transformer at the release config (``RELEASE_CONFIG``: width 2048, 16 heads,
21 layers, 1.44 B parameters) with random fp16 weights directly on the GPU (built on the meta device,
materialised with ``to_empty`` and initialised in place: nothing is downloaded or read from disk),
draws random image tokens (257 × 1024, as DINOv2-large gives) and denoises 8 parts × 1024 tokens
with CFG for a few steps (the pipeline's loop: CFG batch [uncond zeros, cond], t = 1000·sigma,
Euler step on the guided velocity):

1. one warm-up step without and one with capture (kernel selection, allocator, lazy imports);
2. a plain run, a captured run (every cross-attention layer, every step), a second plain run.

Then it prints ONE JSON line: ``exact`` (captured latents ``torch.equal`` the plain ones, on the
device), ``deterministic`` (the two plain runs are equal: without it exactness cannot be judged),
median step seconds without and with capture, their ratio, peak ``torch.cuda.max_memory_allocated``
of each run, and the record's size next to what keeping every full map would take. It exits 1
when the capture is not exact and 2 when the plain runs themselves differ.

``--small`` runs the same code on the CPU at a reduced size (width 128, 4 heads, 3 layers,
2 parts × 16 tokens, 17 image tokens, fp32) so that tests can run it.

    scripts/gpu_check.sh [--steps 3] [--parts 8] [--tokens 1024] [--device cuda:0]
    scripts/gpu_check.sh --small
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from partattn_checks.capture import AttentionRecorder, cross_attention_modules  # noqa: E402
from partattn_checks.model.pipeline import flow_sigmas  # noqa: E402
from partattn_checks.model.transformer import RELEASE_CONFIG, PartCrafterDiTModel  # noqa: E402
from partattn_checks.runspec import resolve_device  # noqa: E402

SMALL_CONFIG = {
    **RELEASE_CONFIG,
    "num_attention_heads": 4,
    "width": 128,
    "num_layers": 3,
    "cross_attention_dim": 1024,
    "global_attn_block_ids": [0, 2],
}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def build_model(config: dict, device: torch.device, dtype: torch.dtype, seed: int, std: float = 0.02):
    """Random weights without a CPU copy: meta -> to_empty(device) -> in-place init -> dtype.

    Matrices and embeddings ~ N(0, std), biases 0, norm weights 1 (every 1-d weight here is a norm).
    """
    with torch.device("meta"):
        model = PartCrafterDiTModel(**config)
    model.to_empty(device=device)
    if any(True for _ in model.buffers()):
        raise RuntimeError("the transformer has buffers that to_empty leaves uninitialised; initialise them here")
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif param.dim() == 1:
                param.fill_(1.0)
            else:
                param.normal_(0.0, std, generator=generator)
    # nn.Module.to: diffusers' ModelMixin.to only adds a warning about fp32 modules; FP32LayerNorm
    # computes in fp32 whatever its weights' dtype.
    torch.nn.Module.to(model, dtype=dtype)
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def denoise(model, latents, image_tokens, num_parts, steps, guidance, device, observers=()):
    """The pipeline's CFG + Euler loop; returns the final latents and per-step seconds."""
    sigmas = flow_sigmas(steps)
    kwargs = {"num_parts": num_parts}
    seconds = []
    for i in range(steps):
        sync(device)
        start = time.perf_counter()
        t = 1000.0 * sigmas[i]
        for observer in observers:
            observer.begin_step(i, t)
        model_input = torch.cat([latents, latents])
        timestep = torch.full((model_input.shape[0],), t, device=device, dtype=latents.dtype)
        velocity = model(model_input, timestep, image_tokens, attention_kwargs=kwargs).sample
        uncond, cond = velocity.chunk(2)
        latents = latents + (sigmas[i] - sigmas[i + 1]) * (uncond + guidance * (cond - uncond))
        for observer in observers:
            observer.end_step(i, t, latents)
        sync(device)
        seconds.append(time.perf_counter() - start)
    return latents, seconds


def measured(device, run):
    """Run ``run()``; return its result and the peak memory allocated meanwhile (CUDA only)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    result = run()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return result, peak


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="reduced size on the CPU (for tests)")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --small)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: float16 (float32 with --small)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--parts", type=int, default=None, help="default: 8 (2 with --small)")
    parser.add_argument("--tokens", type=int, default=None, help="default: 1024 (16 with --small)")
    parser.add_argument("--image-tokens", type=int, default=None, help="default: 257 (17 with --small)")
    parser.add_argument("--guidance", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    small = args.small
    args.device = args.device or ("cpu" if small else "cuda")
    args.dtype = args.dtype or ("float32" if small else "float16")
    args.parts = args.parts or (2 if small else 8)
    args.tokens = args.tokens or (16 if small else 1024)
    args.image_tokens = args.image_tokens or (17 if small else 257)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        device = torch.device(resolve_device(args.device).device)
    except ValueError as err:
        print(f"gpu_check: {err}. Without a GPU run `scripts/gpu_check.sh --small`.", file=sys.stderr)
        return 3
    dtype = DTYPES[args.dtype]
    config = SMALL_CONFIG if args.small else RELEASE_CONFIG
    if 2 * args.parts > config["max_num_parts"]:
        print(
            f"gpu_check: {args.parts} parts need 2*N <= max_num_parts={config['max_num_parts']} under CFG",
            file=sys.stderr,
        )
        return 3

    start = time.perf_counter()
    model = build_model(config, device, dtype, args.seed)
    sync(device)
    build_s = time.perf_counter() - start
    num_params = sum(p.numel() for p in model.parameters())

    gen = torch.Generator().manual_seed(args.seed)  # inputs drawn on the CPU: same on every device
    latents = torch.randn(args.parts, args.tokens, config["in_channels"], generator=gen).to(device, dtype)
    image = torch.randn(1, args.image_tokens, config["cross_attention_dim"], generator=gen).to(device, dtype)
    image = image.expand(args.parts, -1, -1)
    image_tokens = torch.cat([torch.zeros_like(image), image])  # CFG: the unconditional image is all zeros

    def plain(steps=args.steps):
        return denoise(model, latents, image_tokens, args.parts, steps, args.guidance, device)

    records = []

    def captured(steps=args.steps):
        recorder = AttentionRecorder(model, num_parts=args.parts, cfg=True, has_cls=True)
        with recorder:
            out = denoise(model, latents, image_tokens, args.parts, steps, args.guidance, device, (recorder,))
        records.append(recorder.record())
        return out

    with torch.no_grad():
        plain(1)  # warm-ups
        captured(1)
        (plain_a, plain_a_s), plain_peak = measured(device, plain)
        (capt, capt_s), capt_peak = measured(device, captured)
        (plain_b, plain_b_s), _ = measured(device, plain)
    record = records[-1]

    exact = bool(torch.equal(plain_a, capt))
    deterministic = bool(torch.equal(plain_a, plain_b))
    plain_step = statistics.median(plain_a_s + plain_b_s)
    capt_step = statistics.median(capt_s)
    layers = len(cross_attention_modules(model))
    heads = config["num_attention_heads"]
    naive_bytes = args.steps * layers * 2 * args.parts * heads * (args.tokens + 1) * args.image_tokens * 4
    result = {
        "check": "gpu_check",
        "mode": "small" if args.small else "release",
        "exact": exact,
        "deterministic": deterministic,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "dtype": args.dtype,
        "config": {
            "width": config["width"],
            "heads": heads,
            "layers": config["num_layers"],
            "cross_dim": config["cross_attention_dim"],
            "global_ids": config["global_attn_block_ids"],
            "parameters": num_params,
            "parts": args.parts,
            "tokens": args.tokens,
            "image_tokens": args.image_tokens,
            "steps": args.steps,
            "cfg": True,
            "guidance": args.guidance,
        },
        "build_s": round(build_s, 3),
        "step_s": {"plain": round(plain_step, 5), "captured": round(capt_step, 5)},
        "all_step_s": {
            "plain": [round(s, 5) for s in plain_a_s + plain_b_s],
            "captured": [round(s, 5) for s in capt_s],
        },
        "overhead": round(capt_step / plain_step, 4),
        "peak_bytes": {"plain": plain_peak, "captured": capt_peak},
        "peak_gib": {
            "plain": None if plain_peak is None else round(plain_peak / 2**30, 3),
            "captured": None if capt_peak is None else round(capt_peak / 2**30, 3),
        },
        "record_bytes": record.nbytes(),
        "naive_full_maps_bytes": naive_bytes,
        "record_finite": not record.nonfinite,
        "mean_entropy": round(float(record.entropy.float().mean()), 4),
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    print(json.dumps(result))
    if not deterministic:
        print(
            "gpu_check: two plain runs differ, so exactness cannot be judged on this setup "
            "(set CUBLAS_WORKSPACE_CONFIG=:4096:8, as gpu_check.sh does)",
            file=sys.stderr,
        )
        return 2
    if not exact:
        print("gpu_check: FAILED: latents with capture differ from latents without", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
