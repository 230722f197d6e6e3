#!/usr/bin/env python
"""Diagnostic power of the gate, both verdicts side by side: false alarms on benign runs, the
numeric floor per perturbation, detection of graded degradations and localisation of held-out edits.

For one model (``--model``, default the embedded checkpoint), through the runner every front end uses
(``baselines.runner.BaselineRunner`` over a ``runs.session.Session``):

1. write baselines of the fixture images at ``--baseline-seeds K`` seeds (gate seed 0: seeds 0..K-1),
   with a numeric floor covering ``--floor-dtypes`` (default float16, bfloat16) besides the rounding
   error and the thread count;
2. **paired benign runs** (the baseline's own seed 0, each must pass): a float32 rerun, 1 and 2
   threads, the model in each floor dtype, the same weights under another path, and
   ``--rounding-patterns`` runs whose first latents carry another rounding error than the floor's
   (what another machine's kernels do);
3. **seed-spread benign runs**: ``--benign-seeds`` gate seeds the baseline never held (5000, 5001, ...)
   and each floor dtype at seed 5000: judged by the seed-spread verdict;
4. **degradations** applied in place (``model.broken``): graded levels (``--merge`` part-embedding
   merges, ``--gain`` cross-attention key-norm gains) and held-out edits confined to one block or to
   the image encoder; each run at seed 0 once, judged by both verdicts (paired, and seed-spread with
   the run's seed left out of the baseline's): failing ``baseline`` items, the fixture-set item, and for
   the paired verdict the layer the onset names;
5. prints ONE JSON line; with ``--out DIR`` draws ``DIR/diagnostic-power-<model>.png``.

    python benchmarks/diagnostic_power.py [--model DIR] [--out docs]
    python benchmarks/diagnostic_power.py --quick        # smoke: 3 images, K=4, few runs
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from partattn_checks import EMBEDDED_MODEL  # noqa: E402
from partattn_checks.base.seeds import DEFAULT_BASELINE_SEEDS  # noqa: E402
from partattn_checks.baselines.fixture_set import set_verdict  # noqa: E402
from partattn_checks.baselines.floor import Condition  # noqa: E402
from partattn_checks.baselines.noise import spread_of  # noqa: E402
from partattn_checks.baselines.policy import BaselinePolicy  # noqa: E402
from partattn_checks.baselines.runner import BaselineRunner  # noqa: E402
from partattn_checks.baselines.store import BaselineStore  # noqa: E402
from partattn_checks.capture.runspec import torch_dtype  # noqa: E402
from partattn_checks.checks import load_thresholds, thresholds_from_pyproject  # noqa: E402
from partattn_checks.model.broken import Variant, broken, graded  # noqa: E402
from partattn_checks.model.perturb import intra_op_threads  # noqa: E402
from partattn_checks.model.pipeline import PartCrafterPipeline  # noqa: E402
from partattn_checks.runs.session import Session  # noqa: E402
from partattn_checks.runs.sidecar import fixture_specs  # noqa: E402

VERDICTS = ("paired", "seed-spread")
#: Held-out edits, none of them a graded degradation: (name, parameter, edit, the layer a paired onset should name).
HELD_OUT = (
    ("block 2 cross-attention output zeroed", "blocks.2.attn2.to_out.0.weight", lambda t: t.zero_(), "blocks.3.attn2"),
    ("block 4 query gain x1.05", "blocks.4.attn2.norm_q.weight", lambda t: t.mul_(1.05), "blocks.4.attn2"),
    ("block 1 value x1.05", "blocks.1.attn2.to_v.weight", lambda t: t.mul_(1.05), "blocks.2.attn2"),
    ("block 3 key gain x0.97", "blocks.3.attn2.norm_k.weight", lambda t: t.mul_(0.97), "blocks.3.attn2"),
)


class Bench:
    """The model, its fixture images, one temporary baselines folder and a runner per verdict."""

    def __init__(self, args, tmp: Path):
        self.args, self.tmp = args, tmp
        self.images = fixture_specs(args.fixtures, REPO)[: args.images]
        self.thresholds = (
            load_thresholds(args.thresholds) if args.thresholds else thresholds_from_pyproject(REPO / "pyproject.toml")
        )
        self.pipelines: dict[str, object] = {}
        self.store = BaselineStore(tmp / "baselines")
        self.runs = 0

    def pipeline(self, dtype: str = "float32", model: Path | None = None):
        key = f"{dtype}:{model}"
        if key not in self.pipelines:
            self.pipelines[key] = PartCrafterPipeline.from_pretrained(
                model or self.args.model, dtype=torch_dtype(dtype)
            )
        return self.pipelines[key]

    def policy(self, verdict: str = "auto", update: str | None = None) -> BaselinePolicy:
        a = self.args
        return BaselinePolicy(
            update=update, baseline_seeds=a.baseline_seeds, verdict=verdict, floor_dtypes=tuple(a.floor_dtypes)
        )

    def session(self, pipeline, seed: int = 0) -> Session:
        return Session.around(pipeline, options={"seed": seed}, thresholds=self.thresholds)

    def judge(self, *, pipeline=None, seed=0, verdicts=VERDICTS, pattern=None, update=None) -> dict:
        """Every image once (its first run cached), judged by each verdict; ``pattern``: the gate's run
        carries that rounding error. Returns {verdict: {"failing": [...], "set": SetVerdict, "onsets": {...}}}."""
        session = self.session(pipeline or self.pipeline(), seed)
        session.cache_size = 2
        runners = {v: BaselineRunner(self.store, None, self.policy(v, update)) for v in verdicts}
        out = {v: {"failing": [], "details": {}, "onsets": {}, "why": {}} for v in verdicts}
        for spec in self.images:
            runs = session.image_runs(spec)
            if pattern is not None:
                condition = Condition(f"rounding {pattern}", rounding=True, pattern=pattern)
                runs = replace(runs, sample=perturbed(session, spec, condition))
            for verdict, runner in runners.items():
                outcome = runner.evaluate(runs, self.thresholds)
                found = out[verdict]
                found["details"][spec.key] = outcome.details
                if outcome.result.verdict == "fail":
                    found["failing"].append(spec.key)
                    found["why"][spec.key] = moved(outcome.details) or outcome.result.reason[:200]
                onset = outcome.details.paired_onset
                found["onsets"][spec.key] = onset.layer if onset is not None else None
        self.runs += session.runs
        for found in out.values():
            found["set"] = set_verdict(found.pop("details"), runners[next(iter(runners))].policy.false_alarm_rate)
        return out


def perturbed(session: Session, spec, condition: Condition):
    """An image's ``sample`` whose plain runs carry ``condition`` (the floor's own conditions stay as they are)."""
    return lambda seeds, c: session.seed_sample(spec, seeds, c or condition)


def moved(details) -> str:
    return ", ".join(f"{d.name} {d.z:+.2f} (allowance {d.allowance:.2f})" for d in details.deviations or [] if d.moved)


def row(found: dict, n: int) -> dict:
    s = found["set"]
    return {
        "items": len(found["failing"]),
        "of": n,
        "set": s.verdict,
        "set_moved": [d.name for d in s.moved],
        "onsets": sorted({o for o in found["onsets"].values() if o}),
    }


def floors(store: BaselineStore, keys: list[str]) -> dict:
    """Per floor condition, the numeric floor in seed spreads over the images: metrics (|shift| / σ) and
    layers (distance / σ_l), the median and the largest."""
    pooled = store.pooled_spreads()
    per: dict[str, dict[str, list[float]]] = {}
    for key in keys:
        stored = store.load(key)
        paired = stored.paired
        for ci, c in enumerate(paired.conditions):
            entry = per.setdefault(c.name, {"metrics": [], "layers": []})
            for name, shifts in paired.floor_metrics[c.name].items():
                if name in ("entropy_mean", "peak_mean", "eff_keys_mean", "separation", "stability_max_jump"):
                    ref = stored.samples[name][0]
                    sigma = spread_of(name, stored.samples[name], pooled.get(name))
                    delta = (
                        abs(np.log((ref + shifts[0]) / ref))
                        if name in ("peak_mean", "stability_max_jump")
                        else abs(shifts[0])
                    )
                    entry["metrics"].append(float(delta / sigma))
            att = paired.attention
            per_layer = att.floor[ci].mean(axis=(0, 1, 3)) / att.scale  # (L,)
            entry["layers"] += [float(x) for x in per_layer]
    return {
        c: {k: {"median": round(statistics.median(v), 4), "max": round(max(v), 4)} for k, v in e.items() if v}
        for c, e in per.items()
    }


def draw(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grades = {
        "merge_parts": ("part-embedding rows moved this fraction toward their mean", 0.0),
        "xattn_gain": ("cross-attention key-norm gains times this factor", 1.0),
    }
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), squeeze=False)
    n = result["images"]
    for ax, (name, (summary, healthy)) in zip(axes[0], grades.items(), strict=True):
        rows = result["detection"][name]
        xs = sorted(float(x) for x in rows)
        for verdict, style, color in (("paired", "o-", "C0"), ("seed-spread", "s--", "C1")):
            ys = [rows[f"{x:g}"][verdict]["items"] / n for x in xs]
            ax.plot(xs, ys, style, color=color, lw=2, label=f"{verdict}: fraction of images failing the baseline item")
            sets = [x for x in xs if rows[f"{x:g}"][verdict]["set"] == "fail"]
            ax.plot(
                sets,
                [1.05] * len(sets),
                "v" if verdict == "paired" else "^",
                color=color,
                ms=9,
                mfc="none",
                label=f"{verdict}: fixture-set item fails",
            )
        ax.axvline(healthy, color="grey", ls=":", lw=1.2)
        if name == "xattn_gain":
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs], fontsize=8)
        ax.minorticks_off()
        ax.set_ylim(-0.05, 1.12)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(summary, fontsize=9)
        ax.set_ylabel("detected")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fa = result["false_alarms"]
    fig.suptitle(
        f"{result['model']}: both verdicts (K={result['K']}, R=1, {n} images); failing items in benign runs: "
        f"paired {fa['paired']['items']}/{fa['paired']['runs'] * n}, "
        f"seed-spread {fa['seed-spread']['items']}/{fa['seed-spread']['runs'] * n}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=EMBEDDED_MODEL, help="checkpoint folder (default: embedded)")
    parser.add_argument("--fixtures", type=Path, default=REPO / "fixtures" / "images")
    parser.add_argument("--thresholds", type=Path, default=None, help="TOML (default: the repository's pyproject)")
    parser.add_argument("--images", type=int, default=None, help="judge only the first N fixture images")
    parser.add_argument("--baseline-seeds", type=int, default=DEFAULT_BASELINE_SEEDS, metavar="K")
    parser.add_argument("--floor-dtypes", nargs="*", default=["float16", "bfloat16"])
    parser.add_argument("--rounding-patterns", type=int, default=16, metavar="N", help="paired benign runs")
    parser.add_argument("--benign-seeds", type=int, default=100, metavar="N", help="seed-spread benign runs")
    parser.add_argument("--merge", nargs="*", type=float, default=[0.05, 0.1, 0.2, 0.3, 0.5])
    parser.add_argument("--gain", nargs="*", type=float, default=[0.9, 0.97, 1.03, 1.1])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every other run (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the figure (none without it)")
    parser.add_argument("--quick", action="store_true", help="smoke: 3 images, K=4, 2 patterns, 3 seeds, 2 levels")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.baseline_seeds = args.images or 3, 4
        args.rounding_patterns, args.benign_seeds, args.merge, args.gain = 2, 3, [0.1], [1.1]
    torch.set_num_threads(args.threads)  # 2 OpenMP threads on a busy 2-core machine: 20x slower than 1
    start = time.perf_counter()
    say = lambda text: print(f"[{time.perf_counter() - start:7.1f}s] {text}", file=sys.stderr, flush=True)  # noqa: E731

    with tempfile.TemporaryDirectory(prefix="diagnostic-power-") as tmp:
        bench = Bench(args, Path(tmp))
        n = len(bench.images)
        t0 = time.perf_counter()
        bench.judge(verdicts=("auto",), update="all")
        write_s, write_runs = time.perf_counter() - t0, bench.runs
        say(f"baselines written: K={args.baseline_seeds}, {n} images, {write_runs} runs, {write_s:.0f} s")
        floor = floors(bench.store, [s.key for s in bench.images])

        benign: dict[str, dict] = {"paired": {}, "seed-spread": {}}

        def note(verdict, label, found):
            benign[verdict][label] = row(found, n) | {"why": found["why"]}
            say(f"benign {verdict} {label}: items {found['failing'] or 'ok'}, set {found['set'].verdict}")

        runs_before = bench.runs
        note("paired", "float32 rerun", bench.judge(verdicts=("paired",))["paired"])
        gate_runs_per_image = (bench.runs - runs_before) / n
        for threads in (1, 2):
            with intra_op_threads(threads):
                note("paired", f"threads {threads}", bench.judge(verdicts=("paired",))["paired"])
        for dtype in args.floor_dtypes:
            note("paired", dtype, bench.judge(pipeline=bench.pipeline(dtype), verdicts=("paired",))["paired"])
        elsewhere = shutil.copytree(args.model, Path(tmp) / "same-weights-elsewhere")
        note(
            "paired",
            "another path",
            bench.judge(pipeline=bench.pipeline(model=elsewhere), verdicts=("paired",))["paired"],
        )
        for pattern in range(1, args.rounding_patterns + 1):
            note("paired", f"rounding {pattern}", bench.judge(verdicts=("paired",), pattern=pattern)["paired"])
        for i in range(args.benign_seeds):
            note("seed-spread", f"seed {5000 + i}", bench.judge(seed=5000 + i, verdicts=("auto",))["auto"])
        for dtype in args.floor_dtypes:
            found = bench.judge(pipeline=bench.pipeline(dtype), seed=5000, verdicts=("auto",))["auto"]
            note("seed-spread", f"{dtype} seed 5000", found)

        transformer = bench.pipeline().transformer
        detection: dict[str, dict] = {"merge_parts": {}, "xattn_gain": {}}
        for name, levels in (("merge_parts", args.merge), ("xattn_gain", args.gain)):
            for level in levels:
                with broken(transformer, graded(name, level)):
                    found = bench.judge()
                detection[name][f"{level:g}"] = {v: row(found[v], n) for v in VERDICTS}
                say(
                    f"{name}@{level:g}: "
                    + "; ".join(f"{v} {len(found[v]['failing'])}/{n} set {found[v]['set'].verdict}" for v in VERDICTS)
                )
        held_out = {}
        for label, parameter, edit, expected in HELD_OUT:
            with broken(transformer, Variant(label, "", lambda names, p=parameter, e=edit: [(p, e)])):
                found = bench.judge()
            held_out[label] = {v: row(found[v], n) for v in VERDICTS} | {"expected_onset": expected}
            say(
                f"{label}: "
                + "; ".join(f"{v} {len(found[v]['failing'])}/{n} set {found[v]['set'].verdict}" for v in VERDICTS)
                + f"; onsets {row(found['paired'], n)['onsets']}"
            )

    def totals(verdict):
        runs = benign[verdict]
        return {
            "runs": len(runs),
            "items": sum(r["items"] for r in runs.values()),
            "sets": sum(r["set"] == "fail" for r in runs.values()),
        }

    fa = {v: totals(v) for v in VERDICTS}
    det = detection

    def fails(grade, level, verdict, what="set", at_least=1):
        r = det[grade].get(f"{level:g}", {}).get(verdict)
        return None if r is None else (r["set"] == "fail" if what == "set" else r["items"] >= at_least)

    result = {
        "benchmark": "diagnostic_power",
        "model": Path(args.model).name,
        "K": args.baseline_seeds,
        "images": n,
        "floor_dtypes": args.floor_dtypes,
        "false_alarms": fa,
        "benign": benign,
        "numeric_floor_in_seed_spreads": floor,
        "detection": detection,
        "held_out": held_out,
        "cost": {
            "baseline_write_runs_per_image": write_runs / n,
            "baseline_write_s": round(write_s, 1),
            "gate_runs_per_image": gate_runs_per_image,
        },
        "goals_met": {
            "paired: >=20 benign runs, 0 failing items": fa["paired"]["runs"] >= 20
            and fa["paired"]["items"] == 0
            and fa["paired"]["sets"] == 0,
            "paired: merge 5% fails the set": fails("merge_parts", 0.05, "paired"),
            "paired: merge 10% fails the baseline item on >=8/10": fails(
                "merge_parts", 0.1, "paired", "items", round(0.8 * n)
            ),
            "paired: gain x0.97 fails the set": fails("xattn_gain", 0.97, "paired"),
            "paired: gain x1.03 fails the set": fails("xattn_gain", 1.03, "paired"),
            "seed-spread: >=100 benign runs, 0 failing items": fa["seed-spread"]["runs"] >= 100
            and fa["seed-spread"]["items"] == 0,
            "gate cost at R=1: one run per image": gate_runs_per_image == 1,
        },
        "denoising_runs": bench.runs,
        "wall_s": round(time.perf_counter() - start, 1),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if args.out is not None:
        figure = args.out / f"diagnostic-power-{result['model']}.png"
        draw(result, figure)
        result["figure"] = str(figure)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
