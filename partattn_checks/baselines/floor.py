"""The numeric floor: perturbations that must not count, rerun when a baseline is written.

A run is a function of (weights, code, image, settings, noise seed), so rerunning a baseline's seed
gives the stored run again, up to the arithmetic: another thread count, another GPU kernel or
another order of a sum change the last bits, and the sampler can amplify them. What those changes
do to the same seeds is measured once, when the baseline is written, by rerunning its paired seeds
under each condition below; the paired verdict judges a change against the largest of them.

* ``rounding``: the transformer's first input is multiplied by ``1 + ε·ξ`` (``ε`` the run dtype's
  machine epsilon, ξ standard normal from a fixed seed): one rounding error in every latent, what a
  reordered sum or another kernel does; the same on every device (``model.perturb``);
* ``threads``: on the CPU, another intra-op thread count (1 ↔ 2);
* ``rerun``: on CUDA, the same run again (non-deterministic kernels);
* ``dtype:<name>``: the model in another dtype (``--partattn-floor-dtypes``): a gate that runs in that
  dtype stays paired against a baseline written in another.

Standard library only: the runs layer turns a :class:`Condition` into a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Condition:
    """One perturbation that must not count. ``dtype`` None: the baseline's own dtype."""

    name: str
    dtype: str | None = None
    threads: int | None = None
    rounding: bool = False
    pattern: int = 0  # which rounding error (its noise's seed offset): another pattern is another machine

    def applies(self, run_dtype: str) -> bool:
        """Whether a run in ``run_dtype`` may show what this condition showed: every condition in the
        baseline's own dtype, and a dtype condition for a run in that dtype."""
        return self.dtype is None or self.dtype == run_dtype

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "name": self.name,
            "dtype": self.dtype,
            "threads": self.threads,
            "rounding": self.rounding,
        }
        return {**out, "pattern": self.pattern} if self.pattern else out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Condition:
        return cls(
            str(d["name"]), d.get("dtype"), d.get("threads"), bool(d.get("rounding", False)), int(d.get("pattern", 0))
        )


def conditions(device_kind: str, dtype: str, floor_dtypes: tuple[str, ...], threads: int) -> list[Condition]:
    """The floor's conditions for a baseline written on ``device_kind`` in ``dtype`` with ``threads``
    intra-op threads, plus the declared ``floor_dtypes`` (the baseline's own dtype among them is skipped)."""
    out = [Condition("rounding", rounding=True)]
    if device_kind == "cuda":
        out.append(Condition("rerun"))
    else:
        out.append(Condition("threads", threads=1 if threads > 1 else 2))
    out += [Condition(f"dtype:{d}", dtype=d) for d in dict.fromkeys(floor_dtypes) if d != dtype]
    return out
