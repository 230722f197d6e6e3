"""The monitor on a dashboard: wandb and TensorBoard adapters with one call,
``log(values, step, figures)``.

>>> monitor = AttentionMonitor.from_checkpoint("base", "fixtures/images", figures_every=4)  # doctest: +SKIP
>>> tracker = WandbLogger(wandb.run)  # or TensorBoardLogger(SummaryWriter("runs/x"))  # doctest: +SKIP
>>> tracker.log(monitor(transformer, image_encoder), step=it, figures=monitor.figures())  # doctest: +SKIP

``values`` are the monitor's ``{name: float}``; ``figures`` its ``monitor_figures.Picture`` list
(``[]`` off the ``figures_every`` cadence): still figures become ``wandb.Image`` / a TensorBoard
image, animations ``wandb.Video`` (GIF) / a TensorBoard image summary holding the GIF (TensorBoard's
image tab plays it; it is what ``SummaryWriter.add_video`` writes, without moviepy).

Both packages are optional extras (``pip install "partattn-checks[wandb]"``, ``[tensorboard]``), imported
when an adapter is built: a missing one is a :class:`TrackerError` naming the extra.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import PartattnError
from .monitor_figures import Picture


class TrackerError(PartattnError, ImportError):
    """A tracker whose package is not installed (the message names the extra), or no run to log to."""


def require(module: str, extra: str, what: str):
    """``module`` imported, or a :class:`TrackerError` saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TrackerError(
            f"{what} needs the {extra} package, which is not installed: pip install 'partattn-checks[{extra}]'"
        ) from None


class WandbLogger:
    """Logs to a wandb run (``wandb.init(...)``'s, default the active ``wandb.run``; offline mode
    works the same): the values, the still figures as ``wandb.Image``, the animations as
    ``wandb.Video`` (GIF), in one ``run.log(..., step=step)``."""

    def __init__(self, run=None):
        self.wandb = require("wandb", "wandb", "WandbLogger")
        self.run = run if run is not None else self.wandb.run
        if self.run is None:
            raise TrackerError("WandbLogger: no wandb run; call wandb.init(...) first or pass the run")

    def log(self, values: Mapping[str, float], step: int | None = None, figures: Iterable[Picture] = ()) -> None:
        payload: dict[str, object] = {name: float(value) for name, value in values.items()}
        for picture in figures:
            if picture.kind == "animation":
                payload[picture.name] = self.wandb.Video(
                    io.BytesIO(picture.data), format=picture.format, caption=picture.caption
                )
            else:
                payload[picture.name] = self.wandb.Image(picture.image(), caption=picture.caption)
        if payload:
            self.run.log(payload, step=step)


class TensorBoardLogger:
    """Logs to a ``torch.utils.tensorboard.SummaryWriter`` (or makes one for a folder): each value
    with ``add_scalar``, the still figures with ``add_image``, the animations as GIF image summaries;
    flushed after each call."""

    def __init__(self, writer):
        require("tensorboard", "tensorboard", "TensorBoardLogger")
        if isinstance(writer, (str, Path)):
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(writer))
        self.writer = writer

    def log(self, values: Mapping[str, float], step: int | None = None, figures: Iterable[Picture] = ()) -> None:
        import numpy as np

        for name, value in values.items():
            self.writer.add_scalar(name, float(value), step)
        for picture in figures:
            if picture.kind == "animation":
                self.writer._get_file_writer().add_summary(gif_summary(picture), step)
            else:
                self.writer.add_image(picture.name, np.asarray(picture.image()), step, dataformats="HWC")
        self.writer.flush()


def gif_summary(picture: Picture):
    """A TensorBoard image summary whose encoded image is the GIF itself (as ``add_video`` writes)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    width, height = picture.image().size
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=picture.data)
    return Summary(value=[Summary.Value(tag=picture.name, image=image)])
