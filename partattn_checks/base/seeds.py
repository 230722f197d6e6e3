"""Noise seeds, declared once: the run's seed, a baseline's seeds, the gate's runs, and their ranges.

The run seed (``--partattn-seed``, ``--seed``, a sidecar's ``seed``) seeds the initial latents: at least
:data:`MIN_SEED` (checked with the other run settings, :func:`partattn_checks.capture.runspec.problem`),
:data:`DEFAULT_SEED` when nothing sets it (checkpoints do not).

A baseline of an image whose run seed is ``s`` is written from the ``K`` noise seeds ``s, s + 1, ...,
s + K − 1`` (:func:`baseline_seeds`; ``--partattn-baseline-seeds``); the gate's ``R`` runs are the first
``R`` of them (:func:`gate_seeds`; ``--partattn-seeds``), so by default the gate reruns the baseline's
own seeds and its difference from the stored runs of those seeds is the change itself (the paired
verdict). ``K`` and ``R`` are checked against their ranges below by
:class:`partattn_checks.baselines.policy.BaselinePolicy` and nowhere else. Standard library only.
"""

from __future__ import annotations

#: Seed of the initial latents when nothing sets one, and the least seed.
DEFAULT_SEED = 0
MIN_SEED = 0
#: Noise seeds per baseline (K); docs/diagnostic-power.md measures the choice. A spread needs two.
DEFAULT_BASELINE_SEEDS = 16
MIN_BASELINE_SEEDS = 2
#: Runs per image the gate judges (R), the first R of the baseline's seeds.
DEFAULT_GATE_SEEDS = 1
MIN_GATE_SEEDS = 1
#: The most seeds of K and R: more runs per image than this are never useful.
MAX_SEEDS = 1000


def baseline_seeds(seed: int, count: int) -> list[int]:
    """The noise seeds a baseline of an image whose run seed is ``seed`` is written with."""
    return [seed + i for i in range(count)]


def gate_seeds(seed: int, repeats: int) -> list[int]:
    """The seeds the gate judges an image with: the first ``repeats`` of its baseline's seeds."""
    return baseline_seeds(seed, repeats)
