#!/usr/bin/env python
"""Measure every check on every model of the zoo and write the verdict table (docs/training.md).

    python scripts/model_matrix.py --out docs/model-matrix.md

Models: the trained healthy tiny checkpoint, each broken variant made from it by a weight edit,
and a random-init one. For each model and check it reports the worst value over the fixture
images, the threshold, the verdict (failing images / judged images) and the margin to the
threshold, so the defaults in partattn_checks/checks.py can be seen to separate healthy from broken.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from partattn_checks.checks import CHECKS  # noqa: E402
from partattn_checks.zoo import HEALTHY, TARGETS, build_zoo, evaluate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RANDOM = REPO / "fixtures" / "checkpoints" / "tiny-random"
IMAGES = REPO / "fixtures" / "images"

#: Checks whose value must stay at or below the threshold (the rest must stay at or above it).
CEILING_CHECKS = {"uniformity", "collapse", "stability", "nonfinite"}


def worst(check: str, values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return max(values) if check in CEILING_CHECKS else min(values)


def least_failing(check: str, values: list[float]) -> float | None:
    """The image closest to passing: the other end of the range from :func:`worst`."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return min(values) if check in CEILING_CHECKS else max(values)


def margin(check: str, value: float | None, threshold: float | None) -> float | None:
    """Distance from the threshold on the passing side (negative: on the failing side)."""
    if value is None or threshold is None or value != value:
        return None
    return threshold - value if check in CEILING_CHECKS else value - threshold


def summarize(outcomes: dict) -> dict:
    rows = {}
    for check in CHECKS:
        results = [o.results[check] for o in outcomes.values()]
        judged = [r for r in results if r.verdict != "skip"]
        value = worst(check, [r.value for r in judged])
        threshold = judged[0].threshold if judged else None
        failing = [r for r in judged if r.verdict == "fail"]
        rows[check] = {
            "value": value,
            "threshold": threshold,
            "failing": len(failing),
            "judged": len(judged),
            "margin": margin(check, value, threshold),
            "reason": failing[0].reason if failing else "",
            "values": {image: r.value for image, r in zip(outcomes, results, strict=False)},
        }
    return rows


def fmt(x) -> str:
    return "—" if x is None or x != x else f"{x:.3f}"


def value_range(row) -> str:
    values = [v for v in row["values"].values() if v is not None and v == v]
    if not values:
        return "—"
    lo, hi = min(values), max(values)
    return f"{lo:.3f}" if abs(hi - lo) < 5e-4 else f"{lo:.3f}–{hi:.3f}"


def markdown(table: dict) -> str:
    checks = list(CHECKS)
    lines = [
        "| model | " + " | ".join(checks) + " |",
        "|---|" + "---|" * len(checks),
    ]
    for model, rows in table.items():
        cells = []
        for check in checks:
            row = rows[check]
            verdict = "pass" if row["failing"] == 0 else f"**FAIL {row['failing']}/{row['judged']}**"
            target = " ◀" if TARGETS.get(model) == check else ""
            cells.append(f"{value_range(row)} vs {fmt(row['threshold'])}: {verdict}{target}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Each cell: the range of the check's value over the fixture images, the default threshold, and how "
        "many images fail. ◀ marks the check a model is built to fail. Ceilings (the value must stay at or "
        f"below): {', '.join(sorted(CEILING_CHECKS))}; floor (at or above): part_separation. Values of "
        "non-finite models count non-finite entries.",
        "",
        "## Margins of the default thresholds",
        "",
        "| check | threshold | healthy, worst image | margin | built-to-fail model, least failing image | margin |",
        "|---|---|---|---|---|---|",
    ]
    for model, check in TARGETS.items():
        if model == "random" or model not in table:
            continue
        healthy, broken = table["healthy"][check], table[model][check]
        least = least_failing(check, list(broken["values"].values()))
        gap = -margin(check, least, healthy["threshold"]) if least is not None else None
        lines.append(
            f"| {check} | {fmt(healthy['threshold'])} | {fmt(healthy['value'])} | "
            f"{fmt(healthy['margin'])} | {model}: {fmt(least)} | {fmt(gap)} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--healthy", type=Path, default=HEALTHY)
    parser.add_argument("--random", type=Path, default=RANDOM)
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the checkpoint's)")
    parser.add_argument("--out", type=Path, help="write the markdown table here")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    args = parser.parse_args(argv)

    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() == ".png")
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in build_zoo(tmp, args.random, args.healthy).items():
            table[name] = summarize(evaluate(path, images, steps=args.steps))
            print(
                f"{name}: "
                + ", ".join(
                    f"{c}={fmt(r['value'])}({r['failing']}/{r['judged']} fail)" for c, r in table[name].items()
                ),
                flush=True,
            )
    text = markdown(table)
    stamp = f"{datetime.date.today()} on {platform.machine()} {platform.system()}, {len(images)} fixture images"
    print(text)
    if args.out:
        args.out.write_text(
            "# Model matrix: every check on the healthy, broken and random models\n\n"
            f"Generated by `python scripts/model_matrix.py --out {args.out}` ({stamp}).\n\n" + text + "\n"
        )
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
