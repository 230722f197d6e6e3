#!/usr/bin/env python
"""Train the tiny PartCrafter checkpoint that `pytest --partattn` uses by default.

    python scripts/train_tiny.py --out partattn_checks/data/partcrafter-tiny

CPU only, deterministic from --seed (same machine and thread count), a few minutes on 2 cores.
Writes the checkpoint in the release folder layout and `training_log.json` (the loss curve) next
to it. CI never retrains: it uses the committed weights.

    --monitor-every K --monitor-log FILE.jsonl   attention health of the fixture images every K
                                                 iterations (partattn_checks.analysis.monitor), one JSON line each
    --save-at 300,1500 --save-dir DIR            accelerate-style DIR/checkpoint-N/ folders (release
                                                 layout) for `partattn trend DIR`
    --stop-after N                               stop after N iterations of the --iterations schedule
    --monitor-plot PNG                           draw the monitor's part separation and uniformity
                                                 against the iteration (with --plot-only: from an
                                                 existing --monitor-log, no training)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from partattn_checks.model.loading import feature_extractor_from_config  # noqa: E402
from partattn_checks.model.tiny import SCHEDULER_CONFIG, TINY_PREPROCESSOR, TINY_RUN_DEFAULTS, write_checkpoint  # noqa: E402
from partattn_checks.model.training import TrainConfig, train  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "partattn_checks" / "data" / "partcrafter-tiny"
DEFAULT_IMAGES = Path(__file__).resolve().parents[1] / "fixtures" / "images"


def iterations_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected iterations like 300,1500,5000, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"iterations must be at least 1, got {text!r}")
    return sorted(set(values))


def make_callback(args, config: TrainConfig):
    """The per-iteration callback: the attention monitor and checkpoint saving (None when neither)."""
    monitor = log = None
    if args.monitor_every:
        from partattn_checks.analysis.monitor import AttentionMonitor, JsonlLog

        monitor = AttentionMonitor(
            args.monitor_images,
            feature_extractor=feature_extractor_from_config(TINY_PREPROCESSOR),
            scheduler_config=SCHEDULER_CONFIG,
            run_defaults=TINY_RUN_DEFAULTS,
            steps=args.monitor_steps,
        )
        log = JsonlLog(args.monitor_log)
        if log.path.exists():
            log.path.unlink()  # a fresh log per run
    save_at = set(args.save_at or ())
    if monitor is None and not save_at:
        return None

    def callback(iteration, transformer, encoder):
        if monitor is not None and (iteration % args.monitor_every == 0 or iteration == 1):
            log.log(monitor(transformer, encoder), step=iteration)
        if iteration in save_at:
            write_checkpoint(
                args.save_dir / f"checkpoint-{iteration}",
                transformer,
                encoder,
                run_defaults=TINY_RUN_DEFAULTS,
                description=f"iteration {iteration} of scripts/train_tiny.py (seed {config.seed}, "
                f"{config.iterations}-iteration schedule)",
            )

    return callback


def plot_monitor(log_path: Path, png: Path) -> Path:
    """Part separation and uniformity (mean over the images) against the iteration, from the monitor log."""
    from partattn_checks.analysis.monitor import JsonlLog
    from partattn_checks.checks import Thresholds
    from partattn_checks.render.training import monitor_curve

    rows = JsonlLog(log_path).read()
    if not rows:
        raise SystemExit(f"{log_path}: no monitor lines to plot")
    defaults = Thresholds()
    keys = [
        ("partattn/part_separation/mean", "part separation (best layer), mean over images"),
        ("partattn/uniformity/mean", "near-uniform share, mean over images"),
    ]
    limits = {
        keys[0][0]: defaults.part_separation.min_separation,
        keys[1][0]: defaults.uniformity.max_share,
    }
    return monitor_curve(rows, keys, png, thresholds=limits)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint folder to write")
    for f in fields(TrainConfig):
        if f.name == "part_counts":
            continue
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    parser.add_argument("--monitor-every", type=int, metavar="K", help="run the attention monitor every K iterations")
    parser.add_argument("--monitor-log", type=Path, metavar="FILE", help="JSONL file of the monitor's values")
    parser.add_argument(
        "--monitor-images", type=Path, default=DEFAULT_IMAGES, metavar="DIR", help="fixture images of the monitor"
    )
    parser.add_argument("--monitor-steps", type=int, default=None, metavar="S", help="denoising steps per image")
    parser.add_argument("--save-at", type=iterations_list, metavar="N,N", help="iterations to save checkpoint-N/ at")
    parser.add_argument("--save-dir", type=Path, metavar="DIR", help="folder of the checkpoint-N/ folders")
    parser.add_argument("--stop-after", type=int, metavar="N", help="stop after N iterations of the schedule")
    parser.add_argument("--monitor-plot", type=Path, metavar="PNG", help="draw the monitor's curve here")
    parser.add_argument("--plot-only", action="store_true", help="only draw --monitor-plot from --monitor-log")
    args = parser.parse_args(argv)
    if args.monitor_plot and not args.monitor_log:
        parser.error("--monitor-plot needs --monitor-log FILE.jsonl")
    if args.plot_only:
        if not args.monitor_plot:
            parser.error("--plot-only needs --monitor-plot PNG")
        print(f"wrote {plot_monitor(args.monitor_log, args.monitor_plot)}")
        return 0
    if args.monitor_every and not args.monitor_log:
        parser.error("--monitor-every needs --monitor-log FILE.jsonl")
    if args.save_at and not args.save_dir:
        parser.error("--save-at needs --save-dir DIR")
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name != "part_counts"})
    transformer, encoder, log = train(config, callback=make_callback(args, config), stop_after=args.stop_after)
    out = write_checkpoint(
        args.out,
        transformer,
        encoder,
        run_defaults=TINY_RUN_DEFAULTS,
        description=f"tiny PartCrafter trained by scripts/train_tiny.py on the synthetic part/region task "
        f"(seed {config.seed}, {args.stop_after or config.iterations} iterations"
        f"{f' of a {config.iterations}-iteration schedule' if args.stop_after else ''})",
    )
    (out / "training_log.json").write_text(
        json.dumps({"config": log.config, "seconds": log.seconds, "curve": log.curve}, indent=1) + "\n"
    )
    print(f"wrote {out} in {log.seconds} s of training")
    if args.monitor_plot:
        print(f"wrote {plot_monitor(args.monitor_log, args.monitor_plot)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
