"""The model zoo: the trained healthy tiny model, its broken variants and a random-init one.

``build_zoo`` lays the models out as checkpoint folders (the variants come from
:mod:`partattn_checks.model.broken`); ``evaluate`` runs every fixture image through one of them and
returns the judged cases. ``scripts/model_matrix.py`` turns this into the table in
docs/model-matrix.md, and tests/test_model_matrix.py asserts its verdicts (docs/training.md).
It lives above the model package because it runs and judges (the model package never does).
"""

from __future__ import annotations

from pathlib import Path

from . import EMBEDDED_MODEL as HEALTHY
from .model.broken import VARIANTS, make_variant

#: Which check each broken model is made to fail (the random-init model should fail separation).
TARGETS = {
    "uniform": "uniformity",
    "collapsed": "collapse",
    "merged_parts": "part_separation",
    "unstable": "stability",
    "nonfinite": "nonfinite",
    "random": "part_separation",
}


def build_zoo(out_dir: str | Path, random: str | Path, healthy: str | Path = HEALTHY) -> dict[str, Path]:
    """``{"healthy": ..., <variant>: ..., "random": ...}``: variants are written under ``out_dir``;
    ``random`` is a random-init checkpoint (the repo's ``fixtures/checkpoints/tiny-random``)."""
    out_dir = Path(out_dir)
    zoo = {"healthy": Path(healthy)}
    for name in VARIANTS:
        zoo[name] = make_variant(healthy, out_dir / name, name)
    zoo["random"] = Path(random)
    return zoo


def evaluate(model: str | Path, images: list[Path], *, steps: int | None = None, thresholds=None, device="cpu"):
    """Run and judge every image on one model; ``{image name: CaseOutcome}``."""
    from .model.pipeline import PartCrafterPipeline
    from .runspec import for_pipeline, resolve_device
    from .session import run_case
    from .sidecar import parts_from_name

    pipeline = PartCrafterPipeline.from_pretrained(model, device=resolve_device(device).device)
    return {
        image.name: run_case(
            pipeline,
            image,
            for_pipeline(pipeline, {"steps": steps}, call={"num_parts": parts_from_name(image)}),
            thresholds,
        )
        for image in images
    }
