"""Many processes, one result: ``partattn trend | calibrate | compare`` under ``torchrun`` or
``accelerate launch``.

A launcher starts one process per device and tells each its place in the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). :class:`Ranks` reads it:

* ``WORLD_SIZE`` unset or 1: one process; ``torch.distributed`` is never touched and
  :meth:`Ranks.map` is a plain loop.
* Otherwise the process joins the launch's process group (gloo: what travels are results, small
  Python objects on the host, so no GPU needs binding; every collective waits at most
  ``PARTATTN_DIST_TIMEOUT`` seconds, default 3600), runs on ``cuda:LOCAL_RANK`` (or the CPU), and
  :meth:`Ranks.map` runs a contiguous share of the work units (consecutive units share a loaded
  checkpoint or a weight edit) and gathers every unit's result on every rank, in unit order: the
  values one process computes one unit after another. Only rank 0 writes (the commands see to it).

A unit that raises stops its rank, which flags it in the process group's store; the other ranks see
the flag before their next unit and stop too. Every rank reaches the gather with its results or its
error and then raises the error of the lowest failing rank (rank 0 names the rank and the unit on
stderr; :func:`shared` tells such an error from one of this rank alone): the job ends with that
message, never a hang. A rank that dies without a word (killed, out of memory) is ended by the
launcher, which stops the others (torchrun does).
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from ..errors import PartattnError

#: Seconds a collective (the join, a gather) waits for the other ranks.
TIMEOUT_ENV = "PARTATTN_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 3600.0

U = TypeVar("U")
R = TypeVar("R")


class DistributedError(PartattnError, RuntimeError):
    """A launch this process cannot join (its environment, the process group), or a rank's result
    that cannot travel; the message says which and what to do."""


@dataclass(frozen=True)
class Launch:
    """This process's place in a launch: ``rank`` of ``world_size``, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Launch:
        """From ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (torchrun and accelerate set them; unset: one process)."""
        env = os.environ if env is None else env

        def number(name: str, default: int) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                return int(raw)
            except ValueError:
                raise DistributedError(f"{name}={raw!r}: not a whole number (torchrun and accelerate set it)") from None

        size = number("WORLD_SIZE", 1)
        rank = number("RANK", 0)
        local = number("LOCAL_RANK", rank)
        if size < 1 or not 0 <= rank < size or local < 0:
            raise DistributedError(
                f"RANK={rank}, WORLD_SIZE={size}, LOCAL_RANK={local}: not a place in a launch (need 0 <= RANK < "
                f"WORLD_SIZE and LOCAL_RANK >= 0); start the command with torchrun or accelerate launch, or unset them"
            )
        return cls(rank, size, local)


def timeout_s(env: Mapping[str, str] | None = None) -> float:
    """``PARTATTN_DIST_TIMEOUT`` in seconds (default :data:`DEFAULT_TIMEOUT_S`)."""
    raw = (os.environ if env is None else env).get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DistributedError(f"{TIMEOUT_ENV}={raw!r}: give the seconds a rank may wait for the others (> 0)")
    return value


class Ranks:
    """The processes of a launch, or the one process of a plain run (the default). A context
    manager: entering joins the process group under a launch (unless the caller already did),
    leaving leaves it."""

    def __init__(self, launch: Launch | None = None, *, timeout: float | None = None):
        self.launch = launch or Launch()
        self.timeout = timeout if timeout is not None else DEFAULT_TIMEOUT_S
        self._joined = False  # this object initialised the process group (and destroys it)
        self._maps = 0  # map() calls so far: each flags its failures under its own key

    @classmethod
    def from_env(cls) -> Ranks:
        """The launch the environment describes, with the ``PARTATTN_DIST_TIMEOUT`` timeout."""
        return cls(Launch.from_env(), timeout=timeout_s())

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def size(self) -> int:
        return self.launch.world_size

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes and speaks."""
        return self.rank == 0

    def device(self, device: str) -> str:
        """The device this rank runs on: a CUDA device becomes ``cuda:LOCAL_RANK`` under a launch (one
        GPU per rank); the CPU and a plain run keep ``device``."""
        if self.distributed and device.startswith("cuda"):
            return f"cuda:{self.launch.local_rank}"
        return device

    def share(self, n: int) -> range:
        """The indices of ``n`` units this rank runs: a contiguous block, sizes differing by one at most."""
        return range(self.rank * n // self.size, (self.rank + 1) * n // self.size)

    # -- the process group --------------------------------------------------------------------
    def __enter__(self) -> Ranks:
        if not self.distributed:
            return self
        import torch.distributed as dist

        if not dist.is_available():
            raise DistributedError("this torch build has no torch.distributed; run one process (no torchrun)")
        if not dist.is_initialized():
            try:
                dist.init_process_group("gloo", timeout=timedelta(seconds=self.timeout))
            except (ValueError, RuntimeError) as err:  # MASTER_ADDR/PORT missing, the others never came
                raise DistributedError(
                    f"rank {self.rank} of {self.size} could not join the launch: {err} (start the command with "
                    f"torchrun --nproc_per_node=N --no-python partattn ..., which sets MASTER_ADDR and MASTER_PORT)"
                ) from None
            self._joined = True
        elif dist.get_world_size() != self.size or dist.get_rank() != self.rank:
            raise DistributedError(
                f"the process group is rank {dist.get_rank()} of {dist.get_world_size()}, the environment says "
                f"rank {self.rank} of {self.size}"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._joined:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._joined = False

    # -- work ---------------------------------------------------------------------------------
    def first(self, fn: Callable[[], R]) -> R:
        """``fn()`` run on rank 0 alone (an output folder's checks); every rank gets its result, or
        raises its error."""
        if not self.distributed:
            return fn()
        import torch.distributed as dist

        box: list[Any] = [None]
        if self.main:
            try:
                box[0] = (fn(), None)
            except Exception as exc:  # noqa: BLE001 - every rank raises it below
                box[0] = (None, portable(exc))
        dist.broadcast_object_list(box, src=0)
        value, error = box[0]
        if error is not None:
            raise _shared(error)
        return value

    def map(self, units: Sequence[U], work: Callable[[U], R], *, label: Callable[[U], str] = str) -> list[R]:
        """``[work(unit) for unit in units]``: in a plain run exactly that; under a launch each rank
        runs its :meth:`share` and every rank gets all results in unit order (see the module
        docstring for a unit that fails; ``label(unit)`` names it)."""
        if not self.distributed:
            return [work(unit) for unit in units]
        import torch.distributed as dist

        self._maps += 1
        key = f"partattn/failed/{self._maps}"
        store = _store()
        mine: dict[int, R] = {}
        failure: tuple[str, BaseException] | None = None
        for index in self.share(len(units)):
            if store is not None and store.check([key]):  # another rank failed: stop here
                break
            try:
                mine[index] = work(units[index])
            except Exception as exc:  # noqa: BLE001 - every rank raises it after the gather
                failure = (label(units[index]), portable(exc))
                if store is not None:
                    store.set(key, str(self.rank))
                break
        try:
            pickle.dumps(mine)
        except Exception as exc:  # noqa: BLE001 - one rank's unpicklable result would hang the others
            mine, failure = {}, ("its results", DistributedError(f"rank {self.rank}'s results cannot travel: {exc}"))
        gathered: list[Any] = [None] * self.size
        dist.all_gather_object(gathered, (mine, failure))
        for rank, (_, failed) in enumerate(gathered):
            if failed is not None:
                what, error = failed
                if self.main:
                    print(f"partattn: rank {rank} of {self.size} failed on {what}", file=sys.stderr)
                raise _shared(error)
        results: dict[int, R] = {}
        for part, _ in gathered:
            results.update(part)
        return [results[i] for i in range(len(units))]

    def each(self, fn: Callable[[], R], *, label: str) -> R:
        """``fn()`` on every rank, for a step each rank takes for itself (checking its device, loading
        its model); its value stays on this rank. A rank whose ``fn`` raises stops every rank with its
        error, as in :meth:`map` (``label`` names the step), instead of leaving the others waiting."""
        kept: list[R] = []
        # one unit per rank: share(size) gives rank r the unit r alone
        self.map(range(self.size), lambda _: kept.append(fn()), label=lambda _: label)
        return kept[0]


def shared(error: BaseException) -> bool:
    """Whether every rank of a launch raised ``error`` together (from :meth:`Ranks.map`, ``each`` or
    ``first``): rank 0 reports it for the job, the others may stay quiet."""
    return getattr(error, _SHARED, False) is True


_SHARED = "_partattn_raised_by_every_rank"


def _shared(error: BaseException) -> BaseException:
    setattr(error, _SHARED, True)
    return error


def _store():
    """The process group's key-value store (where a failure is flagged), or None if torch hides it."""
    from torch.distributed import distributed_c10d

    get = getattr(distributed_c10d, "_get_default_store", None)
    try:
        return get() if get is not None else None
    except (RuntimeError, ValueError):
        return None


def portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (it travels to the other ranks as itself: same type, same
    message), else a :class:`DistributedError` with its type and message."""
    try:
        back = pickle.loads(pickle.dumps(exc))
        if type(back) is type(exc) and str(back) == str(exc):
            return exc
    except Exception:  # noqa: BLE001, S110 - any failure to travel means: send it as text
        pass
    return DistributedError(f"{type(exc).__name__}: {exc}")
