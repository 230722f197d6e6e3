"""Hooks that the partattn plugin offers to conftest.py files and other plugins."""

from __future__ import annotations

import pytest


@pytest.hookspec(firstresult=True)
def pytest_partattn_load_pipeline(config: pytest.Config, device: str, dtype: str) -> object:
    """Return the pipeline the attention checks run, or ``None`` to let the next plugin decide.

    Called once per session (once per pytest-xdist worker), lazily, before the first image runs;
    the first non-``None`` result wins. The default loads ``--partattn-model`` with
    ``PartCrafterPipeline.from_pretrained(path, device=device, dtype=...)``.

    An upstream-style PartCrafter pipeline (``pipe(image=[img] * N, attention_kwargs=...,
    num_inference_steps=..., generator=...)``) is wrapped in ``partattn_checks.capture.upstream.UpstreamPipeline``.
    Otherwise the object must offer what ``partattn_checks.capture.pipeline_run.record_attention`` uses: ``transformer``
    (a diffusers model whose cross-attention modules use PartCrafter/TripoSG or standard diffusers
    processors), ``run_defaults`` (dict with ``num_tokens``, ``steps``, ``guidance_scale``),
    ``patch_grid``, ``checkpoint.path``, ``dtype``, ``device`` and
    ``__call__(image, num_parts, *, steps, seed, guidance_scale, num_tokens, observers)``.
    ``preprocessed_image(image)`` is optional (used for overlays).

    :param config: the pytest config (read your own options from it).
    :param device: the resolved device, e.g. ``"cpu"`` or ``"cuda:1"`` (per xdist worker).
    :param dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``.
    """
