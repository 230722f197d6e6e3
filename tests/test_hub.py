"""Hugging Face repo ids as models (``wgsxm/PartCrafter[@revision]``), resolved through a real hub cache
folder that each test builds from the embedded tiny checkpoint, offline: nothing is ever downloaded.

The library (``load_checkpoint``), ``partattn run``/``check``/``compare`` and the gate take the repo id;
records and baseline fingerprints keep the repo id and the resolved commit; a repo id that is not in
the cache offline is one line with the command that fetches it (exit 2 for the command, 4 for the gate).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hub_support import REPO_ID, add_snapshot, offline_cache
from plugin_support import IMAGE, IMAGES, make_project

from partattn_checks import EMBEDDED_MODEL, cli
from partattn_checks.baselines import fingerprint
from partattn_checks.model import hub

pytest_plugins = ("pytester",)

REPO = Path(__file__).resolve().parents[1]
COMMAND = "hf download"  # huggingface_hub >= 0.34 (the lowest CI environment floats to 0.36)


@pytest.fixture(autouse=True)
def _not_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)  # the gate refuses --partattn-update under CI (tests/test_baseline.py)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An offline hub cache (``HF_HOME``) holding the embedded checkpoint as ``wgsxm/PartCrafter``, with
    the branch ``main`` and the tag ``v1`` at its commit."""
    root = offline_cache(monkeypatch, tmp_path / "hf-home")
    add_snapshot(root, EMBEDDED_MODEL, refs=("main", "v1"))
    return root


def snapshot(hub_cache: Path) -> Path:
    (folder,) = (hub_cache / "models--wgsxm--PartCrafter" / "snapshots").iterdir()
    return folder


# ----------------------------------------------------------------------------- the cache and repo ids
def test_the_test_cache_is_one_huggingface_hub_reads(hub_cache):
    from huggingface_hub import scan_cache_dir

    (repo,) = scan_cache_dir(hub_cache).repos
    (revision,) = repo.revisions
    assert repo.repo_id == REPO_ID and revision.refs == frozenset({"main", "v1"})
    assert revision.commit_hash == snapshot(hub_cache).name
    assert {f.file_name for f in revision.files} >= {"model_index.json", "diffusion_pytorch_model.safetensors"}


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("wgsxm/PartCrafter", ("wgsxm/PartCrafter", None)),
        ("wgsxm/PartCrafter@main", ("wgsxm/PartCrafter", "main")),
        ("wgsxm/PartCrafter@refs/pr/3", ("wgsxm/PartCrafter", "refs/pr/3")),
        ("my-org/part_crafter.v2@0123abc", ("my-org/part_crafter.v2", "0123abc")),
        ("PartCrafter", None),  # no owner: a local name
        ("./wgsxm/PartCrafter", None),
        ("/models/PartCrafter", None),
        ("~/PartCrafter", None),
        ("fixtures/checkpoints/tiny-random", None),  # two slashes: a path
        ("a--b/c", None),  # the Hub forbids "--" (its cache folders use it)
        ("wgsxm/PartCrafter@", None),
    ],
)
def test_what_is_written_like_a_repo_id(text, parsed):
    assert hub.parse(text) == parsed


def test_resolves_the_branch_a_tag_or_a_commit_from_the_cache(hub_cache):
    folder = snapshot(hub_cache)
    for text in (REPO_ID, f"{REPO_ID}@main", f"{REPO_ID}@v1", f"{REPO_ID}@{folder.name}"):
        found = hub.resolve(text)
        assert (found.repo_id, found.commit, found.path) == (REPO_ID, folder.name, folder), text
    assert hub.snapshot_of(folder).label == f"{REPO_ID}@{folder.name}"
    assert hub.provenance(EMBEDDED_MODEL) == {}


def test_hf_hub_cache_wins_over_hf_home(hub_cache, tmp_path, monkeypatch):
    other = tmp_path / "other-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(other))
    with pytest.raises(hub.HubError, match="is not in the hub cache"):
        hub.resolve(REPO_ID)
    folder = add_snapshot(other, EMBEDDED_MODEL, salt="other")
    assert hub.resolve(REPO_ID).path == folder


def test_not_in_the_cache_offline_is_one_line_with_the_fetch_command(hub_cache):
    with pytest.raises(hub.HubError) as err:
        hub.resolve("wgsxm/Missing@v2")
    text = str(err.value)
    assert "\n" not in text and "wgsxm/Missing" in text and "HF_HUB_OFFLINE is set" in text
    assert str(hub_cache) in text
    assert text.endswith(
        f"fetch it with: HF_HUB_OFFLINE=0 {COMMAND} wgsxm/Missing --revision v2 --include '*.json' '*.safetensors'"
    )
    with pytest.raises(hub.HubError, match="at revision v9 is not in the hub cache"):
        hub.resolve(f"{REPO_ID}@v9")  # the repo is cached, that revision is not


def test_online_without_a_reachable_hub_uses_the_cache(hub_cache, tmp_path):
    """Online (HF_HUB_OFFLINE unset), huggingface_hub asks the Hub first; here the Hub is a closed local
    port (set before huggingface_hub is imported: a subprocess), so nothing leaves the machine."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: connections are refused
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}"}
    code = (
        "from partattn_checks.model import hub\n"
        "print(hub.resolve('wgsxm/PartCrafter').commit)\n"
        "try:\n    hub.resolve('wgsxm/Missing')\nexcept hub.HubError as err:\n    print(err)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    commit, missing = run.stdout.splitlines()
    assert commit == snapshot(hub_cache).name
    assert "wgsxm/Missing is not in the hub cache" in missing and "the Hub could not be reached" in missing
    assert missing.endswith(f"fetch it with: {COMMAND} wgsxm/Missing --include '*.json' '*.safetensors'")


def test_a_local_folder_of_that_name_wins(hub_cache, tmp_path, monkeypatch):
    local = tmp_path / "work" / "wgsxm" / "PartCrafter"
    shutil.copytree(EMBEDDED_MODEL, local)
    monkeypatch.chdir(tmp_path / "work")
    assert not hub.is_repo_id(REPO_ID)
    assert hub.model_folder(REPO_ID) == Path(REPO_ID)
    assert hub.is_repo_id(REPO_ID, base=tmp_path)  # no such folder there: the repo
    assert hub.model_folder(REPO_ID, base=tmp_path) == snapshot(hub_cache)
    assert hub.model_folder("no/such/dir", base=tmp_path) == tmp_path / "no/such/dir"  # a path: its caller says more
    with pytest.raises(hub.HubError, match="no such local folder, and the Hugging Face repo no/such"):
        hub.model_folder("no/such", base=tmp_path)


def test_load_checkpoint_takes_a_repo_id(hub_cache):
    from partattn_checks.model.loading import load_checkpoint

    checkpoint = load_checkpoint(f"{REPO_ID}@v1")
    assert checkpoint.path == snapshot(hub_cache)
    with pytest.raises(hub.HubError, match="wgsxm/Missing"):
        load_checkpoint("wgsxm/Missing")


# ----------------------------------------------------------------------------- fingerprints
def test_the_fingerprint_keeps_repo_id_and_commit_and_old_baselines_still_compare():
    meta = {"config": {}, "steps": 2, "weights": "w1", "repo_id": REPO_ID, "commit": "c" * 40}
    from_hub = fingerprint.environment_fingerprint(meta, f"hub:{REPO_ID}")
    assert (from_hub["repo_id"], from_hub["commit"]) == (REPO_ID, "c" * 40)
    local = fingerprint.environment_fingerprint({"config": {}, "steps": 2, "weights": "w1"}, "ckpt")
    assert "repo_id" not in local and "commit" not in local  # a local folder's fingerprint is as it was
    old = {k: v for k, v in local.items() if k != "weights"}  # written before weights digests
    assert fingerprint.fingerprint_diff(old, from_hub) == ["model: 'ckpt' in the baseline, 'hub:wgsxm/PartCrafter' now"]
    assert fingerprint.fingerprint_diff(local, from_hub) == []  # the same weights: the same model
    other = dict(from_hub, weights="w2", commit="d" * 40)
    assert fingerprint.fingerprint_diff(from_hub, other) == [
        "weights: 'w1' in the baseline, 'w2' now",
        f"commit: {'c' * 40!r} in the baseline, {'d' * 40!r} now",
    ]


# ----------------------------------------------------------------------------- the partattn command
def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_partattn_run_on_a_repo_id_offline(hub_cache, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "run", IMAGES / IMAGE, "--model", f"{REPO_ID}@v1", "--steps", "2", "--out", out)
    assert code == 0, err
    meta = json.loads((out / "metrics.json").read_text())["record"]["meta"]
    assert (meta["repo_id"], meta["commit"], meta["model"]) == (
        REPO_ID,
        snapshot(hub_cache).name,
        str(snapshot(hub_cache)),
    )
    page = (out / "index.html").read_text()
    assert f"repo_id {REPO_ID}" in page and f"commit {snapshot(hub_cache).name}" in page


def test_partattn_run_on_a_repo_id_not_in_the_cache(hub_cache, tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", IMAGES / IMAGE, "--model", "wgsxm/Missing", "--out", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("partattn run: error: --model wgsxm/Missing: no such local folder")
    assert f"{COMMAND} wgsxm/Missing" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv, option",
    [
        (["check", "--model", "wgsxm/Missing", "--fixtures", IMAGES], "--model"),
        (["calibrate", "--model", "wgsxm/Missing", "--fixtures", IMAGES], "--model"),
        (["compare", "wgsxm/Missing", EMBEDDED_MODEL, "--fixtures", IMAGES], "A"),
        (["trend", EMBEDDED_MODEL, "--base", "wgsxm/Missing@v2", "--fixtures", IMAGES], "--base"),
    ],
)
def test_every_command_says_the_same_line_for_a_repo_not_in_the_cache(hub_cache, tmp_path, capsys, argv, option):
    code, _, err = run_cli(capsys, *argv, "--out", tmp_path / "out") if argv[0] != "check" else run_cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1, err
    given = "wgsxm/Missing@v2" if argv[0] == "trend" else "wgsxm/Missing"
    assert err.startswith(f"partattn {argv[0]}: error: {option} {given}: no such local folder, and the Hugging Face")
    assert f"fetch it with: HF_HUB_OFFLINE=0 {COMMAND} wgsxm/Missing" in err
    assert not (tmp_path / "out").exists()


def test_partattn_check_hands_the_repo_id_to_the_gate(hub_cache, tmp_path, capsys, monkeypatch):
    seen = []
    monkeypatch.setattr(pytest, "main", lambda args: seen.append(args) or 0)
    code, _, err = run_cli(capsys, "check", "--model", REPO_ID, "--fixtures", IMAGES)
    assert code == 0, err
    assert f"--partattn-model={REPO_ID}" in seen[0]  # rerun commands show what the user wrote


def test_partattn_compare_two_revisions(hub_cache, tmp_path, capsys):
    v1 = snapshot(hub_cache)
    v2 = add_snapshot(hub_cache, EMBEDDED_MODEL, refs=("v2",), salt="v2")  # another commit, the same weights
    fixtures = tmp_path / "images"
    fixtures.mkdir()
    shutil.copyfile(IMAGES / IMAGE, fixtures / IMAGE)
    argv = ["compare", f"{REPO_ID}@v1", f"{REPO_ID}@v2", "--fixtures", fixtures, "--steps", "2", "-q"]
    code, _, err = run_cli(capsys, *argv, "--out", tmp_path / "c")
    assert code == 0, err
    doc = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert (doc["a"], doc["b"]) == (str(v1), str(v2)) and v1 != v2


# ----------------------------------------------------------------------------- the gate
def gate_args(*extra: str) -> list[str]:
    """The gate in process, every pytest warning an error; except that the package was imported before this
    inner session (an editable install's entry points ask pytest to rewrite it), which says nothing of the gate."""
    return [
        "-p", "no:cacheprovider", "--partattn",
        "-W", "error::pytest.PytestWarning", "-W", "ignore::pytest.PytestAssertRewriteWarning",
        *extra,
    ]  # fmt: skip


def test_the_gate_on_a_repo_id_offline_pairs_with_baselines_of_the_same_weights(pytester, hub_cache):
    """The committed baseline was written on the embedded model: the same weights from the hub cache
    are the same model (no environment warning, judged paired), and the header names repo and commit."""
    make_project(pytester, thresholds="")
    shutil.copytree(REPO / "fixtures" / "baselines" / Path(IMAGE).stem, pytester.path / "baselines" / Path(IMAGE).stem)
    result = pytester.runpytest_inprocess(*gate_args(f"--partattn-model={REPO_ID}", "--partattn-baselines=baselines"))
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.assert_outcomes(passed=6)
    text = result.stdout.str()
    assert (
        f"partattn: model {REPO_ID}@{snapshot(hub_cache).name} (Hugging Face hub cache: {snapshot(hub_cache)})" in text
    )
    assert "baselines: baselines (--partattn-verdict auto): paired 1" in text
    # the model is the same: no environment warning names it (another diffusers or torch than the one the
    # baseline was written with, as in CI's lowest-versions environment, may still be said)
    warned = [line for line in text.splitlines() if "recorded in a different environment" in line]
    assert not [line for line in warned if any(key in line for key in ("model:", "weights:", "repo_id:", "commit:"))]
    assert f'--partattn-model={REPO_ID} "fixtures/images/{IMAGE}::' not in text  # nothing failed: no commands


def test_the_gate_writes_repo_id_and_commit_into_the_fingerprint(pytester, hub_cache):
    make_project(pytester, thresholds="")
    result = pytester.runpytest_inprocess(
        *gate_args(
            f"--partattn-model={REPO_ID}@v1",
            "--partattn-baselines=baselines",
            "--partattn-update=missing",
            "--partattn-baseline-seeds=2",
            "--partattn-steps=2",
        )
    )
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    env = json.loads((pytester.path / "baselines" / Path(IMAGE).stem / "environment.json").read_text())
    assert (env["model"], env["repo_id"], env["commit"]) == (f"hub:{REPO_ID}", REPO_ID, snapshot(hub_cache).name)


def test_the_gate_on_a_repo_id_not_in_the_cache_is_a_usage_error_in_one_line(pytester, hub_cache):
    make_project(pytester)
    result = pytester.runpytest_inprocess(*gate_args("--partattn-model=wgsxm/Missing"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    (line,) = [ln for ln in result.stderr.lines if ln.strip()]
    assert line.startswith("ERROR: --partattn-model wgsxm/Missing: no such local folder, and the Hugging Face repo")
    assert line.endswith(f"fetch it with: HF_HUB_OFFLINE=0 {COMMAND} wgsxm/Missing --include '*.json' '*.safetensors'")
