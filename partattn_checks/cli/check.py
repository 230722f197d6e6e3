"""``partattn check``: the pytest gate (``pytest --partattn``) on a folder of fixture images."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .args import DEFAULT_FIXTURES, MODEL_HELP, check_model, device_arg, model_dir, setting_arg
from .io import UsageError

PLUGIN_MODULE = "partattn_checks.gate.plugin"
#: ``pytest.main`` runs in this process, after the ``partattn`` command imported partattn_checks
#: (the plugin's package, which pytest marks for assert rewriting): pytest cannot rewrite it and
#: would say so on every ``check``. Nothing is lost: the gate's verdicts are not ``assert``
#: statements. (-W takes the message as a literal prefix, and it cannot hold the ':' before the
#: module name; the only module imported before ``pytest.main`` is this package.)
REWRITE_WARNING_FILTER = "ignore:Module already imported so cannot be rewritten:pytest.PytestAssertRewriteWarning"


def add_parser(sub):
    parser = sub.add_parser(
        "check",
        help="run the attention gate (pytest --partattn) on fixture images; non-zero exit on failure",
        description="Run the partattn pytest gate on a folder of fixture images (one test per image and check) "
        "against a checkpoint, without writing a test. Exits with pytest's status: 0 when every "
        "check passes. Arguments after the options (or after --) go to pytest, e.g. -x or -k np2.",
    )
    parser.add_argument("--model", metavar="DIR", help=MODEL_HELP)
    parser.add_argument("--fixtures", metavar="DIR", help=f"folder of fixture images (default: ./{DEFAULT_FIXTURES})")
    parser.add_argument(
        "--steps", type=setting_arg("steps"), metavar="S", help="denoising steps (default: the plugin's)"
    )
    parser.add_argument(
        "--num-tokens",
        type=setting_arg("num_tokens"),
        metavar="T",
        help="latent tokens per part (default: the plugin's, i.e. the checkpoint's)",
    )
    parser.add_argument("--device", type=device_arg, help="auto, cpu, cuda or cuda:N (default: the plugin's)")
    parser.add_argument(
        "--pipeline",
        metavar="MODULE:FACTORY",
        help="your own pipeline (an upstream-style PartCrafter pipeline, a fork's): factory(model, device, dtype), "
        "imported from the current folder (the gate's --partattn-pipeline)",
    )
    parser.set_defaults(func=main)
    return parser


def _plugin_args() -> list[str]:
    """``-p partattn_checks.gate.plugin`` unless the plugin is already registered through its entry point."""
    from importlib import metadata, util

    try:
        found = util.find_spec(PLUGIN_MODULE) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise UsageError(
            f"the pytest plugin ({PLUGIN_MODULE}) is not part of this install; "
            f"reinstall partattn-checks (pip install -e .)"
        )
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return ["-p", PLUGIN_MODULE]
    registered = any(ep.value.split(":")[0].strip() == PLUGIN_MODULE for ep in metadata.entry_points(group="pytest11"))
    return [] if registered else ["-p", PLUGIN_MODULE]


def check_args(
    model: Path | str,
    fixtures: Path,
    *,
    steps: int | None = None,
    num_tokens: int | None = None,
    device: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The pytest command line that ``partattn check`` runs.

    Option values are joined with ``=``: pytest picks its rootdir (hence the ini file, the
    thresholds and the results folder) from the path-like arguments it sees before plugins are
    loaded, and a separate value token such as the model folder would count as one.
    """
    args = ["--partattn", f"--partattn-model={model}", f"--partattn-fixtures={fixtures}"]
    if steps is not None:
        args.append(f"--partattn-steps={steps}")
    if num_tokens is not None:
        args.append(f"--partattn-num-tokens={num_tokens}")
    if device is not None:
        args.append(f"--partattn-device={device}")
    extra = list(extra)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    return args + [str(fixtures), "-p", "no:cacheprovider", *extra]


def main(args, extra) -> int:
    model = model_dir(args.model)
    fixtures = Path(args.fixtures).expanduser() if args.fixtures else DEFAULT_FIXTURES
    if not fixtures.is_dir():
        raise UsageError(f"fixture folder not found: {fixtures} (pass --fixtures DIR, a folder of np<N>_*.png images)")
    if args.pipeline is None:
        check_model(model)  # a factory may load a layout of its own
    else:
        extra = [f"--partattn-pipeline={args.pipeline}", *extra]
    from ..model.hub import is_repo_id

    given = args.model if args.model is not None and is_repo_id(args.model) else model  # the gate's commands show it
    pytest_args = (
        _plugin_args()
        + ["-W", REWRITE_WARNING_FILTER]
        + check_args(given, fixtures, steps=args.steps, num_tokens=args.num_tokens, device=args.device, extra=extra)
    )
    import pytest

    return int(pytest.main(pytest_args))
