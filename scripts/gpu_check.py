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

Then the release pipeline stage (``release_pipeline`` in the JSON line; ``--no-pipeline`` skips
it): it writes a release-shaped random checkpoint on the device itself
(``partattn_checks.model.release``: release transformer, DINOv2-large, 256/224 preprocessor, fp16
safetensors; nothing downloaded), loads it with the real loader and runs the real pipeline at the
full release settings (1024 tokens, 50 steps, 4 parts, CFG) in bfloat16 and float16:
captured/plain (goal <= 1.03), seconds per image, peak ``torch.cuda.max_memory_allocated``,
exactness; then the gate (``partattn check``) on the fixture images in bfloat16.

``--small`` runs the same code on the CPU at a reduced size (width 128, 4 heads, 3 layers,
2 parts × 16 tokens, 17 image tokens, fp32; the pipeline stage on a narrow release-layout
checkpoint at 2 parts × 8 tokens × 2 steps) so that tests can run it.

    scripts/gpu_check.sh [--steps 3] [--parts 8] [--tokens 1024] [--device cuda:0] [--no-pipeline]
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

from partattn_checks.capture.recorder import AttentionRecorder, cross_attention_modules  # noqa: E402
from partattn_checks.capture.runspec import resolve_device  # noqa: E402
from partattn_checks.model.pipeline import flow_sigmas  # noqa: E402
from partattn_checks.model.transformer import RELEASE_CONFIG, PartCrafterDiTModel  # noqa: E402

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


# ---------------------------------------------------------------------------- the release pipeline stage
#: Narrow stand-ins for ``--small`` (the release layout and image geometry, tiny widths).
SMALL_STAGE_TRANSFORMER = {**SMALL_CONFIG, "in_channels": 8, "max_num_parts": 8, "cross_attention_dim": 64}
SMALL_STAGE_ENCODER = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "images"


def add_stage_args(parser) -> None:
    group = parser.add_argument_group("release pipeline stage")
    group.add_argument("--no-pipeline", dest="pipeline", action="store_false", help="skip the stage")
    group.add_argument("--checkpoint", help="use this release-shaped checkpoint instead of writing one")
    group.add_argument("--pipeline-dtypes", default="bfloat16,float16")
    group.add_argument("--pipeline-steps", type=int, default=None, help="default: 50 (2 with --small)")
    group.add_argument("--pipeline-tokens", type=int, default=None, help="default: 1024 (8 with --small)")
    group.add_argument("--pipeline-parts", type=int, default=None, help="default: 4 (2 with --small)")
    group.add_argument("--repeats", type=int, default=2, help="plain and captured images each, interleaved")
    group.add_argument("--gate-dtype", default="bfloat16", help="dtype of the gate run ('none' skips it)")
    group.add_argument("--fixtures", default=str(FIXTURES), help="fixture images of the gate run")


def peak_rss() -> int | None:
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def write_stage_checkpoint(args, device, folder: Path) -> float:
    from partattn_checks.model.release import RELEASE_DINOV2, write_release_checkpoint

    start = time.perf_counter()
    if args.small:
        write_release_checkpoint(
            folder,
            seed=args.seed,
            device=device,
            transformer_config=SMALL_STAGE_TRANSFORMER,
            encoder_config={**RELEASE_DINOV2, **SMALL_STAGE_ENCODER},
        )
    else:
        write_release_checkpoint(folder, seed=args.seed, device=device)
    return time.perf_counter() - start


def stage_run(checkpoint: Path, device, dtype_name: str, settings: dict, repeats: int) -> dict:
    """Load ``checkpoint`` in ``dtype_name``; plain and captured images interleaved after a warm-up."""
    from partattn_checks.capture.recorder import record_attention
    from partattn_checks.model.pipeline import PartCrafterPipeline

    image = FIXTURES / "np4_four_shapes.png"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    pipe = PartCrafterPipeline.from_pretrained(checkpoint, device=device, dtype=DTYPES[dtype_name])
    sync(device)
    load_s = time.perf_counter() - start
    loaded_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss()
    weights = sum(
        t.numel() * t.element_size() for m in (pipe.transformer, pipe.image_encoder) for t in m.state_dict().values()
    )
    warm = {**settings, "steps": 1}
    pipe(image, **warm)
    record_attention(pipe, image, **warm)
    seconds = {"plain": [], "captured": []}
    latents = {}
    for kind in (["plain", "captured", "captured", "plain"] * repeats)[: 2 * repeats]:
        sync(device)
        begin = time.perf_counter()
        if kind == "plain":
            latents[kind] = pipe(image, **settings).latents
        else:
            latents[kind] = record_attention(pipe, image, **settings)[0].latents
        sync(device)
        seconds[kind].append(time.perf_counter() - begin)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss()
    plain, captured = statistics.median(seconds["plain"]), statistics.median(seconds["captured"])
    out = {
        "load_s": round(load_s, 3),
        "image_s": {"plain": round(plain, 4), "captured": round(captured, 4)},
        "all_image_s": {k: [round(s, 4) for s in v] for k, v in seconds.items()},
        "captured_over_plain": round(captured / plain, 4),
        "exact": bool(torch.equal(latents["plain"], latents["captured"])),
        "weights_bytes": weights,
        "peak_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS (VmHWM)",
        "peak_after_load_bytes": loaded_peak,
        "peak_bytes": peak,
        "peak_over_weights": None if peak is None else round(peak / weights, 4),
    }
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def gate_run(checkpoint: Path, device, args, settings: dict, work: Path) -> dict:
    """``partattn check`` (pytest --partattn) on the fixture images, in a child process; the counts
    come from its JUnit XML. The random weights are expected to fail checks: this reports them."""
    import subprocess
    import xml.etree.ElementTree as ElementTree

    junit = work / "gate.xml"
    command = [
        sys.executable,
        "-c",
        "import sys; from partattn_checks.cli import main; sys.exit(main(sys.argv[1:]))",
        "check",
        "--model",
        str(checkpoint),
        "--fixtures",
        args.fixtures,
        "--steps",
        str(settings["steps"]),
        "--num-tokens",
        str(settings["num_tokens"]),
        "--device",
        str(device),
        "--",
        f"--partattn-dtype={args.gate_dtype}",
        f"--partattn-results={work / 'results'}",
        f"--partattn-baselines={work / 'baselines'}",
        f"--junitxml={junit}",
        "-q",
    ]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    wall = time.perf_counter() - start
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if junit.is_file():
        suite = ElementTree.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in counts}
    images = len([p for p in Path(args.fixtures).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")])
    return {
        "dtype": args.gate_dtype,
        "exit": proc.returncode,
        "wall_s": round(wall, 2),
        "images": images,
        "seconds_per_image": round(wall / max(images, 1), 3),
        **counts,
        "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        "tail": proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else proc.stderr[-300:],
    }


def release_pipeline_stage(args, device) -> dict:
    """Write (or reuse) the release-shaped checkpoint, measure each dtype, run the gate."""
    import shutil
    import tempfile

    settings = {
        "num_parts": args.pipeline_parts or (2 if args.small else 4),
        "num_tokens": args.pipeline_tokens or (8 if args.small else 1024),
        "steps": args.pipeline_steps or (2 if args.small else 50),
    }
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        out: dict = {"settings": settings}
        if args.checkpoint:
            checkpoint = Path(args.checkpoint)
        else:
            checkpoint = work / "release-shaped"
            out["write_s"] = round(write_stage_checkpoint(args, device, checkpoint), 2)
        from partattn_checks.model.release import weight_count

        out["parameters"] = weight_count(checkpoint)
        out["runs"] = {}
        for dtype_name in args.pipeline_dtypes.split(","):
            out["runs"][dtype_name] = stage_run(checkpoint, device, dtype_name, settings, args.repeats)
        if args.gate_dtype != "none":
            out["gate"] = gate_run(checkpoint, device, args, settings, work)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
    add_stage_args(parser)
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
    model = record = None  # free the device for the pipeline stage
    records.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    stage_ok = True
    if args.pipeline:
        result["release_pipeline"] = release_pipeline_stage(args, device)
        stage_ok = all(run["exact"] for run in result["release_pipeline"]["runs"].values())
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
    if not stage_ok:
        print("gpu_check: FAILED: the release pipeline's captured latents differ from the plain ones", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
