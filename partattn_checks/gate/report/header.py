"""The report header (``pytest_report_header``): model, device, run settings, versions, folders. No torch."""

from __future__ import annotations

from ...checks.reporting import fmt
from ..context import defaults_note, model_text


def header_lines(settings, device, thresholds_source: str, custom_hooks: list[str], defaults: dict) -> list[str]:
    """The report header: model, device (and any CPU fallback), dtype, steps, versions, folders.
    ``defaults``: the checkpoint's run settings (``runspec.checkpoint_defaults``), shown for unset options."""
    import importlib.metadata as md
    import sys

    def version(name: str) -> str:
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "__version__"):
            return module.__version__
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    model = model_text(settings, custom_hooks) + defaults_note(settings, custom_hooks)
    dev = device.device + (f" ({device.note})" if device.note else "")
    steps = str(settings.steps) if settings.steps is not None else f"checkpoint default ({defaults['steps']})"
    tokens = getattr(settings, "num_tokens", None)
    tokens = str(tokens) if tokens is not None else f"checkpoint default ({defaults['num_tokens']})"
    guidance = "checkpoint default" if settings.guidance is None else fmt(settings.guidance)
    update = settings.update or "off"
    return [
        f"partattn: model {model}",
        f"partattn: device {dev} | dtype {settings.dtype} | steps {steps} | seed {settings.seed} | "
        f"guidance {guidance} | tokens {tokens} | torch {version('torch')} | diffusers {version('diffusers')}",
        f"partattn: fixtures {settings.shown(settings.fixtures)} | baselines {settings.shown(settings.baselines)} "
        f"(update: {update}) | results {settings.shown(settings.results)} | thresholds: {thresholds_source}",
    ]
