"""The verdict of the whole fixture set: small shifts that every image shares.

Each image's ``baseline`` item measures, per metric and layer, how far it moved from its baseline
(``checks.baseline.Deviation``). One image moving a little is noise; every image moving the same way
is a regression. :func:`set_verdict` combines the images judged by the same verdict:

* **paired** images (:func:`.paired.combine_paired`): per metric and layer the median over images
  of each image's shift beyond its numeric floor, which one chaotic pair cannot move;
* **seed-spread** images (:func:`.noise.combine`): the images' distances clipped to ±3, summed over
  their null standard deviation (their correlation through shared seeds included).

It fails when one of them moved, naming the metrics and layers that moved together and the first such
layer in depth order; with fewer than two images of either kind it is not judged, and says why. The
pytest controller (the xdist controller too, which sees every worker's reports) and
``runs.judgement.judge_set`` both call it; it is reported as one more test, ``<fixtures>::fixture-set``.
Standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..checks.baseline import PAIRED, SEED_SPREAD, BaselineDetails, Deviation, SetDeviation
from .noise import combine
from .paired import combine_paired

#: The name of the fixture-set item (after the fixtures folder in its node id).
ITEM_NAME = "fixture-set"


@dataclass(frozen=True)
class SetVerdict:
    images: tuple[str, ...]  # the images combined
    deviations: tuple[SetDeviation, ...]
    alpha: float
    layer_order: tuple[str, ...]  # layers in depth order
    not_judged: str | None = None  # why the set was not judged (then the verdict is "skip")

    @property
    def moved(self) -> list[SetDeviation]:
        return [d for d in self.deviations if d.moved]

    @property
    def verdict(self) -> str:
        if self.not_judged is not None:
            return "skip"
        return "fail" if self.moved else "pass"

    @property
    def onset(self) -> str | None:
        """The first layer in depth order that moved over the set."""
        moved = {d.name for d in self.moved if d.kind == "layer"}
        return next((name for name in self.layer_order if name in moved), None)

    @property
    def worst(self) -> SetDeviation | None:
        if not self.deviations:
            return None
        return max(self.deviations, key=lambda d: (abs(d.z) if d.kind == "metric" else d.z) / d.allowance)

    @property
    def kinds(self) -> list[str]:
        """The verdicts combined (paired, seed-spread), in that order."""
        found = {d.verdict for d in self.deviations}
        return [k for k in (PAIRED, SEED_SPREAD) if k in found]

    def reason(self) -> str:
        if self.not_judged is not None:
            return f"not judged: {self.not_judged}"
        n = len(self.images)
        kinds = " and ".join(f"{k} verdict" for k in self.kinds)
        if self.moved:
            names = ", ".join(
                f"{d.name} ({_direction(d)}, {d.z:+.2f} vs allowance {d.allowance:.2f}, {d.verdict})"
                for d in self.moved
            )
            text = f"the fixture set moved as a whole over {n} images ({kinds}): {names}"
            if self.onset is not None:
                text += f"; the first layer that moved is {self.onset}"
            return text
        w = self.worst
        closest = f" (closest: {w.name} {w.z:+.2f} vs allowance {w.allowance:.2f})" if w is not None else ""
        return f"no shift shared by the {n} images ({kinds}){closest}"

    def lines(self) -> list[str]:
        """The failure text: the reason, how it is judged, then one row per metric and layer."""
        rows = [["metric / layer", "verdict", "images", "mean", "ρ", "set", "allowance", ""]]
        for d in sorted(self.deviations, key=lambda d: -abs(d.z) / d.allowance):
            rho = f"{d.correlation:.2f}" if d.verdict == SEED_SPREAD else "—"
            rows.append(
                [
                    d.name,
                    d.verdict,
                    str(d.images),
                    f"{d.mean_z:+.2f}",
                    rho,
                    f"{d.z:+.2f}",
                    f"{d.allowance:.2f}",
                    "MOVED" if d.moved else "ok",
                ]
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        table = [
            "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in rows
        ]
        how = []
        if PAIRED in self.kinds:
            how.append(
                "paired: each image's shift beyond its numeric floor, in seed spreads; set = the median over the "
                "images (one chaotic image cannot move it)"
            )
        if SEED_SPREAD in self.kinds:
            how.append(
                "seed-spread: each image's distance in standard errors of its seed noise, clipped to ±3, summed "
                "and divided by √(n + n(n−1)ρ) (ρ: the images' correlation through their shared noise seeds); "
                f"allowance at false-alarm rate {self.alpha:g} over the comparisons"
            )
        return [
            f"partattn: fixture set {self.verdict.upper()}: {self.reason()}",
            "",
            *how,
            "(docs/plugin.md, the fixture-set item)",
            "",
            *("  " + line.rstrip() for line in table),
        ]


def _direction(d: SetDeviation) -> str:
    if d.kind == "layer":
        return "attention moved away"
    return "higher" if d.z > 0 else "lower"


def set_verdict(per_image: Mapping[str, BaselineDetails | None], alpha: float) -> SetVerdict:
    """The set verdict from every image's ``baseline`` details (None: the image was not compared:
    no baseline, written this run, unusable, not run)."""
    groups: dict[str, dict[str, list[Deviation]]] = {PAIRED: {}, SEED_SPREAD: {}}
    for image, details in per_image.items():
        if details is not None and details.deviations and details.verdict in groups:
            groups[details.verdict][image] = list(details.deviations)
    judged = {kind: images for kind, images in groups.items() if len(images) >= 2}
    order: list[str] = []
    for images in groups.values():
        for devs in images.values():
            for d in devs:
                if d.kind == "layer" and d.name not in order:
                    order.append(d.name)
    if not judged:
        return SetVerdict((), (), alpha, tuple(order), _why_not(per_image, groups))
    deviations: list[SetDeviation] = []
    if PAIRED in judged:
        deviations += combine_paired(judged[PAIRED])
    if SEED_SPREAD in judged:
        deviations += combine(judged[SEED_SPREAD], alpha)
    names = tuple(sorted(image for found in judged.values() for image in found))
    return SetVerdict(names, tuple(deviations), alpha, tuple(order))


def _why_not(
    per_image: Mapping[str, BaselineDetails | None], groups: Mapping[str, Mapping[str, list[Deviation]]]
) -> str:
    compared = {kind: len(images) for kind, images in groups.items() if images}
    others = len(per_image) - sum(compared.values())
    parts = [f"{n} by the {kind} verdict" for kind, n in compared.items()]
    if others:
        parts.append(f"{others} not compared (no usable baseline, written this run, or not run)")
    found = "; ".join(parts) or "no image had a baseline item"
    return f"it needs two images compared with their baselines by the same verdict ({found})"
