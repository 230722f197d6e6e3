#!/usr/bin/env python
"""Diagnostic power of the gate: false alarms on healthy runs, detection of graded degradations.

For one model (``--model``, default the embedded checkpoint):

1. write baselines at ``--baseline-seeds K`` noise seeds into a temporary folder (the gate's own
   ``judge_set`` with update=all, gate seed 0);
2. **benign set** (each must count as healthy): ``--benign-seeds`` other gate seeds (seed ``i·R``,
   i = 1..N, so the R-seed groups never overlap each other or seed 0's), the model in each of
   ``--dtypes`` (a pipeline loaded once per dtype), and ``torch.set_num_threads(n)`` for each of
   ``--benign-threads`` (every other run uses ``--threads``, default 1), all judged with update=None;
   counts failing items per check and fixture-set fails;
3. **graded degradations**: every level of ``model.broken.GRADES`` applied in place
   (``broken(transformer, graded(name, level))``), judged at gate seed 0; per level, how many images
   fail each check and the baseline item, and whether the fixture-set item fails (what moved, onset);
4. prints ONE JSON line (false-alarm rates, detection per level, where each curve starts to rise,
   goals, wall time) and, with ``--out DIR``, draws ``DIR/diagnostic-power-<model>[-K<k>][-R<r>].png``.

Every condition gets a new ``GateSession`` (its record cache must not outlive an in-place edit).

    python benchmarks/diagnostic_power.py [--model DIR] [--baseline-seeds 16] [--seeds 1] [--out docs]
    python benchmarks/diagnostic_power.py --quick      # smoke: 3 images, K=4, 3 seeds, 2 levels per grade
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from partattn_checks import EMBEDDED_MODEL  # noqa: E402
from partattn_checks.capture.runspec import resolve_device, torch_dtype  # noqa: E402
from partattn_checks.checks.baseline.noise import DEFAULT_BASELINE_SEEDS, DEFAULT_FALSE_ALARM_RATE  # noqa: E402
from partattn_checks.gate.options import Settings, thresholds_for  # noqa: E402
from partattn_checks.gate.state import GateSession, judge_set  # noqa: E402
from partattn_checks.model.broken import GRADES, broken, graded  # noqa: E402
from partattn_checks.model.pipeline import PartCrafterPipeline  # noqa: E402
from partattn_checks.runs.sidecar import fixture_specs  # noqa: E402

SET = "fixture_set"  # the fixture-set item's key in the counts


class Bench:
    """The model, its fixture images and one temporary baselines folder; ``judge`` is one condition."""

    def __init__(self, args, tmp: Path):
        self.args, self.tmp = args, tmp
        self.device = resolve_device(args.device)
        self.images = fixture_specs(args.fixtures, REPO)[: args.images]
        self.pipelines: dict[str, object] = {}
        self.runs = 0
        self.thresholds, self.thresholds_source = thresholds_for(self.settings(update=None))

    def pipeline(self, dtype: str = "float32"):
        if dtype not in self.pipelines:
            self.pipelines[dtype] = PartCrafterPipeline.from_pretrained(
                self.args.model, device=self.device.device, dtype=torch_dtype(dtype)
            )
        return self.pipelines[dtype]

    def settings(self, *, update, seed=0, dtype="float32"):
        a, tmp = self.args, self.tmp
        same = ("model", "fixtures", "thresholds", "baseline_seeds", "seeds", "false_alarm_rate")
        return Settings.of(
            **{key: getattr(a, key) for key in same},
            baselines=tmp / "baselines",
            results=tmp / "results",
            update=update,
            seed=seed,
            dtype=dtype,
            device=self.device.device,
        )

    def judge(self, *, seed=0, dtype="float32", update=None):
        """One condition: a fresh GateSession over the (possibly edited) pipeline, every image."""
        pipeline = self.pipeline(dtype)
        session = GateSession(
            lambda: pipeline, self.settings(update=update, seed=seed, dtype=dtype), self.thresholds, self.device
        )
        judgement = judge_set(session, self.images)
        self.runs += session.runs
        return judgement


def summarize(judgement) -> dict:
    """Failing images per check (``baseline`` included), the fixture-set verdict, what moved and why."""
    failing = judgement.failing()
    checks = {name for results in judgement.results.values() for name in results}
    out = {name: len(failing.get(name, [])) for name in sorted(checks)}
    fs = judgement.fixture_set
    out[SET] = int(fs is not None and fs.verdict == "fail")
    out["set_moved"] = [d.name for d in fs.moved] if fs is not None else []
    out["set_onset"] = fs.onset if fs is not None else None
    out["alarms"] = [
        {"image": Path(i).name, "why": moved(judgement.results[i]["baseline"])} for i in failing.get("baseline", [])
    ]
    out["threshold_alarms"] = [
        (name, Path(i).name) for name, images in failing.items() if name != "baseline" for i in images
    ]
    return out


def moved(result) -> str:
    """A failing baseline item's metrics and layers beyond their allowance, or its reason."""
    found = [d for d in (getattr(result.details, "deviations", None) or []) if d.moved]
    return ", ".join(f"{d.name} z={d.z:+.1f} (allowance {d.allowance:.1f})" for d in found) or str(result.reason)


def pick(levels: tuple[float, ...], count: int | None) -> tuple[float, ...]:
    """``count`` levels spread evenly over ``levels`` (first and last included); all for None, none for 0."""
    if count is None or count >= len(levels):
        return levels
    return tuple(levels[round(i * (len(levels) - 1) / max(1, count - 1))] for i in range(count))


def threshold_alarms(benign: dict) -> dict:
    """``{check: {image: benign runs failing it}}`` for the threshold checks (their reasons are long)."""
    out: dict[str, dict[str, int]] = {}
    for check, image in (alarm for b in benign.values() for alarm in b["threshold_alarms"]):
        out.setdefault(check, {})[image] = out.get(check, {}).get(image, 0) + 1
    return out


def benign_conditions(args) -> list[tuple[str, dict, int | None]]:
    """(label, judge kwargs, torch threads or None) of every benign run."""
    runs = [(f"seed {i * args.seeds}", {"seed": i * args.seeds}, None) for i in range(1, args.benign_seeds + 1)]
    runs += [(dtype, {"dtype": dtype}, None) for dtype in args.dtypes]
    runs += [(f"threads {n}", {}, n) for n in args.benign_threads]
    return runs


def onset_levels(detection: dict, healthy: float, key: str, baseline_count: int) -> dict:
    """Per side of the healthy level, the level nearest to it where ``key`` fails more often than
    on the healthy run (``baseline_count``: a check that already fails there has not "risen")."""
    out = {}
    for side, levels in (
        ("<", sorted((lv for lv in detection if lv < healthy), reverse=True)),
        (">", sorted(lv for lv in detection if lv > healthy)),
    ):
        if levels:
            out[f"{side}{healthy:g}"] = next((lv for lv in levels if detection[lv][key] > baseline_count), None)
    return out


def draw(result: dict, detection: dict, healthy: dict, path: Path, checks: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, handles = result["images"], {}
    fig, axes = plt.subplots(1, len(GRADES), figsize=(6 * len(GRADES), 4.8), squeeze=False)
    for ax, (name, grade) in zip(axes[0], GRADES.items(), strict=True):
        rows = {**detection.get(name, {}), grade.healthy: healthy}
        xs = sorted(rows)
        curves = [("baseline item: fraction of images failing", "baseline", "o-", "C0", 2.5)]
        curves += [(f"{c} check: fraction of images failing", c, "^:", f"C{i + 4}", 1.3) for i, c in enumerate(checks)]
        quiet = []
        for label, key, style, color, lw in curves:
            ys = [rows[x].get(key, 0) / n for x in xs]
            if any(ys) or key == "baseline":
                (handles[label],) = ax.plot(xs, ys, style, lw=lw, color=color, label=label)
            else:
                quiet.append(key)
        label = "fixture-set item: 0 pass, 1 fail"
        (handles[label],) = ax.plot(xs, [rows[x][SET] for x in xs], "s--", lw=2, ms=9, mfc="none", color="C3")
        ax.axvline(grade.healthy, color="grey", ls=":", lw=1.2)
        ax.text(grade.healthy, 0.5, " healthy", rotation=90, va="center", ha="right", fontsize=9, color="grey")
        if name == "xattn_gain":
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs], fontsize=8)
        ax.minorticks_off()
        ax.margins(x=0.06)
        ax.set_ylim(-0.05, 1.08)
        ax.set_title(f"{name} (never fail: {', '.join(quiet) or 'none'})", fontsize=9)
        ax.set_xlabel("\n".join(textwrap.wrap(f"level: {grade.summary}", 70)), fontsize=9)
        ax.set_ylabel("detected")
        ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=2, fontsize=8, frameon=False)
    fa = result["false_alarm_rate"]
    fig.suptitle(
        f"{result['model']}: detection vs degradation level (K={result['K']}, R={result['R']}, "
        f"alpha={result['alpha']:g}, {n} images)\n{result['benign_runs']} benign runs, false-alarm rate: "
        f"baseline item {fa['baseline']:.3f}, fixture-set item {fa[SET]:.3f}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.04 + 0.035 * ((len(handles) + 1) // 2), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def goals(result: dict) -> dict:
    """The issue's goals, where this run measured them (None: that level was not run)."""
    det, n = result["detection_rate"], result["images"]

    def hit(grade, level, key, at_least=1):
        row = det.get(grade, {}).get(f"{level:g}")
        return None if row is None else row[key] * (1 if key == SET else n) >= at_least - 1e-9

    fails = result["false_alarms"] or result["threshold_false_alarms"]
    return {
        ">=20 benign runs, 0 failing items, set passes": result["benign_runs"] >= 20 and not fails,
        "merge 10% fails the set": hit("merge_parts", 0.1, SET),
        "gain x0.9 fails the set": hit("xattn_gain", 0.9, SET),
        "gain x1.1 fails the set": hit("xattn_gain", 1.1, SET),
        "merge 30% fails the baseline item on >=8/10": hit("merge_parts", 0.3, "baseline", round(0.8 * n)),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=EMBEDDED_MODEL, help="checkpoint folder (default: embedded)")
    parser.add_argument("--fixtures", type=Path, default=REPO / "fixtures" / "images")
    parser.add_argument("--thresholds", type=Path, default=None, help="TOML (default: the gate's, pyproject/built-in)")
    parser.add_argument("--images", type=int, default=None, help="judge only the first N fixture images")
    parser.add_argument("--baseline-seeds", type=int, default=DEFAULT_BASELINE_SEEDS, metavar="K")
    parser.add_argument("--seeds", type=int, default=1, metavar="R", help="gate repeats (mean of R runs)")
    parser.add_argument("--false-alarm-rate", type=float, default=DEFAULT_FALSE_ALARM_RATE, metavar="ALPHA")
    parser.add_argument("--benign-seeds", type=int, default=16, metavar="N", help="benign gate seeds R, 2R, .., N·R")
    parser.add_argument("--dtypes", nargs="*", default=["bfloat16", "float16"], help="benign dtypes (seed 0)")
    parser.add_argument("--benign-threads", nargs="*", type=int, default=[1, 2], help="benign torch threads (seed 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every other run (default 1)")
    parser.add_argument("--levels", type=int, default=None, metavar="N", help="levels per grade (all; 0: none)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="folder for the figure (none without it)")
    parser.add_argument("--quick", action="store_true", help="smoke: 3 images, K=4, 3 seeds, bf16, 2 threads, 2 levels")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.baseline_seeds, args.benign_seeds = args.images or 3, 4, 3
        args.dtypes, args.benign_threads = args.dtypes[:1], args.benign_threads[-1:]
        args.levels = 2 if args.levels is None else args.levels
    torch.set_num_threads(args.threads)  # 2 OpenMP threads on a busy 2-core machine: 20x slower than 1
    start = time.perf_counter()
    say = lambda text: print(f"[{time.perf_counter() - start:7.1f}s] {text}", file=sys.stderr, flush=True)  # noqa: E731

    with tempfile.TemporaryDirectory(prefix="diagnostic-power-") as tmp:
        bench = Bench(args, Path(tmp))
        written = bench.judge(update="all")
        say(f"baselines written: K={args.baseline_seeds}, {len(bench.images)} images ({bench.runs} runs)")
        assert all(b.written for b in written.baselines.values()), "baselines not written"

        healthy = summarize(bench.judge())
        benign = {}
        for label, kwargs, threads in benign_conditions(args):
            torch.set_num_threads(threads or args.threads)
            try:
                benign[label] = summarize(bench.judge(**kwargs))
            finally:
                torch.set_num_threads(args.threads)
            b = benign[label]
            say(
                f"benign {label}: baseline {b['alarms'] or 'ok'}, set {b['set_moved'] or 'ok'}, {b['threshold_alarms']}"
            )

        detection = {}
        transformer = bench.pipeline().transformer
        for name, grade in GRADES.items():
            levels = pick(grade.levels, args.levels)
            detection[name] = {}
            for level in levels:
                with broken(transformer, graded(name, level)):
                    detection[name][level] = summarize(bench.judge())
                row = detection[name][level]
                say(f"{name}@{level:g}: baseline {row['baseline']}/{len(bench.images)}, set {row['set_moved']}")

    n, runs = len(bench.images), len(benign)
    item_types = [k for k in healthy if k not in ("set_moved", "set_onset", "alarms", "threshold_alarms")]
    checks = [k for k in item_types if k not in ("baseline", SET)]
    failing = {k: sum(b[k] for b in benign.values()) for k in item_types}
    result = {
        "benchmark": "diagnostic_power",
        "model": Path(args.model).name,
        "K": args.baseline_seeds,
        "R": args.seeds,
        "alpha": args.false_alarm_rate,
        "images": n,
        "thresholds": bench.thresholds_source,
        "benign_runs": runs,
        "benign_conditions": list(benign),
        "false_alarm_rate": {k: round(v / (runs if k == SET else runs * n), 4) for k, v in failing.items()},
        "false_alarms": [{"run": label, "check": "baseline", **a} for label, b in benign.items() for a in b["alarms"]]
        + [{"run": label, "check": SET, "why": ", ".join(b["set_moved"])} for label, b in benign.items() if b[SET]],
        "threshold_false_alarms": threshold_alarms(benign),
        "healthy": {k: healthy[k] for k in item_types},
        "detection_rate": {
            name: {
                f"{lv:g}": {k: (row[k] if k == SET else round(row[k] / n, 2)) for k in item_types}
                for lv, row in rows.items()
            }
            for name, rows in detection.items()
        },
        "set_moved": {
            name: {f"{lv:g}": [row["set_moved"], row["set_onset"]] for lv, row in rows.items() if row[SET]}
            for name, rows in detection.items()
        },
        "detected_from": {
            name: {k: onset_levels(rows, GRADES[name].healthy, k, healthy[k]) for k in item_types}
            for name, rows in detection.items()
        },
        "denoising_runs": bench.runs,
        "wall_s": round(time.perf_counter() - start, 1),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": bench.device.device,
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    result["goals_met"] = goals(result)
    if args.out is not None and any(detection.values()):
        suffix = "" if args.baseline_seeds == DEFAULT_BASELINE_SEEDS else f"-K{args.baseline_seeds}"
        suffix += "" if args.seeds == 1 else f"-R{args.seeds}"
        figure = args.out / f"diagnostic-power-{result['model']}{suffix}.png"
        draw(result, detection, healthy, figure, checks)
        result["figure"] = str(figure)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
