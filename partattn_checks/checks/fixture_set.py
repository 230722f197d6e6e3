"""The verdict of the whole fixture set: small shifts that every image shares.

Each image's ``baseline`` item measures, per metric and layer, how many standard errors it moved
from its baseline's seed mean (:class:`partattn_checks.noise.Deviation`). One image moving by 1.5
is noise; ten images all moving by 1.5 the same way is a regression. :func:`set_verdict` combines
the images' distances (:func:`partattn_checks.checks.baseline.noise.combine`) and fails when the set as a whole
moved, naming the metrics and layers that moved together and the first such layer in depth order.

The pytest controller (the xdist controller too, which sees every worker's reports) judges the set
from the items' reports and reports it as one more test, ``<fixtures>::fixture-set``. Standard
library only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .baseline.noise import Deviation, SetDeviation, combine

#: The name of the fixture-set item (after the fixtures folder in its node id).
ITEM_NAME = "fixture-set"


@dataclass(frozen=True)
class SetVerdict:
    images: tuple[str, ...]
    deviations: tuple[SetDeviation, ...]
    alpha: float
    layer_order: tuple[str, ...]  # layers in depth order

    @property
    def moved(self) -> list[SetDeviation]:
        return [d for d in self.deviations if d.moved]

    @property
    def verdict(self) -> str:
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

    def reason(self) -> str:
        n = len(self.images)
        if self.moved:
            names = ", ".join(
                f"{d.name} ({_direction(d)}, {d.z:+.1f} vs allowance {d.allowance:.1f})" for d in self.moved
            )
            text = f"the fixture set moved as a whole over {n} images: {names}"
            if self.onset is not None:
                text += f"; the first layer that moved is {self.onset}"
            return text
        w = self.worst
        closest = f" (closest: {w.name} {w.z:+.1f} vs allowance {w.allowance:.1f})" if w is not None else ""
        return f"no shift shared by the {n} images beyond their seed noise{closest}"

    def lines(self) -> list[str]:
        """The failure text: the reason, then one row per metric and layer."""
        rows = [["metric / layer", "images", "mean z", "ρ", "set z", "allowance", "verdict"]]
        for d in sorted(self.deviations, key=lambda d: -abs(d.z) / d.allowance):
            verdict = "MOVED" if d.moved else "ok"
            rows.append(
                [
                    d.name,
                    str(d.images),
                    f"{d.mean_z:+.2f}",
                    f"{d.correlation:.2f}",
                    f"{d.z:+.2f}",
                    f"{d.allowance:.2f}",
                    verdict,
                ]
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        table = [
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in rows
        ]
        return [
            f"partattn: fixture set {self.verdict.upper()}: {self.reason()}",
            "",
            "Each image's distance from its baseline (in standard errors of its seed noise, clipped to ±3) is summed "
            "over the images and divided by its null standard deviation √(n + n(n−1)ρ); ρ: the images' correlation "
            f"through their shared noise seeds; allowance: false-alarm rate {self.alpha:g} over {len(self.deviations)} "
            "comparisons (docs/plugin.md).",
            "",
            *("  " + line for line in table),
        ]


def _direction(d: SetDeviation) -> str:
    if d.kind == "layer":
        return "attention moved away"
    return "higher" if d.z > 0 else "lower"


def set_verdict(per_image: Mapping[str, Iterable[Deviation]], alpha: float) -> SetVerdict | None:
    """The set verdict from each image's baseline deviations; ``None`` with fewer than two images
    judged in units of noise."""
    typed = {image: list(devs) for image, devs in per_image.items()}
    typed = {image: devs for image, devs in typed.items() if devs}
    if len(typed) < 2:
        return None
    order: list[str] = []
    for devs in typed.values():
        for d in devs:
            if d.kind == "layer" and d.name not in order:
                order.append(d.name)
    return SetVerdict(tuple(sorted(typed)), tuple(combine(typed, alpha)), alpha, tuple(order))
