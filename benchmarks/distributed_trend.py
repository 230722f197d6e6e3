#!/usr/bin/env python
"""`partattn trend` on one process against the same trend under `torchrun --nproc_per_node=2`.

    python benchmarks/distributed_trend.py [--repeats 3] [--images 10] [--steps 10] [--ranks 2]

The work: the three tiny checkpoints of the same architecture (fixtures/checkpoints/tiny-random,
tiny-seed1 and the embedded model, in that order) x the first ``--images`` fixture images at
``--steps`` denoising steps (10: the embedded model's own count), CPU. Three ways, interleaved round
by round so the machine's load hits each alike: one process with torch's default thread count, one
process with one thread, and ``torchrun --standalone --nproc_per_node=N --no-python partattn trend
...`` (torchrun gives each rank one thread). Each run is the whole command (start-up, loading, runs,
figures). Prints one JSON line: the wall times, their medians, the ratios, whether the trend.json of
the launch is byte-identical to the one-thread process's (same thread count per process: the float32
sums agree to the bit) and to the default process's (another thread count: they may differ in the
last bits), the load average before and after, machine and date. Last, ``phases_1_thread``: where one
single-thread process's time goes (start-up and imports, each (checkpoint, image) run, a
checkpoint's load, the figures and page), what an estimate for more processes is made of.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
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

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = [
    REPO / "fixtures" / "checkpoints" / "tiny-random",
    REPO / "fixtures" / "checkpoints" / "tiny-seed1",
    REPO / "partattn_checks" / "data" / "partcrafter-tiny",
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--phases-of", type=Path, help=argparse.SUPPRESS)  # the child that times the phases
    args = parser.parse_args(argv)
    if args.phases_of is not None:
        print(json.dumps(phases(args.phases_of, args.steps)))
        return 0
    bin_dir = Path(sys.executable).parent
    torchrun, partattn = shutil.which("torchrun", path=str(bin_dir)), shutil.which("partattn", path=str(bin_dir))
    if torchrun is None or partattn is None:
        sys.exit(f"torchrun and partattn must be installed next to {sys.executable}")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        for path in sorted((REPO / "fixtures" / "images").glob("np*.png"))[: args.images]:
            shutil.copy(path, images / path.name)
        trend = ["trend", *map(str, CHECKPOINTS), "--fixtures", str(images), "--steps", str(args.steps)]
        trend += ["--device", "cpu", "-q"]
        ways = {
            "one_process": ([partattn, *trend], {}),
            "one_process_1_thread": ([partattn, *trend], {"OMP_NUM_THREADS": "1"}),
            f"torchrun_{args.ranks}": (
                [torchrun, "--standalone", f"--nproc_per_node={args.ranks}", "--no-python", partattn, *trend],
                {},
            ),
        }
        times: dict[str, list[float]] = {way: [] for way in ways}
        outputs: dict[str, set[bytes]] = {way: set() for way in ways}
        for round_ in range(args.repeats):
            for way, (command, env) in ways.items():
                out = Path(tmp) / f"{way}-{round_}"
                start = time.perf_counter()
                run = subprocess.run(
                    [*command, "--out", str(out)], capture_output=True, text=True, env={**os.environ, **env}
                )
                times[way].append(round(time.perf_counter() - start, 2))
                if run.returncode not in (0, 1):  # 1: the last checkpoint fails a check, a verdict
                    sys.exit(f"{way} failed ({run.returncode}):\n{run.stderr}")
                outputs[way].add((out / "trend.json").read_bytes())
        start = time.perf_counter()
        child = [sys.executable, __file__, "--phases-of", str(images), "--steps", str(args.steps)]
        timed = subprocess.run(child, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if timed.returncode != 0:
            sys.exit(f"the phases run failed:\n{timed.stderr}")
        phase = json.loads(timed.stdout)
        phase["start_s"] = round(time.perf_counter() - start - phase.pop("inside_s"), 2)
    median = {way: statistics.median(t) for way, t in times.items()}
    ranked = f"torchrun_{args.ranks}"
    print(
        json.dumps(
            {
                "benchmark": "distributed_trend",
                "work": {
                    "checkpoints": len(CHECKPOINTS),
                    "images": args.images,
                    "units": len(CHECKPOINTS) * args.images,
                    "steps": args.steps,
                    "ranks": args.ranks,
                },
                "median_s": median,
                "all_s": times,
                "ratio": {
                    f"{ranked}/one_process": round(median[ranked] / median["one_process"], 3),
                    f"{ranked}/one_process_1_thread": round(median[ranked] / median["one_process_1_thread"], 3),
                },
                "identical_trend_json": {
                    "each_way_over_its_repeats": all(len(o) == 1 for o in outputs.values()),
                    f"{ranked}_vs_one_process_1_thread": outputs[ranked] == outputs["one_process_1_thread"],
                    f"{ranked}_vs_one_process": outputs[ranked] == outputs["one_process"],
                },
                "phases_1_thread": phase,
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                "machine": {
                    "platform": platform.platform(),
                    "cpu_count": os.cpu_count(),
                    "python": platform.python_version(),
                },
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
        )
    )
    return 0


def phases(images: Path, steps: int) -> dict:
    """One process's trend, timed phase by phase (run with ``OMP_NUM_THREADS=1``): the imports, each
    (checkpoint, image) run (a checkpoint's first image includes loading it), the figures and page."""
    start = time.perf_counter()
    import diffusers  # noqa: F401 - what the command imports, timed here
    import torch  # noqa: F401

    from partattn_checks.analysis.trend import find_checkpoints, fixture_images, run_trend
    from partattn_checks.cli.trend import write_trend
    from partattn_checks.model.pipeline import PartCrafterPipeline  # noqa: F401

    marks = [time.perf_counter()]
    specs = fixture_images(images)
    trend = run_trend(
        find_checkpoints(CHECKPOINTS),
        specs,
        steps=steps,
        device="cpu",
        progress=lambda _: marks.append(time.perf_counter()),
    )
    with tempfile.TemporaryDirectory() as out:
        write_trend(trend, Path(out))
    end = time.perf_counter()
    unit_s = [after - before for before, after in itertools.pairwise(marks)]
    first = unit_s[:: len(specs)]  # each checkpoint's first image: load + run
    rest = [t for i, t in enumerate(unit_s) if i % len(specs)]
    return {
        "imports_s": round(marks[0] - start, 2),
        "runs_s": round(marks[-1] - marks[0], 2),
        "run_s_median": round(statistics.median(rest), 3),
        "load_s_median": round(statistics.median(first) - statistics.median(rest), 3),
        "figures_s": round(end - marks[-1], 2),
        "inside_s": end - start,
    }


if __name__ == "__main__":
    raise SystemExit(main())
