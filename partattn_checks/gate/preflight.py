"""What the plugin checks when ``--partattn`` is on, before any item runs (the xdist controller and
each worker): a ``--partattn-model`` repo id resolves to a folder of the Hugging Face hub cache, files
the options name exist, a baseline update is allowed, the checkpoint can be loaded,
``--partattn-pipeline`` names a factory that can be imported. Each problem is an
:class:`~partattn_checks.gate.options.OptionError` (pytest's usage error, exit code 4) that names the
option and the fix. No torch (the device is checked by :func:`options.device_for`).
"""

from __future__ import annotations

import os
from dataclasses import replace

from .options import OptionError, Settings, ci_is_set


def resolve_model(s: Settings) -> Settings:
    """``--partattn-model`` written as a Hugging Face repo id (``owner/name[@revision]``) with no local
    folder of that name: the settings with the model set to the repo's snapshot folder in the hub cache
    (downloaded only where the environment allows it: ``model.hub``). A repo that cannot be had is a
    usage error in one line, with the command that fetches it."""
    from ..model import hub

    raw = s.raw.get("model")
    if not isinstance(raw, str) or s.model.exists() or hub.parse(raw) is None:
        return s
    try:
        return replace(s, model=hub.resolve(raw).path)
    except hub.HubError as err:
        raise OptionError(f"{s.where('model')}: {err}") from None


def check_enabled_settings(s: Settings, *, custom_pipeline: bool) -> None:
    """Checks that only matter when the plugin runs (files exist, update allowed, the pipeline's
    factory importable); no torch."""
    if s.update is not None and ci_is_set() and not s.force_update:
        raise OptionError(
            f"{s.where('update')}: refusing to update baselines because the CI environment variable is set "
            f"(CI={os.environ.get('CI')}); baselines should be reviewed and committed from a developer "
            f"machine. Pass --partattn-force-update to update anyway"
        )
    if s.thresholds is not None and not s.thresholds.is_file():
        raise OptionError(
            f"{s.where('thresholds')}: no such file ({s.thresholds}); pass a TOML file with "
            f"[uniformity], [collapse], ... tables or drop the option"
        )
    if s.pipeline is not None:
        check_factory(s)
    if custom_pipeline:
        return
    if not s.model.is_dir():
        if s.model_is_embedded:
            raise OptionError(
                f"the embedded default checkpoint is missing ({s.model}); the installation looks "
                f"incomplete: reinstall partattn-checks or pass --partattn-model DIR"
            )
        raise OptionError(
            f"{s.where('model')}: no such checkpoint folder ({s.model}); pass the folder that holds model_index.json"
        )
    from ..model.files import checkpoint_problems

    problems = checkpoint_problems(s.model)  # milliseconds, no torch: one clear error, not one per item
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise OptionError(f"{s.where('model')}: the checkpoint cannot be loaded:\n{listed}")


def check_factory(s: Settings) -> None:
    """``--partattn-pipeline``: of the form ``module:factory``, importable from the rootdir, callable
    (the factory itself is called later, once per process, when the first image runs)."""
    from ..capture.upstream import PipelineError, load_factory

    if s.pipeline is None:
        return
    try:
        load_factory(s.pipeline, s.rootdir, pipeline_label(s))
    except PipelineError as err:
        raise OptionError(str(err)) from None


def pipeline_label(s: Settings) -> str:
    """How messages name ``--partattn-pipeline`` before its value: the option, or its ini key."""
    return "ini option partattn_pipeline =" if s.sources.get("pipeline") == "ini" else "--partattn-pipeline"
