"""The model matrix (docs/model-matrix.md): the trained default passes every check on every fixture image, and each
broken model fails the check it was built to fail, with a reason that names the cause.

The thresholds are the documented defaults (partattn_checks/checks.py); the margins they leave are
measured by scripts/model_matrix.py and written in docs/model-matrix.md.
"""

from pathlib import Path

import pytest

from partattn_checks.checks import CHECKS
from partattn_checks.zoo import TARGETS, build_zoo, evaluate

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "fixtures" / "images"
RANDOM = REPO / "fixtures" / "checkpoints" / "tiny-random"

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
def zoo(tmp_path_factory):
    return build_zoo(tmp_path_factory.mktemp("zoo"), RANDOM)


@pytest.fixture(scope="module")
def outcomes(zoo):
    cache = {}

    def judged(model):
        if model not in cache:
            cache[model] = evaluate(zoo[model], FIXTURE_IMAGES)
        return cache[model]

    return judged


def test_fixture_images_cover_two_to_four_parts_and_unseen_ones():
    names = [p.name for p in FIXTURE_IMAGES]
    assert {n[:3] for n in names} >= {"np2", "np3", "np4"}
    assert any("unseen" in n for n in names)


@pytest.mark.parametrize("check", list(CHECKS))
def test_healthy_default_passes_every_check_on_every_image(outcomes, check):
    for image, outcome in outcomes("healthy").items():
        result = outcome.results[check]
        assert result.verdict in ("pass", "skip"), f"{image}: {result.reason}"
        if result.verdict == "skip":  # only part separation on a single-part image
            assert check == "part_separation" and outcome.spec.num_parts == 1


@pytest.mark.parametrize("model, check", sorted(TARGETS.items()))
def test_broken_model_fails_its_target_check_naming_the_cause(outcomes, model, check):
    for image, outcome in outcomes(model).items():
        result = outcome.results[check]
        if outcome.spec.num_parts == 1 and check == "part_separation":
            assert result.verdict == "skip"
            continue
        assert result.verdict == "fail", f"{model} on {image}: {result.reason}"
        assert result.reason.startswith(CAUSES[check]), result.reason
        assert result.offender is not None
