"""DeepSpeed engine glue: config derivation, bf16 choice, and steps that match plain torch.

Every engine here runs in the test process with a one-rank gloo group. The process group is
created once per process (by the first engine) and reused by the later ones; the fixture only
restores the environment variables and checks that nothing was JIT-compiled.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

from trainables.errors import ConfigError
from trainables.minbert.config import TrainConfig
from trainables.minbert.engine import (
    ADAM_BETAS,
    ADAM_EPS,
    build_engine,
    deepspeed_config,
    ensure_single_process_env,
    hardware_has_bf16,
    optimizer_step,
    use_bf16,
)
from trainables.minbert.extensions.pcgrad import PCGrad
from trainables.minbert.extensions.surgery import SumGradients

RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
STEPS = 4


class TinyMultitask(nn.Module):
    """A shared trunk with one head per CS224N task."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh())
        self.sst = nn.Linear(8, 5)
        self.para = nn.Linear(8, 1)
        self.sts = nn.Linear(8, 1)

    def losses(
        self, batch: dict[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        out = {}
        for task, (x, y) in batch.items():
            h = self.trunk(x)  # (B, 8)
            if task == "sst":
                out[task] = nn.functional.cross_entropy(self.sst(h), y)
            elif task == "para":
                out[task] = nn.functional.binary_cross_entropy_with_logits(self.para(h)[:, 0], y)
            else:
                out[task] = nn.functional.mse_loss(self.sts(h)[:, 0], y)
        return out


def _batches(seed: int = 0) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(STEPS):
        steps.append(
            {
                "sst": (
                    torch.randn(4, 6, generator=gen),
                    torch.randint(0, 5, (4,), generator=gen),
                ),
                "para": (
                    torch.randn(4, 6, generator=gen),
                    torch.randint(0, 2, (4,), generator=gen).float(),
                ),
                "sts": (torch.randn(4, 6, generator=gen), 5 * torch.rand(4, generator=gen)),
            }
        )
    return steps


def _train(zero_stage: int = 0, precision: str = "fp32", **kw) -> TrainConfig:
    fields = dict(batch_size=4, lr=1e-2, weight_decay=0.01, grad_clip=0.0) | kw
    return TrainConfig(**fields, deepspeed={"zero_stage": zero_stage, "precision": precision})


@pytest.fixture
def ds_env(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """One-process rendezvous variables for this test, and a fresh torch-extensions folder."""
    for key in RENDEZVOUS:
        monkeypatch.delenv(key, raising=False)  # restored (removed) after the test
    extensions = tmp_path / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
    yield
    built = sorted(p.name for p in extensions.rglob("*")) if extensions.exists() else []
    assert built == [], f"DeepSpeed JIT-compiled C++ ops during the test: {built}"


def _reference_pcgrad_steps(model: TinyMultitask, train: TrainConfig, seed: int) -> list[dict]:
    """Plain torch: PCGrad on the trunk, summed-loss gradients on the heads, torch AdamW."""
    opt = _reference_adamw(model, train)
    surgery = PCGrad(seed=seed)
    trunk = list(model.trunk.parameters())
    all_stats = []
    for batch in _batches():
        opt.zero_grad()
        losses = model.losses(batch)
        task_grads = {
            t: list(torch.autograd.grad(loss, trunk, retain_graph=True))
            for t, loss in losses.items()
        }
        sum(losses.values()).backward()  # heads get the summed loss's gradient
        for p, g in zip(trunk, surgery.combine(task_grads), strict=True):
            p.grad = g  # the trunk gets the surgery's gradient instead
        opt.step()
        all_stats.append(dict(surgery.last_stats))
    return all_stats


def _assert_same_params(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> None:
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.allclose(p.detach().float(), q.detach().float(), atol=atol, rtol=0), name


def _pcgrad_parity(zero_stage: int) -> None:
    torch.manual_seed(0)
    model = TinyMultitask()
    initial, reference = copy.deepcopy(model), copy.deepcopy(model)
    train = _train(zero_stage)
    ref_stats = _reference_pcgrad_steps(reference, train, seed=3)

    engine = build_engine(model, train, total_steps=STEPS)
    surgery = PCGrad(seed=3)
    stats = []
    for batch in _batches():
        losses = engine.module.losses(batch)
        stats.append(
            optimizer_step(engine, losses, list(engine.module.trunk.parameters()), surgery)
        )

    _assert_same_params(engine.module, reference)
    assert len(stats) == len(ref_stats)
    for got, expected in zip(stats, ref_stats, strict=True):
        assert got == pytest.approx(expected, abs=1e-6)
    assert any(s["conflict_rate"] > 0 for s in stats), "the test data must make tasks conflict"
    moved = max(
        float((p.detach() - q.detach()).abs().max())
        for p, q in zip(engine.module.parameters(), initial.parameters(), strict=True)
    )
    assert moved > 1e-3  # the steps really changed the model


def _reference_adamw(model: torch.nn.Module, train) -> torch.optim.AdamW:
    """Plain torch AdamW with the engine's hyperparameters: the reference for parity tests."""
    return torch.optim.AdamW(
        model.parameters(),
        lr=train.lr,
        betas=ADAM_BETAS,
        eps=ADAM_EPS,
        weight_decay=train.weight_decay,
    )


def test_pcgrad_through_deepspeed_matches_plain_torch_zero0(ds_env) -> None:
    _pcgrad_parity(0)


@pytest.mark.parametrize("zero_stage", [1, 2])
def test_pcgrad_through_deepspeed_matches_plain_torch_zero12(ds_env, zero_stage: int) -> None:
    _pcgrad_parity(zero_stage)


def test_sum_surgery_equals_plain_backward_and_adamw(ds_env) -> None:
    torch.manual_seed(1)
    model = TinyMultitask()
    reference = copy.deepcopy(model)
    train = _train(0)
    opt = _reference_adamw(reference, train)
    for batch in _batches(seed=5):
        opt.zero_grad()
        sum(reference.losses(batch).values()).backward()
        opt.step()

    engine = build_engine(model, train)
    # torch's fused AdamW kernel, not the for-loop form (4-5x slower on MiniLM's parameters)
    assert isinstance(engine.optimizer, torch.optim.AdamW)
    assert all(group["fused"] for group in engine.optimizer.param_groups)
    # the defaults: one group of every parameter at train.lr, no lr scheduler
    assert len(engine.optimizer.param_groups) == 1 and engine.lr_scheduler is None
    for batch in _batches(seed=5):
        assert optimizer_step(engine, engine.module.losses(batch), [], SumGradients()) == {}
    _assert_same_params(engine.module, reference)


def test_gradient_accumulation_averages_micro_steps(ds_env) -> None:
    # grad_accum=2: each optimizer_step is a micro-step; the engine averages two, then updates.
    torch.manual_seed(3)
    model = TinyMultitask()
    reference = copy.deepcopy(model)
    train = _train(0, grad_accum=2)
    opt = _reference_adamw(reference, train)
    batches = _batches(seed=7)  # 4 micro-steps: 2 optimizer steps
    for first, second in zip(batches[::2], batches[1::2], strict=True):
        opt.zero_grad()
        for batch in (first, second):
            (sum(reference.losses(batch).values()) / 2).backward()
        opt.step()
    engine = build_engine(model, train)
    for batch in batches:
        optimizer_step(engine, engine.module.losses(batch), [], SumGradients())
    assert engine.global_steps == 2
    _assert_same_params(engine.module, reference)


def test_single_task_steps_and_unreached_heads(ds_env) -> None:
    # A proportional-sampler step has one task: PCGrad then is that task's plain gradient.
    # DeepSpeed gives parameters without a gradient a zero one, so the heads of absent tasks
    # still get AdamW's weight decay (and momentum): the reference keeps zero gradients too.
    torch.manual_seed(2)
    model = TinyMultitask()
    reference = copy.deepcopy(model)
    train = _train(0)
    opt = _reference_adamw(reference, train)
    for p in reference.parameters():
        p.grad = torch.zeros_like(p)
    batches = [{"sts": b["sts"]} for b in _batches(seed=6)]
    for batch in batches:
        opt.zero_grad(set_to_none=False)
        reference.losses(batch)["sts"].backward()
        opt.step()
    engine = build_engine(model, train)
    trunk = list(engine.module.trunk.parameters())
    for batch in batches:
        stats = optimizer_step(engine, engine.module.losses(batch), trunk, PCGrad(seed=0))
        assert stats == {"conflict_rate": 0.0}
    _assert_same_params(engine.module, reference)


def test_bf16_engine_steps_with_pcgrad(ds_env) -> None:
    torch.manual_seed(4)
    model = TinyMultitask()
    engine = build_engine(model, _train(0, precision="bf16"))
    assert engine.bfloat16_enabled()
    before = [p.detach().float().clone() for p in engine.module.parameters()]
    batch = {
        t: (x.bfloat16(), y.bfloat16() if y.is_floating_point() else y)
        for t, (x, y) in _batches()[0].items()
    }
    trunk = list(engine.module.trunk.parameters())
    stats = optimizer_step(engine, engine.module.losses(batch), trunk, PCGrad(seed=0))
    assert set(stats) == {"conflict_rate", "cos/para-sst", "cos/para-sts", "cos/sst-sts"}
    after = [p.detach().float() for p in engine.module.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_zero3_refuses_task_gradients_but_steps_the_plain_sum(ds_env) -> None:
    torch.manual_seed(6)
    linear = torch.nn.functional.linear
    engine = build_engine(TinyMultitask(), _train(3))
    assert torch.nn.functional.linear is linear  # ZeRO-3 left torch's global linear alone
    batch = _batches()[0]
    trunk = list(engine.module.trunk.parameters())
    with pytest.raises(ConfigError, match="train.deepspeed.zero_stage"):
        optimizer_step(engine, engine.module.losses(batch), trunk, PCGrad(seed=0))
    assert optimizer_step(engine, engine.module.losses(batch), trunk, SumGradients()) == {}


def test_no_shared_memory_comm_op_is_built(ds_env) -> None:
    import deepspeed.comm.comm as ds_comm

    build_engine(TinyMultitask(), _train(0))
    assert ds_comm.cdb is not None and ds_comm.cdb.shm_comm_op is None


def test_deepspeed_config_values() -> None:
    train = TrainConfig(
        batch_size=8,
        grad_accum=3,
        lr=2e-5,
        weight_decay=0.05,
        grad_clip=0.0,
        deepspeed={"zero_stage": 2, "precision": "fp32"},
    )
    config = deepspeed_config(train, world_size=2)
    assert config["train_micro_batch_size_per_gpu"] == 8
    assert config["gradient_accumulation_steps"] == 3
    assert config["train_batch_size"] == 8 * 3 * 2
    assert config["optimizer"] == {
        "type": "AdamW",
        "params": {
            "lr": 2e-5,
            "weight_decay": 0.05,
            "betas": [0.9, 0.999],
            "eps": 1e-8,
            "torch_adam": True,
            "fused": True,
        },
    }
    assert config["gradient_clipping"] == 0.0  # explicit: DeepSpeed's default would be 1.0
    assert config["zero_optimization"] == {"stage": 2}
    assert config["bf16"] == {"enabled": False}
    assert config["steps_per_print"] >= 10**9 and config["wall_clock_breakdown"] is False
    # no DeepSpeed scheduler, ever: the lr schedule is the engine's LambdaLR
    # (tests/trainables/test_lr_schedule.py), the one thing that changes the rate
    assert "scheduler" not in config
    assert deepspeed_config(TrainConfig(grad_clip=0.5))["gradient_clipping"] == 0.5
    assert deepspeed_config(TrainConfig(deepspeed={"zero_stage": 3}))["zero_optimization"] == {
        "stage": 3,
        "memory_efficient_linear": False,
    }


def test_bf16_selection() -> None:
    assert use_bf16("bf16", hardware_bf16=False) is True
    assert use_bf16("fp32", hardware_bf16=True) is False
    assert use_bf16("auto", hardware_bf16=True) is True
    assert use_bf16("auto", hardware_bf16=False) is False
    assert use_bf16("auto") is hardware_has_bf16()
    with pytest.raises(ValueError, match="auto, fp32 or bf16"):
        use_bf16("fp16")
    auto = TrainConfig(deepspeed={"precision": "auto"})
    assert deepspeed_config(auto, hardware_bf16=True)["bf16"] == {"enabled": True}
    assert deepspeed_config(auto, hardware_bf16=False)["bf16"] == {"enabled": False}


def test_hardware_has_bf16_follows_torch() -> None:
    if torch.cuda.is_available():
        assert hardware_has_bf16() == torch.cuda.is_bf16_supported()
    else:
        native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
        assert hardware_has_bf16() == native


def test_ensure_single_process_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in RENDEZVOUS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RANK", "0")  # already set: kept
    set_now = ensure_single_process_env()
    assert set(set_now) == {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "LOCAL_RANK"}
    assert os.environ["MASTER_ADDR"] == "127.0.0.1"
    assert os.environ["WORLD_SIZE"] == "1" and os.environ["LOCAL_RANK"] == "0"
    assert 0 < int(os.environ["MASTER_PORT"]) < 65536
    assert ensure_single_process_env() == {}  # idempotent
