"""Perturbations that must not change a verdict, as context managers around a run (the numeric
floor of a paired baseline: ``baselines.floor``).

* :func:`rounding_error`: the transformer's first call sees its latent input multiplied by
  ``1 + ε·ξ`` (``ε`` the input dtype's machine epsilon, ξ standard normal drawn on the CPU from a
  fixed seed): one rounding error per latent, what another kernel or another order of a sum does.
  A forward pre-hook on the transformer module, so it works on any pipeline with a ``.transformer``
  (upstream's, a fork's); removed on exit, also on errors.
* :func:`intra_op_threads`: torch's intra-op thread count for the duration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .files import ModelTypeError

#: The generator seed of the rounding perturbation (fixed: the floor is reproducible).
ROUNDING_SEED = 7919


@contextlib.contextmanager
def rounding_error(pipeline: object, seed: int = ROUNDING_SEED) -> Iterator[None]:
    """Inside: the first transformer call of each run gets its latents (the first tensor argument,
    or ``hidden_states``) perturbed by one rounding error."""
    transformer = getattr(pipeline, "transformer", None)
    if not isinstance(transformer, torch.nn.Module):
        raise ModelTypeError(
            f"{type(pipeline).__name__} has no .transformer module: the rounding perturbation of the numeric "
            f"floor needs one"
        )
    calls = 0

    def perturb(x: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device)
        eps = torch.finfo(x.dtype).eps
        return (x.float() * (1.0 + eps * noise)).to(x.dtype)

    def before(module, args, kwargs):
        nonlocal calls
        calls += 1
        if calls > 1:
            return None
        if args and isinstance(args[0], torch.Tensor):
            return (perturb(args[0]), *args[1:]), kwargs
        if isinstance(kwargs.get("hidden_states"), torch.Tensor):
            return args, {**kwargs, "hidden_states": perturb(kwargs["hidden_states"])}
        raise ModelTypeError(
            f"{type(module).__name__}.forward got no latent tensor (first argument or hidden_states) to perturb"
        )

    handle = transformer.register_forward_pre_hook(before, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` inside, put back after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
