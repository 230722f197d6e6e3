"""Attention health checks: one class per check in one registry, thresholds, results.

``core`` holds the shape every check shares (``CheckResult``, ``Offender``, ``Check``,
``run_checks``), ``registry`` the checks by name (``REGISTRY``/``register``), ``details`` the typed
details base, ``thresholds`` the tables and their one resolver, ``common`` helpers of the built-in
checks, and each other module one check. Importing this package registers the built-in checks in
report order.
docs/metrics.md defines every metric, check and default, and shows how to write a check.
"""

from __future__ import annotations

from .core import VERDICTS, Check, CheckResult, Offender, Timeline, run_checks
from .details import Details, Matrix, optional_key
from .registry import CHECKS, OPS, REGISTRY, CheckError, register
from .thresholds import (
    Thresholds,
    ThresholdsError,
    ThresholdsLayer,
    load_thresholds,
    param,
    thresholds_from_pyproject,
)

# The built-in checks register on import, in this order (the order of reports): keep the splits.
from .uniformity import Uniformity, UniformityThresholds, check_uniformity

# isort: split
from .collapse import Collapse, CollapseThresholds, check_collapse

# isort: split
from .part_separation import PartSeparation, PartSeparationThresholds, check_part_separation

# isort: split
from .stability import Stability, StabilityThresholds, check_stability

# isort: split
from .nonfinite import Nonfinite, check_nonfinite

# isort: split
from .baseline import Baseline, BaselineThresholds, check_baseline

__all__ = [
    "CHECKS",
    "OPS",
    "REGISTRY",
    "VERDICTS",
    "Check",
    "CheckError",
    "CheckResult",
    "Details",
    "Matrix",
    "Offender",
    "Timeline",
    "optional_key",
    "register",
    "run_checks",
    "Thresholds",
    "ThresholdsError",
    "ThresholdsLayer",
    "load_thresholds",
    "param",
    "thresholds_from_pyproject",
    "Uniformity",
    "UniformityThresholds",
    "check_uniformity",
    "Collapse",
    "CollapseThresholds",
    "check_collapse",
    "PartSeparation",
    "PartSeparationThresholds",
    "check_part_separation",
    "Stability",
    "StabilityThresholds",
    "check_stability",
    "Nonfinite",
    "check_nonfinite",
    "Baseline",
    "BaselineThresholds",
    "check_baseline",
]
