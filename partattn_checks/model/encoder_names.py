"""DINOv2 weight names across transformers versions.

transformers 5.18 renamed the attention weights of ``Dinov2Model``
(``attention.attention.{query,key,value}`` and ``attention.output.dense`` became
``attention.{q,k,v,o}_proj``). Released checkpoints, PartCrafter's included, were saved with the
older names. Checkpoints are written with the release's names, and loading renames each weight to
the name the installed transformers expects, so every checkpoint loads on every supported version.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

_T = TypeVar("_T")  # a state dict's values (tensors)

#: (release name part, transformers >= 5.18 name part)
RENAMES = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
)


def to_release_names(state: Mapping[str, _T]) -> dict[str, _T]:
    """``state`` with the names the released checkpoints use (for writing)."""
    out = {}
    for name, tensor in state.items():
        for release, current in RENAMES:
            name = name.replace(current, release)
        out[name] = tensor
    return out


def to_model_names(state: Mapping[str, _T], expected: Iterable[str]) -> dict[str, _T]:
    """``state`` renamed to the names in ``expected`` (the model's own state-dict keys) where a
    weight is stored under the other version's name; names that fit already are kept."""
    expected = set(expected)
    out = {}
    for name, tensor in state.items():
        if name not in expected:
            for release, current in RENAMES:
                for old, new in ((release, current), (current, release)):
                    if old in name and name.replace(old, new) in expected:
                        name = name.replace(old, new)
                        break
        out[name] = tensor
    return out
