"""scripts/gpu_check.sh and gpu_check.py: the --small CPU run (the transformer check and the release
pipeline stage: a release-layout checkpoint written and loaded, plain vs captured per dtype, the gate),
what the shell script hands to Python, and the loud failure without CUDA.

The --small run is ``gpu_check.py`` run as ``__main__`` in this process, in the environment
``gpu_check.sh`` sets (its gate still runs ``partattn check`` in a process of its own): the shell
script's part under --small, which is to set that environment and hand its arguments to Python, is
checked on its own with an interpreter that only writes down what it was given. Without CUDA the
script runs as it is, with the real Python, and fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
IMAGE = "np2_circle_square.png"
#: What gpu_check.sh exports before it starts Python.
SCRIPT_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
}


def run(*args, timeout=120, python=sys.executable, extra_env=()):
    env = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}  # the script's own values show
    env.update({"OMP_NUM_THREADS": "1", "PYTHON": str(python), **dict(extra_env)})
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """``gpu_check.sh --small --steps 2 --fixtures F`` as the shell script runs it (see
    ``test_the_shell_script_hands_small_runs_to_gpu_check_py``): ``gpu_check.py`` with those
    arguments, the shell script's environment, exit status from SystemExit."""
    fixtures = tmp_path_factory.mktemp("fixtures")
    shutil.copyfile(ROOT / "fixtures" / "images" / IMAGE, fixtures / IMAGE)  # one image keeps the gate short
    argv = [str(ROOT / "scripts" / "gpu_check.py"), "--small", "--steps", "2", "--fixtures", str(fixtures)]
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in SCRIPT_ENV.items():
            mp.setenv(name, value)
        mp.setattr(sys, "argv", argv)
        mp.chdir(ROOT)
        mp.setattr(sys, "path", list(sys.path))  # the script puts the repository first on it
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            with pytest.raises(SystemExit) as done:
                runpy.run_path(argv[0], run_name="__main__")
    return subprocess.CompletedProcess(argv, done.value.code, out.getvalue(), err.getvalue())


def test_the_shell_script_hands_small_runs_to_gpu_check_py(tmp_path):
    """Under --small the shell script asks nothing of CUDA and starts ``$PYTHON gpu_check.py`` with its
    own arguments, offline, with the repository on PYTHONPATH: a stand-in interpreter writes down each
    call's arguments and environment."""
    python = tmp_path / "python"
    python.write_text(
        '#!/usr/bin/env bash\necho call >> "$CALLS/calls"\nprintf "%s\\0" "$@" > "$CALLS/argv"\nenv -0 > "$CALLS/env"\n'
    )
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    args = ["--small", "--steps", "2", "--fixtures", "some folder"]
    proc = run(*args, python=python, extra_env={"CALLS": str(tmp_path), "PYTHONPATH": "/elsewhere"})
    assert proc.returncode == 0 and proc.stdout == proc.stderr == "", proc
    assert (tmp_path / "calls").read_text() == "call\n"  # one call: no CUDA probe before it
    assert (tmp_path / "argv").read_text().split("\0")[:-1] == [str(ROOT / "scripts" / "gpu_check.py"), *args]
    env = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().split("\0") if line)
    assert SCRIPT_ENV.items() <= env.items()
    assert env["PYTHONPATH"] == f"{ROOT}:/elsewhere"


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
    proc = run("--steps", "1", timeout=60)  # the real Python: gpu_check.sh asks it for CUDA
    assert proc.returncode == 3
    assert "CUDA is not available" in proc.stderr and "--small" in proc.stderr
    assert proc.stdout == ""
