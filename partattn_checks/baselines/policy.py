"""How baselines are judged and written: one frozen policy, validated once.

Every front end builds a :class:`BaselinePolicy` (the gate from its ``--partattn-*`` options,
``partattn calibrate``, the benchmarks, the training monitor) and hands it to the runner; the
ranges below and those of the seeds (:mod:`partattn_checks.base.seeds`, where the seeds are declared)
are checked here and nowhere else, and an option's error names the option (``where``). Standard
library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..base.seeds import DEFAULT_BASELINE_SEEDS as DEFAULT_BASELINE_SEEDS  # re-exported: calibrate reads them here
from ..base.seeds import DEFAULT_GATE_SEEDS as DEFAULT_GATE_SEEDS
from ..base.seeds import MAX_SEEDS, MIN_BASELINE_SEEDS, MIN_GATE_SEEDS
from ..errors import PartattnError

#: False-alarm rate of one item of the seed-spread verdict (``--partattn-false-alarm-rate``) and its range:
#: below ``MIN_FALSE_ALARM_RATE`` no quantile is meaningful (and the arithmetic overflows near 1e-100).
DEFAULT_FALSE_ALARM_RATE = 0.001
MIN_FALSE_ALARM_RATE = 1e-12
MAX_FALSE_ALARM_RATE = 0.5
#: What the gate writes: ``missing`` baselines, those that ``failed`` (and missing), or ``all``.
UPDATE_MODES = ("missing", "failed", "all")
#: The verdict (``--partattn-verdict``): ``auto`` pairs when the baseline holds the run's seeds and
#: settings and judges by the seed spread otherwise; ``paired`` fails an item that cannot be paired;
#: ``seed-spread`` never pairs.
VERDICT_MODES = ("auto", "paired", "seed-spread")
#: Model dtypes a baseline can measure its numeric floor in (``--partattn-floor-dtypes``).
FLOOR_DTYPES = ("float32", "float16", "bfloat16")


class PolicyError(PartattnError, ValueError):
    """A baseline setting out of range: ``setting`` (the field) and ``what`` is wrong with it, the range."""

    def __init__(self, setting: str, value: object, what: str):
        super().__init__(f"{setting} {value!r}: {what}")
        self.setting = setting
        self.what = what


@dataclass(frozen=True)
class BaselinePolicy:
    """How baselines are judged and written.

    ``update``: None (compare only), ``missing``, ``failed`` or ``all`` (:meth:`writes`); ``force``:
    also replace a baseline file that cannot be read (with ``all``); ``strict_env``: a baseline
    recorded in another environment fails; ``false_alarm_rate`` (α), ``baseline_seeds`` (K),
    ``seeds`` (R); ``verdict``: auto | paired | seed-spread; ``floor_dtypes``: model dtypes, besides
    the baseline's own, whose runs the numeric floor covers (a gate may run in them and stay paired).
    ``where`` names each setting in errors (e.g. ``{"seeds": "--partattn-seeds 0"}``).
    """

    update: str | None = None
    force: bool = False
    strict_env: bool = False
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE
    baseline_seeds: int = DEFAULT_BASELINE_SEEDS
    seeds: int = DEFAULT_GATE_SEEDS
    verdict: str = "auto"
    floor_dtypes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem is not None:
            setting, what = problem
            raise PolicyError(setting, getattr(self, setting), what)

    def _problem(self) -> tuple[str, str] | None:
        """The one check of every baseline setting: (setting, what is wrong and the range), or None."""
        if self.update is not None and self.update not in UPDATE_MODES:
            return "update", f"{self.update!r} is not one of {', '.join(UPDATE_MODES)}"
        k, r, rate = self.baseline_seeds, self.seeds, self.false_alarm_rate
        if not _whole(k) or not MIN_BASELINE_SEEDS <= k <= MAX_SEEDS:
            return "baseline_seeds", (
                f"must be between {MIN_BASELINE_SEEDS} and {MAX_SEEDS} (a spread needs two seeds; "
                f"{DEFAULT_BASELINE_SEEDS} is the measured default)"
            )
        if not _whole(r) or not MIN_GATE_SEEDS <= r <= MAX_SEEDS:
            return "seeds", f"must be between {MIN_GATE_SEEDS} and {MAX_SEEDS} (1 judges one run per image)"
        if r > k:
            return "seeds", (
                f"the gate reruns the first R of the baseline's {k} seeds, so R cannot exceed K (raise the baseline "
                f"seeds or lower the seeds)"
            )
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate):
            return "false_alarm_rate", "expected a number, e.g. 0.001"
        if not MIN_FALSE_ALARM_RATE <= rate < MAX_FALSE_ALARM_RATE:
            return "false_alarm_rate", (
                f"must lie in [{MIN_FALSE_ALARM_RATE:g}, {MAX_FALSE_ALARM_RATE:g}), e.g. 0.001 for one false alarm "
                f"in a thousand healthy images"
            )
        if self.verdict not in VERDICT_MODES:
            return "verdict", f"{self.verdict!r} is not one of {', '.join(VERDICT_MODES)}"
        unknown = [d for d in self.floor_dtypes if d not in FLOOR_DTYPES]
        if unknown:
            return "floor_dtypes", f"{unknown[0]!r} is not one of {', '.join(FLOOR_DTYPES)}"
        return None

    def writes(self, missing: bool, failed: bool) -> bool:
        """Whether this update mode writes the measured baseline of an image whose baseline is
        ``missing`` or whose item would ``fail`` (missing, of another schema, an environment
        mismatch, drifted). (A file that cannot be read at all is replaced only when forced.)"""
        if self.update == "all":
            return True
        if self.update == "failed":
            return failed
        return self.update == "missing" and missing

    @property
    def pairs(self) -> bool:
        return self.verdict != "seed-spread"


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
