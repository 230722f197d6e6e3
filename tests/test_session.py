"""Run specs and the session: settings resolved once, in one order; running and judging apart
(re-judging a record under other thresholds never re-runs the model)."""

from __future__ import annotations

import pytest
from helpers import FIXTURE_IMAGES, TINY_FIXTURE

from partattn_checks.capture.runspec import (
    RunSpec,
    RunSpecError,
    checkpoint_defaults,
    for_pipeline,
    problem,
    resolve_run,
)
from partattn_checks.checks import Thresholds
from partattn_checks.runs.session import CaseError, Session, judge

IMAGE = FIXTURE_IMAGES / "np2_circle_square.png"
DEFAULTS = {"num_tokens": 16, "steps": 10, "guidance_scale": 7.0}
LOOSE = Thresholds.from_dict({"part_separation": {"min_separation": 0.0}, "uniformity": {"max_share": 1.0}})
STRICT = Thresholds.from_dict({"part_separation": {"min_separation": 0.999}, "uniformity": {"max_share": 1.0}})


class Counting:
    """A pipeline that counts its denoising runs (everything else is the wrapped pipeline's)."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


@pytest.fixture(scope="module")
def pipe():
    from partattn_checks.model.pipeline import PartCrafterPipeline

    return PartCrafterPipeline.from_pretrained(TINY_FIXTURE, device="cpu")


# ----------------------------------------------------------------------------- run specs
def test_resolution_order_checkpoint_options_sidecar_call():
    spec = resolve_run(
        DEFAULTS,
        {"steps": 5, "seed": None, "guidance_scale": 2.0},
        {"num_parts": 2, "steps": 3},
        {"seed": 4, "num_parts": None},
    )
    assert spec == RunSpec(
        num_parts=2, steps=3, seed=4, guidance_scale=2.0, num_tokens=16, device="cpu", dtype="float32"
    )
    assert spec.cfg and spec.run_kwargs() == {"steps": 3, "seed": 4, "guidance_scale": 2.0, "num_tokens": 16}
    assert resolve_run(DEFAULTS, call={"num_parts": 1}).seed == 0  # nobody sets a seed: 0
    with pytest.raises(AttributeError):
        spec.steps = 7  # frozen
    assert len({spec, resolve_run(DEFAULTS, {"steps": 3, "guidance_scale": 2.0}, {"num_parts": 2}, {"seed": 4})}) == 1


def test_one_validation_names_the_source():
    assert problem("steps", 0) == "must be at least 1"
    assert problem("steps", 2.5) == problem("seed", True) == "must be a whole number"
    assert problem("guidance_scale", float("nan")) == "must be a finite number"
    assert problem("guidance_scale", 0) is None and problem("seed", 0) is None
    with pytest.raises(RunSpecError, match=r"^chair\.toml: steps = 0 must be at least 1$"):
        resolve_run(DEFAULTS, None, {"num_parts": 1, "steps": 0}, labels={"sidecar": "chair.toml"})
    with pytest.raises(RunSpecError, match="^the checkpoint's run_defaults: num_tokens = 0 must be at least 1$"):
        resolve_run({**DEFAULTS, "num_tokens": 0}, call={"num_parts": 1})
    with pytest.raises(RunSpecError, match="no num_parts for this run"):
        resolve_run(DEFAULTS)
    with pytest.raises(RunSpecError, match="unknown run setting 'colour'"):
        resolve_run(DEFAULTS, call={"num_parts": 1, "colour": "red"})
    with pytest.raises(RunSpecError, match="dtype 'float64': unknown dtype"):
        resolve_run(DEFAULTS, call={"num_parts": 1}, dtype="float64")
    with pytest.raises(RunSpecError, match="device 'tpu': unknown device"):
        resolve_run(DEFAULTS, call={"num_parts": 1}, device="tpu")


def test_checkpoint_defaults_are_read_in_one_place(pipe):
    assert checkpoint_defaults(TINY_FIXTURE) == pipe.run_defaults  # torch-free read == the loaded pipeline's
    assert checkpoint_defaults(TINY_FIXTURE / "missing")["steps"] == 50  # no partattn.json: the built-in ones
    spec = for_pipeline(pipe, call={"num_parts": 2})
    assert (spec.steps, spec.guidance_scale, spec.num_tokens) == (
        pipe.run_defaults["steps"],
        pipe.run_defaults["guidance_scale"],
        pipe.run_defaults["num_tokens"],
    )
    assert (spec.device, spec.dtype) == ("cpu", "float32")


# ----------------------------------------------------------------------------- running and judging
def test_changing_only_thresholds_rejudges_without_rerunning(pipe):
    counting = Counting(pipe)
    session = Session(lambda: counting, options={"steps": 2})
    spec = session.spec({"num_parts": 2})
    loose = session.outcome(IMAGE, spec, LOOSE)
    strict = session.outcome(IMAGE, spec, STRICT)
    assert counting.calls == 1 and session.runs == 1  # one denoising run, judged twice
    assert strict.record is loose.record
    assert loose.results["part_separation"].verdict == "pass" and strict.results["part_separation"].verdict == "fail"
    assert session.outcome(IMAGE, spec, LOOSE) is loose  # same thresholds: the same outcome
    only = session.outcome(IMAGE, spec, STRICT, checks=["uniformity"])
    assert list(only.results) == ["uniformity"] and only.record is loose.record
    # judging is a function of the record: no session, no pipeline
    assert judge(loose.record, STRICT)["part_separation"].verdict == "fail"
    assert counting.calls == 1
    # the record remembers the spec it was made with (hence the baseline fingerprint)
    assert {k: loose.record.meta[k] for k in spec.to_dict()} == spec.to_dict()
    # what changes the denoising runs again
    session.outcome(IMAGE, session.spec({"num_parts": 2}, {"seed": 1}), LOOSE)
    assert counting.calls == 2


def test_a_failed_run_is_remembered_and_the_model_loads_once():
    loads = []

    def load():
        loads.append(1)
        raise OSError("no weights here")

    session = Session(load)
    for _ in range(2):
        with pytest.raises(CaseError, match="model could not be loaded|could not load the model: no weights here"):
            session.spec({"num_parts": 2})
    assert loads == [1]
