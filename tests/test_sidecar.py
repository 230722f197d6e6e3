"""What a fixture image needs to run (``sidecar.read_spec``): a part-count prefix that names no parts
is refused naming the image file, with or without a sidecar, and by the commands before any work; its
``[thresholds.*]`` go over the session's thresholds."""

from __future__ import annotations

import shutil

import pytest
from plugin_support import IMAGE, IMAGES, TINY

from partattn_checks import cli
from partattn_checks.checks import Thresholds
from partattn_checks.gate import options
from partattn_checks.gate.options import Settings
from partattn_checks.runs.session import Session
from partattn_checks.runs.sidecar import read_spec


def test_np0_prefix_names_the_image_and_the_rule(tmp_path):
    image = tmp_path / "np0_shapes.png"
    shutil.copyfile(IMAGES / IMAGE, image)
    spec = read_spec(image, tmp_path, tmp_path)
    assert spec.error == (
        "np0_shapes.png: the np<N>_ prefix needs N >= 1 (the number of parts), not np0_; "
        "rename the file, e.g. np1_shapes.png"
    )
    (tmp_path / "np0_shapes.toml").write_text("num_parts = 2\n")  # a sidecar does not make the name right
    assert "np0_shapes.png: the np<N>_ prefix needs N >= 1" in read_spec(image, tmp_path, tmp_path).error
    assert read_spec(tmp_path / "np00_x.png", tmp_path, tmp_path).error.startswith("np00_x.png: the np<N>_ prefix")


def test_calibrate_refuses_an_np0_image_naming_it(tmp_path, capsys):
    shutil.copyfile(IMAGES / IMAGE, tmp_path / "np0_shapes.png")
    code = cli.main(["calibrate", "--model", str(TINY), "--fixtures", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and f"{tmp_path / 'np0_shapes.png'}: the np<N>_ prefix needs N >= 1" in err
    assert "sidecar" not in err and err.count("\n") == 1 and not (tmp_path / "o").exists()


#: The session's thresholds, none of them the built-in default: as a thresholds file and as a pyproject.
SESSION_TABLES = {
    "part_separation": {"min_separation": 0.5, "layer_aggregate": "min"},
    "uniformity": {"max_share": 0.9},
}
SESSION_SOURCES = {
    "thresholds file": (
        "thresholds.toml",
        "[part_separation]\nmin_separation = 0.5\nlayer_aggregate = 'min'\n\n[uniformity]\nmax_share = 0.9\n",
    ),
    "pyproject": (
        "pyproject.toml",
        "[tool.partattn.thresholds.part_separation]\nmin_separation = 0.5\nlayer_aggregate = 'min'\n\n"
        "[tool.partattn.thresholds.uniformity]\nmax_share = 0.9\n",
    ),
}


@pytest.mark.parametrize("source", list(SESSION_SOURCES))
def test_sidecar_thresholds_go_over_the_sessions_not_the_built_in_defaults(tmp_path, monkeypatch, source):
    """An image's ``[thresholds.*]`` change the session's thresholds (``--partattn-thresholds FILE`` or the
    rootdir pyproject's ``[tool.partattn.thresholds]``) key by key: what the sidecar leaves alone, in its
    own tables too, keeps the session's value, not the built-in default. The gate's own path: options ->
    session thresholds -> the image's (its items, the ``partattn`` fixture and the commands use the same)."""
    monkeypatch.chdir(tmp_path)  # Settings.of: the rootdir is the current folder
    name, text = SESSION_SOURCES[source]
    (tmp_path / name).write_text(text)
    settings = Settings.of(fixtures=tmp_path, thresholds=tmp_path / name if name == "thresholds.toml" else None)
    session_thresholds, where = options.session_thresholds(settings)
    assert where.startswith(str(tmp_path / name))
    defaults = Thresholds()
    for table, values in SESSION_TABLES.items():
        for key, value in values.items():
            assert getattr(session_thresholds[table], key) == value != getattr(defaults[table], key)

    (tmp_path / "np2_chair.png").write_bytes(b"")
    (tmp_path / "np2_chair.toml").write_text(
        "[thresholds.part_separation]\nmin_separation = 0.25\n\n[thresholds.collapse]\npeak_max = 0.8\n"
    )
    spec = read_spec(tmp_path / "np2_chair.png", tmp_path, tmp_path)
    assert spec.error is None
    session = Session(lambda: None, thresholds=session_thresholds)
    for got in (session.thresholds_for(spec), spec.thresholds_over(session_thresholds)):
        assert got.part_separation.min_separation == 0.25 and got.collapse.peak_max == 0.8  # the sidecar's
        assert got.part_separation.layer_aggregate == "min"  # the session's, in a table the sidecar changes
        assert got.uniformity.max_share == 0.9  # the session's, in a table the sidecar leaves alone
        assert got.stability == defaults.stability  # neither sets it: the built-in default
    call = session.thresholds_for(spec, {"stability": {"max_jump": 0.5}, "collapse": {"peak_max": 0.7}})
    assert (call.stability.max_jump, call.collapse.peak_max, call.uniformity.max_share) == (0.5, 0.7, 0.9)
    assert call.part_separation.min_separation == 0.25
