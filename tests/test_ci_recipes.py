"""docs/ci/: the GitHub Actions workflow and the GitLab CI job run commands that exist.

Both files are parsed as YAML; every shell command they run is split into its words and checked: the
pytest options are real (``--partattn-*`` from the plugin's option table, the others by pytest's own
parser with pytest-xdist and pytest-html installed, as the test extra installs them), ``partattn``
subcommands exist, ``hf download`` takes the options given, the test extra holds what the gate's options
need, and the paths uploaded are the ones the gate and pytest write (the results folder's default, the
``--junitxml`` and ``--html`` files), also when the gate fails.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml  # PyYAML: a dependency of huggingface_hub, hence of diffusers

from partattn_checks.base.tomlread import read_toml
from partattn_checks.cli import COMMANDS, build_parser
from partattn_checks.gate.options import BY_NAME, OPTIONS

REPO = Path(__file__).resolve().parents[1]
GITHUB = REPO / "docs" / "ci" / "github-actions-gpu.yml"
GITLAB = REPO / "docs" / "ci" / "gitlab-ci.yml"
PROGRAMS = {"pip", "hf", "pytest", "partattn", "python3"}
pytest_plugins = ("pytester",)
_ASSIGNMENT = re.compile(r"[A-Za-z_]\w*=.*")


def commands(script: str) -> list[tuple[dict[str, str], list[str]]]:
    """The simple commands of a shell script as ``(VAR=value prefixes, words)``: continuation lines
    joined, comments dropped, split at ``;``, ``&&``, ``||`` and ``|``."""
    out = []
    for line in script.replace("\\\n", " ").splitlines():
        words: list[str] = []
        for word in [*shlex.split(line, comments=True), ";"]:
            if word not in (";", "&&", "||", "|"):
                words.append(word)
                continue
            env = {}
            while words and _ASSIGNMENT.fullmatch(words[0]):
                name, _, value = words.pop(0).partition("=")
                env[name] = value
            if words:
                out.append((env, words))
            words = []
    return out


def program(words: list[str]) -> str:
    return Path(words[0]).name  # .venv/bin/pytest -> pytest


def option_value(words: list[str], flag: str) -> str | None:
    found = [w.split("=", 1)[1] for w in words if w.startswith(flag + "=")]
    return found[-1] if found else None


def pytest_accepts(pytester: pytest.Pytester, options: list[str]) -> pytest.RunResult:
    """pytest's own parser on ``options`` (pytest-xdist and pytest-html loaded from their entry points,
    as in any pytest run), in pytester's empty folder and in this process (parsing needs no process of
    its own): exit status 5 (nothing collected) when it knows them all, 4 (usage error) when not.
    hypothesis's pytest plugin imports ``hypothesis`` at the end of each run and the run's sys.modules
    snapshot drops it again: imported once by conftest.py, each run takes ~0.5 s instead of ~2 s."""
    return pytester.runpytest_inprocess("--collect-only", "-q", "-p", "no:cacheprovider", *options)


@cache
def hf_help(sub: str) -> str:
    hf = Path(sys.executable).parent / "hf"  # installed with huggingface_hub (>= 0.34) next to this python
    run = subprocess.run([str(hf), sub, "--help"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout


def github_scripts() -> list[tuple[dict, str]]:
    """(the step's env, its run script) of every step of the workflow's job."""
    (job,) = yaml.safe_load(GITHUB.read_text())["jobs"].values()
    return [(dict(step.get("env") or {}), step["run"]) for step in job["steps"] if "run" in step]


def gitlab_job() -> dict:
    (job,) = yaml.safe_load(GITLAB.read_text()).values()
    return job


def all_commands() -> list[tuple[str, dict[str, str], list[str]]]:
    """(file name, env, words) of every command both files run."""
    out = [
        (GITHUB.name, {**step_env, **env}, words)
        for step_env, script in github_scripts()
        for env, words in commands(script)
    ]
    out += [(GITLAB.name, env, words) for line in gitlab_job()["script"] for env, words in commands(line)]
    return out


def gate_command(name: str) -> tuple[dict[str, str], list[str]]:
    (found,) = [(env, words) for f, env, words in all_commands() if f == name and program(words) == "pytest"]
    return found


# ----------------------------------------------------------------------------- the commands
def test_the_shell_splitter():
    assert commands('A=1 .venv/bin/pytest -x "a b" \\\n  --c=$D && hf download x  # note') == [
        ({"A": "1"}, [".venv/bin/pytest", "-x", "a b", "--c=$D"]),
        ({}, ["hf", "download", "x"]),
    ]


def test_every_command_is_one_we_know():
    found = all_commands()
    assert {program(words) for _, _, words in found} <= PROGRAMS, found
    assert {f for f, _, _ in found} == {GITHUB.name, GITLAB.name}
    for _, _, words in found:
        if program(words) == "partattn":
            assert words[1] in COMMANDS
            known = build_parser().subparsers[words[1]]._option_string_actions
            assert all(w.split("=")[0] in known for w in words[2:] if w.startswith("-")), words


@pytest.mark.parametrize("name", [GITHUB.name, GITLAB.name])
def test_the_gate_runs_with_real_options(name, pytester):
    env, words = gate_command(name)
    assert env.get("HF_HUB_OFFLINE") == "1"  # the gate reads the hub cache the fetch step filled
    assert "--partattn" in words
    flags = {o.flag for o in OPTIONS}
    ours = [w for w in words if w.startswith("--partattn")]
    assert {w.split("=", 1)[0] for w in ours} <= flags, ours
    others, positional = [], []
    for word, before in zip(words[1:], words, strict=False):
        if word.startswith("-"):
            others += [] if word in ours else [word]
        elif before in ("-n", "-o"):  # an option's value (-n: no workers in this check)
            others.append("0" if before == "-n" else word)
        else:
            positional.append(word)
    assert "-n" in others and "--html=partattn-report.html" in others  # pytest-xdist and pytest-html
    run = pytest_accepts(pytester, others)
    assert run.ret == pytest.ExitCode.NO_TESTS_COLLECTED, run.outlines + run.errlines
    bad = pytest_accepts(pytester, ["--no-such-option"])  # the check can fail
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert positional == [BY_NAME["fixtures"].default]  # the fixtures folder, as the option means it
    assert option_value(words, "--partattn-baselines") == BY_NAME["baselines"].default  # from the repository
    assert option_value(words, "--partattn-model") == "$PARTCRAFTER@$REVISION"


def test_hf_download_takes_the_options_given():
    fetches = [words for _, _, words in all_commands() if program(words) == "hf"]
    assert len(fetches) == 2
    for words in fetches:
        assert words[1] == "download" and words[2] == "$PARTCRAFTER"
        for option in (w for w in words[3:] if w.startswith("-")):
            assert option in hf_help("download"), option
        assert words[words.index("--include") + 1 :] == ["*.json", "*.safetensors"]  # what partattn fetches


def test_the_test_extra_installs_what_the_gate_options_need():
    installs = [words for _, _, words in all_commands() if program(words) == "pip"]
    assert [w[-1] for w in installs] == [".[test]", ".[test]"]
    extra = read_toml(REPO / "pyproject.toml", "pyproject file")["project"]["optional-dependencies"]["test"]
    names = {re.split(r"[<>=!~ ;\[]", req)[0] for req in extra}
    assert {"pytest-xdist", "pytest-html"} <= names  # -n and --html


# ----------------------------------------------------------------------------- what is kept
def uploads(paths) -> set[str]:
    return {p.strip().rstrip("/") for p in paths if p.strip()}


def written(words: list[str]) -> set[str]:
    """What a gate command writes: its results folder, the JUnit XML and the pytest-html report."""
    results = option_value(words, "--partattn-results") or BY_NAME["results"].default
    return {results, option_value(words, "--junitxml"), option_value(words, "--html")}


def test_github_uploads_what_the_gate_writes_even_when_it_fails():
    doc = yaml.safe_load(GITHUB.read_text())
    triggers = doc.get("on", doc.get(True))  # YAML 1.1 reads the key `on` as true
    assert {"push", "pull_request"} <= set(triggers)
    (job,) = doc["jobs"].values()
    assert {"self-hosted", "gpu"} <= set(job["runs-on"])
    assert job["steps"][0]["uses"].startswith("actions/checkout@")  # the baselines come from the repository
    (upload,) = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert upload["if"] == "always()"
    assert upload["with"]["include-hidden-files"] is True  # .partattn-results is hidden
    _, words = gate_command(GITHUB.name)
    assert uploads(upload["with"]["path"].splitlines()) == written(words)
    assert all(not p.startswith(".") or p == BY_NAME["results"].default for p in written(words))


def test_gitlab_keeps_what_the_gate_writes_even_when_it_fails():
    job = gitlab_job()
    artifacts = job["artifacts"]
    assert artifacts["when"] == "always"
    _, words = gate_command(GITLAB.name)
    assert uploads(artifacts["paths"]) == written(words)
    assert artifacts["reports"]["junit"] == option_value(words, "--junitxml")
    assert "gpu" in job["tags"]
