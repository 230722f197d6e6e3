"""partattn-checks: cross-attention health checks for PartCrafter checkpoints.

The package import is kept light on purpose (no torch): the pytest plugin imports it at start-up.
"""

__version__ = "0.1.0"
