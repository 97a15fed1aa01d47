"""Layer-wise learning-rate decay (`extensions.llrd`): each parameter's rate against a
reference read off its name, the engine's AdamW groups and steps against plain torch, the
one-group default, and bad options refused."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from trainables.errors import ConfigError
from trainables.minbert.config import TrialConfig, load_trial_config
from trainables.minbert.encoder import build_encoder
from trainables.minbert.engine import ADAM_BETAS, ADAM_EPS, build_engine, optimizer_step
from trainables.minbert.extensions.llrd import LayerwiseLrDecay
from trainables.minbert.extensions.optimization import (
    ParamGroups,
    SingleGroup,
    make_param_groups,
    optimizer_param_groups,
)
from trainables.minbert.extensions.surgery import SumGradients
from trainables.minbert.multitask import MultitaskBert

pytestmark = pytest.mark.usefixtures("torch_one_thread")
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
LAYERS = 3
TINY = [
    "model.checkpoint=random",
    "model.hidden_size=32",
    f"model.num_layers={LAYERS}",
    "model.num_heads=2",
    "model.intermediate_size=64",
]


def _cfg(*extra: str) -> TrialConfig:
    return load_trial_config(None, TINY + list(extra))


def _model(cfg: TrialConfig, freeze_word_embeddings: bool = False) -> MultitaskBert:
    torch.manual_seed(0)
    _, encoder = build_encoder(cfg)
    return MultitaskBert(encoder, 0.1, freeze_word_embeddings=freeze_word_embeddings)


def _reference_rate(name: str, lr: float, decay: float, layers: int) -> float:
    """ULMFiT's rule, read off the parameter's name: the heads (and all but the encoder's
    embeddings and layers) at lr, layer i at lr * decay^(layers - i), embeddings lowest."""
    if name.startswith("encoder.embeddings."):
        return lr * decay ** (layers + 1)
    layer = re.match(r"encoder\.encoder\.layer\.(\d+)\.", name)
    if layer:
        return lr * decay ** (layers - int(layer.group(1)))
    return lr


def _rates_by_name(model: nn.Module, groups: list[dict]) -> dict[str, float]:
    rate_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    return {n: rate_of[id(p)] for n, p in model.named_parameters() if id(p) in rate_of}


@pytest.mark.parametrize("decay", [0.9, 0.5, 1.0])
def test_every_parameter_gets_its_layers_rate(decay: float) -> None:
    model = _model(_cfg())
    groups = optimizer_param_groups(LayerwiseLrDecay(decay=decay), model, 2e-3, 0.01)
    rates = _rates_by_name(model, groups)
    assert set(rates) == {n for n, _ in model.named_parameters()}  # each one, once
    for name, rate in rates.items():
        assert rate == pytest.approx(_reference_rate(name, 2e-3, decay, LAYERS), rel=1e-12), name
    assert [g["lr"] for g in groups] == sorted((g["lr"] for g in groups), reverse=True)
    assert len(groups) == LAYERS + 2 and all(g["weight_decay"] == 0.01 for g in groups)
    assert rates["sst_head.weight"] == rates["encoder.pooler.dense.weight"] == 2e-3
    assert rates["encoder.encoder.layer.2.output.dense.weight"] == pytest.approx(2e-3 * decay)


def test_frozen_word_embeddings_are_in_no_group() -> None:
    model = _model(_cfg(), freeze_word_embeddings=True)
    rates = _rates_by_name(
        model, optimizer_param_groups(LayerwiseLrDecay(decay=0.8), model, 1.0, 0)
    )
    assert "encoder.embeddings.word_embeddings.weight" not in rates
    assert rates["encoder.embeddings.position_embeddings.weight"] == pytest.approx(0.8**4)


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


def _toy_loss(model: nn.Module, seed: int) -> torch.Tensor:
    """A loss that reaches every parameter: each one's weighted squared sum."""
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(())
    for p in model.parameters():
        total = total + (torch.rand(p.shape, generator=gen) * p * p).sum()
    return total


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_engine_steps_like_adamw_with_the_reference_rates(ds_env, zero_stage: int) -> None:
    """The engine built from the toggle holds the reference rate in every parameter's group
    and, over three steps, moves the weights exactly as plain torch AdamW does with one group
    per parameter at its reference rate."""
    cfg = _cfg(
        "extensions.llrd=true",
        "extensions.llrd_decay=0.7",
        "train.lr=1e-2",
        "train.grad_clip=0",
        f"train.deepspeed.zero_stage={zero_stage}",
        "train.deepspeed.precision=fp32",
    )
    model = _model(cfg)
    reference = copy.deepcopy(model)
    opt = torch.optim.AdamW(
        [
            {"params": [p], "lr": _reference_rate(n, 1e-2, 0.7, LAYERS)}
            for n, p in reference.named_parameters()
        ],
        betas=ADAM_BETAS,
        eps=ADAM_EPS,
        weight_decay=cfg.train.weight_decay,
    )
    for seed in range(3):
        opt.zero_grad()
        _toy_loss(reference, seed).backward()
        opt.step()

    engine = build_engine(model, cfg.train, 3, param_groups=make_param_groups(cfg))
    assert len(engine.optimizer.param_groups) == LAYERS + 2
    if zero_stage == 0:  # the groups hold the module's own parameters
        rates = _rates_by_name(engine.module, engine.optimizer.param_groups)
        assert rates == pytest.approx(
            {n: _reference_rate(n, 1e-2, 0.7, LAYERS) for n in rates}, rel=1e-12
        )
    for seed in range(3):
        optimizer_step(engine, {"toy": _toy_loss(engine.module, seed)}, [], SumGradients())
    assert engine.get_lr()[0] == 1e-2  # the heads' rate, the one the trainer logs
    for (name, p), q in zip(engine.module.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-6, msg=name)


def test_default_is_one_group_of_every_trainable_parameter() -> None:
    cfg = _cfg()
    grouping = make_param_groups(cfg)
    assert isinstance(grouping, SingleGroup)
    model = _model(cfg, freeze_word_embeddings=True)
    groups = optimizer_param_groups(grouping, model, 3e-4, 0.05)
    assert len(groups) == 1 and groups[0]["lr"] == 3e-4 and groups[0]["weight_decay"] == 0.05
    assert groups[0]["params"] == [p for p in model.parameters() if p.requires_grad]


def test_toggle_builds_the_configured_decay() -> None:
    grouping = make_param_groups(_cfg("extensions.llrd=true", "extensions.llrd_decay=0.65"))
    assert isinstance(grouping, LayerwiseLrDecay) and grouping.decay == 0.65
    assert load_trial_config(None, ["extensions.llrd=true"]).extensions.llrd_decay == 0.9


@pytest.mark.parametrize("value", ["0", "-0.5", "1.5", "fast"])
def test_bad_decay_is_refused_in_one_line(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_trial_config(None, ["extensions.llrd=true", f"extensions.llrd_decay={value}"])
    assert "extensions.llrd_decay" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="llrd_decay"):
        LayerwiseLrDecay(decay=1.5)


def test_a_model_without_a_minbert_encoder_is_refused() -> None:
    with pytest.raises(ConfigError, match="minBERT encoder"):
        LayerwiseLrDecay(decay=0.9).scaled_groups(nn.Linear(2, 2))


class _Broken(ParamGroups):
    def __init__(self, answer) -> None:
        self.answer = answer

    def scaled_groups(self, model: nn.Module) -> list[tuple[float, list[nn.Parameter]]]:
        return self.answer(model)


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (lambda m: [(1.0, [m.weight])], "in no group"),
        (lambda m: [(1.0, [m.weight, m.bias]), (0.5, [m.bias])], "in two groups"),
        (lambda m: [(0.0, [m.weight, m.bias])], "not a positive number"),
        (lambda m: [(float("nan"), [m.weight, m.bias])], "not a positive number"),
        (lambda m: [(1.0, [m.weight, m.bias, nn.Parameter(torch.ones(1))])], "frozen"),
    ],
)
def test_a_grouping_that_breaks_the_contract_is_refused(answer, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        optimizer_param_groups(_Broken(answer), nn.Linear(2, 2), 1e-3, 0.0)
