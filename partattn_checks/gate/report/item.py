"""The report data of one item: :class:`ItemReport`, what one check found for one fixture image.

Built where the item ran (possibly a pytest-xdist worker); it travels to the controller as a plain
dict on the test report (``report.partattn``) and is rebuilt there. No torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ...baselines.runner import BaselineState, BaselineStatus
from ...checks import CheckResult


@dataclass(frozen=True)
class ItemReport:
    """What one item found, as reports need it. Frozen and typed; it becomes a dict only to travel
    on the test report to the pytest-xdist controller (``to_dict``/``from_dict``).

    ``result`` is the check's ``CheckResult`` (None when the image could not run: ``error`` says
    why). ``verdict`` is the check's own; ``baseline`` what happened to the image's baseline
    (the ``baseline`` item's: its status, written, updated, missing, ..., and folders).
    """

    image: str
    key: str
    check: str
    result: CheckResult | None
    figures: tuple[str, ...]
    rerun: str
    update: str
    baseline_checks: dict[str, float | None] = field(default_factory=dict)
    baseline: BaselineState | None = None
    error: str | None = None
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0
    summary: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "figures", tuple(self.figures))
        object.__setattr__(self, "warnings", tuple(self.warnings))

    @property
    def verdict(self) -> str:
        """pass | fail | skip, or error when the image could not run."""
        return "error" if self.result is None else self.result.verdict

    @property
    def status(self) -> BaselineStatus | None:
        """The baseline's status (the ``baseline`` item only)."""
        return self.baseline.status if self.baseline is not None else None

    @property
    def baseline_written(self) -> bool:
        return self.baseline is not None and self.baseline.written

    @property
    def outcome(self) -> str:
        """What the summary shows: the verdict, or the baseline's "written"/"updated"."""
        return self.baseline.status.value if self.baseline is not None and self.baseline.written else self.verdict

    def to_dict(self) -> dict:
        """Plain JSON data (the test report's ``partattn``): the result and the baseline as their
        ``to_dict()``, the verdict alongside for readers (``from_dict`` derives it again)."""
        return {
            "image": self.image,
            "key": self.key,
            "check": self.check,
            "result": self.result.to_dict() if self.result is not None else None,
            "figures": list(self.figures),
            "rerun": self.rerun,
            "update": self.update,
            "baseline_checks": dict(self.baseline_checks),
            "baseline": self.baseline.to_dict() if self.baseline is not None else None,
            "error": self.error,
            "warnings": list(self.warnings),
            "seconds": self.seconds,
            "summary": dict(self.summary),
            "verdict": self.verdict,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> ItemReport:
        """Back from ``to_dict()`` (after JSON), typed again."""
        result, baseline = d.get("result"), d.get("baseline")
        return cls(
            image=d["image"],
            key=d["key"],
            check=d["check"],
            result=CheckResult.from_dict(result) if result is not None else None,
            figures=tuple(d.get("figures") or ()),
            rerun=d["rerun"],
            update=d["update"],
            baseline_checks=dict(d.get("baseline_checks") or {}),
            baseline=BaselineState.from_dict(baseline) if baseline is not None else None,
            error=d.get("error"),
            warnings=tuple(d.get("warnings") or ()),
            seconds=d.get("seconds", 0.0),
            summary=dict(d.get("summary") or {}),
        )
