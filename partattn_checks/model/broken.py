"""Broken variants of a checkpoint, each made by a weight edit aimed at one failure.

They prove that each check can fail and names the right cause (the model matrix, docs/model-matrix.md):

============  ===========================================================  =================
variant       edit                                                         check it targets
============  ===========================================================  =================
uniform       every cross-attention key-norm gain is zeroed: all keys, so   uniformity
              all logits, are 0 (zeroing ``to_k`` would not do: with the
              heads-first split half of the heads take keys from ``to_v``)
collapsed     cross-attention q/k RMSNorm gains x30: logits x900, one key   collapse
              per query wins
merged_parts  every row of the part embedding is set to their mean: the     part_separation
              parts can no longer be told apart
unstable      the timestep embedding is scrambled (its frequencies       stability
              reversed, the time token scaled x40) and block 0's
              self-attention broadcasts it to every token (key gains 0,
              output x50); cross-attention query gains x3. Queries then
              follow a pseudo-random function of the step
nonfinite     one cross-attention key weight of block 2 is set to NaN       nonfinite
============  ===========================================================  =================
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch

VARIANTS: dict[str, Callable[[dict[str, torch.Tensor]], None]] = {}


def variant(name: str):
    def register(edit):
        VARIANTS[name] = edit
        return edit

    return register


def _cross_attention(state, suffix):
    return [k for k in state if ".attn2." in k and k.endswith(suffix)]


@variant("uniform")
def _uniform(state):
    for key in _cross_attention(state, "norm_k.weight"):
        state[key].zero_()


@variant("collapsed")
def _collapsed(state):
    for key in _cross_attention(state, "norm_q.weight") + _cross_attention(state, "norm_k.weight"):
        state[key].mul_(30.0)


@variant("merged_parts")
def _merged_parts(state):
    weight = state["part_embedding.weight"]
    weight.copy_(weight.mean(dim=0, keepdim=True).expand_as(weight))


@variant("unstable")
def _unstable(state):
    freq = state["time_proj.linear_1.weight"]
    half = freq.shape[1] // 2
    freq[:, :half] = freq[:, :half].flip(1).clone()  # sin columns: slowest <-> fastest frequency
    freq[:, half:] = freq[:, half:].flip(1).clone()  # cos columns likewise
    state["time_proj.linear_2.weight"].mul_(40.0)
    state["time_proj.linear_2.bias"].mul_(40.0)
    state["blocks.0.attn1.norm_k.weight"].zero_()
    state["blocks.0.attn1.to_out.0.weight"].mul_(50.0)
    for key in _cross_attention(state, "norm_q.weight"):
        state[key].mul_(3.0)


@variant("nonfinite")
def _nonfinite(state):
    state["blocks.2.attn2.to_k.weight"][0, 0] = float("nan")


def make_variant(source: str | Path, out: str | Path, name: str) -> Path:
    """Copy the checkpoint folder ``source`` to ``out`` with the transformer weights edited as ``name``."""
    from safetensors.torch import load_file, save_file

    if name not in VARIANTS:
        raise ValueError(f"unknown broken variant '{name}' (known: {', '.join(VARIANTS)})")
    source, out = Path(source), Path(out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out)
    weights = out / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state = {k: v.float() for k, v in state.items()}
    VARIANTS[name](state)
    save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()}, str(weights))
    return out
