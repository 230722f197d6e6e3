"""Write the fixture images (``fixtures/images/np<N>_<name>.png``) from fixed seeds.

    python scripts/make_fixture_images.py                 # (re)write fixtures/images
    python scripts/make_fixture_images.py --check         # exit 1 if the committed files differ

Images are 224 x 224 (the 112 px task at scale 2), drawn by ``partattn_checks.model.synthetic`` with
PALETTE[N + k] for part k; the part count is the ``np<N>_`` prefix (no sidecar files). Images
named ``*_unseen_*`` are outside the training distribution: ring/star shapes, a light grey
background, and an RGBA image whose background is fully transparent (RGBA 0, 0, 0, 0; an
RGB conversion that ignores alpha sees black, compositing on white gives the training look).

PNG bytes are deterministic for a given Pillow build (no metadata chunks, fixed compression);
a different Pillow/zlib build may encode the same pixels differently: ``--check --pixels-only``
then compares decoded pixels instead of bytes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
try:
    from partattn_checks.model.synthetic import draw_scene
except ImportError:  # running from a checkout without installing the package
    sys.path.insert(0, str(REPO))
    from partattn_checks.model.synthetic import draw_scene

SCALE = 2
LIGHT_GREY = (220, 220, 220)

# name -> (seed, per-part shape types, options)
FIXTURES: dict[str, tuple[int, tuple[str, ...], dict]] = {
    "np1_circle": (101, ("circle",), {}),
    "np2_circle_square": (201, ("circle", "square"), {}),
    "np2_triangle_circle": (202, ("triangle", "circle"), {}),
    "np3_three_shapes": (301, ("circle", "square", "triangle"), {}),
    "np3_three_shapes_b": (302, ("square", "triangle", "triangle"), {}),
    "np4_four_shapes": (401, ("circle", "square", "triangle", "circle"), {}),
    "np4_four_shapes_b": (402, ("triangle", "circle", "square", "square"), {}),
    "np2_unseen_ring_star": (501, ("ring", "star"), {}),
    "np3_unseen_grey_bg": (502, ("triangle", "circle", "square"), {"background": LIGHT_GREY}),
    "np2_unseen_rgba": (503, ("square", "circle"), {"rgba": True}),
}


def render(name: str) -> Image.Image:
    """The fixture image called ``name`` (a key of FIXTURES)."""
    seed, types, opts = FIXTURES[name]
    rgba = opts.get("rgba", False)
    kw = {k: v for k, v in opts.items() if k != "rgba"}
    scene = draw_scene(np.random.default_rng(seed), len(types), types=types, scale=SCALE, **kw)
    if not rgba:
        return scene.image
    fg = scene.masks.any(axis=0)
    rgba_px = np.zeros(fg.shape + (4,), dtype=np.uint8)
    rgba_px[fg, :3] = np.asarray(scene.image)[fg]
    rgba_px[fg, 3] = 255
    return Image.fromarray(rgba_px, "RGBA")


def write_all(out: Path) -> list[Path]:
    """Write every fixture PNG into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in FIXTURES:
        path = out / f"{name}.png"
        render(name).save(path, format="PNG", optimize=False, compress_level=9)
        paths.append(path)
    return paths


def _pixels(path: Path) -> tuple[str, tuple[int, int], bytes]:
    with Image.open(path) as im:
        return im.mode, im.size, im.tobytes()


def check(committed: Path, pixels_only: bool = False) -> list[str]:
    """Problems found comparing ``committed`` with a fresh rendering (empty list = same)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p for p in write_all(Path(tmp))}
        have = {p.name: p for p in committed.glob("np*.png")} if committed.is_dir() else {}
        problems = [f"missing: {committed / n}" for n in sorted(set(fresh) - set(have))]
        problems += [f"not made by this script: {have[n]}" for n in sorted(set(have) - set(fresh))]
        for n in sorted(set(fresh) & set(have)):
            if pixels_only:
                same = _pixels(fresh[n]) == _pixels(have[n])
            else:
                same = fresh[n].read_bytes() == have[n].read_bytes()
            if not same:
                problems.append(f"differs ({'pixels' if pixels_only else 'bytes'}): {have[n]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "fixtures" / "images",
        help="folder of the fixture images (default: %(default)s)",
    )
    parser.add_argument(
        "--check", action="store_true", help="regenerate into a temporary folder and compare; exit 1 on difference"
    )
    parser.add_argument(
        "--pixels-only", action="store_true", help="with --check: compare decoded pixels instead of PNG bytes"
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.out, args.pixels_only)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print(
                f"fixture images are stale; regenerate with: python scripts/{Path(__file__).name} --out {args.out}",
                file=sys.stderr,
            )
            return 1
        print(f"{len(FIXTURES)} fixture images up to date in {args.out}")
        return 0
    for path in write_all(args.out):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
