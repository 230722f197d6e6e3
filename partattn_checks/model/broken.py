"""Broken variants of a loaded PartCrafter transformer, each a weight edit aimed at one failure.

``with broken(transformer, "uniform"): ...`` edits the model's own parameters in place and, on
leaving the block (also on an error), copies the saved originals back: the same ``Parameter``
objects, bit-identical values. Only the edited tensors are saved (at the release config about
0.15 GB in float32: the timestep MLP and one block's output projection), so a 1.4 B-parameter model
is never copied, in memory or on disk. The edits find their tensors by name
patterns, so they apply to any depth and width (the tiny model, the release config):

============  ===========================================================  =================
variant       edit                                                         check (broken_by)
============  ===========================================================  =================
uniform       every cross-attention key-norm gain (``blocks.N.attn2.       uniformity
              norm_k.weight``) is zeroed: all keys, so all logits, are 0
              (zeroing ``to_k`` would not do: with the heads-first split
              half of the heads take keys from ``to_v``)
collapsed     cross-attention q/k RMSNorm gains x30: logits x900, one key   collapse
              per query wins
merged_parts  every row of the part embedding is set to their mean: the     part_separation
              parts can no longer be told apart
unstable      the timestep embedding is scrambled (``time_proj.linear_1``   stability
              columns reversed within the sin and the cos half: slowest
              <-> fastest frequency; ``time_proj.linear_2`` x40) and block
              0's self-attention broadcasts it to every token (key gains
              0, output x50); cross-attention query gains x3. Queries then
              follow a pseudo-random function of the step
nonfinite     one cross-attention key weight (``blocks.K.attn2.to_k``,      nonfinite
              K = 2, or the last block of a shallower model) is NaN
============  ===========================================================  =================

Whether an edit really breaks a given model is measured, not assumed: ``partattn calibrate``
runs each variant and refuses a check whose variant does not separate from the healthy model.

Graded degradations (:data:`GRADES`, ``graded(name, level)``) make the same kind of edit by
degrees, to measure how small a regression the gate can see (``benchmarks/diagnostic_power.py``,
``partattn calibrate``): ``merge_parts`` moves every part-embedding row the fraction ``level`` of
the way to their mean (1 is ``merged_parts``); ``xattn_gain`` multiplies every cross-attention
key-norm gain by ``level`` (the attention logits scale with it: 0 is ``uniform``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..errors import PartattnError

#: An edit of one tensor, in place.
Edit = tuple[str, Callable[[torch.Tensor], None]]


class VariantError(PartattnError, ValueError):
    """A broken variant that cannot be made of this model (an unknown name, a missing tensor)."""


@dataclass(frozen=True)
class Variant:
    """A named weight edit: ``plan(names)`` lists ``(parameter name, in-place edit)`` pairs
    for a model whose parameter names are ``names``."""

    name: str
    summary: str
    plan: Callable[[list[str]], list[Edit]]


VARIANTS: dict[str, Variant] = {}


def variant(name: str, summary: str):
    """Register a variant; the check it is built to fail says so itself (``Check.broken_by``)."""

    def register(plan):
        VARIANTS[name] = Variant(name, summary, plan)
        return plan

    return register


def matching(names: list[str], pattern: str, what: str) -> list[str]:
    """The names matching ``pattern`` (a regular expression over the whole name); none is an error."""
    found = [n for n in names if re.fullmatch(pattern, n)]
    if not found:
        raise VariantError(f"this model has no {what} (no parameter named like {pattern!r})")
    return found


def _cross(names, which: str) -> list[str]:
    return matching(names, rf"blocks\.\d+\.attn2\.{which}\.weight", f"cross-attention {which} gains")


def _zero(t):
    t.zero_()


def _scale(factor: float):
    def edit(t):
        t.mul_(factor)

    return edit


@variant("uniform", "cross-attention key-norm gains set to 0: every logit is 0")
def _uniform(names):
    return [(n, _zero) for n in _cross(names, "norm_k")]


@variant("collapsed", "cross-attention q/k norm gains x30: logits x900, one key per query wins")
def _collapsed(names):
    return [(n, _scale(30.0)) for n in _cross(names, "norm_q") + _cross(names, "norm_k")]


def _row_mean(t):
    t.copy_(t.mean(dim=0, keepdim=True).expand_as(t))


@variant("merged_parts", "every part-embedding row set to their mean: parts cannot be told apart")
def _merged_parts(names):
    return [(n, _row_mean) for n in matching(names, r"part_embedding\.weight", "part embedding")]


def _flip_halves(t):
    half = t.shape[1] // 2  # the sinusoidal embedding is [sin | cos]: reverse each half's frequencies
    t[:, :half] = t[:, :half].flip(1).clone()
    t[:, half:] = t[:, half:].flip(1).clone()


@variant(
    "unstable",
    "timestep embedding scrambled (frequencies reversed, time token x40), broadcast into every token by block 0's "
    "self-attention (key gains 0, output x50), cross-attention query gains x3",
)
def _unstable(names):
    one = {
        "time_proj.linear_1.weight": _flip_halves,
        "time_proj.linear_2.weight": _scale(40.0),
        "time_proj.linear_2.bias": _scale(40.0),
        "blocks.0.attn1.norm_k.weight": _zero,
        "blocks.0.attn1.to_out.0.weight": _scale(50.0),
    }
    edits = [(matching(names, re.escape(n), n)[0], edit) for n, edit in one.items()]
    return edits + [(n, _scale(3.0)) for n in _cross(names, "norm_q")]


def _first_nan(t):
    t.view(-1)[0] = float("nan")


@variant("nonfinite", "one cross-attention key weight of block 2 (or the last block) set to NaN")
def _nonfinite(names):
    keys = matching(names, r"blocks\.\d+\.attn2\.to_k\.weight", "cross-attention key projections")
    by_block = {int(n.split(".")[1]): n for n in keys}
    return [(by_block.get(2, by_block[max(by_block)]), _first_nan)]


@dataclass(frozen=True)
class Grade:
    """A degradation by degrees: ``plan(names, level)``; ``levels`` are those the benchmark runs."""

    name: str
    summary: str
    levels: tuple[float, ...]
    healthy: float  # the level that leaves the model as it is
    plan: Callable[[list[str], float], list[Edit]]


def _toward_mean(fraction: float):
    def edit(t):
        t.add_(fraction * (t.mean(dim=0, keepdim=True) - t))

    return edit


GRADES: dict[str, Grade] = {
    "merge_parts": Grade(
        "merge_parts",
        "part-embedding rows moved this fraction of the way toward their mean",
        (0.1, 0.2, 0.3, 0.5, 0.7, 0.9),
        0.0,
        lambda names, level: [
            (n, _toward_mean(level)) for n in matching(names, r"part_embedding\.weight", "part embedding")
        ],
    ),
    "xattn_gain": Grade(
        "xattn_gain",
        "cross-attention key-norm gains times this factor (attention logits scale with it)",
        (0.5, 0.8, 0.9, 1.1, 1.25, 1.5, 2.0),
        1.0,
        lambda names, level: [(n, _scale(level)) for n in _cross(names, "norm_k")],
    ),
}


def graded(name: str, level: float) -> Variant:
    """The degradation ``name`` of :data:`GRADES` at ``level``, as a variant :func:`broken` applies."""
    if name not in GRADES:
        raise VariantError(f"unknown graded degradation {name!r} (known: {', '.join(GRADES)})")
    grade = GRADES[name]
    return Variant(f"{name}@{level:g}", f"{grade.summary}: {level:g}", lambda names: grade.plan(names, level))


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise VariantError(f"unknown broken variant {name!r} (known: {', '.join(VARIANTS)})")
    return VARIANTS[name]


def _as_variant(name: str | Variant) -> Variant:
    return name if isinstance(name, Variant) else get_variant(name)


def edited_parameters(model: torch.nn.Module, name: str | Variant) -> list[str]:
    """The parameter names variant ``name`` edits in ``model`` (each once, in edit order)."""
    plan = _as_variant(name).plan([n for n, _ in model.named_parameters()])
    return list(dict.fromkeys(n for n, _ in plan))


@contextlib.contextmanager
def broken(model: torch.nn.Module, name: str | Variant) -> Iterator[list[str]]:
    """Apply variant ``name`` (a name of :data:`VARIANTS` or a :func:`graded` variant) to ``model``'s
    parameters in place for the ``with`` block; yields the edited parameter names. On exit the
    saved originals are copied back into the same tensors."""
    params = dict(model.named_parameters())
    plan = _as_variant(name).plan(list(params))  # a missing tensor fails before any edit
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for pname, edit in plan:
                if pname not in saved:
                    saved[pname] = params[pname].detach().clone()
                edit(params[pname].data)
        yield list(saved)
    finally:
        with torch.no_grad():
            for pname, original in saved.items():
                params[pname].data.copy_(original)
