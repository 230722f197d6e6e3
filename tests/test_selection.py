"""``Selection``: which layers, steps and full maps a recorder keeps; what it cannot record is an error
that names it (a full map at a step or layer that is never recorded, a layer index out of range), and
iterables are read once (a generator of steps serves every step)."""

from __future__ import annotations

import pytest
import torch

from partattn_checks.capture.recorder import AttentionRecorder, cross_attention_modules
from partattn_checks.capture.selection import Selection
from partattn_checks.model.tiny import TINY_TRANSFORMER, build_transformer

LAYERS = [f"blocks.{i}.attn2" for i in range(TINY_TRANSFORMER["num_layers"])]
KNOWN = f"known: {', '.join(LAYERS)}"


@pytest.fixture(scope="module")
def model():
    return build_transformer(TINY_TRANSFORMER, seed=1)


def run_steps(model, steps: int, num_parts: int = 2) -> None:
    """One transformer call per step (a step each for a recorder used alone), without guidance."""
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(num_parts, 8, model.config.in_channels, generator=gen)
    image = torch.randn(1, 65, model.config.cross_attention_dim, generator=gen).expand(num_parts, -1, -1)
    with torch.no_grad():
        for step in range(steps):
            t = torch.full((num_parts,), 1000.0 * (1 - step / steps))
            model(latents, t, image, attention_kwargs={"num_parts": num_parts})


def test_steps_from_a_generator_are_read_once_and_serve_every_step(model):
    selection = Selection(steps=(s for s in (0, 2)))
    assert [selection.wants_step(s) for s in (0, 1, 2, 0, 2)] == [True, False, True, True, True]
    with AttentionRecorder(model, num_parts=2, cfg=False, selection=Selection(steps=iter([0, 2]))) as rec:
        run_steps(model, 3)
    assert rec.record().steps == [0, 2]


def test_a_full_map_layer_out_of_range_names_the_known_layers(model):
    before = {name: module.processor for name, module in cross_attention_modules(model)}
    with pytest.raises(ValueError, match=r"full_maps: \(7, 9\): layer index 7 out of range") as err:
        AttentionRecorder(model, num_parts=2, selection=Selection(full_maps=[(7, 9)])).__enter__()
    assert KNOWN in str(err.value)
    assert all(module.processor is before[name] for name, module in cross_attention_modules(model))  # no tap left
    with pytest.raises(ValueError, match=r"'blocks\.9\.attn2' is not a cross-attention module") as err:
        Selection(full_maps=[("blocks.9.attn2", 0)]).full_map_test(LAYERS)
    assert KNOWN in str(err.value)
    with pytest.raises(ValueError, match="layer index -6 out of range") as err:
        Selection(layers=[-6]).pick_layers(LAYERS)
    assert KNOWN in str(err.value)


@pytest.mark.parametrize(
    "selection, message",
    [
        (dict(full_maps=[(-1, -3)]), r"full_maps: \(-1, -3\): the step must be a step index"),
        (dict(steps=[0, 2], full_maps=[(0, 1)]), r"full_maps: \(0, 1\): step 1 is not recorded \(steps=\[0, 2\]\)"),
        (dict(every=5, full_maps=[(0, 7)]), r"full_maps: \(0, 7\): step 7 is not recorded \(every=5\)"),
        (dict(full_maps=[(0, 1, 2)]), r"full_maps: \(0, 1, 2\) is not a \(layer, step\) pair"),
        (dict(steps=[0, -1]), r"steps: -1 is not a step index"),
        (dict(every=0), r"every=0: must be a whole number of steps, 1 or more"),
    ],
    ids=["negative-step", "unselected-step", "off-every", "not-a-pair", "negative-steps", "every-0"],
)
def test_what_can_never_be_recorded_is_refused_when_selected(selection, message):
    with pytest.raises(ValueError, match=message):
        Selection(**selection)


def test_a_full_map_of_a_layer_left_out_is_refused():
    with pytest.raises(ValueError, match=r"full_maps: \(1, 0\): layer blocks\.1\.attn2 is not recorded") as err:
        Selection(layers=[0, "blocks.4.attn2"], full_maps=[(1, 0)]).full_map_test(LAYERS)
    assert "layers= selects blocks.0.attn2, blocks.4.attn2" in str(err.value)


def test_full_maps_at_steps_that_never_ran_are_listed():
    selection = Selection(full_maps=[(-1, 99), (0, 3), ("blocks.2.attn2", 12)])
    assert selection.missing_full_maps(LAYERS, range(10)) == [("blocks.2.attn2", 12), ("blocks.4.attn2", 99)]
    assert selection.missing_full_maps(LAYERS, range(100)) == []
    assert Selection(full_maps=lambda name, step: True).missing_full_maps(LAYERS, range(3)) == []
