"""Which layers and steps a recorder keeps, and where it keeps full query x key maps.

No torch: the plugin and the command build selections before anything heavy is imported.
``partattn_checks.capture.Selection`` is this class.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass
class Selection:
    """Which layers and steps to record, and where to keep full maps.

    ``layers``: ``None`` (all cross-attention modules), indices into them, module names or glob
    patterns (``"blocks.1*.attn2"``), or a callable ``name -> bool``. ``steps``: ``None`` (all),
    a list of step indices, or use ``every=k`` for every k-th step. ``full_maps``: (layer, step)
    pairs (layer as index or name) or a callable ``(name, step) -> bool``.
    """

    layers: None | Iterable[int | str] | Callable[[str], bool] = None
    steps: None | Iterable[int] = None
    every: int | None = None
    full_maps: Iterable[tuple[int | str, int]] | Callable[[str, int], bool] = ()

    def pick_layers(self, names: list[str]) -> list[str]:
        if self.layers is None:
            return list(names)
        if callable(self.layers):
            return [n for n in names if self.layers(n)]
        picked = set()
        for item in self.layers:
            if isinstance(item, int):
                if not -len(names) <= item < len(names):
                    raise ValueError(
                        f"layer index {item} out of range: the model has {len(names)} cross-attention layers"
                    )
                picked.add(names[item])
            else:
                matches = [n for n in names if fnmatch.fnmatchcase(n, item)]
                if not matches:
                    raise ValueError(f"layer '{item}' matches no cross-attention module (known: {', '.join(names)})")
                picked.update(matches)
        return [n for n in names if n in picked]

    def wants_step(self, step: int) -> bool:
        if self.every is not None and step % self.every:
            return False
        return self.steps is None or step in set(self.steps)

    def full_map_test(self, names: list[str]) -> Callable[[str, int], bool]:
        if callable(self.full_maps):
            return self.full_maps
        pairs = {(names[layer] if isinstance(layer, int) else layer, int(step)) for layer, step in self.full_maps}
        return lambda name, step: (name, step) in pairs
