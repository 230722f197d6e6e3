"""The model matrix (docs/model-matrix.md, written by ``partattn calibrate`` on the embedded model): the
trained default passes every check on every fixture image under the shipped defaults, each broken
variant (made in memory) fails the check it was built to fail with a reason that names the cause,
and the shipped defaults are the ones that calibration wrote (one calibration path)."""

import json
from pathlib import Path

import pytest

from partattn_checks.analysis.calibrate import CALIBRATED
from partattn_checks.analysis.zoo import HEALTHY, measure, targets
from partattn_checks.checks import CHECKS, Thresholds
from partattn_checks.runs.sidecar import fixture_specs

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "fixtures" / "images"
RANDOM = REPO / "fixtures" / "checkpoints" / "tiny-random"
MATRIX_JSON = REPO / "docs" / "model-matrix.json"

#: How each failing check's reason starts: it names the cause.
CAUSES = {
    "uniformity": "attention is near-uniform",
    "collapse": "attention collapsed",
    "part_separation": "parts attend to the same image regions",
    "stability": "attention is unstable over steps",
    "nonfinite": "non-finite values (NaN/Inf)",
}
FIXTURE_IMAGES = sorted(p for p in IMAGES.iterdir() if p.suffix == ".png")


@pytest.fixture(scope="module")
def matrix():
    from partattn_checks.model.pipeline import PartCrafterPipeline

    def load(path):
        return PartCrafterPipeline.from_pretrained(path, device="cpu")

    return measure(load(HEALTHY), fixture_specs(IMAGES, REPO), others={"random": lambda: load(RANDOM)})


def test_fixture_images_cover_two_to_four_parts_and_unseen_ones():
    names = [p.name for p in FIXTURE_IMAGES]
    assert {n[:3] for n in names} >= {"np2", "np3", "np4"}
    assert any("unseen" in n for n in names)


def test_the_matrix_names_images_by_their_path_below_the_fixtures_folder(matrix):
    assert list(matrix["healthy"]) == [p.name for p in FIXTURE_IMAGES]


def test_the_shipped_defaults_are_the_embedded_models_calibration():
    """docs/model-matrix.json is written by `partattn calibrate` on the embedded model; the defaults in
    the checks' thresholds dataclasses must be what it calibrated (regenerate both together)."""
    doc = json.loads(MATRIX_JSON.read_text())
    assert doc["provenance"]["model"].endswith("partcrafter-tiny")
    defaults = Thresholds()
    shipped = {f"{table}.{key}": getattr(defaults[table], key) for table, key in CALIBRATED.values()}
    assert doc["calibrated"] == shipped


@pytest.mark.parametrize("check", list(CHECKS))
def test_healthy_default_passes_every_check_on_every_image(matrix, check):
    for image, results in matrix["healthy"].items():
        result = results[check]
        assert result.verdict in ("pass", "skip"), f"{image}: {result.reason}"
        if result.verdict == "skip":  # only part separation on a single-part image
            assert check == "part_separation" and image.startswith("np1_")


EXPECTED = [(model, check) for model, checks in sorted(targets().items()) for check in checks]


@pytest.mark.parametrize("model, check", EXPECTED)
def test_broken_model_fails_its_target_check_naming_the_cause(matrix, model, check):
    for image, results in matrix[model].items():
        result = results[check]
        if image.startswith("np1_") and check == "part_separation":
            assert result.verdict == "skip"
            continue
        assert result.verdict == "fail", f"{model} on {image}: {result.reason}"
        assert result.reason.startswith(CAUSES[check]), result.reason
        assert result.offender is not None
