"""DeepSpeed engines on CUDA in bf16: PCGrad steps that track the fp32 reference, and bf16
chosen by precision "auto" where the GPU has it.

The CPU versions (tests/trainables/test_engine.py) match plain torch exactly in fp32; here
the engine trains in bf16 (bf16 weights and gradients on the GPU, fp32 master weights in the
optimizer) and is compared with the same fp32 plain-torch reference, run on the CPU.

The tolerance, on the fp32 master weights after STEPS steps (AdamW, lr 1e-2, each step moves
a weight by up to ~lr): the bf16 run's total update differs from the reference's by at most
5% in norm, with cosine >= 0.998, and no weight by more than 0.004 (a tenth of the largest
update); PCGrad's per-pair gradient cosines within 0.02. The same comparison through
DeepSpeed's bf16 path on the CPU gives 1.4% (ZeRO-2) and 1.7% (ZeRO-0), cosine 0.9999 and at
most 0.00095, so the bounds leave room for CUDA's different rounding, not for a wrong step.

ZeRO-0 in bf16 runs DeepSpeed's FP16_UnfusedOptimizer, which takes one AdamW step with zero
gradients when it is built (to create the optimizer state): Adam's step counter then starts
at 1 and the first real update is about 0.74 x lr. The reference takes the same zero step
when the engine's counter shows it did (without it the updates differ by 15%; see
`_engine_extra_steps`).
"""

from __future__ import annotations

import copy

import pytest
import torch

from trainables.minbert.config import TrainConfig
from trainables.minbert.engine import build_engine, deepspeed_config, hardware_has_bf16, use_bf16
from trainables.minbert.engine import optimizer_step as engine_step
from trainables.minbert.extensions.pcgrad import PCGrad

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.is_available() is False"
    ),
]

MAX_RELATIVE_UPDATE_ERROR = 0.05
MIN_UPDATE_COSINE = 0.998
MAX_WEIGHT_ERROR = 0.004
MAX_COSINE_STAT_ERROR = 0.02


def _on_gpu(batch: dict, device: torch.device) -> dict:
    """A test batch on the GPU, features and float labels in bf16 (the module's dtype)."""
    return {
        task: (
            x.to(device, torch.bfloat16),
            y.to(device, torch.bfloat16) if y.is_floating_point() else y.to(device),
        )
        for task, (x, y) in batch.items()
    }


def _fp32_masters(engine) -> list[torch.Tensor]:
    """The optimizer's fp32 master copy of each module parameter, on the CPU."""
    from deepspeed.utils import safe_get_full_fp32_param

    opt = engine.optimizer
    unfused = {  # FP16_UnfusedOptimizer (ZeRO-0): parallel lists of bf16 and fp32 params
        id(low): high
        for lows, highs in zip(
            getattr(opt, "fp16_groups", []), getattr(opt, "fp32_groups", []), strict=True
        )
        for low, high in zip(lows, highs, strict=True)
    }
    masters = []
    for p in engine.module.parameters():
        high = safe_get_full_fp32_param(p)  # ZeRO 1 and 2
        if high is None:
            high = unfused[id(p)]
        assert high.dtype == torch.float32
        masters.append(high.detach().float().cpu())
    return masters


def _engine_extra_steps(engine, steps: int) -> int:
    """AdamW steps the engine's optimizer took beyond the `steps` it was asked for."""
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    counts = {int(state["step"]) for state in inner.state.values() if "step" in state}
    if not counts:  # ZeRO-2 keeps its states on one flat partition: one count
        return 0
    assert len(counts) == 1, counts
    return counts.pop() - steps


def _warmed_reference_adamw(engine_tests, extra_steps: int):
    """The engine tests' reference AdamW, after `extra_steps` steps with zero gradients."""
    plain = engine_tests._reference_adamw

    def make(model, train):
        opt = plain(model, train)
        for _ in range(extra_steps):
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            opt.step()
            opt.zero_grad()
        return opt

    return make


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_bf16_pcgrad_engine_on_cuda_tracks_the_fp32_reference(
    ds_env, engine_tests, monkeypatch, zero_stage: int
) -> None:
    et = engine_tests
    torch.manual_seed(0)
    model = et.TinyMultitask()
    initial, reference = copy.deepcopy(model), copy.deepcopy(model)
    train = et._train(zero_stage, precision="bf16")

    engine = build_engine(model, train, total_steps=et.STEPS)
    assert engine.device.type == "cuda" and engine.bfloat16_enabled()
    assert {(p.device.type, p.dtype) for p in engine.module.parameters()} == {
        ("cuda", torch.bfloat16)
    }
    trunk = list(engine.module.trunk.parameters())
    surgery = PCGrad(seed=3)
    stats = [
        engine_step(engine, engine.module.losses(_on_gpu(batch, engine.device)), trunk, surgery)
        for batch in et._batches()
    ]
    extra = _engine_extra_steps(engine, et.STEPS)
    assert extra == (1 if zero_stage == 0 else 0), f"AdamW took {extra} steps of its own"

    monkeypatch.setattr(et, "_reference_adamw", _warmed_reference_adamw(et, extra))
    ref_stats = et._reference_pcgrad_steps(reference, train, seed=3)  # fp32, on the CPU

    start = [p.detach() for p in initial.parameters()]
    got = torch.cat([(m - s).flatten() for m, s in zip(_fp32_masters(engine), start, strict=True)])
    want = torch.cat(
        [(r.detach() - s).flatten() for r, s in zip(reference.parameters(), start, strict=True)]
    )
    assert float(want.abs().max()) > 1e-2  # the steps really moved the weights
    relative = float((got - want).norm() / want.norm())
    cosine = float(torch.nn.functional.cosine_similarity(got, want, dim=0))
    worst = float((got - want).abs().max())
    assert relative <= MAX_RELATIVE_UPDATE_ERROR, f"update differs by {relative:.1%}"
    assert cosine >= MIN_UPDATE_COSINE, cosine
    assert worst <= MAX_WEIGHT_ERROR, worst

    assert len(stats) == len(ref_stats) == et.STEPS
    for step, (mine, theirs) in enumerate(zip(stats, ref_stats, strict=True), 1):
        assert set(mine) == set(theirs), step
        cosines = [k for k in theirs if k.startswith("cos/")]
        for key in cosines:
            assert mine[key] == pytest.approx(theirs[key], abs=MAX_COSINE_STAT_ERROR), (step, key)
        if all(abs(theirs[key]) > MAX_COSINE_STAT_ERROR for key in cosines):
            assert mine["conflict_rate"] == theirs["conflict_rate"], step  # no sign can flip
    assert any(s["conflict_rate"] > 0 for s in stats), "the test data must make tasks conflict"


def test_precision_auto_is_bf16_on_this_gpu(ds_env, engine_tests) -> None:
    major, minor = torch.cuda.get_device_capability()
    assert hardware_has_bf16() == torch.cuda.is_bf16_supported()
    if (major, minor) >= (8, 0):  # Ampere, Hopper and newer have bf16 tensor cores
        assert hardware_has_bf16(), torch.cuda.get_device_name()
    auto = TrainConfig(deepspeed={"precision": "auto"})
    assert deepspeed_config(auto)["bf16"] == {"enabled": hardware_has_bf16()}
    assert use_bf16("auto") is hardware_has_bf16()
    assert use_bf16("fp32") is False

    engine = build_engine(engine_tests.TinyMultitask(), engine_tests._train(0, precision="auto"))
    want = torch.bfloat16 if hardware_has_bf16() else torch.float32
    assert engine.bfloat16_enabled() is hardware_has_bf16()
    assert {(p.device.type, p.dtype) for p in engine.module.parameters()} == {("cuda", want)}
