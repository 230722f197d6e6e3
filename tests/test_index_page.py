"""The gate's index.html tells the story first: a verdict line, the failures (reason, the baseline's
drift table, figures, commands), the image x check table whose cells link to their checks, and the
passing checks collapsed; a passing gate says how to get figures. Also the page primitives it uses
and the pytest-html link to each figure at full size. Summaries are built directly (no model runs)."""

from __future__ import annotations

import html.parser
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

from partattn_checks.baselines.fixture_set import SetVerdict
from partattn_checks.checks import CheckResult
from partattn_checks.checks.baseline import SetDeviation
from partattn_checks.gate import report
from partattn_checks.present.pages import Page
from partattn_checks.present.pages.page import anchor_id

HEADER = ["partattn: model /models/mine", "partattn: device cpu | dtype float32"]
ERROR = "could not run fixtures/images/np3_broken.png: not a readable image"


class Tree(html.parser.HTMLParser):
    """Each element in document order as (tag, attrs, the indices of the elements it lies in), and
    the text inside each element."""

    VOID = ("img", "meta", "br", "link")

    def __init__(self, text: str):
        super().__init__()
        self.elements: list[tuple[str, dict, list[int]]] = []
        self.texts: dict[int, str] = {}
        self._open: list[int] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs), list(self._open)))
        if tag not in self.VOID:
            self._open.append(len(self.elements) - 1)

    def handle_endtag(self, tag):
        while self._open and self.elements[self._open.pop()][0] != tag:
            pass

    def handle_data(self, data):
        for i in self._open:
            self.texts[i] = self.texts.get(i, "") + data

    def text(self, i: int) -> str:
        return " ".join(self.texts.get(i, "").split())

    def find(self, tag: str, **attrs) -> list[int]:
        return [
            i for i, (t, a, _) in enumerate(self.elements) if t == tag and all(a.get(k) == v for k, v in attrs.items())
        ]

    def by_id(self, id_: str) -> int:
        (i,) = [i for i, (_, a, _) in enumerate(self.elements) if a.get("id") == id_]
        return i

    def heading(self, text: str) -> int | None:
        return next((i for i in self.find("h2") if self.text(i).startswith(text)), None)

    def inside(self, i: int, j: int) -> bool:
        return j in self.elements[i][2]

    def rows(self, table: int) -> list[list[tuple[str, dict, str | None]]]:
        """(text, attrs, the href of its link) of each cell of a table, row by row."""
        out: list[list] = []
        for i, (tag, attrs, parents) in enumerate(self.elements):
            if table not in parents:
                continue
            if tag == "tr":
                out.append([])
            elif tag in ("td", "th"):
                out[-1].append((self.text(i), attrs, None))
            elif tag == "a":
                text, cell_attrs, _ = out[-1][-1]
                out[-1][-1] = (text, cell_attrs, attrs.get("href"))
        return out


def _png(path: Path, size=(40, 30)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path)
    return str(path)


def _item(image: str, check: str, verdict: str | None, *, value=0.5, details=None, figures=(), error=None):
    key = Path(image).stem
    result = None
    if verdict is not None:
        result = {
            "name": check,
            "verdict": verdict,
            "value": value,
            "threshold": 0.1 if check != "baseline" else None,
            "offender": None,
            "reason": f"{check} of {key} reason",
            "details": details or {},
        }
        result = CheckResult.from_dict(result)  # typed, as the controller rebuilds it
    return report.ItemReport(
        image=f"fixtures/images/{image}",
        key=key,
        check=check,
        result=result,
        figures=tuple(figures),
        rerun=f'pytest --partattn "fixtures/images/{image}::{check}"',
        update=f'pytest --partattn --partattn-update=failed "fixtures/images/{image}::baseline"',
        error=error,
    )


DRIFTING = {
    "per_metric": {
        "entropy_mean": {
            "measured": 0.92,
            "baseline": 0.89,
            "drift": 0.03,
            "allowed": 0.02,
            "z": 6.6,
            "allowance": 4.4,
            "spread": 0.0044,
            "seeds": 16,
        },
        "peak_mean": {
            "measured": 0.076,
            "baseline": 0.087,
            "drift": 0.011,
            "allowed": 0.012,
            "z": -4.0,
            "allowance": 4.4,
            "spread": 0.03,
            "seeds": 16,
            "log_scale": True,
        },
    },
    "deviations": [
        {
            "kind": "layer",
            "name": "blocks.1.attn2",
            "measured": 0.24,
            "mean": 0.015,
            "spread": 0.4,
            "seeds": 16,
            "repeats": 1,
            "z": 4.7,
            "allowance": 4.2,
        },
        {
            "kind": "layer",
            "name": "blocks.0.attn2",
            "measured": 0.02,
            "mean": 0.009,
            "spread": 0.4,
            "seeds": 16,
            "repeats": 1,
            "z": 1.5,
            "allowance": 4.2,
        },
    ],
}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
def failing(results) -> Tree:
    drift = _png(results / "np1_a" / "baseline__drift.png", (100, 146))
    overlay = _png(results / "np2_b" / "part_separation__overlay.png")
    s = report.Summary()
    for p in (
        _item("np1_a.png", "uniformity", "pass"),
        _item("np1_a.png", "baseline", "fail", value=6.6, details=DRIFTING, figures=[drift]),
        _item("np2_b.png", "uniformity", "pass"),
        _item("np2_b.png", "collapse", "skip", value=None),
        _item("np2_b.png", "part_separation", "fail", value=0.002, figures=[overlay]),
        _item("np3_broken.png", "uniformity", None, error=ERROR),
        _item("np3_broken.png", "baseline", None, error=ERROR),
    ):
        s.add(p)
    moved = SetDeviation("separation", "metric", 2, -3.0, 0.0, -4.24, 3.89)
    fixture_set = SetVerdict(("np1_a", "np2_b"), (moved,), 0.001, ())
    path = report.write_index(s, results, HEADER, fixture_set=fixture_set)
    return Tree(path.read_text(encoding="utf-8"))


def test_failures_come_first_then_the_table_then_the_passing_checks(failing):
    verdict = failing.find("p", **{"class": "verdict fail"})
    assert verdict and failing.text(verdict[0]).startswith("FAILED: 2 of 7 checks failed, 2 could not run")
    failures, table, passing = failing.heading("Failures"), failing.heading("All checks"), failing.heading("Passing")
    assert verdict[0] < failures < table < passing
    cards = failing.find("section", **{"class": "failure"})
    assert [failing.elements[i][1]["id"] for i in cards] == [
        "np1_a--baseline",
        "np2_b--part_separation",
        "np3_broken--uniformity",  # the image that could not run: one card for its checks
        "fixture-set",
    ]
    assert all(failures < i < table for i in cards)
    assert "could not run (uniformity, baseline)" in failing.text(cards[2]) and ERROR in failing.text(cards[2])
    assert "separation" in failing.text(cards[3]) and "MOVED" in failing.text(cards[3])
    # the run settings are one closed line at the top
    run = failing.find("details")[0]
    assert run < failures and "open" not in failing.elements[run][1] and "/models/mine" in failing.text(run)


def test_a_baseline_failure_shows_its_drift_table_figure_and_commands(failing):
    card = failing.by_id("np1_a--baseline")
    (table,) = [i for i in failing.find("table") if failing.inside(i, card)]
    rows = failing.rows(table)
    assert [text for text, _, _ in rows[0]] == ["metric", "measured", "allowance", "baseline", "verdict"]
    by_metric = {row[0][0]: row for row in rows[1:]}
    assert by_metric["entropy_mean"][-1][0] == "+6.6 se DRIFT" and by_metric["entropy_mean"][-1][1]["class"] == "fail"
    assert by_metric["peak_mean"][-1][0] == "-4.0 se ok" and by_metric["peak_mean"][-1][1]["class"] == "pass"
    assert by_metric["attention blocks.1.attn2"][-1][0] == "+4.7 DRIFT"
    assert by_metric["attention blocks.0.attn2"][-1][0] == "+1.5 ok"
    (img,) = [i for i in failing.find("img") if failing.inside(i, card)]
    assert failing.elements[img][1]["src"] == "np1_a/baseline__drift.png" and table < img
    text = failing.text(card)
    assert "baseline of np1_a reason" in text
    assert 'pytest --partattn --partattn-update=failed "fixtures/images/np1_a.png::baseline"' in text


def test_every_cell_links_to_its_own_check(failing):
    ids = {a["id"] for _, a, _ in failing.elements if "id" in a}
    hrefs = [a["href"] for t, a, _ in failing.elements if t == "a" and a.get("href", "").startswith("#")]
    assert hrefs and all(unquote(h[1:]) in ids for h in hrefs)
    table = failing.find("table")[-1]  # the image x check table, after the failure cards' tables
    assert failing.heading("All checks") < table
    header, *rows = failing.rows(table)
    checks = [text for text, _, _ in header[1:]]
    assert checks == ["uniformity", "collapse", "part_separation", "baseline"]
    links = {
        (row[0][0], check): (text, href) for row in rows for check, (text, _, href) in zip(checks, row[1:], strict=True)
    }
    # a failing cell opens its failure card, a passing or skipped one its check in the image's closed block
    assert links["fixtures/images/np2_b.png", "part_separation"] == ("0.002 FAIL", "#np2_b--part_separation")
    assert links["fixtures/images/np2_b.png", "uniformity"] == ("0.5 pass", "#np2_b--uniformity")
    assert links["fixtures/images/np2_b.png", "collapse"] == ("skip", "#np2_b--collapse")
    assert links["fixtures/images/np1_a.png", "baseline"] == ("6.6 FAIL", "#np1_a--baseline")
    assert links["fixtures/images/np1_a.png", "collapse"] == ("", None)  # no such item
    target = failing.by_id("np2_b--uniformity")
    assert failing.elements[target][0] == "h3" and failing.text(target) == "uniformity: pass"
    # the checks of an image that could not run all open its one card
    assert links["fixtures/images/np3_broken.png", "uniformity"] == ("ERROR", "#np3_broken--uniformity")
    assert links["fixtures/images/np3_broken.png", "baseline"] == ("ERROR", "#np3_broken--uniformity")
    # the fixture set: a row under the images, its verdict in the baseline column
    assert links["fixture-set (all 2 images)", "baseline"] == ("FAIL", "#fixture-set")
    # the image cell opens its first failure
    assert {row[0][0]: row[0][2] for row in rows}["fixtures/images/np2_b.png"] == "#np2_b--part_separation"


def test_passing_checks_are_collapsed_per_image(failing):
    blocks = [i for i in failing.find("details") if failing.elements[i][1].get("id")]
    assert [failing.elements[i][1]["id"] for i in blocks] == ["np1_a", "np2_b"]
    assert all("open" not in failing.elements[i][1] for i in blocks)
    assert failing.text(blocks[1]).startswith("fixtures/images/np2_b.png: 1 passed, 1 skipped")
    for anchor in ("np1_a--uniformity", "np2_b--uniformity", "np2_b--collapse"):
        assert any(failing.inside(failing.by_id(anchor), b) for b in blocks), anchor
    for anchor in ("np1_a--baseline", "np2_b--part_separation"):  # failures are not repeated in them
        assert not any(failing.inside(failing.by_id(anchor), b) for b in blocks), anchor


@pytest.mark.parametrize("save_all", [False, True])
def test_a_passing_gate_says_how_to_get_figures_and_where_they_are(tmp_path, save_all):
    figures = [_png(tmp_path / "np1_a" / "uniformity__heads.png")] if save_all else []
    s = report.Summary()
    s.add(_item("np1_a.png", "uniformity", "pass", figures=figures))
    s.add(_item("np1_a.png", "baseline", "pass", value=1.2))
    page = Tree(report.index_html(s, tmp_path, HEADER))
    assert page.heading("Failures") is None
    (verdict,) = page.find("p", **{"class": "verdict pass"})
    assert page.text(verdict) == "PASSED: 2 passed"
    (hint,) = page.find("p", **{"class": "hint"})
    text = page.text(hint)
    assert verdict < hint < page.heading("All checks") and str(tmp_path) in text
    assert ("--partattn-save-all-figures" in text) is not save_all


def test_a_passing_fixture_set_is_a_row_and_a_note(tmp_path):
    s = report.Summary()
    for image in ("np1_a.png", "np2_b.png"):
        s.add(_item(image, "baseline", "pass", value=1.0))
    calm = SetDeviation("separation", "metric", 2, 0.3, 0.0, 0.4, 3.89)
    page = Tree(report.index_html(s, tmp_path, HEADER, SetVerdict(("np1_a", "np2_b"), (calm,), 0.001, ())))
    rows = page.rows(page.find("table")[-1])
    assert [text for text, _, _ in rows[-1]] == ["fixture-set (all 2 images)", "pass"]
    assert any(page.text(i).startswith("fixture set: no shift shared by the 2 images") for i in page.find("p"))
    assert page.text(page.find("p", **{"class": "verdict pass"})[0]) == "PASSED: 2 passed · fixture set passed"


# ----------------------------------------------------------------------------- page primitives
def test_sections_and_details_wrap_what_is_added_inside_them(tmp_path):
    page = Page("t", base=tmp_path)
    with page.section(cls="failure", anchor=anchor_id("sub/np2 a", "baseline")):
        page.heading("inside", level=3)
        with page.details("more <b>", anchor="more"):
            page.paragraph("hidden", cls="note")
    page.paragraph("after")
    tree = Tree(page.render())
    section = tree.by_id("sub/np2_a--baseline")  # whitespace, which ids cannot hold, became _
    details = tree.by_id("more")
    assert tree.inside(details, section) and "open" not in tree.elements[details][1]
    assert tree.text(details).startswith("more <b>")  # escaped, shown as written
    (after,) = [i for i in tree.find("p") if tree.text(i) == "after"]
    assert not tree.inside(after, section)
    with page.details("shown", open=True):
        pass
    assert "<details open><summary>shown</summary>" in page.render()


# ----------------------------------------------------------------------------- pytest-html
def test_html_extras_link_each_figure_at_full_size(tmp_path):
    pytest.importorskip("pytest_html")
    figure = _png(tmp_path / "results" / "np1 a" / "baseline__drift.png", (100, 146))
    p = _item("np1 a.png", "baseline", "fail", figures=[figure, str(tmp_path / "gone.png")])
    extras = report.html_extras(p)
    assert [(e["format_type"], e["name"]) for e in extras] == [
        ("image", "baseline__drift.png"),
        ("url", "baseline__drift.png (full size)"),
    ]  # a figure that is gone is left out
    assert extras[0]["content"].startswith("iVBOR")
    assert extras[1]["content"] == Path(figure).as_uri()
    relative = report.html_extras(p, report_dir=tmp_path / "reports")[1]["content"]
    assert relative == "../results/np1%20a/baseline__drift.png"
    assert (tmp_path / "reports" / unquote(relative)).resolve() == Path(figure).resolve()
