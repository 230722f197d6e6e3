"""How long each kind of figure takes to draw, before and after a change, side by side.

    python benchmarks/bench_figures.py                 # this checkout against --base (default below)
    python benchmarks/bench_figures.py --base HEAD~3   # against any git revision
    python benchmarks/bench_figures.py --only-current  # this checkout alone (absolute seconds)
    python benchmarks/bench_figures.py --reps 3 --no-record
    python benchmarks/bench_figures.py --save /tmp/figs    # and keep every figure, both sides, to look at

Each side runs in its own Python process (``--worker``) with ``PYTHONPATH`` on its own copy of the
package: the base revision's ``partattn_checks/`` is extracted with ``git archive`` into a temporary
folder, so both sides draw the same inputs with their own code in one run of this script. Every
kind is drawn once untimed by each side (fonts, caches), then ``--reps`` times, the two sides taking
turns so that a busy moment on a shared machine slows both alike; the table gives the fastest draw
in seconds, and the ratio. ``render_record``
is the whole ``partattn run`` page of a synthetic record shaped like the tiny checkpoint's (10 steps,
5 layers, 2 parts, 4 heads, 8x8 patch grid, one full map) on a 112 px image: its 16 figures and 2 GIFs.

No model is loaded (a record is made from random numbers). Each side draws every kind 1 + ``--reps`` times:
the whole run is ~2x the sum of the table's two columns (2m51s at load 5 on a shared 2-core machine with
--reps 2, on 2026-12-08; under a minute when the machine is idle with the default --reps 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The revision before the figure speed-ups (matplotlib's constrained layout on every figure).
DEFAULT_BASE = "756003b"


# --------------------------------------------------------------------------- the worker (one side)


def _inputs():
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.open(ROOT / "fixtures" / "images" / "np2_circle_square.png").convert("RGB").resize((112, 112))
    grid, nk = (8, 8), 64

    def dirichlet(*shape):
        return rng.dirichlet(np.ones(shape[-1]) * 0.3, size=shape[:-1])

    return rng, image, grid, nk, dirichlet


def _kinds(tmp: Path):
    """name -> a function drawing one figure of that kind (what ``partattn run`` draws)."""
    import numpy as np

    from partattn_checks import render

    rng, image, grid, nk, dirichlet = _inputs()
    title = "each head's key marginal on the image\nCLS mass 0.12"
    heads4, heads16 = dirichlet(4, 16, nk + 1), dirichlet(16, 16, nk + 1)
    parts2, parts4 = dirichlet(2, nk), dirichlet(4, nk)
    frames = dirichlet(10, nk)
    titles = [f"step {s} (t={1000 - 100 * s}) · layer blocks.4.attn2 · part 0" for s in range(10)]
    layers = [f"blocks.{i}.attn2" for i in range(5)]
    values = rng.uniform(0.7, 0.95, size=(10, 5))
    kinds = {
        "heatmap": lambda: render.heatmap(heads4[0], title="a map", layer="blocks.4.attn2", step=9, head=0),
        "overlay": lambda: render.overlay(
            parts2[0], grid, image, title="mean over steps 0–9", layer="blocks.4.attn2", part=0
        ),
        "part_panel 2 parts": lambda: render.part_panel(parts2, grid, image, title="mean", layer="blocks.4.attn2"),
        "part_panel 4 parts": lambda: render.part_panel(parts4, grid, image, title="mean", layer="blocks.4.attn2"),
        "part_panel strips": lambda: render.part_panel(parts4, title="mean", layer="blocks.4.attn2"),
        "heads 4 on image": lambda: render.multi_head_grid(
            heads4[..., 1:], title=title, layer="blocks.4.attn2", step=9, part=0, grid=grid, image=image
        ),
        "heads 4 qk": lambda: render.multi_head_grid(heads4, title="queries x keys", layer="blocks.4.attn2", step=9),
        "heads 16 on image": lambda: render.multi_head_grid(
            heads16[..., 1:], title=title, layer="blocks.4.attn2", step=9, part=0, grid=grid, image=image
        ),
        "heads 16 qk": lambda: render.multi_head_grid(heads16, title="queries x keys", layer="blocks.4.attn2", step=9),
        "timeline": lambda: render.timeline(
            values,
            np.arange(10),
            layers,
            threshold=0.84,
            judged=values.max(1),
            judged_label="max over layers",
            value=0.9,
            value_label="max",
            title="uniformity 0.9 (pass: ≤ 0.84) — fail",
        ),
        "GIF 10 frames on image": lambda: render.animation(
            frames, tmp / "a.gif", titles=titles, grid=grid, image=image, fps=2
        ),
        "part_panel GIF 3 steps": lambda: render.part_panel_animation(
            np.stack([parts2] * 3), grid, image, titles=["step 0", "step 1", "step 2"], layer="blocks.4.attn2"
        ),
        "drift 2 parts": lambda: _drift_figure(image),
    }
    return kinds


def _record(seed=0, S=10, L=5, P=2, H=4, grid=(8, 8), Q=16):
    import torch

    from partattn_checks.capture.record import AttentionRecord

    K = grid[0] * grid[1]
    g = torch.Generator().manual_seed(seed)

    def scalars():
        return torch.rand(S, L, P, H, generator=g)

    return AttentionRecord(
        steps=list(range(S)),
        timesteps=[1000.0 - 100 * i for i in range(S)],
        layers=[f"blocks.{i}.attn2" for i in range(L)],
        layer_kinds=["global", "local"] * (L // 2) + ["global"] * (L % 2),
        num_parts=P,
        num_heads=H,
        num_patch_keys=K,
        has_cls=True,
        patch_grid=grid,
        entropy=scalars() * 0.2 + 0.75,
        peak=scalars() * 0.2,
        eff_keys=scalars() * K,
        cls_mass=scalars() * 0.2,
        marginals=torch.softmax(torch.randn(S, L, P, H, K, generator=g), -1),
        full_maps={(S - 1, f"blocks.{L - 1}.attn2"): torch.softmax(torch.randn(P, H, Q, K + 1, generator=g), -1)},
        nonfinite=[],
        meta={"model": "synthetic", "seed": seed},
    )


def _drift_figure(image):
    from partattn_checks.baselines.summary import AttentionSummary, attention_drift
    from partattn_checks.render.drift import drift_figure

    d = attention_drift(AttentionSummary.from_record(_record(0)), AttentionSummary.from_record(_record(1)))
    return drift_figure(d, image)


def _render_record(tmp: Path, n: list[int]):
    from partattn_checks.present.pages.run_page import render_record

    _, image, *_ = _inputs()
    record = _record()
    n[0] += 1
    return render_record(record, tmp / f"run{n[0]}", image=image)


def serve(record: bool, save: Path | None) -> None:
    """The worker: prints the kinds (JSON), then for each line ``warm KIND`` / ``time KIND`` on stdin
    draws KIND once (``warm``: untimed, kept under ``save``) and prints the seconds it took."""
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        kinds = _kinds(tmp)
        if record:
            n = [0]
            kinds["render_record (whole page)"] = lambda: _render_record(tmp, n)
        print(json.dumps(list(kinds)), flush=True)
        for line in sys.stdin:
            what, name = line.rstrip("\n").split(" ", 1)
            start = time.perf_counter()
            drawn = kinds[name]()
            seconds = time.perf_counter() - start
            if what == "warm" and save is not None:
                _save(drawn, save / re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_"))
            print(seconds, flush=True)


def _save(drawn, stem: Path) -> None:
    """Keep what one kind drew (PNG bytes, a GIF path, a render_record folder) as ``stem.*``."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(drawn, bytes):
        stem.with_suffix(".gif" if drawn[:3] == b"GIF" else ".png").write_bytes(drawn)
    elif isinstance(drawn, Path):
        shutil.copyfile(drawn, stem.with_suffix(drawn.suffix))
    elif isinstance(drawn, dict):  # render_record's result
        shutil.copytree(Path(drawn["index"]).parent, stem, dirs_exist_ok=True)


# --------------------------------------------------------------------------- the driver


class _Side:
    """One worker process drawing with the package under ``tree``."""

    def __init__(self, tree: Path, args, name: str):
        env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker"]
        if args.no_record:
            cmd.append("--no-record")
        if args.save:
            cmd += ["--save", str(Path(args.save).resolve() / name)]
        self.proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tempfile.gettempdir()
        )
        self.kinds = json.loads(self._read())

    def _read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the worker stopped (exit {self.proc.wait()})")
        return line

    def draw(self, what: str, kind: str) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{what} {kind}\n")
        self.proc.stdin.flush()
        return float(self._read())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"git revision to compare with (default {DEFAULT_BASE})")
    parser.add_argument("--only-current", action="store_true", help="time this checkout only")
    parser.add_argument("--reps", type=int, default=1, help="timed draws per kind (the fastest is shown)")
    parser.add_argument("--no-record", action="store_true", help="skip the whole render_record page")
    parser.add_argument("--only", help="only the kinds whose name contains this")
    parser.add_argument("--save", help="keep each kind's figure under SAVE/current/ and SAVE/base/ (to look at)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        serve(not args.no_record, Path(args.save) if args.save else None)
        return

    import matplotlib

    print(
        f"{datetime.now():%Y-%m-%d %H:%M} · {platform.node()} · {platform.processor() or platform.machine()} · "
        f"{os.cpu_count()} CPUs · load {os.getloadavg()[0]:.2f} · Python {platform.python_version()} · "
        f"matplotlib {matplotlib.__version__} · fastest of {args.reps} draws, seconds (the two sides alternate)"
    )
    with tempfile.TemporaryDirectory() as folder:
        sides = {"current": _Side(ROOT, args, "current")}
        if not args.only_current:
            archive = subprocess.run(
                ["git", "archive", args.base, "partattn_checks"], cwd=ROOT, check=True, capture_output=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
            sides = {"base": _Side(Path(folder), args, "base"), **sides}
        names = [name if name == "current" else f"base {args.base}" for name in sides]
        head = f"{'figure kind':<28}" + "".join(f"{name:>14}" for name in names)
        print(head + ("   ratio" if len(sides) > 1 else ""), flush=True)
        for kind in sides["current"].kinds:
            if args.only and args.only not in kind:
                continue
            for side in sides.values():
                side.draw("warm", kind)
            best = {name: float("inf") for name in sides}
            for _ in range(args.reps):
                for name, side in sides.items():  # alternating: a busy moment slows both sides alike
                    best[name] = min(best[name], side.draw("time", kind))
            row = f"{kind:<28}" + "".join(f"{best[name]:14.3f}" for name in sides)
            if len(sides) > 1:
                row += f"{best['base'] / best['current']:7.1f}x"
            print(row, flush=True)
        for side in sides.values():
            side.close()


if __name__ == "__main__":
    main()
