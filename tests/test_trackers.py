"""The monitor on a dashboard: its figures at the cadence asked for, logged to wandb (offline) and
TensorBoard, and read back from the files each wrote."""

from __future__ import annotations

import io
import json
import random
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FIXTURE_IMAGES
from PIL import Image

from partattn_checks import EMBEDDED_MODEL
from partattn_checks.analysis.monitor import AttentionMonitor, MonitorError
from partattn_checks.analysis.trackers import TensorBoardLogger, TrackerError, WandbLogger
from partattn_checks.checks import REGISTRY, Thresholds
from partattn_checks.model.loading import load_checkpoint

IMAGE = FIXTURE_IMAGES / "np3_three_shapes.png"
STEPS = 3
PNG, GIF = b"\x89PNG\r\n\x1a\n", b"GIF8"


@pytest.fixture(scope="module")
def watched():
    """A monitor with figures every 2nd call, called once: ``(monitor, modules, values, pictures)``."""
    checkpoint = load_checkpoint(EMBEDDED_MODEL)
    monitor = AttentionMonitor.from_checkpoint(EMBEDDED_MODEL, [IMAGE], steps=STEPS, figures_every=2)
    modules = (checkpoint.transformer, checkpoint.image_encoder)
    values = monitor(*modules)
    return monitor, modules, values, monitor.figures()


def seed(value: int) -> None:
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value)


def frames(gif: bytes) -> int:
    return Image.open(io.BytesIO(gif)).n_frames


def test_figures_are_the_panel_each_timeline_and_an_animation(watched):
    monitor, _, _, pictures = watched
    by_name = {p.name: p for p in pictures}
    record = monitor.last["np3_three_shapes.png"].record
    drawn = [name for name, check in REGISTRY.items() if check.timeline(record, Thresholds()) is not None]
    assert len(drawn) >= 4  # uniformity, collapse, part separation, stability
    timelines = {f"partattn/timeline/{name}/np3_three_shapes" for name in drawn}
    assert set(by_name) == {"partattn/parts/np3_three_shapes", "partattn/steps/np3_three_shapes", *timelines}
    for picture in pictures:
        assert picture.data.startswith(GIF if picture.kind == "animation" else PNG), picture.name
        assert picture.caption
    steps = by_name["partattn/steps/np3_three_shapes"]
    assert steps.format == "gif" and frames(steps.data) == STEPS  # one frame per denoising step
    assert by_name["partattn/parts/np3_three_shapes"].image().size[0] >= 400  # readable, not a thumbnail


def test_figures_follow_the_cadence_and_drawing_changes_no_random_state(watched, monkeypatch):
    from partattn_checks.analysis import monitor_figures

    _, modules, _, _ = watched
    drawn = []

    def draw(outcomes, views, **kwargs):  # stands in for the drawing; it also draws random numbers
        torch.rand(3), random.random(), np.random.rand()
        drawn.append((list(outcomes), kwargs["animate"]))
        return [f"picture {len(drawn)}"]

    monkeypatch.setattr(monitor_figures, "draw", draw)
    monitor = AttentionMonitor.from_checkpoint(EMBEDDED_MODEL, [IMAGE], steps=1, figures_every=2)
    assert monitor.figures() == []  # before the first call
    got = []
    for call in range(1, 6):
        monitor(*modules)
        seed(5)
        got.append((call, monitor.figures(), monitor.figures()))  # drawn at most once per call
        after = (torch.rand(2), random.random(), np.random.rand())
        seed(5)
        assert torch.equal(after[0], torch.rand(2)) and after[1:] == (random.random(), np.random.rand()), call
    assert got == [
        (1, ["picture 1"], ["picture 1"]),
        (2, [], []),
        (3, ["picture 2"], ["picture 2"]),
        (4, [], []),
        (5, ["picture 3"], ["picture 3"]),
    ]
    assert monitor.draw_figures(animate=False) == ["picture 4"]  # on demand, whatever the cadence
    assert drawn[-1] == (["np3_three_shapes.png"], False)
    none = AttentionMonitor.from_checkpoint(EMBEDDED_MODEL, [IMAGE], steps=1)
    none(*modules)
    assert none.figures() == []  # no figures_every, no figures
    for bad in (0, -1, 1.5, True):
        with pytest.raises(MonitorError, match="figures_every"):
            AttentionMonitor.from_checkpoint(EMBEDDED_MODEL, [IMAGE], figures_every=bad)


# ------------------------------------------------------------------------------------------ wandb
def wandb_records(run_dir: Path) -> list:
    """The records of an offline run's ``run-*.wandb`` file: a LevelDB-style log (``:W&B`` header,
    32 KiB blocks of records, each with a 7-byte header: checksum, length, type) of ``Record`` protos."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # full, last
            records.append(pending + chunk)
            pending = b""
        elif kind in (2, 3):  # first, middle
            pending += chunk
    out = []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        out.append(record)
    return out


def test_wandb_offline_run_holds_the_values_figures_and_animation(watched, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="the wandb extra is not installed")
    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path),
        "WANDB_SILENT": "true",
        "WANDB_ERROR_REPORTING": "false",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "config"),
        "WANDB_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_DATA_DIR": str(tmp_path / "data"),
    }.items():
        monkeypatch.setenv(name, value)
    _, _, values, pictures = watched
    run = wandb.init(mode="offline", dir=tmp_path, project="partattn-test", settings=wandb.Settings(console="off"))
    try:
        WandbLogger(run).log(values, step=7, figures=pictures)
        run_dir = Path(run.dir).parent
    finally:
        run.finish()
    (history,) = [r.history for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "history"]
    logged = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in history.item}
    assert logged["_step"] == 7
    for name, value in values.items():
        assert logged[name] == pytest.approx(value, rel=1e-12), name
    files = run_dir / "files"
    for picture in pictures:
        kind = "video-file" if picture.kind == "animation" else "image-file"
        assert logged[f"{picture.name}/_type"] == kind, picture.name
        media = (files / logged[f"{picture.name}/path"]).read_bytes()
        assert media.startswith(GIF if picture.kind == "animation" else PNG)
        if picture.kind == "animation":
            assert media == picture.data  # the GIF itself, every frame
        else:
            assert Image.open(io.BytesIO(media)).size == picture.image().size


# ------------------------------------------------------------------------------------ tensorboard
def test_tensorboard_event_file_holds_the_values_figures_and_animation(watched, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    _, _, values, pictures = watched
    writer = SummaryWriter(log_dir=str(tmp_path))
    TensorBoardLogger(writer).log(values, step=7, figures=pictures)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert set(values) <= set(tags["scalars"])
    for name, value in values.items():
        (scalar,) = events.Scalars(name)
        assert scalar.step == 7 and scalar.value == pytest.approx(value, rel=1e-6), name  # float32 there
    assert {p.name for p in pictures} <= set(tags["images"])
    for picture in pictures:
        (image,) = events.Images(picture.name)
        assert image.step == 7
        if picture.kind == "animation":
            assert image.encoded_image_string == picture.data  # TensorBoard's image tab plays it
        else:
            stored = Image.open(io.BytesIO(image.encoded_image_string))
            assert image.encoded_image_string.startswith(PNG) and stored.size == picture.image().size
            assert np.array_equal(np.asarray(stored.convert("RGB")), np.asarray(picture.image()))


def test_tensorboard_logger_takes_a_folder(watched, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    logger = TensorBoardLogger(tmp_path / "runs")
    logger.log({"partattn/x": 0.5}, step=1)
    logger.writer.close()
    assert list((tmp_path / "runs").glob("events.out.tfevents.*"))


@pytest.mark.parametrize(
    ("package", "adapter", "extra"),
    [("wandb", WandbLogger, "wandb"), ("tensorboard", TensorBoardLogger, "tensorboard")],
)
def test_a_missing_package_names_the_extra_to_install(monkeypatch, package, adapter, extra, tmp_path):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if it were not installed
    with pytest.raises(TrackerError, match=rf"pip install 'partattn-checks\[{extra}\]'"):
        adapter(tmp_path)


def test_wandb_logger_without_a_run_says_so(monkeypatch):
    wandb = pytest.importorskip("wandb", reason="the wandb extra is not installed")
    monkeypatch.setattr(wandb, "run", None)
    with pytest.raises(TrackerError, match="wandb.init"):
        WandbLogger()
