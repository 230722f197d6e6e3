#!/usr/bin/env python
"""Wall time of `pytest --partattn` on a clean clone, with the embedded default model.

    python benchmarks/gate_walltime.py [--repeats 3] [--extra-args "-n 2"]

Clones the committed HEAD into a temporary folder, runs the gate there `--repeats` times and prints
one JSON line: the median and all wall times, the outcome counts of the last run, machine and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def outcome_counts(output: str) -> dict[str, int]:
    summary = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|skipped)", line)]
    return (
        {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|error)", summary[-1])} if summary else {}
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extra-args", default="", help="more pytest arguments, e.g. '-n 2'")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        command = [
            sys.executable,
            "-m",
            "pytest",
            "--partattn",
            "-q",
            "-p",
            "no:cacheprovider",
            *shlex.split(args.extra_args),
        ]
        times, output = [], ""
        for _ in range(args.repeats):
            start = time.perf_counter()
            run = subprocess.run(
                command, cwd=clone, capture_output=True, text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
            )
            times.append(round(time.perf_counter() - start, 2))
            output = run.stdout + run.stderr
    print(
        json.dumps(
            {
                "benchmark": "gate_walltime",
                "command": "pytest --partattn " + args.extra_args,
                "median_s": statistics.median(times),
                "all_s": times,
                "exit_code": run.returncode,
                "outcomes": outcome_counts(output),
                "machine": {
                    "platform": platform.platform(),
                    "cpu_count": os.cpu_count(),
                    "python": platform.python_version(),
                },
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
        )
    )
    return run.returncode


if __name__ == "__main__":
    raise SystemExit(main())
