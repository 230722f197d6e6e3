"""The plugin's options, declared once: the fields of :class:`Settings`, each made with ``option(...)``.

Every option ``--partattn-<x>`` has the ini twin ``partattn_<x>`` (``[tool.pytest.ini_options]``,
``pytest.ini`` ...); ``OPTIONS`` is the table the ``Settings`` fields declare (as ``param()`` declares a
thresholds table). Precedence: command line > ini > default. Relative paths from the command line are
taken relative to the directory pytest was started in; relative paths from the ini file and the
defaults are relative to the rootdir.

Run settings (steps, num_tokens, seed, guidance, device, dtype) are validated by :mod:`partattn_checks.capture.runspec`,
the same rules the sidecar and the ``partattn`` command use; :meth:`Settings.run_options` is the
options layer of every run spec. The baseline settings are validated by
:class:`~partattn_checks.baselines.policy.BaselinePolicy`; the thresholds are resolved by
:meth:`~partattn_checks.checks.Thresholds.resolve` (:func:`session_thresholds`).

This module imports nothing heavy: it runs on every pytest start-up. Only
:func:`device_for` imports torch (not for ``--partattn-device=cpu``), and the plugin calls it only
when ``--partattn`` is on.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .. import EMBEDDED_MODEL
from ..base.seeds import DEFAULT_BASELINE_SEEDS, DEFAULT_GATE_SEEDS, DEFAULT_SEED
from ..baselines.policy import (
    DEFAULT_FALSE_ALARM_RATE,
    FLOOR_DTYPES,
    UPDATE_MODES,
    VERDICT_MODES,
    BaselinePolicy,
    PolicyError,
)
from ..capture import runspec
from ..capture.runspec import DTYPES, DeviceChoice
from ..model.files import RUN_DEFAULTS
from .option_table import Option as Option  # the table's names stay importable from here
from .option_table import OptionError as OptionError
from .option_table import OptionValue as OptionValue
from .option_table import _convert, _usage
from .option_table import option as option

if TYPE_CHECKING:
    from ..checks import Thresholds


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Resolved option values (paths absolute): one field per option, declared with ``option(...)``.
    ``sources[name]`` is "cli", "ini" or "default"."""

    enabled: bool = option(
        "run the attention checks on the fixture images (without it they are collected and skipped)",
        kind="flag",
        default=False,
        default_text="off",
    )
    model: Path = option(
        "PartCrafter checkpoint folder (hub layout) or Hugging Face repo id (owner/name[@revision], hub cache)",
        kind="path",
        default=EMBEDDED_MODEL,
        metavar="DIR|REPO",
        default_text="the embedded tiny checkpoint (partattn_checks/data/partcrafter-tiny)",
    )
    pipeline: str | None = option(
        "module:factory of your own pipeline (an upstream-style PartCrafter pipeline, a fork's), imported from the "
        "rootdir and called as factory(model, device, dtype) with --partattn-model (or None)",
        metavar="MODULE:FACTORY",
        default_text="none: the built-in PartCrafter pipeline",
    )
    device: str = option(
        "auto | cpu | cuda | cuda:N (auto picks CUDA when present)",
        default="auto",
        metavar="DEVICE",
        default_text="auto",
    )
    dtype: str = option("model dtype", kind="choice", default="float32", choices=DTYPES, default_text="float32")
    steps: int | None = option(
        "denoising steps per image",
        kind="int",
        metavar="N",
        default_text=f"the checkpoint's default (its partattn.json, else {RUN_DEFAULTS['steps']})",
    )
    num_tokens: int | None = option(
        "latent tokens per part (upstream PartCrafter uses 1024)",
        kind="int",
        metavar="T",
        default_text=f"the checkpoint's default (its partattn.json, else {RUN_DEFAULTS['num_tokens']})",
    )
    seed: int = option(
        "seed of the initial latents", kind="int", default=DEFAULT_SEED, metavar="N", default_text=str(DEFAULT_SEED)
    )
    guidance: float | None = option(
        "classifier-free guidance scale",
        kind="float",
        metavar="SCALE",
        default_text=f"the checkpoint's default (else {RUN_DEFAULTS['guidance_scale']})",
    )
    fixtures: Path = option(
        "folder of fixture images (only images under it are collected)",
        kind="path",
        default="fixtures/images",
        metavar="DIR",
        default_text="fixtures/images",
    )
    results: Path = option(
        "folder for heatmaps, candidate baselines and index.html",
        kind="path",
        default=".partattn-results",
        metavar="DIR",
        default_text=".partattn-results",
    )
    baselines: Path = option(
        "folder of stored baselines (one sub-folder per image)",
        kind="path",
        default="fixtures/baselines",
        metavar="DIR",
        default_text="fixtures/baselines",
    )
    update: str | None = option(
        "write baselines: missing | failed | all (refused when CI is set, unless forced)",
        kind="choice",
        choices=UPDATE_MODES,
        metavar="MODE",
        default_text="no update",
    )
    force_update: bool = option(
        "allow --partattn-update when the CI environment variable is set; with "
        "update=all, also replace baseline files that cannot be read",
        kind="flag",
        default=False,
        default_text="off",
    )
    strict_env: bool = option(
        "a baseline recorded in a different environment (fingerprint mismatch) fails instead of warning",
        kind="flag",
        default=False,
        default_text="off",
    )
    thresholds: Path | None = option(
        "TOML file of thresholds ([uniformity], [collapse], ...)",
        kind="path",
        metavar="FILE",
        default_text="[tool.partattn.thresholds] of the rootdir's pyproject.toml, else built-in defaults",
    )
    baseline_seeds: int = option(
        "noise seeds each baseline is written with (its spread is what drift is judged against)",
        kind="int",
        default=DEFAULT_BASELINE_SEEDS,
        metavar="K",
        default_text=str(DEFAULT_BASELINE_SEEDS),
    )
    seeds: int = option(
        "runs each image's baseline item judges: the first R of its baseline's seeds (the mean of R runs; "
        "more power, R times the cost)",
        kind="int",
        default=DEFAULT_GATE_SEEDS,
        metavar="R",
        default_text=str(DEFAULT_GATE_SEEDS),
    )
    verdict: str = option(
        "auto: pair the run with the baseline's own seeds when the baseline holds them (judged against the "
        "numeric floor), else judge by the seed spread; paired: fail an item that cannot be paired; "
        "seed-spread: never pair",
        kind="choice",
        default="auto",
        choices=VERDICT_MODES,
        metavar="KIND",
        default_text="auto",
    )
    floor_dtypes: tuple[str, ...] = option(
        "model dtypes, besides the baseline's own, whose runs the numeric floor of a written baseline covers "
        "(comma-separated, e.g. float16,bfloat16): a gate in one of them stays paired",
        kind="choices",
        default="",
        choices=FLOOR_DTYPES,
        metavar="DTYPES",
        default_text="none",
    )
    false_alarm_rate: float = option(
        "chance that a healthy image's baseline item (or the fixture-set item) fails under the seed-spread verdict",
        kind="float",
        default=DEFAULT_FALSE_ALARM_RATE,
        metavar="P",
        default_text=str(DEFAULT_FALSE_ALARM_RATE),
    )
    drift_scale: float | None = option(
        "± range of the drift figure's now − baseline colours (attention × Nk): auto (each figure its own "
        "largest |Δ|) or a number, e.g. 4, the same for every image so that their figures compare",
        kind="scale",
        default="auto",
        metavar="auto|X",
        default_text="auto",
    )
    save_all_figures: bool = option(
        "also write figures of passing checks (failing ones always get them)",
        kind="flag",
        default=False,
        default_text="off",
    )
    rootdir: Path
    sources: dict[str, str] = field(default_factory=dict)
    raw: dict[str, object] = field(default_factory=dict)  # what the user wrote, per option

    @classmethod
    def of(cls, **values: Any) -> Settings:
        """Settings without pytest (benchmarks, library use): every option at its default, paths
        relative to the current folder, then ``values`` (``baselines=...``, ``seeds=4``, ...)."""
        rootdir = Path.cwd()
        defaults: dict[str, Any] = {}  # keyword arguments of the Settings fields, each of its own type
        for opt in OPTIONS:
            value = _convert(opt, opt.default, "default", rootdir)
            defaults[opt.name] = value
        defaults.update(values)
        for name in (opt.name for opt in OPTIONS if opt.kind == "path"):
            if defaults.get(name) is not None:
                defaults[name] = Path(defaults[name]).expanduser().resolve()
        defaults["enabled"] = True
        settings = cls(rootdir=rootdir, **defaults)
        _validate(settings)
        return settings

    def where(self, name: str) -> str:
        """How the user set an option, for error messages: ``--partattn-device cuda`` or the ini key."""
        opt = BY_NAME[name]
        src, raw = self.sources.get(name), self.raw.get(name)
        if src == "ini":
            return f"ini option {opt.ini} = {raw}"
        if src == "cli":
            return opt.flag if opt.kind == "flag" else f"{opt.flag} {raw}"
        return f"{opt.flag} (default {opt.default_text})"

    def shown(self, path: Path) -> str:
        """``path`` relative to the rootdir when inside it (as in node ids), else absolute."""
        try:
            return Path(path).relative_to(self.rootdir).as_posix()
        except ValueError:
            return str(path)

    def run_options(self) -> dict[str, int | float | None]:
        """The options layer of a run spec (``None``: unset, the checkpoint's default applies)."""
        return {"steps": self.steps, "seed": self.seed, "guidance_scale": self.guidance, "num_tokens": self.num_tokens}

    def policy(self) -> BaselinePolicy:
        """How the gate judges and writes baselines (validated with the options)."""
        return BaselinePolicy(
            update=self.update,
            force=self.force_update,
            strict_env=self.strict_env,
            false_alarm_rate=self.false_alarm_rate,
            baseline_seeds=self.baseline_seeds,
            seeds=self.seeds,
            verdict=self.verdict,
            floor_dtypes=self.floor_dtypes,
        )

    @property
    def model_is_embedded(self) -> bool:
        return self.model == EMBEDDED_MODEL.resolve()

    def cli_args(self, skip: tuple[str, ...] = ("enabled", "update", "force_update", "save_all_figures")) -> list[str]:
        """The command-line options the user gave (to rebuild an exact command), except ``skip``."""
        out = []
        for opt in OPTIONS:
            if opt.name in skip or self.sources.get(opt.name) != "cli":
                continue
            out.append(opt.flag if opt.kind == "flag" else f"{opt.flag}={self.raw[opt.name]}")
        return out


#: The option table, in the order of the :class:`Settings` fields that declare it.
OPTIONS: tuple[Option, ...] = tuple(
    dataclasses.replace(f.metadata["option"], name=f.name)
    for f in dataclasses.fields(Settings)
    if "option" in f.metadata
)
BY_NAME = {o.name: o for o in OPTIONS}


def add_options(parser: pytest.Parser) -> None:
    """Register every option on the command line (group "partattn") and as an ini key."""
    group = parser.getgroup("partattn", "attention health checks of PartCrafter (partattn-checks)")
    for opt in OPTIONS:
        text = f"{opt.help} [ini: {opt.ini}; default: {opt.default_text}]"
        if opt.kind == "flag":
            group.addoption(opt.flag, action="store_true", default=None, dest=opt.dest, help=text)
            parser.addini(opt.ini, text, type="bool", default=None)
        else:
            kwargs = {"choices": opt.choices} if opt.kind == "choice" else {}
            group.addoption(
                opt.flag,
                action="store",
                default=None,
                dest=opt.dest,
                metavar=opt.metavar or opt.name.upper(),
                help=text,
                **kwargs,
            )
            parser.addini(opt.ini, text, type="string", default=None)


def resolve(config: pytest.Config) -> Settings:
    """CLI > ini > default for every option, validated; invalid values raise :class:`OptionError` (a
    ``pytest.UsageError``)."""
    rootdir = Path(config.rootpath)
    invocation = Path(config.invocation_params.dir)
    values: dict[str, Any] = {}  # keyword arguments of the Settings fields, each of its own type
    sources: dict[str, str] = {}
    raw: dict[str, object] = {}
    for opt in OPTIONS:
        cli = config.getoption(opt.dest, default=None)
        if cli is not None:
            value, src, base = cli, "cli", invocation
        else:
            try:
                ini = config.getini(opt.ini)
            except (TypeError, ValueError, pytest.UsageError) as exc:  # pytest wraps a bad bool in a UsageError
                fix = "; use true or false (also 1/0, yes/no, on/off)" if opt.kind == "flag" else ""
                raise _usage(f"ini option {opt.ini} (ini file or -o {opt.ini}=...): {exc}{fix}") from None
            if ini is not None and ini != "":
                value, src, base = ini, "ini", rootdir
            else:
                value, src, base = opt.default, "default", rootdir
        sources[opt.name], raw[opt.name] = src, value
        values[opt.name] = _convert(opt, value, src, base)
    settings = Settings(rootdir=rootdir, sources=sources, raw=raw, **values)
    _validate(settings)
    return settings


def _validate(settings: Settings) -> None:
    """The run settings, by the rules of :mod:`~partattn_checks.capture.runspec` (shared with sidecars, the command)."""
    wrong = runspec.device_problem(settings.device)
    if wrong:
        raise _usage(f"{settings.where('device')}: {wrong}")
    for name, key in (
        ("steps", "steps"),
        ("num_tokens", "num_tokens"),
        ("seed", "seed"),
        ("guidance", "guidance_scale"),
    ):
        value = getattr(settings, name)
        wrong = runspec.problem(key, value) if value is not None else None
        if wrong:
            raise _usage(f"{settings.where(name)}: {key} {wrong}")
    try:
        settings.policy()
    except PolicyError as err:
        raise _usage(f"{settings.where(err.setting)}: {err.what}") from None
    if settings.drift_scale is not None and not (
        isinstance(settings.drift_scale, (int, float))
        and math.isfinite(settings.drift_scale)
        and settings.drift_scale > 0
    ):
        raise _usage(f"{settings.where('drift_scale')}: expected auto or a positive number (the ± range, e.g. 4)")


def ci_is_set(environ: Mapping[str, str] | None = None) -> bool:
    """True when the ``CI`` environment variable is set to anything but empty/0/false/no."""
    value = (environ if environ is not None else os.environ).get("CI", "")
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def device_for(settings: Settings, worker_id: str | None = None, spread: bool = False) -> DeviceChoice:
    """:func:`partattn_checks.capture.runspec.resolve_device` for ``--partattn-device`` (imports torch, but
    not for ``cpu``): a device that is not there is a ``UsageError`` naming the option; so is a
    ``--partattn-num-tokens`` whose runs clearly cannot fit in that device's memory, and a
    ``--partattn-steps`` whose record cannot (once, before any item runs)."""
    try:
        choice = runspec.resolve_device(settings.device, worker_id, spread=spread)
    except runspec.RunSpecError as err:
        raise _usage(f"{settings.where('device')}: {err}") from None
    wrong = (
        runspec.tokens_problem(settings.num_tokens, settings.model, choice.device, dtype=settings.dtype)
        if settings.num_tokens
        else None
    )
    if wrong:
        raise _usage(f"{settings.where('num_tokens')}: {wrong}")
    wrong = runspec.steps_problem(settings.steps, settings.model, choice.device) if settings.steps else None
    if wrong:
        raise _usage(f"{settings.where('steps')}: {wrong}")
    return choice


def session_thresholds(settings: Settings) -> tuple[Thresholds, str]:
    """(Thresholds, where they came from): the file layer of :meth:`Thresholds.resolve`, which is
    ``--partattn-thresholds`` FILE, else the rootdir pyproject's ``[tool.partattn.thresholds]``, else
    none (the built-in defaults)."""
    from ..checks import Thresholds, ThresholdsLayer

    pyproject = settings.rootdir / "pyproject.toml"
    layer: ThresholdsLayer | None = None
    try:
        if settings.thresholds is not None:
            layer = ThresholdsLayer.from_file(settings.thresholds)
        elif pyproject.is_file():
            layer = ThresholdsLayer.from_pyproject(pyproject)
        thresholds = Thresholds.resolve(file=layer)
    except ValueError as exc:
        raise _usage(
            f"{settings.where('thresholds')}: {exc}" if settings.thresholds is not None else str(exc)
        ) from None
    return thresholds, layer.where if layer is not None else "built-in defaults"
