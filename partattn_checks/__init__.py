"""partattn-checks: cross-attention health checks for PartCrafter checkpoints.

The public names import from here (``from partattn_checks import AttentionRecorder``). They load
lazily, on first use, so ``import partattn_checks`` imports no torch: the pytest plugin imports
the package at every pytest start-up.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .errors import PartattnError

__version__ = "0.1.0"

#: The embedded default model: a tiny PartCrafter-format checkpoint trained by scripts/train_tiny.py.
EMBEDDED_MODEL = Path(__file__).resolve().parent / "data" / "partcrafter-tiny"

#: public name -> the module that defines it (imported on first access)
_LAZY = {
    "AttentionRecorder": "capture.recorder",
    "CaptureError": "capture.recorder",
    "ProcessorFamily": "capture.families",
    "register_family": "capture.families",
    "Selection": "capture.recorder",
    "record_attention": "capture.pipeline_run",
    "AttentionRecord": "capture.record",
    "AttentionVisualizer": "present.visualizer",
    "RunSpec": "capture.runspec",
    "resolve_device": "capture.runspec",
    "PartCrafterPipeline": "model.pipeline",
    "CheckpointError": "model.files",
    "ImageError": "model.files",
    "RecordError": "model.files",
    "checkpoint_problems": "model.files",
    "CheckResult": "checks",
    "Thresholds": "checks",
    "ThresholdsError": "checks",
    "load_thresholds": "checks",
    "run_checks": "checks",
    "BaselineError": "baselines.errors",
    "BaselinePolicy": "baselines.policy",
    "BaselineRunner": "baselines.runner",
    "AttentionMonitor": "analysis.monitor",
    "JsonlLog": "analysis.monitor",
    "WandbLogger": "analysis.trackers",
    "TensorBoardLogger": "analysis.trackers",
    "compare_checkpoints": "analysis.compare",
}

__all__ = ["EMBEDDED_MODEL", "PartattnError", "__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'partattn_checks' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
