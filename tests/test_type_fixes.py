"""Behaviour the type checker (mypy, CI) found wrong: each was a crash or a refusal the types ruled out."""

from __future__ import annotations

from types import MappingProxyType

import pytest
from test_checks import make_record

from partattn_checks.analysis.trend import TrendCheckpoint, TrendError, assembled
from partattn_checks.checks import Offender, Thresholds
from partattn_checks.checks.common import heads_and_overlay
from partattn_checks.checks.thresholds import ThresholdsError


def test_thresholds_merge_any_mapping():
    """``merged`` takes a Mapping (as ``Session.thresholds_for`` passes one), not only a dict."""
    merged = Thresholds().merged(MappingProxyType({"collapse": MappingProxyType({"peak_max": 0.5})}))
    assert merged.collapse.peak_max == 0.5
    with pytest.raises(ThresholdsError, match="table of tables"):
        Thresholds().merged([("collapse", {"peak_max": 0.5})])


def test_heads_and_overlay_draw_nothing_without_one_map():
    """A result whose offender names no single map (none, or a whole layer) draws no heads figure."""
    record = make_record()
    assert heads_and_overlay(record, None, None, "collapse") == []
    assert heads_and_overlay(record, Offender(step=record.steps[0], layer=record.layers[0]), None, "collapse") == []
    one_map = Offender(step=record.steps[0], layer=record.layers[0], part=0, head=0)
    assert "heads" in [what for what, _ in heads_and_overlay(record, one_map, None, "collapse")]


def test_assembled_refuses_a_transformer_only_checkpoint_without_base(tmp_path):
    """Was ``TypeError`` from ``Path(None)``; now the error says to pass --base."""
    (tmp_path / "000500" / "transformer").mkdir(parents=True)
    checkpoint = TrendCheckpoint(tmp_path / "000500", 500, transformer_only=True)
    with pytest.raises(TrendError, match="--base"):
        with assembled(checkpoint, None):
            pass
