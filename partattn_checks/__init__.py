"""partattn-checks: cross-attention health checks for PartCrafter checkpoints.

The package import is kept light on purpose (no torch): the pytest plugin imports it at start-up.
"""

from pathlib import Path

__version__ = "0.1.0"

#: The embedded default model: a tiny PartCrafter-format checkpoint trained by scripts/train_tiny.py.
EMBEDDED_MODEL = Path(__file__).resolve().parent / "data" / "partcrafter-tiny"
