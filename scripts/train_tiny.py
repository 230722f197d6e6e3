#!/usr/bin/env python
"""Train the tiny PartCrafter checkpoint that `pytest --partattn` uses by default.

    python scripts/train_tiny.py --out partattn_checks/data/partcrafter-tiny

CPU only, deterministic from --seed (same machine and thread count), a few minutes on 2 cores.
Writes the checkpoint in the release folder layout and `training_log.json` (the loss curve) next
to it. CI never retrains: it uses the committed weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from partattn_checks.model.tiny import TINY_RUN_DEFAULTS, write_checkpoint  # noqa: E402
from partattn_checks.model.training import TrainConfig, train  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "partattn_checks" / "data" / "partcrafter-tiny"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint folder to write")
    for f in fields(TrainConfig):
        if f.name == "part_counts":
            continue
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = parser.parse_args(argv)
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name != "part_counts"})
    transformer, encoder, log = train(config)
    out = write_checkpoint(
        args.out,
        transformer,
        encoder,
        run_defaults=TINY_RUN_DEFAULTS,
        description=f"tiny PartCrafter trained by scripts/train_tiny.py on the synthetic part/region task "
        f"(seed {config.seed}, {config.iterations} iterations)",
    )
    (out / "training_log.json").write_text(
        json.dumps({"config": log.config, "seconds": log.seconds, "curve": log.curve}, indent=1) + "\n"
    )
    print(f"wrote {out} in {log.seconds} s of training")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
