"""What a fixture image needs to run (``sidecar.read_spec``): a part-count prefix that names no parts
is refused naming the image file, with or without a sidecar, and by the commands before any work."""

from __future__ import annotations

import shutil

from plugin_support import IMAGE, IMAGES, TINY

from partattn_checks import cli
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
