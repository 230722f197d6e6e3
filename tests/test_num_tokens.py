"""The number of latent tokens per part as a gate setting: ``--partattn-num-tokens`` and its ini
twin, the sidecar key, ``partattn check --num-tokens``, and that runs really use that many tokens."""

from __future__ import annotations

import json

import pytest
from plugin_support import IMAGE, IMAGES, TINY, args, make_project

from partattn_checks import cli
from partattn_checks.capture.recorder import Selection
from partattn_checks.capture.runspec import RunSpecError, run_memory, tokens_problem
from partattn_checks.model.pipeline import PartCrafterPipeline
from partattn_checks.runs.session import Session
from partattn_checks.runs.sidecar import SIDECAR_RUN_KEYS, read_spec

pytest_plugins = ("pytester",)

FIXTURE_TEST = f"""
def test_tokens(partattn):
    outcome = partattn("fixtures/images/{IMAGE}")
    meta = outcome.record.meta
    print("TOKENS", meta["num_tokens"], "STEPS", meta["steps"])
"""


@pytest.fixture(autouse=True)
def _no_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)


@pytest.fixture(scope="module")
def pipe():
    return PartCrafterPipeline.from_pretrained(TINY)


# ----------------------------------------------------------------------------- plugin option and ini twin
def test_option_reaches_the_run_the_header_and_the_baseline(pytester):
    make_project(pytester)
    pytester.makepyfile(test_fixture=FIXTURE_TEST)
    result = pytester.runpytest_inprocess(*args("--partattn-num-tokens=12", "--partattn-update=missing", "-s"))
    result.stdout.fnmatch_lines(["partattn: device * | tokens 12 | *", "*TOKENS 12 STEPS 2*"])
    environment = json.loads(
        (pytester.path / "fixtures" / "baselines" / "np2_circle_square" / "environment.json").read_text()
    )
    assert environment["num_tokens"] == 12


def test_without_the_option_the_checkpoint_default_is_shown_and_used(pytester, pipe):
    make_project(pytester)
    pytester.makepyfile(test_fixture=FIXTURE_TEST)
    result = pytester.runpytest_inprocess(*args("-s"), "test_fixture.py")
    default = pipe.run_defaults["num_tokens"]
    result.stdout.fnmatch_lines(
        [f"partattn: device * | tokens checkpoint default ({default}) | *", f"*TOKENS {default} *"]
    )


def test_ini_twin_and_command_line_precedence(pytester):
    make_project(pytester)
    pytester.makeini(f"[pytest]\npartattn = true\npartattn_model = {TINY}\npartattn_num_tokens = 24\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only")
    result.stdout.fnmatch_lines(["partattn: device * | tokens 24 | *"])
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only", "--partattn-num-tokens=8")
    result.stdout.fnmatch_lines(["partattn: device * | tokens 8 | *"])


@pytest.mark.parametrize(
    "setting, message",
    [
        (("--partattn-num-tokens=0",), "ERROR: --partattn-num-tokens 0: num_tokens must be at least 1"),
        (("--partattn-num-tokens=many",), "ERROR: --partattn-num-tokens many: expected a whole number"),
        ("partattn_num_tokens = 2.5", "ERROR: ini option partattn_num_tokens 2.5: expected a whole number"),
        ("partattn_num_tokens = -3", "ERROR: ini option partattn_num_tokens = -3: num_tokens must be at least 1"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_option(pytester, setting, message):
    make_project(pytester)
    if isinstance(setting, str):
        pytester.makeini(f"[pytest]\n{setting}\n")
        extra = ()
    else:
        extra = setting
    result = pytester.runpytest_inprocess(*args(*extra), "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


# ----------------------------------------------------------------------------- sidecar
def test_sidecar_pins_tokens_over_the_option(tmp_path, pipe):
    assert "num_tokens" in SIDECAR_RUN_KEYS
    image = tmp_path / "np2_x.png"
    image.write_bytes((IMAGES / IMAGE).read_bytes())
    (tmp_path / "np2_x.toml").write_text("num_tokens = 6\nsteps = 1\n")
    spec = read_spec(image, tmp_path, tmp_path)
    assert spec.error is None and spec.run == {"num_tokens": 6, "steps": 1}
    session = Session(lambda: pipe, options={"num_tokens": 12, "steps": 2})
    run = session.spec(spec.run_layer())
    assert (run.num_tokens, run.steps, run.num_parts) == (6, 1, 2)
    # without the sidecar key, the option's value
    (tmp_path / "np2_x.toml").write_text("steps = 1\n")
    assert session.spec(read_spec(image, tmp_path, tmp_path).run_layer()).num_tokens == 12


@pytest.mark.parametrize(
    "text, expected",
    [("num_tokens = 0\n", "num_tokens = 0 must be at least 1"), ("num_tokens = 'x'\n", "whole number")],
)
def test_bad_sidecar_tokens_name_the_file(tmp_path, text, expected):
    image = tmp_path / "np2_x.png"
    image.write_bytes(b"")
    (tmp_path / "np2_x.toml").write_text(text)
    spec = read_spec(image, tmp_path, tmp_path)
    assert spec.error is not None and str(tmp_path / "np2_x.toml") in spec.error and expected in spec.error


def test_bad_option_layer_names_its_source(pipe):
    session = Session(lambda: pipe, options={"num_tokens": 0}, options_label="--partattn-num-tokens")
    with pytest.raises(RunSpecError, match="^--partattn-num-tokens: num_tokens = 0 must be at least 1$"):
        session.spec({"num_parts": 1})


# ----------------------------------------------------------------------------- the run really has T tokens per part
@pytest.mark.parametrize("tokens", [5, 12])
def test_record_has_that_many_query_tokens_per_part(pipe, tokens):
    session = Session(lambda: pipe, options={"num_tokens": tokens, "steps": 1})
    spec = session.spec({"num_parts": 2})
    record = session.record(IMAGES / IMAGE, spec, selection=Selection(full_maps=[(0, 0), (-1, 0)]))
    assert record.meta["num_tokens"] == tokens
    assert record.full_maps  # both requested maps were kept
    for full in record.full_maps.values():
        parts, heads, queries, keys = full.shape
        assert (parts, queries) == (2, tokens)  # the time token's row is dropped: exactly T query rows
        assert heads == pipe.transformer.config.num_attention_heads


# ----------------------------------------------------------------------------- partattn check
def test_check_passes_num_tokens_to_the_gate():
    args_ = cli.check_args(TINY, IMAGES, steps=2, num_tokens=32, device="cpu")
    assert "--partattn-num-tokens=32" in args_ and args_.index("--partattn-num-tokens=32") < args_.index(str(IMAGES))
    assert not any(a.startswith("--partattn-num-tokens") for a in cli.check_args(TINY, IMAGES))


def test_check_refuses_bad_num_tokens(capsys):
    code = cli.main(["check", "--model", str(TINY), "--fixtures", str(IMAGES), "--num-tokens", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "--num-tokens" in err and "must be at least 1" in err


# ----------------------------------------------------------------------------- tokens that cannot fit
HUGE = 10**9  # 2 TB of hidden states, queries, keys and values for one part of the tiny model


def test_run_memory_is_the_latents_and_the_attention_inputs_of_the_batch():
    config = json.loads((TINY / "transformer" / "config.json").read_text())
    width, channels = config["width"], config["in_channels"]
    assert run_memory(TINY, 16, 3) == 3 * 16 * channels * 4 + 4 * (3 * 2) * 16 * width * 4
    assert run_memory(config, 16, 3, cfg=False, dtype="float16") == 3 * 16 * channels * 4 + 4 * 3 * 16 * width * 2
    assert run_memory({"width": 64}, 16) is None  # a config that does not say its channels: no estimate
    assert tokens_problem(HUGE, {}, "cpu") is None and tokens_problem(4096, TINY, "cpu") is None


def test_the_plugin_refuses_tokens_that_cannot_fit_once_naming_the_estimate(pytester):
    make_project(pytester)
    result = pytester.runpytest_inprocess(*args(f"--partattn-num-tokens={HUGE}", "--partattn-device=cpu"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: --partattn-num-tokens {HUGE}: cannot fit: one run needs at least *.* TB (1 part x 2 (guidance) x "
            f"{HUGE} tokens x width 64: *), and cpu has *.* GB of RAM available; pass fewer tokens"
        ]
    )
    assert "Traceback" not in result.stderr.str()


def test_the_commands_refuse_tokens_that_cannot_fit(tmp_path, capsys):
    code = cli.main(["calibrate", "--model", str(TINY), "--fixtures", str(IMAGES), "--num-tokens", str(HUGE)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"partattn calibrate: error: --num-tokens {HUGE}: cannot fit: one run needs")
    assert "of RAM available" in err and err.count("\n") == 1
    # partattn run: refused when the run is resolved, before it starts
    argv = ["run", str(IMAGES / IMAGE), "--model", str(TINY), "--num-tokens", str(HUGE), "--device", "cpu", "-q"]
    code = cli.main([*argv, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and f"num_tokens = {HUGE} cannot fit: one run needs at least" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_sidecar_with_tokens_that_cannot_fit_names_the_file(tmp_path, pipe):
    image = tmp_path / "np2_x.png"
    image.write_bytes((IMAGES / IMAGE).read_bytes())
    (tmp_path / "np2_x.toml").write_text(f"num_tokens = {HUGE}\n")
    spec = read_spec(image, tmp_path, tmp_path)
    session = Session(lambda: pipe, options={"steps": 1})
    with pytest.raises(RunSpecError, match=f"np2_x.toml: num_tokens = {HUGE} cannot fit: one run needs at least"):
        session.spec(spec.run_layer(), sidecar_label=str(tmp_path / "np2_x.toml"))
