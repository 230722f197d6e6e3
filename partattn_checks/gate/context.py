"""What a gate session ran with, in words: the model (the built-in pipeline on a checkpoint, a
``--partattn-pipeline`` factory or a ``pytest_partattn_load_pipeline`` hook) and the run settings
every image gets unless its sidecar pins others. The header says it; the terminal summary says it
again, because ``pytest -q`` hides the header. No torch.
"""

from __future__ import annotations

from ..model.hub import snapshot_of


def model_text(settings, custom_hooks: list[str]) -> str:
    """``embedded partcrafter-tiny (/…/partcrafter-tiny)``, ``wgsxm/PartCrafter@<commit> (…)``,
    ``my_fork:load(None, ...)``, ``from pytest_partattn_load_pipeline (conftest.py)``: where the pipeline
    comes from."""
    if custom_hooks:
        return f"from pytest_partattn_load_pipeline ({', '.join(custom_hooks)})"
    if getattr(settings, "pipeline", None):
        given = settings.sources.get("model") != "default"
        return f"{settings.pipeline}({settings.shown(settings.model) if given else 'None'}, ...)"
    if settings.model_is_embedded:
        return f"embedded {settings.model.name} ({settings.model})"
    snapshot = snapshot_of(settings.model)
    if snapshot is not None:
        return f"{snapshot.label} (Hugging Face hub cache: {settings.model})"
    return settings.shown(settings.model)


def defaults_note(settings, custom_hooks: list[str]) -> str:
    """For a pipeline of the user's: where the run settings the options leave unset come from (the
    gate passes them to it, so that it runs what the header shows); empty for the built-in one."""
    if not custom_hooks and not getattr(settings, "pipeline", None):
        return ""
    if settings.sources.get("model") != "default":
        return f"; unset run settings: {settings.shown(settings.model)}'s defaults"
    return (
        f"; unset run settings: embedded {settings.model.name}'s defaults (pass --partattn-model=DIR for your "
        f"checkpoint's)"
    )


def run_settings(settings, defaults: dict) -> dict:
    """The run settings every image gets unless its sidecar pins others: each option, else
    ``defaults`` (the ``--partattn-model`` checkpoint's, ``runspec.checkpoint_defaults``)."""
    given = settings.run_options()
    return {key: given[key] if given.get(key) is not None else defaults.get(key) for key in given}


def summary_context(settings, custom_hooks: list[str], device: str, thresholds_source: str, defaults: dict) -> dict:
    """The lines the terminal summary opens with, ``{label: text}`` in order: the model, the run
    settings, where the thresholds came from. The gate may add more (e.g. the kind of verdict)."""
    run = run_settings(settings, defaults)
    guidance = run["guidance_scale"]
    return {
        "model": model_text(settings, custom_hooks),
        "run settings": f"steps {run['steps']} | tokens {run['num_tokens']} | guidance "
        f"{guidance if guidance is None else format(guidance, 'g')} | seed {run['seed']} | {device} {settings.dtype} "
        f"(an image's sidecar may pin others)",
        "thresholds": thresholds_source,
    }
