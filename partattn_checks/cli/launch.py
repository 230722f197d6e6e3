"""``torchrun`` / ``accelerate launch`` of ``partattn trend | calibrate | compare``: this process's
place in the launch (``runs.distributed``) as those commands use it.

Every rank parses the same arguments and checks the same inputs (a bad one stops every rank with the
same message, said once by rank 0), then joins the launch; what may differ between ranks (each one's
device, each one's model load) runs through ``Ranks.each``, so one rank's failure stops them all.
Rank 0 alone checks and writes the output folder and speaks (status lines, the progress bar of its
share, the summary, error messages) and its exit status is the job's: the other ranks are quiet and
exit 0 (``cli.main``), because torchrun stops every rank as soon as one exits non-zero, which would
cut rank 0 off before it writes or speaks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from ..runs.distributed import DistributedError, Ranks
from .args import run_device
from .io import RunFailed, UsageError, remove_created


def launch(args) -> Ranks:
    """The launch the environment describes (one process without one); a rank other than 0 is made quiet."""
    try:
        ranks = Ranks.from_env()
    except DistributedError as err:
        raise UsageError(str(err)) from None
    if not ranks.main:
        args.quiet = True
        args.speaks = False  # cli.main prints no error message for it and exits 0: rank 0 says it
    return ranks


def rank_device(args, ranks: Ranks) -> str:
    """``--device`` as one process runs it (what the outputs report); under a launch an index such as
    ``cuda:1`` is refused (each rank runs on ``cuda:LOCAL_RANK``). The same on every rank: checked
    before the ranks join (:func:`joined` checks each rank's own device)."""
    device = run_device(args.device)
    if ranks.distributed and device.startswith("cuda") and ":" in args.device:
        raise UsageError(
            f"--device {args.device}: under torchrun each rank runs on cuda:LOCAL_RANK; pass --device cuda or auto"
        )
    return device


@contextlib.contextmanager
def joined(ranks: Ranks, device: str) -> Iterator[Ranks]:
    """Inside: this process in the launch's process group, its own device (``cuda:LOCAL_RANK``)
    checked on every rank at once, so that a rank without a GPU stops the job with its message
    (a ``LOCAL_RANK`` past the last GPU is a usage error); a launch that fails is a :class:`RunFailed`."""
    try:
        with ranks:
            mine = ranks.device(device)
            ranks.each(lambda: run_device(mine), label=f"its device {mine}")
            yield ranks
    except DistributedError as err:
        raise RunFailed(str(err)) from None


def processes(ranks: Ranks) -> str:
    """`` over N processes`` for a status line under a launch, else nothing."""
    return f" over {ranks.size} processes" if ranks.distributed else ""


@contextlib.contextmanager
def shared_run(ranks: Ranks, out: Path, created: Path | None, usage: tuple[type[Exception], ...]) -> Iterator[None]:
    """Inside: the work the ranks share. Any failure removes the output folder the command created
    (rank 0 created it); one of ``usage`` (a bad input the run found) is a usage error, an image or
    model that could not run a :class:`RunFailed`."""
    from ..runs.session import CaseError

    try:
        yield
    except BaseException as err:
        if ranks.main:
            remove_created(out, created)
        if isinstance(err, usage):
            raise UsageError(str(err)) from None
        if isinstance(err, CaseError):
            raise RunFailed(str(err)) from None
        raise
