"""The learning-rate schedule (`extensions.lr_schedule`): its formula against a separately
written reference, the rate DeepSpeed really applies at every optimizer step (grad_accum
counted), per-group rates kept, exact resume, the constant default, and bad options refused.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from trainables.errors import ConfigError
from trainables.minbert import run_checkpoint
from trainables.minbert.callbacks import TrainerCallback
from trainables.minbert.config import TrainConfig, load_trial_config
from trainables.minbert.engine import (
    ADAM_BETAS,
    ADAM_EPS,
    build_engine,
    deepspeed_config,
    optimizer_step,
    optimizer_steps,
)
from trainables.minbert.extensions.lr_schedule import WarmupDecay
from trainables.minbert.extensions.optimization import (
    ConstantLr,
    ParamGroups,
    make_lr_schedule,
)
from trainables.minbert.extensions.surgery import SumGradients
from trainables.minbert.trainer import train_trial

pytestmark = pytest.mark.usefixtures("torch_one_thread")
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


def _reference_sequence(total: int, warmup: float, decay: str) -> list[float]:
    """The multipliers for s = 0..total, built as whole pieces: the warm-up ramp 0, 1/W, ...,
    (W-1)/W, then the decay from 1 at s = W down to 0 at s = T, each piece a linspace."""
    warm = min(math.ceil(warmup * total), total - 1)
    ramp = torch.linspace(0.0, 1.0, warm + 1, dtype=torch.float64)[:-1]
    if decay == "linear":
        fall = torch.linspace(1.0, 0.0, total - warm + 1, dtype=torch.float64)
    else:
        angles = torch.linspace(0.0, math.pi, total - warm + 1, dtype=torch.float64)
        fall = 0.5 * (1.0 + torch.cos(angles))
    return torch.cat([ramp, fall]).tolist()


@pytest.mark.parametrize("decay", ["linear", "cosine"])
@pytest.mark.parametrize("warmup", [0.0, 0.1, 0.25, 0.5, 0.95])
@pytest.mark.parametrize("total", [1, 2, 5, 8, 37])
def test_multiplier_matches_the_reference(total: int, warmup: float, decay: str) -> None:
    schedule = WarmupDecay(warmup=warmup, decay=decay)
    got = [schedule.multiplier(s, total) for s in range(total + 1)]
    assert got == pytest.approx(_reference_sequence(total, warmup, decay), abs=1e-12)
    assert max(got) == pytest.approx(1.0) and got[-1] == pytest.approx(0.0, abs=1e-12)
    assert 0 <= schedule.warmup_steps(total) < total  # at least one step at the full rate


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_multiplier_matches_hugging_face(decay: str) -> None:
    """The same multipliers as transformers' schedules (whose warm-up is ceil(w * T) too)."""
    optimization = pytest.importorskip("transformers.optimization")
    make = {
        "linear": optimization.get_linear_schedule_with_warmup,
        "cosine": optimization.get_cosine_schedule_with_warmup,
    }[decay]
    total, warmup = 23, 0.2
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = make(opt, num_warmup_steps=math.ceil(warmup * total), num_training_steps=total)
    ours = WarmupDecay(warmup=warmup, decay=decay)
    for s in range(total):
        assert hf.lr_lambdas[0](s) == pytest.approx(ours.multiplier(s, total), abs=1e-12)


def test_optimizer_steps_count_accumulation_boundaries() -> None:
    assert optimizer_steps(8, 1) == 8
    assert optimizer_steps(8, 3) == 2  # the last 2 calls never reach an update
    assert optimizer_steps(9, 3) == 3
    assert optimizer_steps(2, 4) == 1
    with pytest.raises(ValueError, match="at least 1"):
        optimizer_steps(0, 1)


# ------------------------------------------------------------------ through the engine
@pytest.fixture
def ds_env(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """One-process rendezvous variables for this test, and a fresh torch-extensions folder."""
    for key in RENDEZVOUS:
        monkeypatch.delenv(key, raising=False)
    extensions = tmp_path / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
    yield
    built = sorted(p.name for p in extensions.rglob("*")) if extensions.exists() else []
    assert built == [], f"DeepSpeed JIT-compiled C++ ops during the test: {built}"


class Toy(nn.Module):
    """Two layers, a trunk and a head, for param groups at two rates."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(4, 6)
        self.head = nn.Linear(6, 1)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(self.head(torch.tanh(self.trunk(x)))[:, 0], y)


class TrunkAtHalf(ParamGroups):
    """The head at train.lr, the trunk at half of it."""

    def scaled_groups(self, model: nn.Module) -> list[tuple[float, list[nn.Parameter]]]:
        return [(0.5, list(model.trunk.parameters())), (1.0, list(model.head.parameters()))]


def _data(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(5, 4, generator=gen), torch.randn(5, generator=gen)) for _ in range(n)]


def _train(zero_stage: int = 0, **kw) -> TrainConfig:
    fields = dict(batch_size=5, lr=1e-2, weight_decay=0.01, grad_clip=0.0) | kw
    return TrainConfig(**fields, deepspeed={"zero_stage": zero_stage, "precision": "fp32"})


def _engine_run(engine, data) -> list[list[float]]:
    """Step `engine` once per batch; the group rates it holds before each call."""
    rates = []
    for x, y in data:
        rates.append(list(engine.get_lr()))
        optimizer_step(engine, {"toy": engine.module.loss(x, y)}, [], SumGradients())
    return rates


@pytest.mark.parametrize("grad_accum", [1, 3])
@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_engine_applies_the_scheduled_rate_of_every_optimizer_step(
    ds_env, decay: str, grad_accum: int
) -> None:
    """Plain torch AdamW with each group's rate set by hand from the reference at each
    optimizer step ends at the engine's weights; the rates the engine holds match too."""
    calls, warmup = 11, 0.3
    total = optimizer_steps(calls, grad_accum)  # 11 or 3 optimizer steps
    train = _train(grad_accum=grad_accum)
    torch.manual_seed(0)
    model = Toy()
    reference = copy.deepcopy(model)
    data = _data(calls)
    expected = _reference_sequence(total, warmup, decay)
    groups = [(0.5, list(reference.trunk.parameters())), (1.0, list(reference.head.parameters()))]
    opt = torch.optim.AdamW(
        [{"params": ps} for _, ps in groups],
        lr=train.lr,
        betas=ADAM_BETAS,
        eps=ADAM_EPS,
        weight_decay=train.weight_decay,
    )
    for step in range(total):
        for group, (scale, _) in zip(opt.param_groups, groups, strict=True):
            group["lr"] = train.lr * scale * expected[step]
        opt.zero_grad()
        for x, y in data[step * grad_accum : (step + 1) * grad_accum]:
            (reference.loss(x, y) / grad_accum).backward()
        opt.step()

    schedule = WarmupDecay(warmup=warmup, decay=decay)
    engine = build_engine(model, train, calls, param_groups=TrunkAtHalf(), lr_schedule=schedule)
    rates = _engine_run(engine, data)
    assert engine.global_steps == total
    for call, held in enumerate(rates):  # head first (the larger scale), then the trunk
        step = call // grad_accum
        want = train.lr * expected[step]
        assert held == pytest.approx([want, want / 2], abs=1e-15), call
    for p, q in zip(engine.module.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-6)
    assert "scheduler" not in deepspeed_config(train)  # nothing else schedules the rate


def test_resumed_engine_continues_the_rates_and_weights_exactly(ds_env, tmp_path) -> None:
    """ZeRO-2: save after 4 optimizer steps, load into a fresh engine through the run
    checkpoint's weights-only loader, and the rest equals the uninterrupted run."""
    train, calls = _train(zero_stage=2), 9
    schedule = WarmupDecay(warmup=0.25, decay="cosine")
    data = _data(calls, seed=3)

    def fresh():
        torch.manual_seed(1)
        return build_engine(Toy(), train, calls, param_groups=TrunkAtHalf(), lr_schedule=schedule)

    full = fresh()
    full_rates = _engine_run(full, data)
    full_weights = [p.detach().clone() for p in full.module.parameters()]
    full.destroy()

    first = fresh()
    _engine_run(first, data[:4])
    staging = run_checkpoint.stage(tmp_path, 4, clean=True)
    first.save_checkpoint(str(staging), tag=run_checkpoint.tag_of(4), save_latest=False)
    folder = run_checkpoint.seal(staging, tmp_path, 4, {"step": 4}, keep=2)
    first.destroy()

    resumed = fresh()
    assert resumed.get_lr() == [0.0, 0.0]  # a new engine starts the warm-up again...
    run_checkpoint.load(resumed, folder)
    assert resumed.lr_scheduler.last_epoch == 4  # ...until the checkpoint's schedule is back
    assert _engine_run(resumed, data[4:]) == full_rates[4:]
    for p, q in zip(resumed.module.parameters(), full_weights, strict=True):
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=0)


def test_constant_default_has_no_scheduler_and_one_rate(ds_env) -> None:
    assert isinstance(make_lr_schedule(load_trial_config(None, [])), ConstantLr)
    train = _train()
    engine = build_engine(Toy(), train, 6)
    assert engine.lr_scheduler is None  # as before the extension: no scheduler at all
    assert len(engine.optimizer.param_groups) == 1
    assert _engine_run(engine, _data(6)) == [[train.lr]] * 6
    assert engine.get_lr() == [train.lr]


def test_a_schedule_needs_the_run_length(ds_env) -> None:
    with pytest.raises(ValueError, match="total_steps"):
        build_engine(Toy(), _train(), None, lr_schedule=WarmupDecay(warmup=0.1, decay="linear"))


# ------------------------------------------------------------------ the toggle
def test_toggle_builds_the_configured_schedule() -> None:
    cfg = load_trial_config(
        None,
        [
            "extensions.lr_schedule=true",
            "extensions.lr_schedule_warmup=0.2",
            "extensions.lr_schedule_decay=cosine",
        ],
    )
    schedule = make_lr_schedule(cfg)
    assert isinstance(schedule, WarmupDecay) and not schedule.constant
    assert (schedule.warmup, schedule.decay) == (0.2, "cosine")
    on = load_trial_config(None, ["extensions.lr_schedule=true"]).extensions
    assert (on.lr_schedule_warmup, on.lr_schedule_decay) == (0.1, "linear")  # the defaults


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("extensions.lr_schedule_warmup=1.0", "extensions.lr_schedule_warmup"),
        ("extensions.lr_schedule_warmup=-0.1", "extensions.lr_schedule_warmup"),
        ("extensions.lr_schedule_decay=exponential", "extensions.lr_schedule_decay"),
        ("train.warmup_ratio=0.1", "extensions.lr_schedule"),  # the key it replaced
    ],
)
def test_bad_options_are_refused_in_one_line(override: str, named: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_trial_config(None, ["extensions.lr_schedule=true", override])
    message = str(err.value)
    assert named in message and "\n" not in message


def test_direct_construction_refuses_bad_values() -> None:
    with pytest.raises(ConfigError, match="lr_schedule_warmup"):
        WarmupDecay(warmup=1.0, decay="linear")
    with pytest.raises(ConfigError, match="linear or cosine"):
        WarmupDecay(warmup=0.1, decay="step")
    with pytest.raises(TypeError):
        WarmupDecay()


# ------------------------------------------------------------------ a real trial, resumed


SCHEDULED = (
    "train.evals_per_epoch=3",
    "extensions.lr_schedule=true",
    "extensions.lr_schedule_warmup=0.3",
    "extensions.llrd=true",
    "extensions.llrd_decay=0.5",
)


class RateRecorder(TrainerCallback):
    """Every group's rate and the losses after each step; a crash after one evaluation."""

    def __init__(self, crash_after_eval: int | None = None) -> None:
        self.steps: list[tuple[int, list[float], list[float]]] = []
        self.evals = 0
        self.crash_after_eval = crash_after_eval

    def on_step_end(self, trainer, logs):
        losses = [v for k, v in sorted(logs.items()) if k.startswith("loss_")]
        self.steps.append((logs["step"], list(trainer.engine.get_lr()), losses))

    def on_evaluate(self, trainer, metrics, checkpoint):
        self.evals += 1
        if self.evals == self.crash_after_eval:
            raise KeyboardInterrupt("simulated crash")


def test_resumed_trial_continues_the_schedule_exactly(tmp_path, tiny_trial) -> None:
    """A tiny trial with the schedule and layer-wise decay, stopped after its first
    evaluation and resumed from its checkpoint, takes the uninterrupted run's steps at the
    uninterrupted run's rates, every group's, with the same losses."""
    cfg = tiny_trial(*SCHEDULED)
    full = RateRecorder()
    train_trial(cfg, tmp_path / "full", callbacks=[full])
    crashed = RateRecorder(crash_after_eval=1)
    with pytest.raises(KeyboardInterrupt):
        train_trial(cfg, tmp_path / "crash", callbacks=[crashed])
    done = len(crashed.steps)
    assert 0 < done < len(full.steps)
    resumed = RateRecorder()
    train_trial(cfg, tmp_path / "crash", callbacks=[resumed], resume_from=tmp_path / "crash")
    assert resumed.steps == full.steps[done:]  # rates and losses, exactly
    total = len(full.steps)
    expected = _reference_sequence(total, 0.3, "linear")
    heads = [rates[0] for _, rates, _ in full.steps]  # after step s: the rate of step s + 1
    assert heads == pytest.approx([1e-3 * m for m in expected[1:]], abs=1e-15)
    assert len(full.steps[0][1]) == 4  # heads, layer 1, layer 0, embeddings
    for _, rates, _ in full.steps[:-1]:  # the last rate is 0 in every group
        ratios = [r / rates[0] for r in rates]
        assert ratios == pytest.approx([0.5**k for k in range(len(rates))], rel=1e-12)
