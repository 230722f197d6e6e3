"""Repo-level pytest configuration for the project's own tests (not the plugin)."""

import os

# Keep the project's tests light on this 2-core machine: one intra-op thread per process.
os.environ.setdefault("OMP_NUM_THREADS", "1")
