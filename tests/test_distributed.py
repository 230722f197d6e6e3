"""``partattn trend | compare | calibrate`` under a torchrun launch: two CPU ranks (gloo) give
exactly the outputs of one process, and a rank that fails ends the job with its message.

``trend`` and the failures run through ``torchrun`` itself; ``compare`` and ``calibrate`` start each
rank as a subprocess with the variables torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``), so that each rank's own output can be checked.
``PARTATTN_DIST_TIMEOUT`` is set low so that a bug that left a rank waiting fails the test instead of
hanging it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import FIXTURE_IMAGES, REPO, TINY_FIXTURE

from partattn_checks import EMBEDDED_MODEL
from partattn_checks.cli import main
from partattn_checks.runs.distributed import DistributedError, Launch, Ranks, portable, timeout_s

SEED1 = REPO / "fixtures" / "checkpoints" / "tiny-seed1"
IMAGES = ("np2_circle_square.png", "np3_three_shapes.png")
TIMEOUT = {"PARTATTN_DIST_TIMEOUT": "300"}  # a rank left waiting by a bug fails instead of hanging
GUARD_S = 900  # and should one still hang, the test fails after this (a guard, not a timing assertion)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], cwd: Path, n: int = 2) -> list[subprocess.CompletedProcess]:
    """``argv`` run as ``n`` ranks of one launch, as torchrun starts them; each rank's result."""
    port = free_port()
    procs = []
    for rank in range(n):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(n),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            **TIMEOUT,
        }
        procs.append(
            subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=GUARD_S)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 --no-python partattn ARGS`` in ``cwd``, as a user runs it."""
    partattn_script = shutil.which("partattn", path=str(Path(sys.executable).parent))
    assert partattn_script, "the partattn console script is installed next to this python"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python"]
    env = {**os.environ, **TIMEOUT}
    return subprocess.run(
        [*command, partattn_script, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=GUARD_S
    )


def partattn(*args: str) -> list[str]:
    return [sys.executable, "-m", "partattn_checks.cli", *args]


def files(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for name in IMAGES:
        shutil.copy(FIXTURE_IMAGES / name, folder / name)
    return folder


def test_trend_over_two_ranks_equals_one_process(images, tmp_path, capsys, monkeypatch):
    """Through torchrun, as users run it. torchrun gives each rank one thread (``OMP_NUM_THREADS=1``),
    so the single process runs on one thread too: float32 sums differ in their last bits between
    thread counts (measured: a part separation in its 7th digit), which is not the launch's doing."""
    checkpoints = [str(TINY_FIXTURE), str(SEED1), str(EMBEDDED_MODEL)]  # 3 x 2 units: both ranks load tiny-seed1
    common = ["trend", *checkpoints, "--fixtures", str(images), "--steps", "2", "--device", "cpu"]
    monkeypatch.chdir(tmp_path)  # --out as most people write it: relative
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        status = main([*common, "--out", "one", "-q"])
    finally:
        torch.set_num_threads(threads)
    assert not torch.distributed.is_initialized()  # a plain run never joins a process group
    one = capsys.readouterr().out
    run = torchrun([*common, "--out", "two"], tmp_path)
    assert run.returncode == status, run.stderr  # rank 0's status is the job's
    assert "over 2 processes" in run.stderr
    assert run.stdout == one.replace("one/", "two/")  # said once, by rank 0
    assert files(tmp_path / "two") == files(tmp_path / "one")  # trend.json, figures, index.html: byte for byte


def test_compare_over_two_ranks_equals_one_process(images, tmp_path, capsys):
    common = ["compare", str(EMBEDDED_MODEL), str(SEED1), "--fixtures", str(images), "--steps", "2", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "one"), "-q"]) == 0
    one = capsys.readouterr().out
    ranks = launch(partattn(*common, "--out", str(tmp_path / "two")), tmp_path)
    assert [r.returncode for r in ranks] == [0, 0], [r.stderr for r in ranks]
    assert ranks[0].stdout == one.replace(str(tmp_path / "one"), str(tmp_path / "two")) and ranks[1].stdout == ""
    assert files(tmp_path / "two") == files(tmp_path / "one")


def test_calibrate_over_two_ranks_equals_one_process(images, tmp_path, capsys):
    common = ["calibrate", "--model", str(EMBEDDED_MODEL), "--random", str(TINY_FIXTURE)]
    common += ["--fixtures", str(images), "--steps", "2", "--device", "cpu", "-q"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    ranks = launch(partattn(*common, "--out", str(tmp_path / "two")), tmp_path)
    assert [r.returncode for r in ranks] == [0, 0], [r.stderr for r in ranks]
    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    dated = ("model-matrix.json", "model-matrix.md", "thresholds.toml")  # they say when they were written
    assert {k: v for k, v in two.items() if k not in dated} == {k: v for k, v in one.items() if k not in dated}
    doc = [json.loads((tmp_path / f / "model-matrix.json").read_text()) for f in ("one", "two")]
    for d in doc:
        d["provenance"].pop("date")
    assert doc[0] == doc[1]
    assert doc[0]["graded"]  # both phases ran (the variants, then the graded degradations)
    for name in ("model-matrix.md", "thresholds.toml"):
        assert undated(one[name]) == undated(two[name]), name


def undated(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if "UTC" not in line]


def test_a_failing_rank_ends_the_job_with_its_message(images, tmp_path):
    """Through torchrun itself, which stops every rank as soon as one exits non-zero: rank 1's error
    must still reach the user, said once, by rank 0."""
    broken = tmp_path / "broken"
    shutil.copytree(EMBEDDED_MODEL, broken)
    weights = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    # 2 checkpoints x 2 images: rank 1 loads the broken one
    args = ["trend", str(EMBEDDED_MODEL), str(broken), "--fixtures", str(images), "--steps", "1", "--device", "cpu"]
    run = torchrun([*args, "--out", "out"], tmp_path)
    said = run.stdout + run.stderr
    assert run.returncode != 0
    assert said.count("partattn: rank 1 of 2 failed on broken x np2_circle_square.png") == 1, said
    errors = [line for line in said.splitlines() if line.startswith("partattn trend: error:")]
    assert len(errors) == 1 and "broken/transformer/diffusion_pytorch_model.safetensors: truncated" in errors[0], said
    assert not (tmp_path / "out").exists()  # nothing written, the folder rank 0 made is gone


FACTORY = textwrap.dedent(
    """
    import os
    from partattn_checks.capture.runspec import torch_dtype
    from partattn_checks.model.pipeline import PartCrafterPipeline

    def factory(model, device, dtype):
        if os.environ["RANK"] == "1":
            raise RuntimeError("CUDA out of memory (rank 1's GPU is full)")
        return PartCrafterPipeline.from_pretrained(model, device=device, dtype=torch_dtype(dtype))
    """
)


def test_a_rank_that_cannot_load_its_model_ends_the_job_with_its_message(images, tmp_path):
    """A step each rank takes for itself (calibrate loads its model before the runs are shared): a
    user's pipeline that raises on rank 1 alone ends the job with that error, shown by rank 0."""
    (tmp_path / "full_gpu.py").write_text(FACTORY)
    args = ["calibrate", "--model", str(EMBEDDED_MODEL), "--pipeline", "full_gpu:factory", "--fixtures", str(images)]
    run = torchrun([*args, "--steps", "1", "--device", "cpu", "--out", "out"], tmp_path)
    said = run.stdout + run.stderr
    assert run.returncode != 0
    assert said.count(f"partattn: rank 1 of 2 failed on loading {EMBEDDED_MODEL}") == 1, said
    assert said.count("RuntimeError: CUDA out of memory (rank 1's GPU is full)") == 1, said  # rank 0's traceback
    assert not (tmp_path / "out").exists()


FAILING = textwrap.dedent(
    """
    import json, sys, time
    from partattn_checks.runs.distributed import Ranks, _store

    ran = []

    def work(unit):
        ran.append(unit)
        if unit == 2:  # rank 1's first unit fails once rank 0 is inside its first unit (before, it would
            while not _store().check(["test/rank0-started"]):  # stop rank 0 before unit 0: a race)
                time.sleep(0.05)
            raise ValueError("unit 2 cannot run")
        if unit == 0:  # rank 0 waits until rank 1 has flagged its failure
            _store().set("test/rank0-started", "1")
            while not _store().check(["partattn/failed/1"]):
                time.sleep(0.05)
        return unit * 10

    def own_device(rank):  # a step each rank takes for itself
        if rank == 1:
            raise RuntimeError("rank 1 has no GPU")
        return f"device {rank}"

    with Ranks.from_env() as ranks:
        try:
            ranks.map(range(4), work, label=lambda u: f"unit {u}")
            outcome = "no error"
        except ValueError as err:
            outcome = f"ValueError: {err}"
        kept = ranks.each(lambda: f"device {ranks.rank}", label="its device")
        try:
            ranks.each(lambda: own_device(ranks.rank), label="its device")
            each = "no error"
        except RuntimeError as err:
            each = f"RuntimeError: {err}"
    print(json.dumps({"ran": ran, "outcome": outcome, "kept": kept, "each": each}))
    """
)


def test_a_rank_that_fails_stops_the_others_and_every_rank_raises_its_error(tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(FAILING)
    ranks = launch([sys.executable, str(script)], tmp_path)
    assert [r.returncode for r in ranks] == [0, 0], [r.stderr for r in ranks]
    said = [json.loads(r.stdout) for r in ranks]
    failed = {"outcome": "ValueError: unit 2 cannot run", "each": "RuntimeError: rank 1 has no GPU"}
    assert said[0] == {"ran": [0], "kept": "device 0", **failed}  # stopped before unit 1
    assert said[1] == {"ran": [2], "kept": "device 1", **failed}  # each rank keeps its own value
    assert "partattn: rank 1 of 2 failed on unit 2" in ranks[0].stderr and "failed on" not in ranks[1].stderr
    assert "partattn: rank 1 of 2 failed on its device" in ranks[0].stderr


# ------------------------------------------------------------------------------- without processes
def test_one_process_is_a_plain_loop_that_never_joins_a_group():
    ranks = Ranks()
    with ranks:
        assert ranks.map([3, 1, 2], lambda u: u * 2) == [6, 2, 4]
        assert ranks.first(lambda: "rank 0's") == "rank 0's"
        assert ranks.each(lambda: "mine", label="a step") == "mine"
        with pytest.raises(ZeroDivisionError):  # as it is, no wrapping
            ranks.map([1, 0], lambda u: 1 / u)
    assert not torch.distributed.is_initialized()
    assert (ranks.main, ranks.distributed, ranks.device("cuda:0"), ranks.share(5)) == (True, False, "cuda:0", range(5))


@pytest.mark.parametrize("n", [0, 1, 2, 7, 8, 9, 100])
@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_shares_are_contiguous_cover_every_unit_once_and_differ_by_one_at_most(n, size):
    shares = [Ranks(Launch(rank, size, rank)).share(n) for rank in range(size)]
    assert [i for share in shares for i in share] == list(range(n))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_a_launch_runs_each_rank_on_its_own_gpu():
    ranks = Ranks(Launch(rank=5, world_size=8, local_rank=1))
    assert ranks.device("cuda:0") == "cuda:1" and ranks.device("cpu") == "cpu" and not ranks.main


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, Launch(0, 1, 0)),
        ({"RANK": "3", "WORLD_SIZE": "4"}, Launch(3, 4, 3)),
        ({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, Launch(5, 8, 1)),
        ({"WORLD_SIZE": " "}, Launch(0, 1, 0)),
    ],
)
def test_the_launch_comes_from_torchruns_variables(env, expected):
    assert Launch.from_env(env) == expected


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two': not a whole number"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "need 0 <= RANK < WORLD_SIZE"),
        ({"WORLD_SIZE": "0"}, "need 0 <= RANK < WORLD_SIZE"),
    ],
)
def test_a_launch_that_makes_no_sense_is_refused(env, match):
    with pytest.raises(DistributedError, match=match):
        Launch.from_env(env)


def test_the_timeout_comes_from_the_environment():
    assert timeout_s({}) == 3600.0 and timeout_s({"PARTATTN_DIST_TIMEOUT": "90"}) == 90.0
    for bad in ("0", "-1", "soon"):
        with pytest.raises(DistributedError, match="PARTATTN_DIST_TIMEOUT"):
            timeout_s({"PARTATTN_DIST_TIMEOUT": bad})


def test_an_error_travels_as_itself_or_as_text():
    error = ValueError("bad image")
    assert portable(error) is error

    class Local(Exception):  # defined in a function: pickle cannot find it by name
        pass

    sent = portable(Local("no way"))
    assert isinstance(sent, DistributedError) and str(sent) == "Local: no way"


def test_the_command_refuses_a_gpu_index_under_a_launch(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert main(["trend", str(EMBEDDED_MODEL), "--device", "cuda:1", "--out", "x"]) == 0
    assert capsys.readouterr().err == ""  # rank 1 is quiet and leaves the status to rank 0
    monkeypatch.setenv("RANK", "0")
    assert main(["trend", str(EMBEDDED_MODEL), "--device", "cuda:1", "--out", "x"]) == 2
    assert "under torchrun each rank runs on cuda:LOCAL_RANK; pass --device cuda" in capsys.readouterr().err
