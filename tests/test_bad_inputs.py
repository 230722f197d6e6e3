"""The last bad inputs of issue 25, each with the exact input: a clear error that names the option or
file and the fix, the exit status (4 for a pytest usage error, 1 for a failing item), the package's
own error type, and no file changed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import upstream_standin
from helpers import tree_bytes
from plugin_support import IMAGE, args, call_reports, make_project

from partattn_checks.capture import runspec
from partattn_checks.capture.selection import Selection, SelectionError
from partattn_checks.errors import PartattnError
from partattn_checks.gate.interrupt import INTERRUPTED
from partattn_checks.present.visualizer import AttentionVisualizer

pytest_plugins = ("pytester",)

LAYERS = [f"blocks.{i}.attn2" for i in range(5)]
#: What these tests say the machine has free, so that an estimate's verdict does not depend on the machine.
FREE = (16 * 1024**3, "of RAM available")


def usage_error(result, *phrases: str) -> str:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    err = result.stderr.str()
    assert err.startswith("ERROR: ") and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in err, err
    return err


# ----------------------------------------------------------------------------- the gate's options
def test_a_flag_ini_value_that_is_no_truth_value_names_its_ini_key(pytester):
    make_project(pytester)
    before = tree_bytes(pytester.path)
    result = pytester.runpytest_inprocess(*args("-o", "partattn_force_update=maybe"))
    usage_error(result, "ini option partattn_force_update", "invalid truth value 'maybe'", "use true or false")
    assert tree_bytes(pytester.path) == before


def test_steps_that_cannot_fit_are_refused_with_an_estimate(pytester, monkeypatch):
    monkeypatch.setattr(runspec, "free_memory", lambda device: FREE)
    make_project(pytester)
    before = tree_bytes(pytester.path)
    result = pytester.runpytest_inprocess(*args(steps=100000000))
    usage_error(
        result,
        "--partattn-steps 100000000: cannot fit: the attention record of 100000000 steps needs at least 253.3 GB",
        "(100000000 steps x 5 layers x 1 part x 4 heads x 68 float16 values), and cpu has 16.0 GB of RAM available",
        "pass fewer steps",
    )
    assert tree_bytes(pytester.path) == before


def test_steps_in_a_sidecar_that_cannot_fit_fail_the_images_items_naming_it(pytester, monkeypatch):
    monkeypatch.setattr(runspec, "free_memory", lambda device: FREE)
    folder = make_project(pytester)
    sidecar = folder / (Path(IMAGE).stem + ".toml")
    sidecar.write_text("steps = 100000000\n")
    before = tree_bytes(pytester.path / "fixtures")
    result = pytester.runpytest_inprocess(*args())
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    failed = {nodeid: rep for nodeid, rep in call_reports(result).items() if rep.failed}
    assert len(failed) == 6, sorted(call_reports(result))  # the image's six items, none ran the model
    text = str(next(iter(failed.values())).longrepr)
    assert f"{sidecar}: steps = 100000000 cannot fit: the attention record of 100000000 steps" in text, text
    assert "needs at least 506.6 GB (100000000 steps x 5 layers x 2 parts" in text, text
    assert tree_bytes(pytester.path / "fixtures") == before


@pytest.mark.parametrize(
    "value, phrase",
    [
        ("upstream_standin", "expected module:factory"),
        ("upstream_standin:", "expected module:factory"),
        ("upstream standin:factory", "expected module:factory"),
        ("upstream_standin:no_such_factory", "upstream_standin has no no_such_factory"),
        ("no_such_module_here:factory", "cannot import no_such_module_here"),
    ],
)
def test_a_malformed_pipeline_is_a_usage_error_before_any_item_runs(pytester, value, phrase):
    make_project(pytester)
    (pytester.path / "upstream_standin.py").write_text(Path(upstream_standin.__file__).read_text())
    before = tree_bytes(pytester.path)
    result = pytester.runpytest_inprocess(*args(f"--partattn-pipeline={value}"))
    usage_error(result, f"--partattn-pipeline {value}: {phrase}")
    assert tree_bytes(pytester.path) == before


def test_a_malformed_pipeline_in_the_ini_file_names_the_ini_key(pytester):
    make_project(pytester)
    pytester.makeini("[pytest]\npartattn_pipeline = my_pipelines\n")
    result = pytester.runpytest_inprocess(*args())
    usage_error(result, "ini option partattn_pipeline = my_pipelines: expected module:factory")


# ----------------------------------------------------------------------------- Selection
def test_a_bare_layer_name_is_that_one_layer():
    assert Selection(layers="blocks.4.attn2").pick_layers(LAYERS) == ["blocks.4.attn2"]
    assert Selection(layers="blocks.[13].attn2").pick_layers(LAYERS) == ["blocks.1.attn2", "blocks.3.attn2"]
    assert Selection(layers=-1).pick_layers(LAYERS) == ["blocks.4.attn2"]  # a bare index, too


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layers": [1.5]}, "layers: 1.5 is not a layer (give an index, a module name such as 'blocks.4.attn2'"),
        ({"layers": [True]}, "layers: True is not a layer"),
        ({"layers": 2.0}, "layers=2.0: expected layer indices, module names or glob patterns, or a callable"),
        ({"full_maps": True}, "full_maps=True: expected (layer, step) pairs, e.g. full_maps=[(-1, 9)]"),
        ({"full_maps": [(1.5, 0)]}, "full_maps: (1.5, 0): the layer must be an index or a module name"),
        ({"steps": 1.5}, "steps=1.5: expected step indices"),
    ],
)
def test_a_selection_that_names_no_layer_is_a_selection_error(kwargs, message):
    with pytest.raises(SelectionError) as info:
        Selection(**kwargs)
    assert message in str(info.value)
    assert isinstance(info.value, PartattnError) and not isinstance(info.value, TypeError)


# ----------------------------------------------------------------------------- the visualizer before any run
@pytest.mark.parametrize(
    "call",
    [
        lambda viz, out: viz.visualize_part_attention(viz.record, path=out / "parts.png"),
        lambda viz, out: viz.statistics(viz.record),
        lambda viz, out: viz.create_attention_animation(viz.record, out / "steps.gif"),
        lambda viz, out: viz.visualize_attention_heatmap(None, out / "heatmap.png"),
        lambda viz, out: viz.visualize_multi_head_attention(None, out / "heads.png"),
    ],
    ids=["part_attention", "statistics", "animation", "heatmap", "multi_head"],
)
def test_the_visualizer_without_weights_says_run_or_extract_first(tmp_path, call):
    viz = AttentionVisualizer()
    assert viz.record is None
    with pytest.raises(PartattnError, match="no weights yet: run or extract first"):
        call(viz, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_weights_that_are_no_tensor_are_the_visualizers_own_error():
    with pytest.raises(PartattnError, match="cannot read a str as attention weights"):
        AttentionVisualizer().statistics("blocks.4.attn2")


# ----------------------------------------------------------------------------- Ctrl-C under pytest-xdist
CTRL_C = """
import os, signal


def test_ctrl_c():
    os.killpg(os.getpgid(0), signal.SIGINT)  # what a terminal's Ctrl-C does: every process of the group
    signal.pause()
"""


def test_ctrl_c_under_xdist_ends_with_one_line(pytester):
    """A test of the session presses Ctrl-C for its whole process group (controller and workers),
    as a terminal does; the run is a session of its own, so nothing else gets the signal."""
    make_project(pytester)
    pytester.makepyfile(test_ctrl_c=CTRL_C)
    before = tree_bytes(pytester.path / "fixtures")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *args("-n", "2", "--partattn-device=cpu", "fixtures", "test_ctrl_c.py")],
        cwd=pytester.path,
        capture_output=True,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    output = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "KeyboardInterrupt" not in output and "Traceback" not in output, output
    lines = output.rstrip().splitlines()
    assert INTERRUPTED in lines[-2] and lines[-1].startswith("=") and "no tests ran" in lines[-1], output
    assert [line for line in lines if "Ctrl-C" in line] == [lines[-2]], output  # one line, the last but the counts
    assert tree_bytes(pytester.path / "fixtures") == before
