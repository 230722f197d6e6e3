"""The processor-family table: how each kind of attention processor lays out and scales its attention.

The recorder never replaces a processor; it reads the tensors a processor makes and rebuilds the
probabilities from them. To do that it must know the processor's head layout, whether parts share
keys (a global block) and the scale of ``q kᵀ``: one :class:`ProcessorFamily` per kind, matched by
class name (docs/capture.md, "Which modules, which processors").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ProcessorFamily:
    """How one kind of attention processor computes, as far as the recorder needs to know.

    ``class_names``: processor classes of the family, matched by name along the class's MRO (so a
    fork's class of the same name fits). ``heads_first``: keys and values are split heads-first
    from ``cat(to_k(ctx), to_v(ctx))`` (PartCrafter/TripoSG); else diffusers' plain split.
    ``folded``: a global block, whose parts of one CFG half share the first part's keys and values.
    ``scale(attn, processor, head_dim)``: the factor of ``q kᵀ`` before the softmax. ``kind``: what
    the record calls its layers (``local``, ``global``, ``standard``).
    """

    name: str
    class_names: tuple[str, ...]
    heads_first: bool
    folded: bool
    kind: str
    scale: Callable[[Any, Any, int], float]

    def matches(self, processor) -> bool:
        return any(cls.__name__ in self.class_names for cls in type(processor).__mro__)


def _sdpa_scale(attn, processor, head_dim: int) -> float:
    return head_dim**-0.5  # scaled_dot_product_attention's default


#: Known families, first match wins; :func:`register_family` adds one (e.g. a fork's processor).
FAMILIES: list[ProcessorFamily] = [
    ProcessorFamily("partcrafter-global", ("PartCrafterAttnProcessor",), True, True, "global", _sdpa_scale),
    ProcessorFamily(
        "partcrafter-local", ("TripoSGAttnProcessor", "TripoSGAttnProcessor2_0"), True, False, "local", _sdpa_scale
    ),
    ProcessorFamily("diffusers-sdpa", ("AttnProcessor2_0",), False, False, "standard", _sdpa_scale),
    ProcessorFamily("diffusers-eager", ("AttnProcessor",), False, False, "standard", lambda a, p, d: a.scale),
]


def register_family(family: ProcessorFamily) -> None:
    """Teach the recorder a processor family (checked before the built-in ones)."""
    FAMILIES.insert(0, family)


def find_family(processor) -> ProcessorFamily | None:
    """The first family that ``processor`` matches, or ``None``."""
    return next((family for family in FAMILIES if family.matches(processor)), None)


def known_class_names() -> str:
    """Every processor class name the table knows, comma-separated (for error messages)."""
    return ", ".join(n for f in FAMILIES for n in f.class_names)
