"""The capture contract (docs/capture.md): exact, conditional-half, streaming, selective, loud.

Models: the tiny random checkpoint (``fixtures/checkpoints/tiny-random``: width 64, 4 heads of 16,
5 blocks with global ids [0, 2, 4], 8×8 DINOv2 patches + CLS = 65 image tokens) through the
pipeline, fresh tiny transformers built in memory for tests that break or patch a model, and small
standard diffusers attention modules.

Precision notes used by the tolerances below:
* the model runs in fp32 on the CPU; two fp32 computations of the same softmax that differ only in
  summation order (SDPA's kernel vs an einsum) agree to ~1e-7 relative;
* the record stores everything as fp16: round-to-nearest has a relative error of at most
  2^-11 for normal numbers and an absolute error of at most 2^-25 in the subnormal range.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
from pathlib import Path

import diffusers
import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from partattn_checks.capture.recorder import FAMILIES as CAPTURE_FAMILIES
from partattn_checks.capture.recorder import (
    AttentionRecorder,
    CaptureError,
    ProcessorFamily,
    Selection,
    cross_attention_modules,
    record_attention,
    register_family,
)
from partattn_checks.model.attention import PartCrafterAttnProcessor, TripoSGAttnProcessor, split_heads_first
from partattn_checks.model.pipeline import PartCrafterPipeline
from partattn_checks.model.tiny import TINY_TRANSFORMER, build_transformer

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "fixtures" / "checkpoints" / "tiny-random"
IMAGE = ROOT / "fixtures" / "images" / "np2_circle_square.png"
FP16_REL = 2.0**-11  # fp16 round-to-nearest, relative (normal range)
FP16_SUB = 2.0**-25  # fp16 round-to-nearest, absolute (subnormal range)
LAYERS = [f"blocks.{i}.attn2" for i in range(TINY_TRANSFORMER["num_layers"])]
GLOBAL = set(TINY_TRANSFORMER["global_attn_block_ids"])
NUM_IMAGE_TOKENS = 65  # CLS + 8×8 patches of the tiny DINOv2 (112 px, patch 14)
NUM_PATCH_KEYS = 64


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pipe():
    return PartCrafterPipeline.from_pretrained(CHECKPOINT, device="cpu")


@pytest.fixture
def fresh_pipe(pipe):
    """A pipeline with its own copy of the transformer, free to be broken by the test."""
    checkpoint = dataclasses.replace(pipe.checkpoint, transformer=copy.deepcopy(pipe.transformer))
    return PartCrafterPipeline(checkpoint, device="cpu")


@pytest.fixture
def model():
    return build_transformer(TINY_TRANSFORMER, seed=1)


def processors(model):
    return {name: module.processor for name, module in cross_attention_modules(model)}


def hook_count(model) -> int:
    """Forward hooks and pre-hooks on the cross-attention modules' submodules (the recorder's taps)."""
    return sum(
        len(sub._forward_hooks) + len(sub._forward_pre_hooks)
        for _, module in cross_attention_modules(model)
        for sub in module.modules()
    )


def run_steps(model, num_parts, *, steps=2, tokens=16, cfg=True, image_tokens=None, seed=0):
    """Call the transformer once per step (what the recorder counts as a step when used alone)."""
    gen = torch.Generator().manual_seed(seed)
    batch = 2 * num_parts if cfg else num_parts
    latents = torch.randn(batch, tokens, model.config.in_channels, generator=gen)
    if image_tokens is None:
        image = torch.randn(1, NUM_IMAGE_TOKENS, model.config.cross_attention_dim, generator=gen)
        image = image.expand(num_parts, -1, -1)
        image_tokens = torch.cat([torch.zeros_like(image), image]) if cfg else image
    outs = []
    with torch.no_grad():
        for step in range(steps):
            t = torch.full((batch,), 1000.0 * (1 - step / steps))
            outs.append(model(latents, t, image_tokens, attention_kwargs={"num_parts": num_parts}).sample)
    return outs


# ---------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("guidance", [7.0, 1.0], ids=["cfg", "no-cfg"])
@pytest.mark.parametrize("num_parts", [1, 2, 3, 4])
def test_capture_is_bit_identical(pipe, guidance, num_parts):
    kwargs = dict(steps=2, num_tokens=16, guidance_scale=guidance, seed=3)
    before = processors(pipe.transformer)
    plain = pipe(IMAGE, num_parts, **kwargs)
    captured, record = record_attention(pipe, IMAGE, num_parts, **kwargs)
    assert torch.equal(plain.latents, captured.latents)
    assert record.num_parts == num_parts and record.steps == [0, 1] and record.layers == LAYERS
    assert record.meta["cfg"] is (guidance > 1.0)
    after = processors(pipe.transformer)
    assert all(after[name] is before[name] for name in before)


def _rms(x, norm):
    """RMSNorm written out: x / sqrt(mean(x²) + eps) · weight."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight


def reference_partcrafter(attn, hidden, context, num_parts, is_global):
    """Conditional-half probabilities and values from docs/model.md, sliced head by head.

    Independent of the model's code: plain matmuls with the weights, head ``h`` taking query columns
    ``d·h..d·h+d`` of ``to_q`` and key/value columns ``2dh..2dh+d`` / ``2dh+d..2dh+2d`` of
    ``cat(to_k, to_v)``. Returns ``P`` (N, H, T, K) without the time-token row and ``V`` (N, H, K, d),
    both fp32; for global blocks every part of the half uses the first part's keys and values.
    """
    heads = attn.heads
    q = hidden @ attn.to_q.weight.T
    kv = torch.cat([context @ attn.to_k.weight.T, context @ attn.to_v.weight.T], dim=-1)
    d = q.shape[-1] // heads
    cond = slice(num_parts, 2 * num_parts)
    probs, values = [], []
    for h in range(heads):
        qh = _rms(q[cond, 1:, d * h : d * (h + 1)], attn.norm_q)  # drop the time-token query row
        kh = _rms(kv[cond, :, 2 * d * h : 2 * d * h + d], attn.norm_k)
        vh = kv[cond, :, 2 * d * h + d : 2 * d * (h + 1)]
        if is_global:
            kh, vh = kh[:1].expand_as(kh), vh[:1].expand_as(vh)
        probs.append(torch.softmax(torch.einsum("pqd,pkd->pqk", qh, kh) * d**-0.5, dim=-1))
        values.append(vh)
    return torch.stack(probs, 1), torch.stack(values, 1)


def reference_stats(P, has_cls=True):
    """Entropy, peak, effective keys, CLS mass and marginals, written out plainly (fp32)."""
    cls_mass = P[..., 0].mean(-1) if has_cls else torch.zeros(P.shape[:-2])
    patch = P[..., 1:] if has_cls else P
    patch = patch / patch.sum(-1, keepdim=True)
    k = patch.shape[-1]
    h = -(patch * patch.log()).sum(-1)  # no zeros in a softmax of finite logits
    return {
        "entropy": h.mean(-1) / math.log(k),
        "peak": patch.amax(-1).mean(-1),
        "eff_keys": h.mean(-1).exp() / k,
        "cls_mass": cls_mass,
        "marginal": patch.mean(-2),
    }


def assert_pv_reproduces(output, P16, V, to_out):
    """``to_out(P·V)`` with the stored fp16 ``P`` equals the layer's output within a proven bound.

    Each stored probability is off by at most ``2^-11·P + 2^-25`` (fp16 rounding), so row ``i`` of
    ``P·V`` is off by at most ``Σ_j (2^-11·P_ij + 2^-25)·|V_j|`` and the linear ``to_out`` maps that
    through ``|W|``. On top, 1e-5 absolute covers fp32 summation-order differences (values are O(1)).
    """
    P = P16.float()

    def merged(t):
        return t.transpose(1, 2).flatten(2)  # (N, H, T, d) -> (N, T, H·d)

    rebuilt = to_out[1](to_out[0](merged(P @ V)))
    err_in = merged((FP16_REL * P + FP16_SUB) @ V.abs())
    bound = err_in @ to_out[0].weight.abs().T + 1e-5
    diff = (rebuilt - output).abs()
    assert (diff <= bound).all(), f"max excess {(diff - bound).max().item():.3g}"
    return bound


@pytest.mark.parametrize("num_parts", [1, 3])
def test_recorded_probabilities_are_the_layers_own(pipe, num_parts):
    """Full maps of a global and a local layer rebuild the attn2 outputs; reduced stats match an fp32 reference."""
    steps, tokens = 2, 16
    chosen = {"blocks.0.attn2": 1, "blocks.1.attn2": 0, "blocks.4.attn2": 1}  # layer -> step
    seen = {name: [] for name in chosen}

    def keep(name):
        def hook(module, args, kwargs, output):
            seen[name].append((args[0].clone(), kwargs["encoder_hidden_states"].clone(), output.clone()))

        return hook

    hooks = [
        pipe.transformer.get_submodule(name).register_forward_hook(keep(name), with_kwargs=True) for name in chosen
    ]
    try:
        _, record = record_attention(
            pipe,
            IMAGE,
            num_parts,
            steps=steps,
            num_tokens=tokens,
            seed=1,
            selection=Selection(full_maps=list(chosen.items())),
        )
    finally:
        for hook in hooks:
            hook.remove()
    assert set(record.full_maps) == {(step, name) for name, step in chosen.items()}

    for name, step in chosen.items():
        attn = pipe.transformer.get_submodule(name)
        hidden, context, output = seen[name][step]  # one attn2 call per step
        is_global = int(name.split(".")[1]) in GLOBAL
        cond_out = output[num_parts:, 1:]  # conditional half, time-token row dropped, like P's rows
        full = record.full_maps[(step, name)]
        assert full.shape == (num_parts, attn.heads, tokens, NUM_IMAGE_TOKENS)

        # 1. to_out(P·V), V from the model's own heads-first split.
        _, _, value = split_heads_first(attn, hidden, context)
        value = value[num_parts:]
        if is_global:  # global blocks use the first part's keys/values of each CFG half
            value = value[:1].expand_as(value)
        bound = assert_pv_reproduces(cond_out, full, value, attn.to_out)

        # ... and the check has teeth: a naive `view(heads, head_dim)` of to_k gives other maps.
        d = attn.inner_dim // attn.heads
        naive_q = attn.norm_q(attn.to_q(hidden).view(*hidden.shape[:2], attn.heads, d).transpose(1, 2))
        naive_k = attn.norm_k(attn.to_k(context).view(*context.shape[:2], attn.heads, d).transpose(1, 2))
        naive = torch.softmax(naive_q[num_parts:, :, 1:] @ naive_k[num_parts:].transpose(-1, -2) * d**-0.5, -1)
        naive_out = attn.to_out[0]((naive @ value).transpose(1, 2).flatten(2))
        assert ((naive_out - cond_out).abs() > bound).any()

        # 2. An independent fp32 reference (explicit head slices, einsum) ...
        P_ref, V_ref = reference_partcrafter(attn, hidden, context, num_parts, is_global)
        ref_out = attn.to_out[0]((P_ref @ V_ref).transpose(1, 2).flatten(2))
        # fp32 vs fp32, different summation orders: ~1e-7 relative; 1e-5 leaves a wide margin.
        torch.testing.assert_close(ref_out, cond_out, rtol=1e-4, atol=1e-5)
        # ... equals the stored map up to fp16 rounding (plus fp32 slack) ...
        torch.testing.assert_close(full.float(), P_ref, rtol=FP16_REL, atol=1e-6)
        # ... and its plainly computed statistics equal the recorded fp16 ones: |fp16(x) − x| ≤ 2^-11·|x|,
        # plus 1e-5 for fp32 differences in logs/sums over ≤ 64 keys.
        ref = reference_stats(P_ref)
        s, li = record.step_index(step), record.layer_index(name)
        for key, field_name in [
            ("entropy", "entropy"),
            ("peak", "peak"),
            ("eff_keys", "eff_keys"),
            ("cls_mass", "cls_mass"),
            ("marginal", "marginals"),
        ]:
            torch.testing.assert_close(
                getattr(record, field_name)[s, li].float(),
                ref[key],
                rtol=FP16_REL,
                atol=1e-5,
                msg=lambda m, name=name, key=key: f"{name} {key}: {m}",
            )


# ---------------------------------------------------------------------------------- what is recorded
def test_records_the_conditional_half_only(model):
    """The unconditional half sees all-zero image tokens: zero keys, exactly uniform attention."""
    num_parts = 2
    with AttentionRecorder(model, num_parts=num_parts, cfg=True, selection=Selection(full_maps=[(0, 0)])) as rec:
        run_steps(model, num_parts)
    cond = rec.record()
    with AttentionRecorder(model, num_parts=num_parts, cfg=False) as rec:
        run_steps(model, num_parts)
    both = rec.record()  # the 2N "parts" of the CFG batch: [uncond..., cond...]

    assert both.num_parts == 2 * num_parts and cond.num_parts == num_parts
    # Uncond half: uniform, so Ĥ == 1 (fp32 ~1e-7 off, then fp16 rounds it to exactly 1).
    torch.testing.assert_close(
        both.entropy[:, :, :num_parts].float(), torch.ones(2, 5, num_parts, 4), rtol=0, atol=FP16_REL
    )
    # What cfg=True recorded is the other half, and on a random model it is not uniform.
    assert torch.equal(cond.entropy, both.entropy[:, :, num_parts:])
    assert torch.equal(cond.marginals, both.marginals[:, :, num_parts:])
    assert (cond.entropy.float() < 1 - 4 * FP16_REL).all()


def test_all_zero_conditioning_reads_as_uniform(model):
    """The free uniformity test: zeros in both halves give Ĥ == 1 and flat marginals everywhere."""
    num_parts = 3
    zeros = torch.zeros(2 * num_parts, NUM_IMAGE_TOKENS, model.config.cross_attention_dim)
    with AttentionRecorder(model, num_parts=num_parts, cfg=True) as rec:
        run_steps(model, num_parts, image_tokens=zeros)
    record = rec.record()
    # Uniform over 64 patch keys: Ĥ = 1, peak = 1/64, N_eff/Nk = 1, marginal = 1/64, CLS mass 1/65;
    # fp32 rounding is ~1e-7, fp16 storage within 2^-11 relative.
    for name, value in [("entropy", 1.0), ("eff_keys", 1.0), ("peak", 1 / 64), ("cls_mass", 1 / 65)]:
        tensor = getattr(record, name).float()
        torch.testing.assert_close(tensor, torch.full_like(tensor, value), rtol=FP16_REL, atol=0, msg=name)
    torch.testing.assert_close(
        record.marginals.float(), torch.full_like(record.marginals.float(), 1 / 64), rtol=FP16_REL, atol=0
    )


def test_time_token_dropped_and_cls_separate(pipe):
    tokens = 16
    _, record = record_attention(
        pipe, IMAGE, 2, steps=2, num_tokens=tokens, seed=0, selection=Selection(full_maps=[(0, 0), (1, 1)])
    )
    assert record.num_patch_keys == NUM_PATCH_KEYS and record.patch_grid == (8, 8) and record.has_cls
    assert record.marginals.shape == (2, 5, 2, 4, NUM_PATCH_KEYS)
    for (step, name), full in record.full_maps.items():
        assert full.shape == (2, 4, tokens, NUM_IMAGE_TOKENS)  # T query rows, not T + 1
        # CLS mass is column 0 of the map, averaged over queries (fp16 both sides).
        s, li = record.step_index(step), record.layer_index(name)
        torch.testing.assert_close(
            record.cls_mass[s, li].float(), full[..., 0].float().mean(-1), rtol=4 * FP16_REL, atol=1e-6
        )
    assert (record.cls_mass > 0).all() and (record.cls_mass < 1).all()
    # Marginals are distributions over the 64 patch keys; each fp16 entry is within 2^-11 of its
    # value, so the sum is within 2^-11 of 1 (+ fp32 slack).
    sums = record.marginals.float().sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=FP16_REL + 1e-5)


# ---------------------------------------------------------------------------------- cleanup
def test_processors_are_never_replaced_and_the_taps_come_off(model):
    before = processors(model)
    with AttentionRecorder(model, num_parts=2) as rec:
        inside = processors(model)
        taps = hook_count(model)
        run_steps(model, 2, steps=1)
    assert all(inside[n] is before[n] for n in before)  # every module's own processor runs
    assert taps > 0 and hook_count(model) == 0
    assert all(processors(model)[n] is before[n] for n in before)
    assert rec.record().num_steps == 1


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()], ids=["exception", "keyboard-interrupt"])
def test_restores_processors_when_interrupted(model, error):
    before = processors(model)
    with pytest.raises(type(error)):  # the original error, not a capture complaint
        with AttentionRecorder(model, num_parts=2):
            run_steps(model, 2, steps=1)
            raise error
    assert all(processors(model)[n] is before[n] for n in before) and hook_count(model) == 0


def test_restores_processors_on_zero_captures(model):
    before = processors(model)
    with pytest.raises(CaptureError, match="no cross-attention was recorded") as info:
        with AttentionRecorder(model, num_parts=2):
            pass
    assert diffusers.__version__ in str(info.value)
    assert all(processors(model)[n] is before[n] for n in before)


def test_nested_recorders_are_refused(model):
    before = processors(model)
    with AttentionRecorder(model, num_parts=2) as outer:
        with pytest.raises(CaptureError, match="already being recorded") as info:
            with AttentionRecorder(model, num_parts=2, selection=Selection(layers=[3])):
                pass
        message = str(info.value)
        assert "blocks.3.attn2" in message and "TripoSGAttnProcessor" in message and diffusers.__version__ in message
        assert all(processors(model)[n] is before[n] for n in before)
        run_steps(model, 2, steps=1)  # the outer recorder's taps are still on
    assert outer.record().num_steps == 1
    assert all(processors(model)[n] is before[n] for n in before) and hook_count(model) == 0
    with pytest.raises(CaptureError, match="already used; use a new one per run"):
        with outer:  # a second run would be appended to the first one's: refused
            pass


def test_record_is_refused_inside_the_block(model):
    with AttentionRecorder(model, num_parts=2) as rec:
        run_steps(model, 2, steps=1)
        with pytest.raises(CaptureError, match="after the recorder"):
            rec.record()


# ---------------------------------------------------------------------------------- loud failures
class DummyProcessor:
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, **kwargs):
        return AttnProcessor2_0()(attn, hidden_states, encoder_hidden_states)


def test_unknown_processor_is_named(model):
    model.blocks[1].attn2.set_processor(DummyProcessor())
    before = processors(model)
    with pytest.raises(CaptureError) as info:
        AttentionRecorder(model, num_parts=2).__enter__()
    message = str(info.value)
    assert "blocks.1.attn2" in message and "DummyProcessor" in message and diffusers.__version__ in message
    assert "register_family" in message  # how to describe it
    assert all(processors(model)[n] is before[n] for n in before) and hook_count(model) == 0
    # Recording the other layers is fine.
    with AttentionRecorder(model, num_parts=2, selection=Selection(layers=[0, 2, 3, 4])) as rec:
        run_steps(model, 2, steps=1)
    assert rec.record().layers == [n for n in LAYERS if n != "blocks.1.attn2"]


def test_miscount_is_an_error(model, monkeypatch):
    block = model.blocks[3]

    def forward_without_attn2(self, hidden_states, image_tokens, skip=None, attention_kwargs=None):
        kwargs = attention_kwargs or {}
        if self.skip_linear is not None:
            hidden_states = self.skip_norm(self.skip_linear(torch.cat([skip, hidden_states], dim=-1)))
        hidden_states = hidden_states + self.attn1(self.norm1(hidden_states), **kwargs)
        return hidden_states + self.ff(self.norm3(hidden_states))

    monkeypatch.setattr(block, "forward", types.MethodType(forward_without_attn2, block))
    before = processors(model)
    with pytest.raises(CaptureError, match=r"expected 10 .*step 0, module 'blocks.3.attn2'") as info:
        with AttentionRecorder(model, num_parts=2):
            run_steps(model, 2, steps=2)
    assert diffusers.__version__ in str(info.value)
    assert all(processors(model)[n] is before[n] for n in before)


@pytest.mark.parametrize("target", ["", "blocks.2.attn2"], ids=["whole-model", "one-module"])
# Importing torch._dynamo (first use in the process) decorates torch's own modules with the deprecated
# torch.jit.script_method: 14 DeprecationWarnings about torch, none about this test or the recorder.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method`:DeprecationWarning")
def test_compiled_model_is_refused_before_compiling(model, target):
    from torch._dynamo.utils import counters

    module = model.get_submodule(target)
    module.compile()  # lazy: sets _compiled_call_impl, compiles on the first call only
    assert module._compiled_call_impl is not None
    frames = dict(counters["frames"])
    before = processors(model)
    with pytest.raises(CaptureError, match="torch.compile") as info:
        with AttentionRecorder(model, num_parts=2):
            pass
    message = str(info.value)
    assert f"'{target or '<root>'}'" in message and diffusers.__version__ in message
    assert dict(counters["frames"]) == frames  # nothing was traced or compiled
    assert all(processors(model)[n] is before[n] for n in before) and hook_count(model) == 0


def _nan_key_weight(pipeline, layer):
    with torch.no_grad():
        pipeline.transformer.get_submodule(layer).to_k.weight[0, 0] = float("nan")


def test_nonfinite_raises_naming_step_and_layer(fresh_pipe):
    _nan_key_weight(fresh_pipe, "blocks.2.attn2")
    before = processors(fresh_pipe.transformer)
    with pytest.raises(CaptureError, match=r"layer blocks\.2\.attn2 at step 0") as info:
        record_attention(fresh_pipe, IMAGE, 2, steps=2, num_tokens=8)
    message = str(info.value)
    assert "PartCrafterAttnProcessor" in message and diffusers.__version__ in message
    assert all(processors(fresh_pipe.transformer)[n] is before[n] for n in before)


def test_nonfinite_recorded_on_request(fresh_pipe):
    _nan_key_weight(fresh_pipe, "blocks.2.attn2")
    result, record = record_attention(fresh_pipe, IMAGE, 2, steps=2, num_tokens=8, nonfinite="record")
    assert record.nonfinite[0] == {"step": 0, "layer": "blocks.2.attn2", "where": "attention"}
    assert {"step": 0, "layer": None, "where": "latents"} in record.nonfinite
    # Step 0 started going wrong at blocks.2; from step 1 on, the NaN latents reach every layer.
    assert [e["layer"] for e in record.nonfinite if e["step"] == 0] == [
        "blocks.2.attn2",
        "blocks.3.attn2",
        "blocks.4.attn2",
        None,
    ]
    assert torch.isfinite(record.entropy[0, :2]).all() and not torch.isfinite(record.entropy[0, 2]).all()
    assert record.nonfinite[-1] == {"step": 1, "layer": None, "where": "latents"}


# ---------------------------------------------------------------------------------- selection
@pytest.mark.parametrize(
    "layers, expected",
    [
        ([0, 3], ["blocks.0.attn2", "blocks.3.attn2"]),
        ([-1], ["blocks.4.attn2"]),
        (["blocks.1.attn2"], ["blocks.1.attn2"]),
        (["blocks.[24].attn2"], ["blocks.2.attn2", "blocks.4.attn2"]),
        (["blocks.*.attn2"], LAYERS),
        (lambda name: int(name.split(".")[1]) in GLOBAL, ["blocks.0.attn2", "blocks.2.attn2", "blocks.4.attn2"]),
    ],
    ids=["indices", "negative", "name", "glob", "glob-all", "callable"],
)
def test_layer_selection(model, layers, expected):
    before = processors(model)
    unselected = [n for n in LAYERS if n not in expected]
    during = {n: [] for n in unselected}
    hooks = [
        model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: during[n].append(m.processor))
        for n in unselected
    ]
    with AttentionRecorder(model, num_parts=2, selection=Selection(layers=layers)) as rec:
        for name in unselected:  # selected-out layers keep their own processor object
            assert model.get_submodule(name).processor is before[name]
        run_steps(model, 2, steps=1)
    for hook in hooks:
        hook.remove()
    assert all(p is before[n] for n, calls in during.items() for p in calls)
    assert all(len(calls) == 1 for calls in during.values())
    record = rec.record()
    assert record.layers == expected
    assert record.layer_kinds == ["global" if int(n.split(".")[1]) in GLOBAL else "local" for n in expected]


@pytest.mark.parametrize(
    "layers, message", [([5], "out of range"), (["blocks.9.attn2"], "matches no"), (["attn1"], "matches no")]
)
def test_bad_layer_selection(model, layers, message):
    before = processors(model)
    with pytest.raises(ValueError, match=message):
        AttentionRecorder(model, selection=Selection(layers=layers)).__enter__()
    assert all(processors(model)[n] is before[n] for n in before)


@pytest.mark.parametrize(
    "selection, steps, expected",
    [
        (Selection(steps=[0, 2]), 4, [0, 2]),
        (Selection(every=2), 5, [0, 2, 4]),
        (Selection(every=2, steps=[1, 2, 3, 4]), 5, [2, 4]),
        (Selection(), 3, [0, 1, 2]),
    ],
    ids=["list", "every", "both", "all"],
)
def test_step_selection(pipe, selection, steps, expected):
    plain = pipe(IMAGE, 1, steps=steps, num_tokens=8)
    result, record = record_attention(pipe, IMAGE, 1, steps=steps, num_tokens=8, selection=selection)
    assert record.steps == expected
    assert record.timesteps == [1000.0 * (1 - s / steps) for s in expected]
    assert torch.equal(plain.latents, result.latents)  # unselected steps run the original processors


def test_full_maps_only_for_opted_in_pairs(model):
    selection = Selection(layers=[0, 1, 2], full_maps=[(0, 1), ("blocks.2.attn2", 0)])
    with AttentionRecorder(model, num_parts=2, selection=selection) as rec:
        run_steps(model, 2, steps=2)
    assert set(rec.record().full_maps) == {(1, "blocks.0.attn2"), (0, "blocks.2.attn2")}

    selection = Selection(full_maps=lambda name, step: name == "blocks.4.attn2" and step == 1)
    with AttentionRecorder(model, num_parts=2, selection=selection) as rec:
        run_steps(model, 2, steps=2)
    assert set(rec.record().full_maps) == {(1, "blocks.4.attn2")}


def test_record_size_does_not_grow_with_query_tokens(pipe):
    records = [record_attention(pipe, IMAGE, 2, steps=2, num_tokens=n, seed=0)[1] for n in (8, 64)]
    assert records[0].nbytes() == records[1].nbytes() > 0
    assert records[0].marginals.shape == records[1].marginals.shape
    assert not records[0].full_maps and not records[1].full_maps


# ---------------------------------------------------------------------------------- other models
class CrossAttentionNet(torch.nn.Module):
    """A standard diffusers cross-attention module in a minimal model (no time token, no CLS, no CFG)."""

    def __init__(self, processor, qk_norm=None, scale_qk=True):
        super().__init__()
        self.attn2 = Attention(
            query_dim=32,
            cross_attention_dim=24,
            heads=4,
            dim_head=8,
            qk_norm=qk_norm,
            scale_qk=scale_qk,
            processor=processor,
        )

    def forward(self, x, context):
        return x + self.attn2(x, encoder_hidden_states=context)


def reference_standard(attn, x, context, scale):
    """softmax(q kᵀ·scale) with diffusers' standard split: head h = columns d·h..d·h+d."""
    q, k, v = attn.to_q(x), attn.to_k(context), attn.to_v(context)
    d = q.shape[-1] // attn.heads
    probs, values = [], []
    for h in range(attn.heads):
        qh, kh = q[..., d * h : d * (h + 1)], k[..., d * h : d * (h + 1)]
        if attn.norm_q is not None:
            qh, kh = _rms(qh, attn.norm_q), _rms(kh, attn.norm_k)
        probs.append(torch.softmax(torch.einsum("bqd,bkd->bqk", qh, kh) * scale, dim=-1))
        values.append(v[..., d * h : d * (h + 1)])
    return torch.stack(probs, 1), torch.stack(values, 1)


@pytest.mark.parametrize(
    "processor, qk_norm, scale_qk",
    [
        (AttnProcessor2_0, None, True),
        (AttnProcessor2_0, "rms_norm", True),
        (AttnProcessor2_0, None, False),  # SDPA ignores attn.scale: the recorder must too
        (AttnProcessor, None, True),
        (AttnProcessor, None, False),  # AttnProcessor uses attn.scale (= 1 here)
    ],
    ids=["sdpa", "sdpa-qknorm", "sdpa-noscale", "classic", "classic-noscale"],
)
def test_standard_diffusers_attention(processor, qk_norm, scale_qk):
    torch.manual_seed(0)
    net = CrossAttentionNet(processor(), qk_norm=qk_norm, scale_qk=scale_qk).eval()
    if qk_norm:  # non-trivial norm weights, so that a missed norm would show
        with torch.no_grad():
            net.attn2.norm_q.weight.uniform_(0.5, 1.5)
            net.attn2.norm_k.weight.uniform_(0.5, 1.5)
    x, context = torch.randn(2, 10, 32), torch.randn(2, 7, 24)
    original = net.attn2.processor
    with torch.no_grad():
        plain = [net(x, context), net(x * 2, context)]
        outputs = {}
        hook = net.attn2.register_forward_hook(lambda m, a, o: outputs.setdefault(len(outputs), o))
        with AttentionRecorder(
            net, cfg=False, time_token=False, has_cls=False, selection=Selection(full_maps=[(0, 0)])
        ) as rec:
            captured = [net(x, context), net(x * 2, context)]
        hook.remove()
    assert net.attn2.processor is original
    assert all(torch.equal(a, b) for a, b in zip(plain, captured, strict=False))
    record = rec.record()
    assert record.steps == [0, 1] and record.layers == ["attn2"] and record.layer_kinds == ["standard"]
    assert record.num_parts == 2 and record.num_heads == 4 and record.num_patch_keys == 7
    assert not record.has_cls and (record.cls_mass == 0).all()

    used_scale = net.attn2.scale if processor is AttnProcessor else 8**-0.5
    with torch.no_grad():
        P_ref, V_ref = reference_standard(net.attn2, x, context, used_scale)
        full = record.full_maps[(0, "attn2")]
        torch.testing.assert_close(full.float(), P_ref, rtol=FP16_REL, atol=1e-6)
        assert_pv_reproduces(outputs[0], full, V_ref, net.attn2.to_out)
    ref = reference_stats(P_ref, has_cls=False)
    torch.testing.assert_close(record.entropy[0, 0].float(), ref["entropy"], rtol=FP16_REL, atol=1e-5)
    torch.testing.assert_close(record.marginals[0, 0].float(), ref["marginal"], rtol=FP16_REL, atol=1e-5)


def test_basic_transformer_block():
    """diffusers' own BasicTransformerBlock: attn2 (cross) is recorded, attn1 (self) is not touched."""
    torch.manual_seed(0)
    block = BasicTransformerBlock(32, 4, 8, cross_attention_dim=24).eval()
    x, context = torch.randn(2, 12, 32), torch.randn(2, 5, 24)
    self_processor = block.attn1.processor
    with torch.no_grad():
        plain = block(x, encoder_hidden_states=context)
        with AttentionRecorder(block, cfg=False, time_token=False, has_cls=False) as rec:
            assert block.attn1.processor is self_processor
            captured = block(x, encoder_hidden_states=context)
    assert torch.equal(plain, captured)
    record = rec.record()
    assert record.layers == ["attn2"] and record.marginals.shape == (1, 1, 2, 4, 5)


class TripoSGAttnProcessor2_0:
    """Stands in for an upstream fork's local processor: a plain class that runs the same math."""

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        image_rotary_emb=None,
        num_parts=None,
    ):
        return TripoSGAttnProcessor()(attn, hidden_states, encoder_hidden_states, num_parts=num_parts)


class UpstreamPartCrafterAttnProcessor:
    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        image_rotary_emb=None,
        num_parts=None,
    ):
        return PartCrafterAttnProcessor()(attn, hidden_states, encoder_hidden_states, num_parts=num_parts)


UpstreamPartCrafterAttnProcessor.__name__ = "PartCrafterAttnProcessor"


@pytest.mark.parametrize("style", ["duck", "subclass"])
def test_upstream_processor_names_are_accepted(model, style):
    with AttentionRecorder(model, num_parts=2) as rec:
        ours = run_steps(model, 2)
    ours_record = rec.record()
    for i, block in enumerate(model.blocks):
        is_global = i in GLOBAL
        if style == "duck":
            processor = UpstreamPartCrafterAttnProcessor() if is_global else TripoSGAttnProcessor2_0()
        else:
            base = PartCrafterAttnProcessor if is_global else TripoSGAttnProcessor
            name = "PartCrafterAttnProcessor" if is_global else "TripoSGAttnProcessor2_0"
            processor = type(name, (base,), {})()
        block.attn2.set_processor(processor)
    plain = run_steps(model, 2)
    with AttentionRecorder(model, num_parts=2) as rec:
        captured = run_steps(model, 2)
    record = rec.record()
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(plain, captured, ours, strict=False))
    assert record.layer_kinds == ["global" if i in GLOBAL else "local" for i in range(5)]
    for name in ("entropy", "peak", "eff_keys", "cls_mass", "marginals"):
        assert torch.equal(getattr(record, name), getattr(ours_record, name)), name


# ---------------------------------------------------------------------------------- a fork's own math
class ForkedTripoSGAttnProcessor2_0(TripoSGAttnProcessor):
    """A fork's local processor whose scores are scaled ×``factor`` inside its attention call."""

    factor = 3.0

    @classmethod
    def attend(cls, prepared):
        d = prepared.query.shape[-1]
        return torch.nn.functional.scaled_dot_product_attention(
            prepared.query, prepared.key, prepared.value, scale=cls.factor * d**-0.5
        )


ForkedTripoSGAttnProcessor2_0.__name__ = "TripoSGAttnProcessor2_0"


def test_a_fork_whose_math_differs_runs_its_own_code_and_is_refused_by_name(model):
    model.blocks[1].attn2.set_processor(ForkedTripoSGAttnProcessor2_0())
    plain = run_steps(model, 2)
    with pytest.raises(CaptureError) as info:
        with AttentionRecorder(model, num_parts=2):
            captured = run_steps(model, 2, steps=1)
    message = str(info.value)
    assert "blocks.1.attn2" in message and "TripoSGAttnProcessor2_0" in message and "relative mismatch" in message
    assert "register_family" in message
    # What ran under the recorder was the fork's code, not ours: record only other layers and compare.
    with AttentionRecorder(model, num_parts=2, selection=Selection(layers=[0, 2, 3, 4])) as rec:
        captured = run_steps(model, 2)
    assert all(torch.equal(a, b) for a, b in zip(plain, captured, strict=True))
    assert rec.record().num_steps == 2
    assert hook_count(model) == 0


def test_a_fork_described_by_its_family_is_recorded_as_it_computes(model):
    forked = type("ScaledScoresProcessor", (ForkedTripoSGAttnProcessor2_0,), {})
    attn = model.blocks[1].attn2
    attn.set_processor(forked())
    family = ProcessorFamily(
        "scaled-scores", ("ScaledScoresProcessor",), True, False, "local", lambda a, p, d: 3.0 * d**-0.5
    )
    register_family(family)
    seen = []
    hook = attn.register_forward_hook(
        lambda m, args, kwargs, out: seen.append((args[0], kwargs["encoder_hidden_states"], out)), with_kwargs=True
    )
    try:
        plain = run_steps(model, 2)
        seen.clear()
        with AttentionRecorder(model, num_parts=2, selection=Selection(layers=[1], full_maps=[(1, 1)])) as rec:
            captured = run_steps(model, 2)
    finally:
        hook.remove()
        CAPTURE_FAMILIES.remove(family)
    assert all(torch.equal(a, b) for a, b in zip(plain, captured, strict=True))
    record = rec.record()
    assert record.layers == ["blocks.1.attn2"] and record.num_steps == 2
    # the stored map is the fork's: to_out(P·V) rebuilds the fork's own output at that step
    hidden, context, output = seen[1]
    _, _, value = split_heads_first(attn, hidden, context)
    assert_pv_reproduces(output[2:, 1:], record.full_maps[(1, "blocks.1.attn2")], value[2:], attn.to_out)


def test_used_alone_every_forward_is_a_step_with_its_own_timestep(model):
    with AttentionRecorder(model, num_parts=2) as rec:
        run_steps(model, 2, steps=3)
    record = rec.record()
    assert record.steps == [0, 1, 2]
    assert record.timesteps == pytest.approx([1000.0, 1000.0 * 2 / 3, 1000.0 / 3])


def test_a_full_map_for_a_step_that_never_ran_is_an_error(pipe):
    with pytest.raises(
        CaptureError, match=r"full map was asked for step 99 of 'blocks.4.attn2'.*steps recorded were 0..1"
    ):
        record_attention(pipe, IMAGE, 2, steps=2, num_tokens=16, selection=Selection(full_maps=[(-1, 99)]))
