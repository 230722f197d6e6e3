"""The report data of the session: :class:`Summary`, every item's report by image and check, and
what the outputs say of them (the cells of the image x check table, the counts, the verdict line,
the failures grouped, the notes). The sinks render it; no torch.
"""

from __future__ import annotations

from collections import OrderedDict

from ...baselines.runner import BaselineStatus
from ...checks import REGISTRY
from ...checks.reporting import SetVerdict, fmt
from .item import ItemReport
from .text import table

#: baseline statuses a failing summary cell names (the value says nothing there)
_SAID_IN_CELL = (BaselineStatus.MISSING, BaselineStatus.UNREADABLE, BaselineStatus.ENV_MISMATCH)

#: how the verdict line and the collapsed summaries name outcomes
PAST = {
    "pass": "passed",
    "skip": "skipped",
    "fail": "failed",
    "error": "errors",
    "written": "written",
    "updated": "updated",
}


class Summary:
    """Collects item reports (on the controller): what the terminal table, index.html and the job
    summary show."""

    def __init__(self) -> None:
        self.by_image: OrderedDict[str, dict[str, ItemReport]] = OrderedDict()

    def add(self, p: ItemReport) -> None:
        self.by_image.setdefault(p.image, {})[p.check] = p
        # sorted by image, whatever order xdist workers report in
        self.by_image = OrderedDict(sorted(self.by_image.items()))

    def __bool__(self) -> bool:
        return bool(self.by_image)

    def checks(self) -> list[str]:
        order = list(REGISTRY)
        seen = {c for per in self.by_image.values() for c in per}
        return [c for c in order if c in seen] + sorted(seen - set(order))

    @staticmethod
    def cell(p: ItemReport | None) -> str:
        if p is None:
            return ""
        verdict = p.outcome
        shown = verdict.upper() if verdict in ("fail", "error") else verdict
        r = p.result
        if p.baseline is not None and p.baseline.status in _SAID_IN_CELL and verdict == "fail":
            return f"{p.baseline.status.value} {shown}"
        if r is None or r.value is None:
            return shown
        return f"{fmt(r.value, 3)} {shown}"

    def table_lines(self) -> list[str]:
        checks = self.checks()
        rows = [[image, *(self.cell(per.get(c)) for c in checks)] for image, per in self.by_image.items()]
        return table(rows, ["image", *checks])

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for per in self.by_image.values():
            for p in per.values():
                out[p.outcome] = out.get(p.outcome, 0) + 1
        return out

    def verdicts(self) -> dict[str, int]:
        """How many images each of a check's ways of judging judged (the baseline's: paired,
        seed-spread, tolerance, and how many were not compared), as the checks count them."""
        out: dict[str, int] = {}
        for name in self.checks():
            check = REGISTRY.get(name)
            if check is not None:
                out.update(check.count_verdicts([per[name].result for per in self.by_image.values() if name in per]))
        return out

    def notes(self) -> list[str]:
        out = []
        written = [p for per in self.by_image.values() for p in per.values() if p.baseline_written]
        if written:
            out.append(
                f"{len(written)} baseline{'s' if len(written) != 1 else ''} written or updated "
                f"(review and commit them):"
            )
            out += [f"  {p.baseline.status.value}: {p.baseline.folder}" for p in written if p.baseline is not None]
        return out

    def items(self) -> list[ItemReport]:
        """Every item, by image and then in check order."""
        checks = self.checks()
        return [per[c] for per in self.by_image.values() for c in checks if c in per]

    def failure_groups(self) -> list[list[ItemReport]]:
        """Failing items in image and check order, one per group, except that the items of an image
        that could not run (the same error for each check) form one group."""
        groups: list[list[ItemReport]] = []
        for p in self.items():
            if p.outcome not in ("fail", "error"):
                continue
            last = groups[-1][0] if groups else None
            same_error = last is not None and last.result is None and (last.image, last.error) == (p.image, p.error)
            if p.result is None and same_error:
                groups[-1].append(p)
            else:
                groups.append([p])
        return groups

    def verdict_line(self, fixture_set: SetVerdict | None) -> str:
        """FAILED or PASSED: what failed, then the other counts."""
        counts = self.counts()
        bad = []
        if counts.get("fail"):
            bad.append(f"{counts['fail']} of {sum(counts.values())} checks failed")
        if counts.get("error"):
            bad.append(f"{counts['error']} could not run")
        if fixture_set is not None and fixture_set.verdict == "fail":
            bad.append("the fixture set moved")
        rest = [f"{counts[v]} {PAST[v]}" for v in ("pass", "skip", "written", "updated") if counts.get(v)]
        if fixture_set is not None and fixture_set.verdict == "pass":
            rest.append("fixture set passed")
        if bad:
            return "FAILED: " + " · ".join([", ".join(bad), *rest])
        return "PASSED: " + " · ".join(rest)
