"""Baseline store and decisions: atomic writes, unreadable files, fingerprints, update modes, CI, the workflow."""

from __future__ import annotations

import json
import shlex

import pytest
from baseline_support import ENV, numbers, runner
from plugin_support import IMAGE, TINY, args, make_project, outcomes

from partattn_checks.base import atomic
from partattn_checks.baselines import fingerprint
from partattn_checks.baselines import store as bl
from partattn_checks.baselines.errors import BaselineError, BaselineWriteError
from partattn_checks.baselines.sample import SeedRun, SeedSample
from partattn_checks.baselines.store import BaselineContent
from partattn_checks.checks import Thresholds

pytest_plugins = ("pytester",)

METRICS = {"entropy_mean": 0.9, "peak_mean": 0.06, "separation": 0.01}
NODE = f"fixtures/images/{IMAGE}::baseline"
KEY = IMAGE.rsplit(".", 1)[0]
K = 4


@pytest.fixture(autouse=True)
def _no_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)


def _seeded(metrics=METRICS):
    """``metrics`` moved a little by each seed (a seed spread of about 0.001), the same under every condition."""
    return lambda seed, condition: {k: v + 0.001 * ((seed * 7919) % 5 - 2) for k, v in metrics.items()}


def _evaluate(tmp_path, metrics=METRICS, env=ENV, **policy):
    return runner(tmp_path, baseline_seeds=K, **policy).evaluate(numbers("img", _seeded(metrics), env), Thresholds())


def _content(metrics=METRICS, seeds=(0, 1, 2), checks=None) -> BaselineContent:
    runs = tuple(SeedRun(s, dict(_seeded(metrics)(s, None)), dict(checks or {"uniformity": 0.5}), ENV) for s in seeds)
    return BaselineContent("fixtures/images/sub/np2_x.png", SeedSample(runs), ENV)


# ----------------------------------------------------------------------------- files
def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "metrics.json"
    atomic.atomic_write_text(target, "one")
    atomic.atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic.atomic_write_text(target, "old")

    def boom(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic.atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_store_round_trip_and_layout(tmp_path):
    store = bl.BaselineStore(tmp_path)
    content = _content(checks={"uniformity": 0.5, "part_separation": None})
    assert store.write("sub/np2_x", content)
    paths = store.paths("sub/np2_x")
    assert paths.metrics == tmp_path / "sub" / "np2_x" / "metrics.json"
    assert store.keys() == ["sub/np2_x"]
    loaded = store.load("sub/np2_x")
    assert loaded.seeds == (0, 1, 2) and loaded.samples == {
        k: [round(v, 5) for v in vs] for k, vs in content.sample.samples.items()
    }
    assert loaded.metrics == {k: round(v, 5) for k, v in content.sample.metrics.items()} and loaded.environment == ENV
    assert loaded.checks == {"uniformity": 0.5, "part_separation": None}
    doc = json.loads(paths.metrics.read_text())
    assert doc["schema_version"] == bl.BASELINE_SCHEMA_VERSION and doc["image"] == "fixtures/images/sub/np2_x.png"
    assert store.load("absent") is None


@pytest.mark.parametrize(
    "text, corrupt, message",
    [
        ("{not json", True, "not valid JSON"),
        ("[1, 2]", True, "expected a JSON object"),
        ('{"schema_version": 1, "metrics": {"a": "x"}}', True, "'metrics' must be a non-empty table of numbers"),
        ('{"schema_version": 99, "metrics": {"a": 1}}', False, "baseline schema version 99"),
        ('{"schema_version": 1, "metrics": {"a": 0.5, "b": Infinity}}', False, "metric b is inf, not a finite number"),
        ('{"schema_version": 1, "metrics": {"a": NaN}}', False, "metric a is nan, not a finite number"),
        ('{"schema_version": 2, "metrics": {"a": 1}, "samples": {"a": [1, 1]}}', False, "the 'seeds' table is missing"),
        ('{"schema_version": 2, "metrics": {"a": 1}, "seeds": [0, 1]}', False, "the 'samples' table is missing"),
        (
            '{"schema_version": 2, "metrics": {"a": 1, "b": 2}, "seeds": [0, 1], "samples": {"a": [1, 1]}}',
            False,
            "metric b has no samples (one value per seed)",
        ),
        ('{"schema_version": 2, "metrics": {"a": 1}, "seeds": [0], "samples": {"a": [1]}}', False, "two or more"),
        ('{"schema_version": 3, "candidate": true, "metrics": {"a": 1}}', False, "a candidate"),
    ],
)
def test_unusable_baselines_name_the_file(tmp_path, text, corrupt, message):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "metrics.json").write_text(text)
    with pytest.raises(BaselineError) as info:
        bl.BaselineStore(tmp_path).load("img")
    assert str(tmp_path / "img" / "metrics.json") in str(info.value) and message in str(info.value)
    assert info.value.corrupt is corrupt


def test_a_non_finite_baseline_fails_instead_of_allowing_any_drift(tmp_path):
    (tmp_path / "base" / "img").mkdir(parents=True)
    (tmp_path / "base" / "img" / "metrics.json").write_text(
        '{"schema_version": 1, "metrics": {"entropy_mean": Infinity, "peak_mean": 0.06, "separation": 0.01}}'
    )
    out = _evaluate(tmp_path)
    assert out.result.verdict == "fail" and out.status == "unreadable"
    assert "entropy_mean is inf" in out.result.reason and "--partattn-update=failed" in out.result.reason
    assert "--partattn-update=all" not in out.result.reason  # one way out, not two
    assert _evaluate(tmp_path, update="failed").status == "updated"  # readable, so regenerated on request
    assert bl.BaselineStore(tmp_path / "base").load("img").seeds == tuple(range(K))


def test_non_finite_metrics_are_never_written(tmp_path):
    out = _evaluate(tmp_path, metrics=dict(METRICS, separation=float("nan")), update="missing")
    assert out.result.verdict == "fail" and "not finite (separation)" in out.result.reason
    assert not (tmp_path / "base" / "img").exists()


def test_rewriting_an_unchanged_baseline_leaves_the_files_alone(tmp_path):
    store = bl.BaselineStore(tmp_path)
    content = _content(metrics={"a": 0.1234567, "b": 0.5})
    assert store.write("img", content)
    doc = json.loads(store.paths("img").metrics.read_text())
    assert doc["metrics"]["b"] == round(content.sample.metrics["b"], 5)
    assert doc["samples"]["a"][0] == round(content.sample.samples["a"][0], 5)  # rounded far inside any spread
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in store.paths("img").folder.iterdir()}
    # moves of about 1e-6 (what reruns on the same machine give) change nothing on disk
    assert not store.write("img", _content(metrics={"a": 0.1234612, "b": 0.4999989}))
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in store.paths("img").folder.iterdir()} == before
    assert store.write("img", _content(metrics={"a": 0.2, "b": 0.5}))  # a real change is written


def test_a_rewrite_of_an_unchanged_model_says_up_to_date(tmp_path):
    assert _evaluate(tmp_path).status == "missing"
    assert _evaluate(tmp_path, update="missing").status == "written"
    again = _evaluate(tmp_path, update="all")
    assert again.status == "compared" and "no stored value changed" in again.result.reason


def test_unused_baselines_are_listed_and_removed_without_touching_other_files(tmp_path):
    store = bl.BaselineStore(tmp_path)
    for key in ("np2_kept", "sub/np2_gone"):
        store.write(key, _content())
    (tmp_path / "README.md").write_text("notes")
    assert store.keys() == ["np2_kept", "sub/np2_gone"]
    store.remove("sub/np2_gone")
    assert store.keys() == ["np2_kept"] and not (tmp_path / "sub").exists()
    (tmp_path / "np2_kept" / "notes.txt").write_text("mine")
    store.remove("np2_kept")
    assert (tmp_path / "np2_kept" / "notes.txt").is_file() and (tmp_path / "README.md").is_file()


def test_a_folder_in_the_place_of_a_file_stops_the_write_before_anything_is_written(tmp_path):
    store = bl.BaselineStore(tmp_path)
    assert store.write("img", _content())
    before = {p.name: p.read_bytes() for p in store.paths("img").folder.iterdir() if p.is_file()}
    store.paths("img").metrics.unlink()
    store.paths("img").metrics.mkdir()  # metrics.json is a folder
    with pytest.raises(BaselineWriteError, match="metrics.json: a folder .* is in the way") as info:
        store.write("img", _content(metrics={"a": 0.9}))
    assert "nothing was written" in str(info.value)
    after = {p.name: p.read_bytes() for p in store.paths("img").folder.iterdir() if p.is_file()}
    assert after == {k: v for k, v in before.items() if k != "metrics.json"}  # environment.json untouched
    # through the runner: the item reads the folder as unusable, and a forced update fails in one line
    (tmp_path / "x" / "base" / "img").mkdir(parents=True)
    (tmp_path / "x" / "base" / "img" / "metrics.json").mkdir()
    assert "not a file (move it away)" in _evaluate(tmp_path / "x").result.reason
    out = _evaluate(tmp_path / "x", update="all", force=True)
    assert out.result.verdict == "fail" and out.status == "refused"
    assert out.result.reason.startswith("not written: cannot write") and "is in the way" in out.result.reason
    assert [p.name for p in (tmp_path / "x" / "base" / "img").iterdir()] == ["metrics.json"]


def test_a_full_disk_is_one_line_and_keeps_the_old_files(tmp_path, monkeypatch):
    store = bl.BaselineStore(tmp_path)
    assert store.write("img", _content())
    before = {p.name: p.read_bytes() for p in store.paths("img").folder.iterdir()}

    def full(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(bl, "atomic_write_text", full)
    with pytest.raises(BaselineWriteError) as info:
        store.write("img", _content(metrics={"a": 0.7}))
    assert str(info.value) == (
        f"cannot write {store.paths('img').metrics}: no space left on the device; the baseline files already "
        f"there were kept"
    )
    assert {p.name: p.read_bytes() for p in store.paths("img").folder.iterdir()} == before


def test_fingerprint_from_record_meta():
    meta = {
        "config": {"width": 64},
        "num_parts": 3,
        "steps": 2,
        "seed": 1,
        "guidance_scale": 7.0,
        "num_tokens": 16,
        "dtype": "float32",
        "device": "cuda:1",
        "versions": {"torch": "2.5", "diffusers": "0.31"},
    }
    fp = fingerprint.environment_fingerprint(meta, "embedded:partcrafter-tiny")
    assert fp["device_kind"] == "cuda" and fp["config_hash"] == fingerprint.config_hash({"width": 64})
    assert set(fingerprint.FINGERPRINT_KEYS) - {"repo_id", "commit"} == set(fp)  # those two: a Hugging Face hub model's
    assert fingerprint.fingerprint_diff(fp, dict(fp, steps=4)) == ["steps: 2 in the baseline, 4 now"]


# ----------------------------------------------------------------------------- decisions
def test_missing_fails_with_where_it_looked_and_a_candidate(tmp_path):
    out = _evaluate(tmp_path)
    assert out.result.verdict == "fail" and out.status == "missing"
    assert str(tmp_path / "base" / "img" / "metrics.json") in out.result.reason
    assert str(tmp_path / "cand" / "img") in out.result.reason
    doc = json.loads((tmp_path / "cand" / "img" / "metrics.json").read_text())
    assert doc["candidate"] is True and doc["seeds"] == [0]
    assert doc["metrics"] == {k: round(v, 5) for k, v in _seeded()(0, None).items()}
    assert not (tmp_path / "base").exists()


@pytest.mark.parametrize("mode", ["missing", "failed", "all"])
def test_update_modes_write_missing_baselines(tmp_path, mode):
    out = _evaluate(tmp_path, update=mode)
    assert out.result.verdict == "pass" and out.status == "written"
    stored = bl.BaselineStore(tmp_path / "base").load("img")
    assert stored.seeds == (0, 1, 2, 3) and stored.samples["separation"] == [
        _seeded()(s, None)["separation"] for s in range(K)
    ]
    assert stored.paired is not None and stored.paired.seeds == (0,)
    assert [c.name for c in stored.paired.conditions] == ["rounding", "threads"]


def test_drift_fails_and_update_modes(tmp_path):
    _evaluate(tmp_path, update="missing")
    assert _evaluate(tmp_path).result.verdict == "pass"
    drifted = dict(METRICS, separation=0.5)
    out = _evaluate(tmp_path, metrics=drifted)
    assert out.result.verdict == "fail" and "moved beyond the numeric floor: separation" in out.result.reason
    assert _evaluate(tmp_path, metrics=drifted, update="missing").result.verdict == "fail"  # missing only
    out = _evaluate(tmp_path, metrics=drifted, update="failed")
    assert out.status == "updated" and out.result.verdict == "pass"
    assert _evaluate(tmp_path, metrics=drifted).result.verdict == "pass"
    # "failed" leaves passing baselines alone; "all" rewrites them (where a stored value changes)
    within = dict(drifted, separation=0.5 + 1e-6)
    before = (tmp_path / "base" / "img" / "metrics.json").stat().st_mtime_ns
    assert _evaluate(tmp_path, metrics=within, update="failed").status == "compared"
    assert (tmp_path / "base" / "img" / "metrics.json").stat().st_mtime_ns == before
    assert _evaluate(tmp_path, metrics=dict(drifted, separation=0.51), update="all").status == "updated"


def test_environment_mismatch_warns_or_fails_when_strict(tmp_path):
    _evaluate(tmp_path, update="missing")
    other = dict(ENV, torch="9.9")
    out = _evaluate(tmp_path, env=other)
    assert out.result.verdict == "pass"
    assert out.warnings and "torch: '2.x' in the baseline, '9.9' now" in out.warnings[0]
    out = _evaluate(tmp_path, env=other, strict_env=True)
    assert (
        out.result.verdict == "fail" and out.status == "env-mismatch" and "different environment" in out.result.reason
    )
    assert _evaluate(tmp_path, env=other, strict_env=True, update="failed").status == "updated"
    assert _evaluate(tmp_path, env=other, strict_env=True).result.verdict == "pass"


def test_corrupt_baseline_is_never_overwritten_unless_all_and_forced(tmp_path):
    folder = tmp_path / "base" / "img"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text("{oops")
    for mode in (None, "missing", "failed", "all"):
        out = _evaluate(tmp_path, update=mode)
        assert out.result.verdict == "fail" and out.status == "unreadable"
        assert "NOT overwritten" in out.result.reason and str(folder / "metrics.json") in out.result.reason
        assert (folder / "metrics.json").read_text() == "{oops"
    out = _evaluate(tmp_path, update="all", force=True)
    assert out.status == "updated" and bl.BaselineStore(tmp_path / "base").load("img").seeds == tuple(range(K))


def test_old_schema_is_replaced_by_update_failed(tmp_path):
    folder = tmp_path / "base" / "img"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text('{"schema_version": 0, "metrics": {"a": 1}}')
    assert _evaluate(tmp_path).result.verdict == "fail"
    assert _evaluate(tmp_path, update="failed").status == "updated"


# ----------------------------------------------------------------------------- the workflow
def test_workflow_missing_create_pass_drift_fail_update_pass(pytester):
    make_project(pytester)
    run = lambda *extra: pytester.runpytest_inprocess(*args(*extra), NODE)  # noqa: E731
    result = run()
    assert outcomes(result) == {NODE: "failed"}
    metrics = pytester.path / "fixtures" / "baselines" / KEY / "metrics.json"
    result.stdout.fnmatch_lines(
        [
            f"no baseline for this image: looked for {metrics}; create it with --partattn-update=missing. This run's "
            f"measurements were written to {pytester.path / '.partattn-results' / 'baseline-candidates' / KEY} *"
        ]
    )
    assert not metrics.exists()

    result = run("--partattn-update=missing")  # create
    assert outcomes(result) == {NODE: "passed"} and metrics.is_file()
    result.stdout.fnmatch_lines(["1 baseline written or updated (review and commit them):"])
    env = json.loads(metrics.with_name("environment.json").read_text())
    assert env["steps"] == 2 and env["dtype"] == "float32" and env["device_kind"] == "cpu"
    assert env["model"] == str(TINY) and env["torch"] and env["diffusers"] and len(env["config_hash"]) == 16

    assert outcomes(run()) == {NODE: "passed"}  # pass

    doc = json.loads(metrics.read_text())  # drift: every seed of the baseline 0.5 higher
    assert len(doc["seeds"]) == 16 and len(doc["samples"]["entropy_mean"]) == 16
    doc["samples"]["entropy_mean"] = [v + 0.5 for v in doc["samples"]["entropy_mean"]]
    metrics.write_text(json.dumps(doc))
    result = run()
    assert outcomes(result) == {NODE: "failed"}
    result.stdout.fnmatch_lines(
        [
            "moved beyond the numeric floor: entropy_mean. entropy_mean * (this run) vs * for the same seed in the "
            "baseline: * seed spreads (spread *; numeric floor *; allowance ±0.25)*[paired verdict: reran the "
            "baseline's seed(s) [[]0[]]: judged against the numeric floor]*",
        ]
    )
    assert outcomes(run("--partattn-verdict=seed-spread")) == {NODE: "failed"}
    result = run("--partattn-verdict=seed-spread")
    result.stdout.fnmatch_lines(
        [
            "moved beyond the baseline's seed noise: entropy_mean. entropy_mean * vs baseline * ± * over 15 seeds: "
            "* standard errors away (allowance ±*",
        ]
    )

    update = shlex.split(next(ln for ln in result.stdout.lines if "--partattn-update=failed" in ln))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *update[1:])  # the printed command
    assert outcomes(result) == {NODE: "passed"}
    assert outcomes(run()) == {NODE: "passed"}


def test_update_refused_under_ci_unless_forced(pytester, monkeypatch):
    make_project(pytester)
    monkeypatch.setenv("CI", "true")
    result = pytester.runpytest_inprocess(*args("--partattn-update=missing"), NODE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --partattn-update missing: refusing to update baselines because the CI "
            "environment variable is set (CI=true)*--partattn-force-update*"
        ]
    )
    assert not (pytester.path / "fixtures" / "baselines").exists()
    result = pytester.runpytest_inprocess(*args("--partattn-update=missing", "--partattn-force-update"), NODE)
    assert outcomes(result) == {NODE: "passed"}


def test_corrupt_baseline_in_a_run(pytester):
    make_project(pytester)
    folder = pytester.path / "fixtures" / "baselines" / KEY
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text('{"schema_version": 1, "metrics": {')
    for extra in ((), ("--partattn-update=failed",)):
        result = pytester.runpytest_inprocess(*args(*extra), NODE)
        assert outcomes(result) == {NODE: "failed"}
        result.stdout.fnmatch_lines([f"baseline unusable: {folder / 'metrics.json'}: not valid JSON*NOT overwritten*"])
        assert (folder / "metrics.json").read_text() == '{"schema_version": 1, "metrics": {'


def test_environment_mismatch_in_a_run(pytester):
    make_project(pytester)
    pytester.runpytest_inprocess(*args("--partattn-update=missing"), NODE)
    env = pytester.path / "fixtures" / "baselines" / KEY / "environment.json"
    doc = json.loads(env.read_text())
    doc["torch"] = "0.0-elsewhere"
    env.write_text(json.dumps(doc))
    result = pytester.runpytest_inprocess(*args(), NODE)
    assert outcomes(result) == {NODE: "passed"}
    result.stdout.fnmatch_lines(["*PartattnEnvironmentWarning*different environment*torch: '0.0-elsewhere'*"])
    result = pytester.runpytest_inprocess(*args("--partattn-strict-env"), NODE)
    assert outcomes(result) == {NODE: "failed"}


def test_unused_baselines_are_reported_and_removed_by_update_all(pytester):
    make_project(pytester)
    pytester.runpytest_inprocess(*args("--partattn-update=missing"), NODE)
    gone = pytester.path / "fixtures" / "baselines" / "np3_deleted_image"
    gone.mkdir()
    (gone / "metrics.json").write_text(json.dumps({"schema_version": 1, "metrics": {"a": 0.5}}))
    result = pytester.runpytest_inprocess(*args(), NODE)
    assert outcomes(result) == {NODE: "passed"}
    result.stdout.fnmatch_lines(
        [
            "1 unused baseline(s), their image is no longer under fixtures/images (delete "
            "them, or let --partattn-update=all remove them):",
            "  fixtures/baselines/np3_deleted_image",
        ]
    )
    assert gone.is_dir()
    result = pytester.runpytest_inprocess(*args("--partattn-update=all"), NODE)
    result.stdout.fnmatch_lines(
        ["1 unused baseline(s) removed (no image under fixtures/images):", "  fixtures/baselines/np3_deleted_image"]
    )
    assert not gone.exists() and (pytester.path / "fixtures" / "baselines" / KEY / "metrics.json").is_file()
    assert "unused baseline" not in pytester.runpytest_inprocess(*args(), NODE).stdout.str()


def test_update_all_on_an_unchanged_model_leaves_the_baselines_as_they_were(pytester):
    make_project(pytester)
    pytester.runpytest_inprocess(*args("--partattn-update=missing"), NODE)
    folder = pytester.path / "fixtures" / "baselines" / KEY
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    result = pytester.runpytest_inprocess(*args("--partattn-update=all"), NODE)
    assert outcomes(result) == {NODE: "passed"}
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert "written or updated" not in result.stdout.str()


def test_candidates_of_an_earlier_session_are_removed(pytester):
    make_project(pytester)
    stale = pytester.path / ".partattn-results" / "baseline-candidates" / "np2_old_image"
    stale.mkdir(parents=True)
    (stale / "metrics.json").write_text("{}")
    (stale / "environment.json").write_text("{}")
    mine = pytester.path / ".partattn-results" / "baseline-candidates" / "notes.txt"
    mine.write_text("not partattn's")
    result = pytester.runpytest_inprocess(*args(), NODE)  # no baseline: writes a fresh candidate
    assert outcomes(result) == {NODE: "failed"}
    assert not stale.exists() and mine.is_file()
    assert (pytester.path / ".partattn-results" / "baseline-candidates" / KEY / "metrics.json").is_file()


def test_a_second_update_session_on_the_same_folder_is_refused(pytester):
    fcntl = pytest.importorskip("fcntl")
    make_project(pytester)
    folder = pytester.path / "fixtures" / "baselines"
    folder.mkdir(parents=True)
    with open(folder / bl.UpdateLock.FILE, "w") as held:  # another session holds the lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = pytester.runpytest_inprocess(*args("--partattn-update=missing"), NODE)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(
            [
                f"ERROR: --partattn-update missing: {folder}: another pytest --partattn-update "
                f"session is writing these baselines right now*wait for it to finish*"
            ]
        )
        assert not (folder / KEY).exists()
    result = pytester.runpytest_inprocess(*args("--partattn-update=missing"), NODE)
    assert outcomes(result) == {NODE: "passed"}
    assert not (folder / bl.UpdateLock.FILE).exists()  # released and removed at the end


def test_a_baseline_whose_seeds_are_identical_says_so(tmp_path):
    constant = lambda seed, condition: dict(METRICS)  # noqa: E731 - a model that ignores its noise seed
    runner(tmp_path, update="all", baseline_seeds=K).evaluate(numbers("img", constant), Thresholds())
    moved = lambda seed, condition: dict(METRICS, separation=0.011)  # noqa: E731
    for verdict in ("auto", "seed-spread"):
        out = runner(tmp_path, baseline_seeds=K, verdict=verdict).evaluate(numbers("img", moved), Thresholds())
        assert out.result.verdict == "fail"
        assert f"the baseline's {K} seeds are identical in entropy_mean, peak_mean, separation" in out.result.reason
