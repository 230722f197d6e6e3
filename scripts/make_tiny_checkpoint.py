"""Write the random-init tiny PartCrafter checkpoint (``fixtures/checkpoints/tiny-random``) from a seed.

    python scripts/make_tiny_checkpoint.py                  # (re)write fixtures/checkpoints/tiny-random
    python scripts/make_tiny_checkpoint.py --check          # exit 1 if the committed files differ
    python scripts/make_tiny_checkpoint.py --out DIR --seed 3

The checkpoint has the release folder layout (model_index.json, transformer/,
image_encoder_dinov2/, feature_extractor_dinov2/, scheduler/; fp16 safetensors) and is built by
``partattn_checks.model.tiny.write_tiny_checkpoint``, which is deterministic: the same seed gives
the same bytes on the same torch/safetensors versions (``--check`` proves it for the committed copy).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
try:
    from partattn_checks.model.tiny import write_tiny_checkpoint
except ImportError:  # running from a checkout without installing the package
    sys.path.insert(0, str(REPO))
    from partattn_checks.model.tiny import write_tiny_checkpoint

DEFAULT_OUT = REPO / "fixtures" / "checkpoints" / "tiny-random"


def _files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def check(committed: Path, seed: int) -> list[str]:
    """Problems found comparing ``committed`` with a fresh checkpoint (empty list = same bytes)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = _files(write_tiny_checkpoint(Path(tmp) / "fresh", seed=seed))
        have = _files(committed) if committed.is_dir() else {}
        problems = [f"missing: {committed / n}" for n in sorted(set(fresh) - set(have))]
        problems += [f"not made by this script: {have[n]}" for n in sorted(set(have) - set(fresh))]
        problems += [
            f"differs: {have[n]}"
            for n in sorted(set(fresh) & set(have))
            if fresh[n].read_bytes() != have[n].read_bytes()
        ]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random-init seed (default: %(default)s)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary folder and compare bytes; exit 1 on difference",
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.out, args.seed)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print(
                f"tiny checkpoint is stale; regenerate with: python scripts/{Path(__file__).name} "
                f"--out {args.out} --seed {args.seed}",
                file=sys.stderr,
            )
            return 1
        print(f"{args.out} is up to date (seed {args.seed})")
        return 0
    out = write_tiny_checkpoint(args.out, seed=args.seed)
    size = sum(p.stat().st_size for p in _files(out).values())
    print(f"wrote {out} ({size} bytes, seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
