"""Release scale on this machine: write, load and run a release-shaped random checkpoint.

Writes the checkpoint of ``partattn_checks.model.release`` (release transformer, DINOv2-large,
256/224 preprocessor, fp16 safetensors; 1.74 B parameters, 3.5 GB) once, then measures, each in
its own subprocess so that every peak RSS (the child's own ``VmHWM``) is one run's:

* ``write``: seconds and peak RSS of writing the checkpoint (skipped with ``--checkpoint DIR``);
* ``recorder[<dtype>]``: load seconds, the peak RSS after loading and after a captured run
  (``record_attention``) at small settings, seconds per step, and the ratio of peak RSS to the
  bytes of the loaded weights in that dtype (goal: <= 1.15);
* ``overhead`` (``--ratio-dtype``, default float32): the same pipeline plain vs captured, repeats
  interleaved (plain, captured, captured, plain, ...), median seconds per step of each and their
  ratio; the captured latents must equal the plain ones;
* ``partattn_run[<dtype>]``: the ``partattn run`` command on a fixture image (figures, GIFs,
  HTML included): wall seconds and peak RSS;
* ``cost`` (``--table``): seconds per step and per image for a few (parts, tokens, steps) settings,
  one plain run each, in the ratio dtype.

``--metric-deltas SHORT,FULL`` (e.g. ``10x16,50x1024``: STEPSxTOKENS) measures something else, on the
embedded tiny model (a trained one: a random release-shaped model's attention means nothing): each
fixture image's check values and verdicts at both settings, and how far they move.

Prints ONE JSON line. It is a benchmark, not a test; absolute times on a shared 2-core VM are
noisy, the ratios are the point.

    python benchmarks/release_scale.py [--checkpoint DIR | --keep DIR] [--dtypes float32,bfloat16]
        [--parts 2 --tokens 64 --steps 2] [--repeats 2] [--table 1x64x2,2x64x2,2x256x2,2x64x4] [--no-cli]
    python benchmarks/release_scale.py --metric-deltas 10x16,50x1024
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
IMAGE = ROOT / "fixtures" / "images" / "np2_circle_square.png"


def peak_rss() -> int:
    """This process's peak resident set size in bytes (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(args: list[str]) -> dict:
    """Run ``args`` as a child and return its last JSON line; each child reports its own peak RSS
    (``VmHWM``), so every number is one process's."""
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------- children
def child_write(out: str) -> dict:
    from partattn_checks.model.release import weight_count, write_release_checkpoint

    start = time.perf_counter()
    write_release_checkpoint(out)
    return {"write_s": time.perf_counter() - start, "peak_rss": peak_rss(), "parameters": weight_count(out)}


def weights_bytes(pipe) -> int:
    return sum(
        t.numel() * t.element_size()
        for module in (pipe.transformer, pipe.image_encoder)
        for t in (*module.parameters(), *module.buffers())
    )


def step_median(result) -> float:
    return statistics.median(result.step_seconds)


def child_recorder(opts) -> dict:
    import torch

    from partattn_checks.capture.recorder import record_attention
    from partattn_checks.model.pipeline import PartCrafterPipeline

    torch.manual_seed(0)
    rss_import = peak_rss()
    start = time.perf_counter()
    pipe = PartCrafterPipeline.from_pretrained(opts.checkpoint, dtype=getattr(torch, opts.dtype))
    load_s = time.perf_counter() - start
    rss_load = peak_rss()
    weights = weights_bytes(pipe)
    settings = dict(steps=opts.steps, num_tokens=opts.tokens, seed=0)
    start = time.perf_counter()
    result, record = record_attention(pipe, IMAGE, opts.parts, **settings)
    out = {
        "dtype": opts.dtype,
        "weights_bytes": weights,
        "load_s": load_s,
        "captured_run_s": time.perf_counter() - start,
        "step_s": step_median(result),
        "record_tokens_per_part": int(record.meta["num_tokens"]),
        "record_layers": len(record.layers),
        "rss_import": rss_import,
        "rss_after_load": rss_load,
    }
    if opts.overhead:
        plain_steps, captured_steps = [], []
        cpu = {"plain": [], "captured": []}
        order = ["plain", "captured", "captured", "plain"] * opts.repeats
        order = order[: 2 * opts.repeats]
        for kind in order:
            begin = time.process_time()  # CPU seconds of this process: robust to other processes
            if kind == "plain":
                plain = pipe(IMAGE, opts.parts, **settings)
                plain_steps.append(step_median(plain))
            else:
                captured, _ = record_attention(pipe, IMAGE, opts.parts, **settings)
                captured_steps.append(step_median(captured))
            cpu[kind].append(time.process_time() - begin)
        exact = torch.equal(plain.latents, captured.latents)
        out["overhead"] = {
            "order": order,
            "plain_step_s": plain_steps,
            "captured_step_s": captured_steps,
            "captured_over_plain": statistics.median(captured_steps) / statistics.median(plain_steps),
            "cpu_s": cpu,
            "captured_over_plain_cpu": statistics.median(cpu["captured"]) / statistics.median(cpu["plain"]),
            "exact": bool(exact),
        }
    if opts.table:
        cost = []
        for item in opts.table.split(","):
            parts, tokens, steps = (int(x) for x in item.split("x"))
            start = time.perf_counter()
            result = pipe(IMAGE, parts, steps=steps, num_tokens=tokens, seed=0)
            wall = time.perf_counter() - start
            cost.append(
                {
                    "parts": parts,
                    "tokens": tokens,
                    "steps": steps,
                    "image_s": wall,
                    "step_s": step_median(result),
                    "encode_and_setup_s": wall - sum(result.step_seconds),
                }
            )
        out["cost"] = cost
    out["peak_rss"] = peak_rss()
    out["peak_rss_over_weights"] = out["peak_rss"] / weights
    return out


def child_cli(opts) -> dict:
    """``partattn run`` in this process, then this process's peak RSS."""
    from partattn_checks.cli import main as partattn_main

    out_dir = tempfile.mkdtemp(prefix="release-run-")
    try:
        start = time.perf_counter()
        code = partattn_main(
            [
                "run",
                str(IMAGE),
                "--model",
                opts.checkpoint,
                "--dtype",
                opts.dtype,
                "--device",
                "cpu",
                "--steps",
                str(opts.steps),
                "--num-tokens",
                str(opts.tokens),
                "--out",
                out_dir,
                "-q",
            ]
        )
        wall = time.perf_counter() - start
        files = sorted(p.name for p in Path(out_dir).iterdir())
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return {"dtype": opts.dtype, "exit": code, "wall_s": wall, "files": len(files), "peak_rss": peak_rss()}


def metric_deltas(settings: str) -> dict:
    """Check values and verdicts of every fixture image at each STEPSxTOKENS setting (embedded model)."""
    from partattn_checks import EMBEDDED_MODEL
    from partattn_checks.model.pipeline import PartCrafterPipeline
    from partattn_checks.runs.session import Session
    from partattn_checks.runs.sidecar import fixture_specs

    pipe = PartCrafterPipeline.from_pretrained(EMBEDDED_MODEL)
    images = fixture_specs(ROOT / "fixtures" / "images", ROOT)
    labels = settings.split(",")
    table: dict = {}
    seconds: dict = {}
    for label in labels:
        steps, tokens = (int(x) for x in label.split("x"))
        start = time.perf_counter()
        session = Session(lambda: pipe, options={"steps": steps, "num_tokens": tokens}, cache_size=0)
        for outcome in session.run_set(images):
            table.setdefault(outcome.image.stem, {})[label] = {
                name: {"value": r.value, "verdict": r.verdict} for name, r in outcome.results.items()
            }
        seconds[label] = time.perf_counter() - start
    short, full = labels[0], labels[-1]
    moves: dict = {}
    for image, per in table.items():
        for check, got in per[short].items():
            a, b = got["value"], per[full][check]["value"]
            entry = moves.setdefault(check, {"max_abs_delta": 0.0, "verdict_changes": [], "threshold": None})
            if a is not None and b is not None:
                entry["max_abs_delta"] = max(entry["max_abs_delta"], abs(b - a))
            if got["verdict"] != per[full][check]["verdict"]:
                entry["verdict_changes"].append(f"{image}: {got['verdict']} -> {per[full][check]['verdict']}")
    return {
        "benchmark": "release_scale metric deltas",
        "model": f"embedded {EMBEDDED_MODEL.name}",
        "date": datetime.date.today().isoformat(),
        "settings": labels,
        "seconds_all_images": seconds,
        "moves": moves,
        "values": table,
    }


# ---------------------------------------------------------------------------- parent
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="use this release-shaped checkpoint (do not write one)")
    parser.add_argument("--keep", help="write the checkpoint into this folder and keep it")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--ratio-dtype", default="float32", help="dtype of the plain/captured comparison")
    parser.add_argument("--parts", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="plain and captured runs each (interleaved)")
    parser.add_argument("--table", default="", help="cost table settings PARTSxTOKENSxSTEPS,... (in the ratio dtype)")
    parser.add_argument("--no-cli", action="store_true", help="skip the partattn run measurements")
    parser.add_argument("--metric-deltas", metavar="SHORT,FULL", help="check values at two STEPSxTOKENS settings")
    parser.add_argument("--child", choices=("write", "recorder", "cli"), help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--overhead", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()

    if opts.metric_deltas:
        print(json.dumps(metric_deltas(opts.metric_deltas)))
        return 0
    if opts.child == "write":
        print(json.dumps(child_write(opts.keep)))
        return 0
    if opts.child == "recorder":
        print(json.dumps(child_recorder(opts)))
        return 0
    if opts.child == "cli":
        print(json.dumps(child_cli(opts)))
        return 0

    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--parts", str(opts.parts), "--tokens", str(opts.tokens), "--steps", str(opts.steps)]
    temp = None
    summary: dict = {
        "benchmark": "release_scale",
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "settings": {"parts": opts.parts, "tokens": opts.tokens, "steps": opts.steps, "image": IMAGE.name},
    }
    try:
        if opts.checkpoint:
            checkpoint = opts.checkpoint
        else:
            if opts.keep:
                checkpoint = opts.keep
            else:
                temp = tempfile.mkdtemp(prefix="release-scale-")
                checkpoint = str(Path(temp) / "release")
            written = run_child([*me, "--child", "write", "--keep", checkpoint])
            summary["write"] = written
        import torch

        summary["torch"] = torch.__version__
        summary["recorder"], summary["partattn_run"] = {}, {}
        for dtype in opts.dtypes.split(","):
            extra = ["--overhead", "--repeats", str(opts.repeats)] if dtype == opts.ratio_dtype else []
            if dtype == opts.ratio_dtype and opts.table:
                extra += ["--table", opts.table]
            result = run_child(
                [*me, "--child", "recorder", "--checkpoint", checkpoint, "--dtype", dtype, *common, *extra]
            )
            summary["recorder"][dtype] = result
            if not opts.no_cli:
                cli = run_child([*me, "--child", "cli", "--checkpoint", checkpoint, "--dtype", dtype, *common])
                cli["peak_rss_over_weights"] = cli["peak_rss"] / result["weights_bytes"]
                summary["partattn_run"][dtype] = cli
        ratio = summary["recorder"].get(opts.ratio_dtype, {}).get("overhead")
        if ratio:
            summary["captured_over_plain"] = ratio["captured_over_plain"]
            summary["captured_over_plain_cpu"] = ratio["captured_over_plain_cpu"]
        summary["peak_rss_over_weights"] = {
            dtype: round(result["peak_rss_over_weights"], 4) for dtype, result in summary["recorder"].items()
        }
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
