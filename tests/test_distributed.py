"""``partattn trend | compare | calibrate`` under a torchrun launch: two CPU ranks (gloo) give
exactly the outputs of one process, and a rank that fails ends the job with its message.

One torchrun launch (the ``launched`` fixture, shared by the tests below and, under pytest-xdist, by
the workers) runs ``RANK_SCRIPT`` on each rank: ``trend``, ``compare`` and ``calibrate`` one after
the other through ``cli.main`` (what the ``partattn`` console script calls), then the ``calibrate``
whose model fails to load on rank 1, last, ending the rank as the console script does. torchrun writes
each rank's stdout and stderr to a file of its own (``--redirects 3``), so each rank's output of each
command is checked; each test computes its one-process reference in this process. A rank that
fails a unit of the shared work goes through ``torchrun --no-python partattn`` itself, as users run it.
``PARTATTN_DIST_TIMEOUT`` is set low so that a bug that left a rank waiting fails the test instead of
hanging it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from filelock import FileLock
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


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 --no-python partattn ARGS`` in ``cwd``, as a user runs it."""
    partattn_script = shutil.which("partattn", path=str(Path(sys.executable).parent))
    assert partattn_script, "the partattn console script is installed next to this python"
    env = {**os.environ, **TIMEOUT}
    return subprocess.run(
        [*TORCHRUN, "--no-python", partattn_script, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=GUARD_S,
    )


def files(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


# ------------------------------------------------------------------------------- one launch, several commands
MARK = "@@ partattn test, command: "

#: Each rank of the launch: joins the launch's process group once, then runs the commands of the JSON
#: file ``argv[1]`` (``[[name, argv], ...]``) through ``cli.main``, each announced by ``argv[2]`` on stdout
#: and stderr; the statuses of all but the last go to ``status-RANK.json``, and the last ends the process
#: as the ``partattn`` console script does (``sys.exit(main())``: its status, or the traceback of what it
#: raised). Each command finds the group joined and leaves it joined (``Ranks``: "unless the caller
#: already did"); joining and leaving again for each command in one process would rejoin through the
#: rendezvous keys the last join left in torchrun's store (measured: rank 1 then connects to rank 0's old
#: address and fails now and then). The commands' own join runs in the torchrun tests further down.
RANK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from datetime import timedelta
    from pathlib import Path
    import torch.distributed as dist
    from partattn_checks.cli import main
    from partattn_checks.runs.distributed import timeout_s

    MARK = sys.argv[2]

    def announce(name):
        for stream in (sys.stdout, sys.stderr):
            print(MARK + name, file=stream, flush=True)

    *commands, (last, last_argv) = json.loads(Path(sys.argv[1]).read_text())
    dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s()))
    statuses = {}
    for name, argv in commands:
        announce(name)
        statuses[name] = main(argv)
        sys.stdout.flush()
        sys.stderr.flush()
    Path(f"status-{os.environ['RANK']}.json").write_text(json.dumps(statuses))
    announce(last)
    sys.exit(main(last_argv))
    """
)

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


@dataclass
class Said:
    """What one command of the launch said and returned, by rank."""

    out: list[str]
    err: list[str]
    status: list[int | None]  # None: the last command, whose status is the process's (the job's below)


@dataclass
class Launched:
    folder: Path  # the launch's working directory, where the relative --out folders are
    job: subprocess.CompletedProcess  # torchrun's own exit status and output
    said: dict[str, Said]


def trend_args(images: Path) -> list[str]:
    checkpoints = [str(TINY_FIXTURE), str(SEED1), str(EMBEDDED_MODEL)]  # 3 x 2 units: both ranks load tiny-seed1
    return ["trend", *checkpoints, "--fixtures", str(images), "--steps", "2", "--device", "cpu"]


def compare_args(images: Path) -> list[str]:
    return ["compare", str(EMBEDDED_MODEL), str(SEED1), "--fixtures", str(images), "--steps", "2", "--device", "cpu"]


def calibrate_args(images: Path) -> list[str]:
    common = ["calibrate", "--model", str(EMBEDDED_MODEL), "--random", str(TINY_FIXTURE)]
    return [*common, "--fixtures", str(images), "--steps", "2", "--device", "cpu", "-q"]


def cannot_load_args(images: Path) -> list[str]:
    args = ["calibrate", "--model", str(EMBEDDED_MODEL), "--pipeline", "full_gpu:factory", "--fixtures", str(images)]
    return [*args, "--steps", "1", "--device", "cpu", "--out", "out"]


def split(text: str) -> dict[str, str]:
    """A rank's stream cut at each ``MARK``: {command: what it wrote}."""
    parts = re.split(re.escape(MARK) + r"(\S+)\n", text)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def run_launch(folder: Path) -> Launched:
    images = folder / "images"
    images.mkdir()
    for name in IMAGES:
        shutil.copy(FIXTURE_IMAGES / name, images / name)
    (folder / "full_gpu.py").write_text(FACTORY)
    (folder / "rank.py").write_text(RANK_SCRIPT)
    commands = [
        ("trend", [*trend_args(images), "--out", "two"]),  # --out as most people write it: relative
        ("compare", [*compare_args(images), "--out", str(folder / "compare")]),
        ("calibrate", [*calibrate_args(images), "--out", str(folder / "calibrate")]),
        ("cannot-load", cannot_load_args(images)),
    ]
    (folder / "commands.json").write_text(json.dumps(commands))
    logs = folder / "logs"
    job = subprocess.run(
        [*TORCHRUN, "--log-dir", str(logs), "--redirects", "3", "rank.py", "commands.json", MARK],
        cwd=folder,
        capture_output=True,
        text=True,
        env={**os.environ, **TIMEOUT},
        timeout=GUARD_S,
    )
    streams = []
    for rank in (0, 1):
        (rank_logs,) = logs.glob(f"*/attempt_0/{rank}")
        status_file = folder / f"status-{rank}.json"
        statuses = json.loads(status_file.read_text()) if status_file.is_file() else {}
        streams.append(
            (split((rank_logs / "stdout.log").read_text()), split((rank_logs / "stderr.log").read_text()), statuses)
        )
    said = {
        name: Said(
            out=[out.get(name, "") for out, _, _ in streams],
            err=[err.get(name, "") for _, err, _ in streams],
            status=[statuses.get(name) for _, _, statuses in streams],
        )
        for name, _ in commands
    }
    return Launched(folder, job, said)


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> Launched:
    """The launch, once: under pytest-xdist the first worker that needs it runs it and the others read
    its files (they all see the same images folder, so that their one-process runs say the same paths)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return run_launch(tmp_path_factory.mktemp("launch"))
    folder = tmp_path_factory.getbasetemp().parent / "test_distributed-launch"  # this run's, every worker's
    with FileLock(f"{folder}.lock"):
        done = folder / "launched.json"
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a launch that failed half way is run again
            folder.mkdir()
            result = run_launch(folder)
            job = {"returncode": result.job.returncode, "stdout": result.job.stdout, "stderr": result.job.stderr}
            said = {name: vars(s) for name, s in result.said.items()}
            done.write_text(json.dumps({"job": job, "said": said}))
            return result
        saved = json.loads(done.read_text())
        job = subprocess.CompletedProcess(TORCHRUN, **saved["job"])
        return Launched(folder, job, {name: Said(**s) for name, s in saved["said"].items()})


@pytest.fixture(scope="module")
def images(launched) -> Path:
    return launched.folder / "images"


def test_trend_over_two_ranks_equals_one_process(launched, images, tmp_path, capsys, monkeypatch):
    """torchrun gives each rank one thread (``OMP_NUM_THREADS=1``), so the single process runs on one
    thread too: float32 sums differ in their last bits between thread counts (measured: a part
    separation in its 7th digit), which is not the launch's doing."""
    monkeypatch.chdir(tmp_path)  # --out as most people write it: relative
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        status = main([*trend_args(images), "--out", "one", "-q"])
    finally:
        torch.set_num_threads(threads)
    assert not torch.distributed.is_initialized()  # a plain run never joins a process group
    one = capsys.readouterr().out
    said = launched.said["trend"]
    assert said.status == [status, 0], said.err  # rank 0 carries the status, rank 1 is quiet and exits 0
    assert "over 2 processes" in said.err[0]
    assert said.out == [one.replace("one/", "two/"), ""]  # said once, by rank 0
    assert files(launched.folder / "two") == files(tmp_path / "one")  # trend.json, figures, index.html: byte for byte


def test_compare_over_two_ranks_equals_one_process(launched, images, tmp_path, capsys):
    assert main([*compare_args(images), "--out", str(tmp_path / "one"), "-q"]) == 0
    one = capsys.readouterr().out
    said = launched.said["compare"]
    assert said.status == [0, 0], said.err
    assert said.out == [one.replace(str(tmp_path / "one"), str(launched.folder / "compare")), ""]
    assert files(launched.folder / "compare") == files(tmp_path / "one")


def test_calibrate_over_two_ranks_equals_one_process(launched, images, tmp_path):
    assert main([*calibrate_args(images), "--out", str(tmp_path / "one")]) == 0
    said = launched.said["calibrate"]
    assert said.status == [0, 0], said.err
    one, two = files(tmp_path / "one"), files(launched.folder / "calibrate")
    dated = ("model-matrix.json", "model-matrix.md", "thresholds.toml")  # they say when they were written
    assert {k: v for k, v in two.items() if k not in dated} == {k: v for k, v in one.items() if k not in dated}
    doc = [
        json.loads((folder / "model-matrix.json").read_text())
        for folder in (tmp_path / "one", launched.folder / "calibrate")
    ]
    for d in doc:
        d["provenance"].pop("date")
    assert doc[0] == doc[1]
    assert doc[0]["graded"]  # both phases ran (the variants, then the graded degradations)
    for name in ("model-matrix.md", "thresholds.toml"):
        assert undated(one[name]) == undated(two[name]), name


def undated(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if "UTC" not in line]


def test_a_rank_that_cannot_load_its_model_ends_the_job_with_its_message(launched):
    """A step each rank takes for itself (calibrate loads its model before the runs are shared): a
    user's pipeline that raises on rank 1 alone ends the job with that error, shown by rank 0."""
    said = launched.said["cannot-load"]
    job = launched.job
    everything = job.stdout + job.stderr + "".join(said.out + said.err)
    assert job.returncode != 0
    assert everything.count(f"partattn: rank 1 of 2 failed on loading {EMBEDDED_MODEL}") == 1, everything
    assert everything.count("RuntimeError: CUDA out of memory (rank 1's GPU is full)") == 1, everything
    assert "CUDA out of memory" in said.err[0]  # rank 0's traceback
    assert not (launched.folder / "out").exists()


def test_a_failing_rank_ends_the_job_with_its_message(tmp_path):
    """Through torchrun itself, which stops every rank as soon as one exits non-zero: rank 1's error
    must still reach the user, said once, by rank 0."""
    images = tmp_path / "images"
    images.mkdir()
    for name in IMAGES:
        shutil.copy(FIXTURE_IMAGES / name, images / name)
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
