"""Attention health inside a training loop: the fixture images through the in-memory model every K
iterations, as a flat ``{name: float}`` any tracker's ``log(dict)`` accepts.

>>> monitor = AttentionMonitor.from_checkpoint("base-ckpt", "fixtures/images", steps=4)  # doctest: +SKIP
>>> for it in range(iterations):  # doctest: +SKIP
...     train_step()
...     if it % 500 == 0:
...         tracker.log(monitor(transformer, image_encoder), step=it)

A call runs under ``torch.no_grad()`` with the modules in eval mode and capture on, then puts back
every module's training flag and the random states (torch CPU and CUDA, Python ``random``, NumPy's
global state): the training run goes on exactly as without the monitor (tests/test_monitor.py
proves bit-identical weights). Names: ``<prefix>/<check>/<image stem>`` (the check's value),
``<prefix>/<check>/mean`` and ``<prefix>/<check>/fails`` (images failing it), and the headline
metrics ``<prefix>/<metric>`` (mean over images). Non-finite values are left out (trackers differ
on NaN); ``<prefix>/nonfinite/...`` says when there were any.

With ``baselines=`` (a folder the gate or ``partattn calibrate`` wrote for a reference checkpoint, at
the monitor's settings) each image is also judged against its baseline by the gate's own runner
(``baselines.runner``; paired with the baseline's seed, so the numbers are the change since the
reference, in units of its seed spread): ``<prefix>/baseline/<image stem>`` the item's worst distance
over its allowance (above 1: the gate would fail it), ``<prefix>/baseline/fails``,
``<prefix>/baseline/set`` (1 when the fixture-set item would fail) and ``<prefix>/baseline/shift/<metric>``
(the mean over images of each headline metric's distance, signed: e.g. separation falling).

With ``figures_every=N`` every N-th call (the first included) also has pictures for a dashboard:
:meth:`AttentionMonitor.figures` draws, per image, the part-attention panel, each check's timeline and
the part panel over the steps (a GIF) from that call's records (``monitor_figures``), which
``trackers.WandbLogger`` and ``trackers.TensorBoardLogger`` log beside the values.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..checks import CHECKS, Thresholds
from ..errors import PartattnError

if TYPE_CHECKING:
    from PIL import Image

    from ..runs.session import CaseOutcome


class MonitorError(PartattnError, ValueError):
    """A monitor that cannot run: no images, an image without a part count, a bad setting."""


@contextlib.contextmanager
def preserved_state(*modules) -> Iterator[None]:
    """Inside: ``modules`` in eval mode, no autograd. After (also on an error): each submodule's own
    training flag back, and the random states of torch (CPU, every CUDA device), ``random`` and NumPy."""
    import numpy as np
    import torch

    flags = [(m, m.training) for module in modules for m in module.modules()]
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    py = random.getstate()
    npy = np.random.get_state()
    try:
        for module in modules:
            module.eval()
        with torch.no_grad():
            yield
    finally:
        for m, flag in flags:
            m.training = flag
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        random.setstate(py)
        np.random.set_state(npy)


class AttentionMonitor:
    """Built once with the fixture images and the run settings; called with the model being trained.

    ``images``: a folder of ``np<N>_*.png`` images (or with sidecars) or a list of paths.
    ``feature_extractor``: the image processor the encoder is trained with; ``scheduler_config``
    (``num_train_timesteps``) and ``run_defaults`` (``num_tokens``, ``steps``, ``guidance_scale``)
    complete the settings; :meth:`from_checkpoint` reads all three from a checkpoint folder.
    ``main_process_only``: under distributed training, only the process of rank 0 runs the images
    (the others return ``{}`` at once), so a multi-GPU run pays for the monitor once.
    ``figures_every``: every N-th call (calls 0, N, 2N, ...) has figures (:meth:`figures`); None: none.
    """

    def __init__(
        self,
        images,
        *,
        feature_extractor,
        run_defaults: Mapping,
        scheduler_config: Mapping | None = None,
        steps: int | None = None,
        seed: int = 0,
        guidance_scale: float | None = None,
        num_tokens: int | None = None,
        thresholds: Thresholds | None = None,
        checks: Sequence[str] | None = None,
        prefix: str = "partattn",
        main_process_only: bool = False,
        baselines: str | Path | None = None,
        figures_every: int | None = None,
    ):
        if figures_every is not None and (
            isinstance(figures_every, bool) or not isinstance(figures_every, int) or figures_every < 1
        ):
            raise MonitorError(
                f"figures_every={figures_every!r}: give a whole number of calls, 1 or more (or None: no figures)"
            )
        self.figures_every = figures_every
        self.calls = 0  # calls made so far (the cadence of figures counts them)
        self._views: dict[str, Image.Image | None] = {}  # image name -> the encoder's view, for overlays
        self._pictures: dict[bool, list] = {}  # the latest call's pictures, drawn on demand (key: animate)
        self.images = _image_specs(images)
        self.main_process_only = main_process_only
        self.feature_extractor = feature_extractor
        self.run_defaults = dict(run_defaults)
        self.scheduler_config = dict(scheduler_config or {"num_train_timesteps": 1000})
        self.options = {"steps": steps, "seed": seed, "guidance_scale": guidance_scale}
        self.num_tokens = num_tokens
        self.thresholds = thresholds or Thresholds()
        self.checks = list(checks) if checks is not None else list(CHECKS)
        self.prefix = prefix
        self.baselines = Path(baselines).expanduser() if baselines is not None else None
        if self.baselines is not None and not self.baselines.is_dir():
            raise MonitorError(
                f"baselines={self.baselines}: no such folder (write it with the gate or partattn calibrate)"
            )
        self.last: dict[str, CaseOutcome] = {}  # image name -> outcome of the latest call

    @classmethod
    def from_checkpoint(cls, folder, images, **kwargs) -> AttentionMonitor:
        """Feature extractor, scheduler config and run defaults from checkpoint ``folder`` (no weights read)."""
        from ..model.files import read_json, read_run_defaults
        from ..model.loading import load_feature_extractor

        folder = Path(folder).expanduser()
        return cls(
            images,
            feature_extractor=load_feature_extractor(folder / "feature_extractor_dinov2"),
            scheduler_config=read_json(folder / "scheduler" / "scheduler_config.json"),
            run_defaults=read_run_defaults(folder),
            **kwargs,
        )

    def pipeline(self, transformer, image_encoder):
        """A pipeline around the in-memory modules, on their device and in their dtype."""
        from ..model.loading import Checkpoint
        from ..model.pipeline import PartCrafterPipeline

        param = next(transformer.parameters())
        checkpoint = Checkpoint(
            path=Path("<in-memory model>"),
            transformer=transformer,
            image_encoder=image_encoder,
            feature_extractor=self.feature_extractor,
            scheduler_config=self.scheduler_config,
            model_index={},
            run_defaults=self.run_defaults,
        )
        return PartCrafterPipeline(checkpoint, device=param.device, dtype=param.dtype)

    def __call__(self, transformer, image_encoder) -> dict[str, float]:
        """Run the images on ``transformer`` and ``image_encoder`` as they are now. Either may be
        wrapped for training (DDP, DataParallel, DeepSpeed, accelerate, ``torch.compile``): the
        module inside is used."""
        from ..runs.session import Session

        self.calls += 1
        self._pictures = {}
        if self.main_process_only and rank() != 0:
            self.last = {}
            return {}
        transformer, image_encoder = unwrapped(transformer), unwrapped(image_encoder)
        call = {"num_tokens": self.num_tokens}  # the monitor's token count wins over a sidecar's
        with preserved_state(transformer, image_encoder):
            session = Session.around(
                self.pipeline(transformer, image_encoder),
                options=self.options,
                thresholds=self.thresholds,
                checks=self.checks,
            )
            session.cache_size = 2  # the baseline runner judges the run just made, not a second one
            out, outcomes = {}, {}
            for spec in self.images:
                outcomes[spec.path.name] = session.image_outcome(spec, call=call)
                if spec.path.name not in self._views:  # for the figures' overlays (cheap, kept)
                    self._views[spec.path.name] = session.image_view(spec)
                if self.baselines is not None:
                    runs = session.image_runs(spec, call)
                    out[spec.path.name] = self.runner().evaluate(runs, session.thresholds_for(spec))
        self.last = outcomes
        return {**self.flatten(outcomes), **self.flatten_baselines(out)}

    @property
    def figures_due(self) -> bool:
        """The latest call (or the one being made) is on the ``figures_every`` cadence."""
        return self.figures_every is not None and (self.calls - 1) % self.figures_every == 0

    def figures(self, *, animate: bool = True) -> list:
        """The pictures of the latest call when it is on the ``figures_every`` cadence, else ``[]``
        (also before the first call and on a rank that skipped it): see :meth:`draw_figures`."""
        return self.draw_figures(animate=animate) if self.figures_due else []

    def draw_figures(self, *, animate: bool = True) -> list:
        """``monitor_figures.Picture`` of the latest call, whatever the cadence: per image its part
        panel, each check's timeline and (``animate``) its part panel over the steps. Drawn once per
        call and kept; the random states are put back, so drawing cannot change a training run."""
        from .monitor_figures import draw

        if animate not in self._pictures:
            with preserved_state():
                self._pictures[animate] = draw(
                    self.last, self._views, prefix=self.prefix, checks=self.checks, animate=animate
                )
        return self._pictures[animate]

    def runner(self):
        """The gate's baseline runner over ``baselines`` (compare only; nothing is written)."""
        from ..baselines.policy import BaselinePolicy
        from ..baselines.runner import BaselineRunner
        from ..baselines.store import BaselineStore

        assert self.baselines is not None
        return BaselineRunner(BaselineStore(self.baselines), None, BaselinePolicy())

    def flatten_baselines(self, outcomes) -> dict[str, float]:
        """``{name: float}`` of the images' baseline outcomes (see the module docstring)."""
        from ..baselines.fixture_set import set_verdict

        if not outcomes:
            return {}
        p = f"{self.prefix}/baseline"
        out: dict[str, float] = {f"{p}/fails": float(sum(o.result.verdict == "fail" for o in outcomes.values()))}
        shifts: dict[str, list[float]] = {}
        for image, o in outcomes.items():
            devs = o.details.deviations or []
            ratios = [(abs(d.z) if d.two_sided else d.z) / d.allowance for d in devs if math.isfinite(d.z)]
            if ratios:
                out[f"{p}/{Path(image).stem}"] = max(ratios)
            for d in devs:
                if d.kind == "metric" and math.isfinite(d.z):
                    shifts.setdefault(d.name, []).append(d.z)
        out.update({f"{p}/shift/{name}": sum(v) / len(v) for name, v in shifts.items()})
        verdict = set_verdict(
            {image: o.details for image, o in outcomes.items()}, self.runner().policy.false_alarm_rate
        )
        out[f"{p}/set"] = float(verdict.verdict == "fail")
        return out

    def flatten(self, outcomes) -> dict[str, float]:
        """``{name: float}`` of judged outcomes (see the module docstring for the names)."""
        from .trend import headline_means

        p = self.prefix
        out: dict[str, float] = {}
        for name in self.checks:
            values, fails = [], 0
            for image, outcome in outcomes.items():
                result = outcome.results[name]
                fails += result.verdict == "fail"
                if result.value is not None and math.isfinite(result.value):
                    out[f"{p}/{name}/{Path(image).stem}"] = float(result.value)
                    values.append(float(result.value))
            if values:
                out[f"{p}/{name}/mean"] = sum(values) / len(values)
            out[f"{p}/{name}/fails"] = float(fails)
        for key, value in headline_means([o.summary for o in outcomes.values()]).items():
            out[f"{p}/{key}"] = value
        return out


#: Wrappers that keep the trained module in ``.module`` (accelerate's ``unwrap_model`` undoes the same).
WRAPPERS = ("DistributedDataParallel", "DataParallel", "DeepSpeedEngine", "FullyShardedDataParallel")


def unwrapped(module):
    """The module a training wrapper holds (DDP, DataParallel, DeepSpeed, FSDP: ``.module``;
    ``torch.compile``: ``._orig_mod``), however deeply nested; the module itself otherwise."""
    while True:
        name = type(module).__name__
        if name in WRAPPERS and hasattr(module, "module"):
            module = module.module
        elif name == "OptimizedModule" and hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


def rank() -> int:
    """This process's rank under distributed training (0 when not distributed)."""
    import os

    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


class JsonlLog:
    """A minimal tracker: ``log(metrics, step=...)`` appends one JSON line ``{"iteration": step, ...}``."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        row = {"iteration": step, **{k: float(v) for k, v in metrics.items()}}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def read(self) -> list[dict]:
        """Every line logged so far."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _image_specs(images):
    from ..runs.sidecar import ImageSpec, read_spec
    from .trend import TrendError, fixture_images

    if isinstance(images, (str, Path)):
        try:
            return fixture_images(images)
        except TrendError as err:
            raise MonitorError(str(err)) from None
    specs = []
    for image in images:
        if isinstance(image, ImageSpec):
            specs.append(image)
            continue
        path = Path(image).expanduser().resolve()
        if not path.is_file():
            raise MonitorError(f"monitor image not found: {path}")
        spec = read_spec(path, path.parent, Path.cwd())
        if spec.error:
            raise MonitorError(spec.error)
        specs.append(spec)
    if not specs:
        raise MonitorError("the monitor needs at least one image")
    return specs
