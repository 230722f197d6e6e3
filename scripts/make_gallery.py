"""Write the figure gallery of docs/visualization.md (``docs/gallery/*.png|gif``).

    python scripts/make_gallery.py            # (re)write docs/gallery
    python scripts/make_gallery.py --out DIR  # somewhere else

Every figure kind, drawn from real runs of the embedded tiny model (``partattn_checks.EMBEDDED_MODEL``,
10 steps, 8x8 patch grid) on ``fixtures/images/np3_three_shapes.png``: part panel, overlay,
multi-head grid on the image and as queries x keys maps, heatmap, timeline, GIF over steps, and
the failure figures of the part-separation and uniformity checks on broken copies of the model
(``model.broken`` variants ``merged_parts`` and ``uniform``), and the gate's drift figure of
``np4_four_shapes.png`` against its committed baseline with the part embeddings moved 30 % toward
their mean (``merge_parts`` at 0.3). PNGs are stored as drawn, re-compressed;
the gallery is a few hundred KB.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

from PIL import Image

from partattn_checks import EMBEDDED_MODEL, AttentionVisualizer, render
from partattn_checks.capture.runspec import resolve_device
from partattn_checks.checks import CHECKS, Thresholds
from partattn_checks.gate.options import Settings
from partattn_checks.gate.state import GateSession
from partattn_checks.model.broken import broken, graded
from partattn_checks.present.check_figures import figures_for
from partattn_checks.present.views import renorm
from partattn_checks.runs.sidecar import fixture_specs

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "fixtures" / "images" / "np3_three_shapes.png"
PARTS = 3
DRIFT_IMAGE = "np4_four_shapes.png"


def _store_png(data: bytes, path: Path) -> Path:
    """Store a PNG figure re-compressed (``optimize``): the same pixels in fewer bytes."""
    with Image.open(io.BytesIO(data)) as im:
        im.convert("RGB").save(path, optimize=True)
    return path


def _failure_figure(viz: AttentionVisualizer, variant: str, check: str, what: str, path: Path) -> Path:
    """Run the image on a broken copy of the model and keep the ``what`` figure of ``check``'s failure."""
    with broken(viz.model, variant):
        record = viz.run(IMAGE, PARTS)
    result = viz.results[check]
    if result.verdict != "fail":
        raise SystemExit(f"the {variant} variant did not fail {check} ({result.verdict}: {result.reason})")
    with tempfile.TemporaryDirectory() as tmp:
        drawn = {p.stem.split("__", 1)[-1]: p for p in figures_for(result, record, tmp, viz.image, viz.thresholds)}
        return _store_png(drawn[what].read_bytes(), path)


def _drift_figure(viz: AttentionVisualizer, path: Path) -> Path:
    """The gate's drift figure of ``DRIFT_IMAGE`` against its committed baseline, on a model whose
    part embeddings moved 30 % toward their mean."""
    (spec,) = [s for s in fixture_specs(REPO / "fixtures" / "images", REPO) if s.path.name == DRIFT_IMAGE]
    with tempfile.TemporaryDirectory() as tmp, broken(viz.model, graded("merge_parts", 0.3)):
        settings = Settings.of(baselines=REPO / "fixtures" / "baselines", results=Path(tmp), device="cpu")
        session = GateSession(lambda: viz.pipeline, settings, Thresholds(), resolve_device("cpu"))
        outcome = session.image_outcome(spec, Thresholds())
        result = session.baseline(spec, Thresholds()).result
        paths, problems = session.figures(spec, outcome, result, Thresholds())
        if problems or not paths:
            raise SystemExit(f"no drift figure for {DRIFT_IMAGE}: {problems or result.reason}")
        return _store_png(Path(paths[0]).read_bytes(), path)


def make_gallery(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    viz = AttentionVisualizer.from_pretrained(EMBEDDED_MODEL, device="cpu")
    record = viz.run(IMAGE, PARTS)  # the checkpoint's run settings; full maps of the last layer, last step
    written = [
        _store_png(viz.visualize_part_attention(record, PARTS), out / "part_panel.png"),
        _store_png(viz.visualize_multi_head_attention(record, part=0), out / "heads_on_image.png"),
        _store_png(viz.visualize_multi_head_attention(record, part=0, queries_keys=True), out / "heads_qk.png"),
        _store_png(viz.visualize_attention_heatmap(record, head="mean", part=0), out / "heatmap.png"),
    ]
    layer = record.layers[-1]
    marginal = renorm(record.marginals_by_part()[:, -1, 1].mean(0))  # part 1, last layer, mean over steps
    overlay = render.overlay(marginal, record.patch_grid, viz.image, title="mean over steps", layer=layer, part=1)
    written.append(_store_png(overlay, out / "overlay.png"))
    timeline = CHECKS["uniformity"].timeline(record, viz.thresholds).draw()  # what the check judges
    written.append(_store_png(timeline, out / "timeline.png"))
    shown = list(range(0, record.num_steps, 3))  # every third step keeps the GIF small
    written.append(
        render.animation(
            record.marginals_by_part()[shown, -1, 0],
            out / "steps_part0.gif",
            fps=1,
            titles=[f"step {record.steps[i]} of {record.num_steps} · layer {layer} · part 0" for i in shown],
            grid=record.patch_grid,
            image=viz.image,
        )
    )
    written.append(_failure_figure(viz, "merged_parts", "part_separation", "overlay", out / "fail_part_separation.png"))
    written.append(_failure_figure(viz, "uniform", "uniformity", "heads", out / "fail_uniformity_heads.png"))
    written.append(_drift_figure(viz, out / "baseline_drift.png"))
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "gallery", help="folder (default docs/gallery)")
    args = parser.parse_args(argv)
    paths = make_gallery(args.out)
    total = sum(p.stat().st_size for p in paths)
    for p in paths:
        print(f"{p.stat().st_size / 1024:7.1f} KB  {p}")
    print(f"{total / 1024:7.1f} KB  in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
