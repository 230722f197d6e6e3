"""What changed between two checkpoints: the same images, seed and settings through both, and per
(layer, head) how far each part's key-marginal moved.

The distance is the one the checks use for part separation and stability: JS(ā_A, ā_B) / log 2 of
a part's key-marginal over image patches (``metrics.js_distance_normalized``), taken per (step,
layer, part, head) and averaged over steps, parts and images. Comparing a model with itself gives
exactly 0 everywhere (the same run twice is bit-identical on the CPU).

>>> c = compare_checkpoints("ckpt-a", "ckpt-b", fixture_images("fixtures/images"))  # doctest: +SKIP
>>> c.verdict, c.most_changed_layers, c.to_dict()["change"]  # doctest: +SKIP

``partattn compare`` (``cli/compare.py``) writes it as ``compare.json``, figures and ``index.html``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..checks import CHECKS, CheckResult, Thresholds
from ..errors import PartattnError
from .trend import first_threshold, result_entry, shown_value

if TYPE_CHECKING:
    from ..runs.distributed import Ranks

#: A layer counts as changed when its mean change is at least this share of the largest layer's.
CHANGED_SHARE = 0.5
#: ... and at least this much JS/log 2 (below it the runs agree to noise).
CHANGED_FLOOR = 1e-3


class CompareError(PartattnError, ValueError):
    """Two checkpoints that cannot be compared (different architectures, layers, heads or patch grids)."""


@dataclass
class ImageComparison:
    image: str
    change: list[list[float]]  # (layers, heads), mean over steps and parts
    checks_a: dict[str, CheckResult]  # check -> its result on A
    checks_b: dict[str, CheckResult]
    summary_a: dict[str, float]
    summary_b: dict[str, float]
    nonfinite_a: str | None = None  # where A's key-marginals first stop being finite ("LAYER at step S")
    nonfinite_b: str | None = None

    def checks(self, side: str) -> dict[str, CheckResult]:
        """The check results on ``side`` ("a" or "b")."""
        return self.checks_a if side == "a" else self.checks_b

    def to_dict(self) -> dict:
        """Its form in compare.json: each check as ``trend.result_entry``."""
        return {
            **self.__dict__,
            "checks_a": {name: result_entry(r) for name, r in self.checks_a.items()},
            "checks_b": {name: result_entry(r) for name, r in self.checks_b.items()},
        }


@dataclass
class Comparison:
    """Two checkpoints on the same images; ``change[l][h]`` is the mean over images."""

    a: str
    b: str
    layers: list[str]
    num_heads: int
    settings: dict
    images: list[ImageComparison] = field(default_factory=list)
    kept: dict[str, object] = field(default_factory=dict)  # image -> what ``keep`` returned (not in compare.json)

    @property
    def change(self) -> list[list[float]]:
        n = len(self.images)
        return [
            [sum(img.change[i][h] for img in self.images) / n for h in range(self.num_heads)]
            for i in range(len(self.layers))
        ]

    @property
    def layer_change(self) -> list[float]:
        """Mean over heads of :attr:`change`, per layer."""
        return [sum(row) / len(row) for row in self.change]

    @property
    def most_changed_layers(self) -> list[str]:
        """Layers whose change is at least ``CHANGED_SHARE`` of the largest (none when nothing moved);
        layers whose change is not finite are left out (see :attr:`nonfinite`)."""
        per_layer = {i: v for i, v in enumerate(self.layer_change) if math.isfinite(v)}
        top = max(per_layer.values(), default=0.0)
        if top < CHANGED_FLOOR:
            return []
        ranked = sorted(per_layer, key=lambda i: -per_layer[i])
        return [self.layers[i] for i in ranked if per_layer[i] >= CHANGED_SHARE * top]

    @property
    def max_change(self) -> float:
        """The largest finite change (NaN when no change is finite)."""
        return max((v for row in self.change for v in row if math.isfinite(v)), default=math.nan)

    @property
    def finite(self) -> bool:
        """Both sides' attention, and so every change, is finite."""
        return (
            not self.nonfinite("a")
            and not self.nonfinite("b")
            and all(math.isfinite(v) for row in self.change for v in row)
        )

    def nonfinite(self, side: str) -> list[str]:
        """``"IMAGE (from LAYER at step S)"`` for each image whose attention on ``side`` is not finite."""
        return [
            f"{img.image} (from {where})"
            for img in self.images
            if (where := getattr(img, f"nonfinite_{side}")) is not None
        ]

    def check_means(self, side: str) -> dict[str, float | None]:
        """Each check's value on ``side`` ("a" or "b"), mean over the images it was judged on."""
        out = {}
        for name in self.images[0].checks_a:
            values = [v for v in self.check_values(side, name) if v is not None]
            out[name] = sum(values) / len(values) if values else None
        return out

    def check_values(self, side: str, name: str) -> list[float | None]:
        """One check's value on ``side`` per image (None where it was not judged or could not measure)."""
        return [shown_value(img.checks(side)[name]) for img in self.images]

    def check_verdicts(self, side: str, name: str) -> list[str]:
        return [img.checks(side)[name].verdict for img in self.images]

    def threshold(self, name: str) -> float | None:
        """A check's threshold (the first image's that has one, A then B; a sidecar may set another)."""
        return first_threshold([img.checks(side)[name] for side in "ab" for img in self.images])

    def failing(self, side: str) -> dict[str, int]:
        """``{check: number of images failing it}`` on ``side``."""
        out: dict[str, int] = {}
        for img in self.images:
            for name, r in img.checks(side).items():
                if r.verdict == "fail":
                    out[name] = out.get(name, 0) + 1
        return out

    def summary_mean(self, side: str, key: str) -> float | None:
        values = [getattr(img, f"summary_{side}").get(key) for img in self.images]
        values = [v for v in values if v is not None and math.isfinite(v)]
        return sum(values) / len(values) if values else None

    @property
    def verdict(self) -> str:
        """One paragraph: which layers moved, how part separation and the verdicts changed."""
        name_a, name_b = Path(self.a).name, Path(self.b).name
        if self.finite and self.max_change == 0.0:
            return (
                f"No change: {name_a} and {name_b} give identical key-marginals on every layer, head, part and "
                f"step of {len(self.images)} images (JS = 0 everywhere)."
            )
        layers = self.most_changed_layers
        per_layer = dict(zip(self.layers, self.layer_change, strict=True))
        change = self.change
        text = []
        for side, name in (("a", name_a), ("b", name_b)):
            if bad := self.nonfinite(side):
                text.append(
                    f"{side.upper()}'s attention is not finite (NaN or inf) on {', '.join(bad)}: {name} is broken, "
                    f"and the change there cannot be measured."
                )
        if not text and not self.finite:
            bad_layers = [n for n, v in per_layer.items() if not math.isfinite(v)]
            text.append(f"The change is not finite on {', '.join(bad_layers)}.")
        if layers:
            li, hi = max(
                ((i, h) for i in range(len(self.layers)) for h in range(self.num_heads) if math.isfinite(change[i][h])),
                key=lambda ij: change[ij[0]][ij[1]],
            )
            moved = ", ".join(f"{name} ({per_layer[name]:.3f})" for name in layers)
            text.append(
                f"From {name_a} to {name_b} the key-marginals moved most in {moved}, in JS/log 2 averaged "
                f"over heads; the largest single change is head {hi} of {self.layers[li]} ({change[li][hi]:.3f})."
            )
        elif self.finite:
            text.append(f"From {name_a} to {name_b} the key-marginals barely moved (at most {self.max_change:.2g}).")
        sep_a, sep_b = self.summary_mean("a", "separation"), self.summary_mean("b", "separation")
        if sep_a is not None and sep_b is not None:
            text.append(f"Part separation {sep_a:.3f} -> {sep_b:.3f} (mean over images with 2+ parts).")
        fail_a, fail_b = self.failing("a"), self.failing("b")
        n = len(self.images)
        for name in dict.fromkeys([*fail_a, *fail_b]):
            text.append(f"{name} fails on {fail_a.get(name, 0)} -> {fail_b.get(name, 0)} of {n} images.")
        if not fail_a and not fail_b:
            text.append("Every check passes on both.")
        return " ".join(text)

    def to_dict(self) -> dict:
        """Plain JSON values: a change that is not finite is ``null`` (``nonfinite`` says where)."""
        return _json_safe(
            {
                "a": self.a,
                "b": self.b,
                "settings": self.settings,
                "layers": self.layers,
                "num_heads": self.num_heads,
                "metric": "JS(key-marginal on A, on B) / log 2, per (layer, head), mean over steps, parts and images",
                "change": self.change,
                "layer_change": dict(zip(self.layers, self.layer_change, strict=True)),
                "most_changed_layers": self.most_changed_layers,
                "max_change": self.max_change,
                "checks": {
                    name: {
                        "a": self.check_means("a")[name],
                        "b": self.check_means("b")[name],
                        "threshold": self.threshold(name),
                    }
                    for name in self.check_means("a")
                },
                "failing": {"a": self.failing("a"), "b": self.failing("b")},
                "separation": {"a": self.summary_mean("a", "separation"), "b": self.summary_mean("b", "separation")},
                "finite": self.finite,
                "nonfinite": {"a": self.nonfinite("a"), "b": self.nonfinite("b")},
                "verdict": self.verdict,
                "images": [img.to_dict() for img in self.images],
            }
        )


def _json_safe(value):
    """``value`` with every float that is not finite replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def first_nonfinite(record) -> str | None:
    """Where a record's key-marginals first stop being finite (``"LAYER at step S"``), or None."""
    import torch

    marginals = record.marginals.float()
    bad = ~torch.isfinite(marginals).reshape(*marginals.shape[:2], -1).all(dim=-1)  # (steps, layers)
    if not bool(bad.any()):
        return None
    s, layer = (int(i) for i in bad.nonzero()[0])  # step-major: the earliest step, then the shallowest layer
    return f"{record.layers[layer]} at step {record.steps[s]}"


def marginal_change(record_a, record_b):
    """``(layers, heads)`` tensor: JS/log 2 between the per-head key-marginals of two records of the
    same run shape, mean over steps and parts."""
    from ..capture import metrics

    for what in ("layers", "num_heads", "num_patch_keys", "num_parts", "steps"):
        if getattr(record_a, what) != getattr(record_b, what):
            raise CompareError(
                f"the two runs differ in {what} ({getattr(record_a, what)} vs {getattr(record_b, what)}); compare "
                f"checkpoints of the same architecture, image encoder and settings"
            )
    js = metrics.js_distance_normalized(record_a.marginals.float(), record_b.marginals.float())  # (S, L, P, H)
    return js.mean(dim=(0, 2))


def compare_checkpoints(
    a,
    b,
    images,
    *,
    steps: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    thresholds: Thresholds | None = None,
    base=None,
    ema: bool = False,
    progress: Callable[[int], None] | None = None,
    keep: Callable[[str, object, object, object, object], object] | None = None,
    pipeline: str | None = None,
    ranks: Ranks | None = None,
) -> Comparison:
    """Run ``images`` (``sidecar.ImageSpec`` from ``trend.fixture_images``, or paths named np<N>_...)
    through checkpoints ``a`` and ``b`` with the same settings and compare them. Both models are
    loaded once, after their ``config.json`` files were found to describe the same architecture; each
    image runs with its sidecar's settings and ``[thresholds.*]`` overrides.
    ``keep(image, record_a, record_b, pipeline_a, pipeline_b)`` sees each pair of records; what it
    returns is kept in ``comparison.kept[image]`` (the command keeps what its figures need). A
    transformer-only folder (e.g. upstream's ``000500/``) borrows the rest from ``base``; ``ema``
    judges ``transformer_ema/`` instead of ``transformer/`` on both sides; ``pipeline``: the user's
    own ``module:factory`` (``trend.load_pipeline``). ``ranks``: the processes of a ``torchrun``
    launch (``runs.distributed``), which share the images (each loads both models) and all get the
    whole comparison; ``keep``'s values travel to them, so they must pickle."""
    from ..runs.distributed import Ranks
    from ..runs.session import Session
    from .trend import TrendError, as_checkpoint, check_architecture, load_pipeline

    specs = [_as_spec(i) for i in images]
    try:
        sides = [as_checkpoint(path, ema=ema) for path in (a, b)]
    except TrendError as err:
        raise CompareError(str(err)) from None
    for side in sides:
        if side.transformer_only and base is None:
            raise CompareError(f"{side.path} holds only {side.weights}/; pass base= (--base DIR) to borrow the rest")
    check_architecture(sides, CompareError)
    ranks = ranks or Ranks()
    settings = {"steps": steps, "seed": seed, "device": device, "dtype": dtype, "weights": sides[0].weights}
    comparison = Comparison(str(a), str(b), [], 0, settings)
    options = {"steps": steps, "seed": seed}
    loaded: list = []  # both pipelines, loaded by the first image this process runs
    done = 0

    def run(spec) -> tuple[ImageComparison, list[str], int, object]:
        nonlocal done
        if not loaded:
            run_on = ranks.device(device)
            loaded.extend(load_pipeline(s, base=base, device=run_on, dtype=dtype, pipeline=pipeline) for s in sides)
        side_a, side_b = (Session.around(p, options=options, thresholds=thresholds, checks=CHECKS) for p in loaded)
        outcome_a, outcome_b = side_a.image_outcome(spec), side_b.image_outcome(spec)  # A then B
        ra, rb = outcome_a.record, outcome_b.record
        name = Path(outcome_a.image).name
        image = ImageComparison(
            name,
            marginal_change(ra, rb).tolist(),
            dict(outcome_a.results),
            dict(outcome_b.results),
            outcome_a.summary,
            outcome_b.summary,
            first_nonfinite(ra),
            first_nonfinite(rb),
        )
        kept = keep(name, ra, rb, *loaded) if keep is not None else None
        done += 1
        if progress is not None:
            progress(done)
        return image, list(ra.layers), ra.num_heads, kept

    for image, layers, heads, kept in ranks.map(specs, run, label=lambda spec: spec.path.name):
        if not comparison.layers:
            comparison.layers, comparison.num_heads = layers, heads
        comparison.images.append(image)
        comparison.kept[image.image] = kept
    loaded.clear()
    return comparison


def _as_spec(image):
    from ..runs.sidecar import ImageSpec, read_spec

    if isinstance(image, ImageSpec):
        return image
    path = Path(image).resolve()
    spec = read_spec(path, path.parent, Path.cwd())
    if spec.error:
        raise CompareError(spec.error)
    return spec
