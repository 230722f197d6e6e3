"""pytest-xdist scheduling that keeps each fixture image on one worker.

An image's checks share one denoising run, so they must run on the same worker. Each image is a
pytest File node, so per-file scheduling (``--dist loadfile``) groups them on every pytest and
xdist version. (``--dist loadgroup`` with ``xdist_group`` markers does not: pytest 9.2 ignores
the node ids that loadgroup rewrites.) The rules:

* no ``--dist`` given: per-file scheduling, chosen by partattn;
* ``loadfile`` / ``loadscope``: already keep an image together, used as given;
* ``load`` / ``loadgroup`` / ``worksteal``: would split an image; partattn schedules each image as
  one unit and every other test the way the chosen mode groups it, and warns once;
* ``each``: every worker runs everything, by request.

Importing this module is light; xdist is imported only when the scheduler is built.
"""

from __future__ import annotations

from dataclasses import dataclass

#: What xdist sets ``--dist`` to when the user gave none (``-n N`` alone).
XDIST_DEFAULT = "no"
KEEPS_FILES_TOGETHER = ("loadfile", "loadscope")
SPLITS_FILES = ("load", "loadgroup", "worksteal")


@dataclass(frozen=True)
class SchedulingPlan:
    """How partattn schedules an xdist run. ``mode`` is what partattn runs; ``chosen`` the user's."""

    mode: str
    chosen: str | None  # None: the user gave no --dist
    replaced: bool = False  # partattn schedules images itself instead of the chosen mode

    @property
    def header(self) -> str:
        if self.chosen is None:
            return "xdist: --dist loadfile (chosen by partattn: each image's checks run on one worker)"
        if self.replaced:
            return f"xdist: --dist {self.chosen} for other tests, each fixture image kept on one worker (partattn)"
        if self.mode == "each":
            return "xdist: --dist each (every worker runs every image)"
        return f"xdist: --dist {self.mode} (each image's checks run on one worker)"

    @property
    def warning(self) -> str | None:
        if not self.replaced:
            return None
        return (
            f"--dist {self.chosen} would split a fixture image's checks across workers, and each "
            f"worker would denoise the image again; partattn keeps each image on one worker and "
            f"schedules the other tests as --dist {self.chosen} groups them. Pass --dist loadfile "
            f"(or no --dist) to silence this warning"
        )


def plan(chosen_dist: str | None, resolved_dist: str | None) -> SchedulingPlan | None:
    """The plan for an xdist run, ``None`` when xdist does not distribute.

    ``chosen_dist``: ``--dist`` as the user gave it (before xdist fills in its default);
    ``resolved_dist``: the value xdist resolved it to.
    """
    if resolved_dist is None or resolved_dist == "no":
        return None
    if chosen_dist in (None, XDIST_DEFAULT):
        return SchedulingPlan("loadfile", None)
    if chosen_dist in SPLITS_FILES:
        return SchedulingPlan(chosen_dist, chosen_dist, replaced=True)
    return SchedulingPlan(resolved_dist, chosen_dist)


def make_scheduler(plan: SchedulingPlan, config, log, image_suffixes: tuple[str, ...]):
    """The xdist scheduler for ``plan``, or ``None`` to let xdist build the chosen mode's own."""
    if plan.chosen is not None and not plan.replaced:
        return None
    from xdist.scheduler import LoadFileScheduling, LoadGroupScheduling, LoadScopeScheduling

    if plan.chosen is None:
        return LoadFileScheduling(config, log)

    group_by_mode = LoadGroupScheduling._split_scope if plan.chosen == "loadgroup" else None

    class ImageScheduling(LoadScopeScheduling):
        """Fixture images as one unit each; other tests one by one (or by xdist group)."""

        def _split_scope(self, nodeid: str) -> str:
            file_part = nodeid.split("::", 1)[0]
            if file_part.lower().endswith(image_suffixes):
                return file_part
            return group_by_mode(self, nodeid) if group_by_mode is not None else nodeid

    return ImageScheduling(config, log)
