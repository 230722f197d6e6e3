"""scripts/gpu_check.sh and gpu_check.py: the --small CPU run (the transformer check and the release
pipeline stage: a release-layout checkpoint written and loaded, plain vs captured per dtype, the gate),
and the loud failure without CUDA."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
IMAGE = "np2_circle_square.png"


def run(*args, timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    fixtures = tmp_path_factory.mktemp("fixtures")
    shutil.copyfile(ROOT / "fixtures" / "images" / IMAGE, fixtures / IMAGE)  # one image keeps the gate short
    return run("--small", "--steps", "2", "--fixtures", str(fixtures), timeout=900)


def test_small_run_is_exact_and_reports_json(small_run):
    proc = small_run
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # exactly one JSON line
    result = json.loads(lines[0])
    assert result["check"] == "gpu_check" and result["mode"] == "small" and result["device"] == "cpu"
    assert result["exact"] is True and result["deterministic"] is True
    assert (
        result["config"] | {"steps": 2, "parts": 2, "tokens": 16, "image_tokens": 17, "cfg": True} == result["config"]
    )
    assert result["config"]["width"] == 128 and result["config"]["heads"] == 4 and result["config"]["layers"] == 3
    assert result["step_s"]["plain"] > 0 and result["step_s"]["captured"] > 0 and result["overhead"] > 0
    assert len(result["all_step_s"]["plain"]) == 4 and len(result["all_step_s"]["captured"]) == 2
    assert result["peak_bytes"] == {"plain": None, "captured": None}  # CPU: no CUDA allocator to ask
    assert 0 < result["record_bytes"] < result["naive_full_maps_bytes"]
    assert result["record_finite"] is True and 0 < result["mean_entropy"] < 1


def test_small_run_release_pipeline_stage(small_run):
    stage = json.loads(small_run.stdout.strip().splitlines()[0])["release_pipeline"]
    assert stage["settings"] == {"num_parts": 2, "num_tokens": 8, "steps": 2}
    assert stage["write_s"] > 0 and stage["parameters"] > 0
    assert set(stage["runs"]) == {"bfloat16", "float16"}
    for run_ in stage["runs"].values():
        assert run_["exact"] is True  # capture never changes the pipeline's output
        assert run_["captured_over_plain"] > 0 and len(run_["all_image_s"]["plain"]) == 2
        assert run_["peak_kind"] == "process peak RSS (VmHWM)" and run_["peak_bytes"] >= run_["peak_after_load_bytes"]
        assert run_["weights_bytes"] == 2 * stage["parameters"]  # 16-bit weights
    gate = stage["gate"]
    assert gate["dtype"] == "bfloat16" and gate["images"] == 1 and gate["exit"] in (0, 1)
    assert gate["tests"] == 6 and gate["errors"] == 0  # one item per check of the one image
    assert gate["passed"] + gate["failures"] + gate["skipped"] == 6


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is available here")
def test_release_run_without_cuda_fails_loudly():
    proc = run("--steps", "1", timeout=60)
    assert proc.returncode == 3
    assert "CUDA is not available" in proc.stderr and "--small" in proc.stderr
    assert proc.stdout == ""
