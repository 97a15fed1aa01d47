"""SMART smoothness regularisation against a direct computation on a tiny deterministic model;
its divergences against their definitions; the perturbation hook; both loss terms with PCGrad
in a real (tiny) trial; its options refused in one line."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, kl_divergence

from trainables.errors import ConfigError
from trainables.minbert.batching import EncodedSplit
from trainables.minbert.callbacks import TrainerCallback
from trainables.minbert.config import load_trial_config
from trainables.minbert.extensions.loss_terms import RandomState, TaskOutput, make_loss_terms
from trainables.minbert.extensions.mnrl import MultipleNegativesRanking
from trainables.minbert.extensions.smart import (
    Smart,
    ascent_step,
    divergence,
    squared_error,
    symmetric_bernoulli_kl,
    symmetric_kl,
)
from trainables.minbert.hf_folder import minilm_dir
from trainables.minbert.model import BertConfig, BertModel
from trainables.minbert.multitask import MultitaskBert, task_loss
from trainables.minbert.tokenizer import WordPieceTokenizer
from trainables.minbert.trainer import train_trial

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SENTENCES = [
    "A man is slicing a tomato.",
    "Two black dogs are playing on the grass.",
    "How do I learn Python quickly?",
    "What is the best way to prepare for an interview?",
    "Is it worth it?",
    "Stocks fell sharply on Monday.",
    "The cat sat on the mat.",
    "Why is the sky blue?",
]


def _smart(*overrides: str) -> Smart:
    return Smart(load_trial_config(None, ["extensions.smart=true", *overrides]))


# ------------------------------------------------------------------ the formulas
def test_symmetric_kl_is_kl_both_ways() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 4, 5, generator=gen, dtype=torch.float64)
    p, q = Categorical(logits=x), Categorical(logits=y)
    expected = (kl_divergence(p, q) + kl_divergence(q, p)).mean()
    torch.testing.assert_close(symmetric_kl(x, y), expected, rtol=1e-12, atol=0)
    by_hand = sum(
        sum(
            pi * math.log(pi / qi) + qi * math.log(qi / pi)
            for pi, qi in zip(p.probs[b].tolist(), q.probs[b].tolist(), strict=True)
        )
        for b in range(4)
    )
    assert symmetric_kl(x, y).item() == pytest.approx(by_hand / 4, rel=1e-12)
    assert symmetric_kl(x, x).item() == 0.0 and divergence("sst", x, y).item() > 0


def test_symmetric_bernoulli_kl_and_squared_error() -> None:
    gen = torch.Generator().manual_seed(1)
    x, y = 3 * torch.randn(2, 7, generator=gen, dtype=torch.float64)
    p, q = Bernoulli(logits=x), Bernoulli(logits=y)
    expected = (kl_divergence(p, q) + kl_divergence(q, p)).mean()
    torch.testing.assert_close(symmetric_bernoulli_kl(x, y), expected, rtol=1e-10, atol=0)
    torch.testing.assert_close(divergence("para", x, y), expected, rtol=1e-10, atol=0)
    mse = sum((a - b) ** 2 for a, b in zip(x.tolist(), y.tolist(), strict=True)) / 7
    assert squared_error(x, y).item() == pytest.approx(mse, rel=1e-12)
    assert divergence("sts", x, y).item() == pytest.approx(mse, rel=1e-12)
    # bf16 outputs are compared in float32, float64 stays float64
    assert symmetric_bernoulli_kl(x.bfloat16(), y.bfloat16()).dtype == torch.float32
    assert squared_error(x, y).dtype == torch.float64


def test_ascent_step_normalises_per_token_and_projects() -> None:
    delta = torch.tensor([[0.0, 0.001, -0.002], [0.004, 0.0, 0.0], [0.001, 0.0, 0.0]])
    grad = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0], [-1e-9, 0.0, 0.0]])
    got = ascent_step(delta, grad, step_size=0.002, epsilon=0.003)
    expected = torch.tensor(
        [
            [0.002, 0.001 - 0.001, -0.002 + 0.0005],  # grad / 2 (its largest): step 0.002
            [0.003, 0.0, 0.0],  # no gradient: no move, but projected (0.004 -> 0.003)
            [0.001 - 0.002, 0.0, 0.0],  # a tiny gradient still moves a full step
        ]
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)


# ------------------------------------------------------------------ on a tiny model
@pytest.fixture(scope="module")
def tokenizer() -> WordPieceTokenizer:
    return WordPieceTokenizer.from_checkpoint(minilm_dir())


def _model(tokenizer: WordPieceTokenizer, dropout: float = 0.0) -> MultitaskBert:
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        intermediate_size=32,
        hidden_dropout=dropout,
        attention_dropout=dropout,
    )
    torch.manual_seed(0)
    encoder = BertModel.from_config(config, seed=0).double()
    model = MultitaskBert(encoder, dropout).double()
    with torch.no_grad():  # heads far from zero, so that outputs respond to the inputs
        model.para_head.out.weight.normal_(0, 1.0)
        model.sts_head.out.weight.normal_(0, 1.0)
        model.sst_head.weight.normal_(0, 1.0)
    return model.train()


def _batch(task: str, tokenizer: WordPieceTokenizer, layout: str = "sentences") -> dict:
    rng = random.Random(3)
    n = 6
    ids = [str(i) for i in range(n)]
    first = tokenizer.encode([SENTENCES[i] for i in range(n)], 32)
    if task == "sst":
        labels = torch.tensor([0, 4, 2, 1, 3, 2])
        split = EncodedSplit("sst", "train", ids, labels, tokens=first)
    else:
        second = tokenizer.encode([rng.choice(SENTENCES) for _ in range(n)], 32)
        labels = torch.tensor([1, 0, 1, 0, 0, 1]) if task == "para" else 5 * torch.rand(n)
        split = EncodedSplit(task, "train", ids, labels, tokens_a=first, tokens_b=second)
    return split.make_batch(range(n), tokenizer, layout)  # type: ignore[arg-type]


def _forward_with(model: MultitaskBert, batch: dict, delta: torch.Tensor) -> torch.Tensor:
    """The model's prediction with `delta` added to the embedding output, by a hook of our own."""
    hook = model.encoder.embeddings.register_forward_hook(lambda _m, _i, out: out + delta)
    try:
        preds: torch.Tensor = model(batch)
    finally:
        hook.remove()
    return preds


def _divergence_by_definition(task: str, clean: torch.Tensor, perturbed: torch.Tensor):
    if task == "sst":
        p, q = Categorical(logits=clean), Categorical(logits=perturbed)
    elif task == "para":
        p, q = Bernoulli(logits=clean), Bernoulli(logits=perturbed)
    else:
        return ((clean - perturbed) ** 2).mean()
    return (kl_divergence(p, q) + kl_divergence(q, p)).mean()


@pytest.mark.parametrize("task", ["sst", "para", "sts"])
def test_without_ascent_the_term_is_the_divergence_at_the_initial_noise(tokenizer, task) -> None:
    model = _model(tokenizer)
    term = _smart(
        "extensions.smart_steps=0",
        "extensions.smart_noise_std=0.01",
        "extensions.smart_epsilon=0.02",
        "extensions.smart_weight=3",
    )
    batch = _batch(task, tokenizer)
    values: dict[str, torch.Tensor] = {}
    total = model.loss(batch, [term], values)
    (noise,) = term.last_initial
    assert torch.equal(noise, term.last_final[0])
    assert noise.shape[-1] == 16 and bool((noise.abs() <= 0.02).all())
    clean = model(batch)
    expected = 3 * _divergence_by_definition(task, clean, _forward_with(model, batch, noise))
    assert expected.item() > 0
    assert values[f"smart_{task}"].item() == pytest.approx(expected.item(), rel=1e-9)
    assert total.item() == pytest.approx(task_loss(batch, clean).item() + expected.item())


@pytest.mark.parametrize("task", ["sst", "para", "sts"])
def test_one_ascent_step_matches_a_direct_computation(tokenizer, task) -> None:
    model = _model(tokenizer)
    step_size, epsilon = 0.01, 0.004
    term = _smart(
        "extensions.smart_steps=1",
        "extensions.smart_noise_std=0.001",
        f"extensions.smart_step_size={step_size}",
        f"extensions.smart_epsilon={epsilon}",
        "extensions.smart_weight=2",
    )
    batch = _batch(task, tokenizer, "sides")
    values: dict[str, torch.Tensor] = {}
    model.loss(batch, [term], values)
    clean = model(batch)
    # The direct computation: the gradient at the initial noise, a normalised step, a clamp.
    start = term.last_initial[0].clone().requires_grad_()
    before = _divergence_by_definition(task, clean.detach(), _forward_with(model, batch, start))
    (grad,) = torch.autograd.grad(before, start)
    largest = grad.abs().amax(dim=-1, keepdim=True)
    direction = torch.where(largest > 0, grad / largest.clamp_min(1e-300), 0.0)
    moved = (start.detach() + step_size * direction).clamp(-epsilon, epsilon)
    torch.testing.assert_close(term.last_final[0], moved, rtol=0, atol=1e-12)
    after = _divergence_by_definition(task, clean, _forward_with(model, batch, moved))
    assert values[f"smart_{task}"].item() == pytest.approx(2 * after.item(), rel=1e-9)
    assert after.item() > before.item()  # the ascent found a worse perturbation
    assert not torch.equal(moved, term.last_initial[0])


def test_the_perturbation_stays_in_the_epsilon_ball(tokenizer) -> None:
    model = _model(tokenizer)
    term = _smart(
        "extensions.smart_steps=3",
        "extensions.smart_noise_std=0.01",  # the initial noise overshoots: projected too
        "extensions.smart_step_size=1.0",
        "extensions.smart_epsilon=0.001",
    )
    model.loss(_batch("para", tokenizer), [term], {})
    for delta in (term.last_initial[0], term.last_final[0]):
        assert float(delta.abs().max()) == pytest.approx(0.001, rel=1e-12)
        assert bool((delta.abs() <= 0.001).all())


def test_the_initial_noise_has_the_asked_spread(tokenizer) -> None:
    model = _model(tokenizer)
    term = _smart("extensions.smart_steps=0", "extensions.smart_noise_std=0.01")
    term.epsilon = 1.0  # no clamp in the way of the statistics
    model.loss(_batch("sst", tokenizer), [term], {})
    noise = term.last_initial[0]
    assert noise.numel() > 1000
    assert float(noise.std()) == pytest.approx(0.01, rel=0.1)
    assert abs(float(noise.mean())) < 0.002
    torch.manual_seed(4)  # seeded from torch's generator: the same seed, the same noise
    model.loss(_batch("sst", tokenizer), [term], {})
    first = term.last_initial[0]
    torch.manual_seed(4)
    model.loss(_batch("sst", tokenizer), [term], {})
    assert torch.equal(first, term.last_initial[0])


def test_perturbed_forwards_replay_the_clean_dropout_masks(tokenizer) -> None:
    model = _model(tokenizer, dropout=0.3)
    term = _smart("extensions.smart_steps=1", "extensions.smart_noise_std=0")
    values: dict[str, torch.Tensor] = {}
    for task in ("sst", "para", "sts"):
        model.loss(_batch(task, tokenizer), [term], values)
        assert values[f"smart_{task}"].item() == 0.0  # no perturbation: the same output
    # without the replay, dropout alone would make them differ
    batch = _batch("para", tokenizer)
    preds, embeddings = model.forward_with_embeddings(batch)
    value = term(model, TaskOutput(batch, preds, embeddings, random_state=None))
    assert value is not None and value.item() > 0
    assert not model.encoder.embeddings._forward_hooks  # every hook removed again


def test_random_state_replays_and_then_continues() -> None:
    torch.manual_seed(0)
    state = RandomState(torch.device("cpu"))
    first = torch.rand(4)
    after_first = torch.get_rng_state()
    with state.replay():
        assert torch.equal(torch.rand(4), first)
    assert torch.equal(torch.get_rng_state(), after_first)  # the outer stream goes on


def test_it_applies_to_every_task_and_the_options_reach_it() -> None:
    term = _smart(
        "extensions.smart_steps=2",
        "extensions.smart_step_size=0.5",
        "extensions.smart_epsilon=0.1",
        "extensions.smart_noise_std=0",
        "extensions.smart_weight=4",
    )
    assert term.tasks == frozenset({"sst", "para", "sts"}) and term.replays_dropout
    assert (term.steps, term.step_size, term.epsilon, term.noise_std, term.weight) == (
        2,
        0.5,
        0.1,
        0.0,
        4.0,
    )
    cfg = load_trial_config(None, ["extensions.smart=true", "extensions.mnrl=true"])
    built = make_loss_terms(cfg)  # stackable: both on, in registry order
    assert [type(t) for t in built] == [MultipleNegativesRanking, Smart]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["extensions.smart_steps=-1"], "extensions.smart_steps"),
        (["extensions.smart_steps=11"], "extensions.smart_steps"),
        (["extensions.smart_epsilon=0"], "extensions.smart_epsilon"),
        (["extensions.smart_step_size=-0.1"], "extensions.smart_step_size"),
        (["extensions.smart_noise_std=-1e-5"], "extensions.smart_noise_std"),
        (["extensions.smart_weight=0"], "extensions.smart_weight"),
        (["train.deepspeed.zero_stage=3"], "set train.deepspeed.zero_stage to 0, 1 or 2"),
    ],
)
def test_bad_options_are_refused_in_one_line(overrides, message) -> None:
    with pytest.raises(ConfigError) as err:
        load_trial_config(None, ["extensions.smart=true", *overrides])
    assert message in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------ in a real trial


class _Steps(TrainerCallback):
    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_step_end(self, trainer, logs):
        self.logs.append(dict(logs))


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_both_terms_train_with_pcgrad_in_a_tiny_trial(
    tmp_path, zero_stage, tiny_overrides
) -> None:
    cfg = load_trial_config(
        None,
        [
            *tiny_overrides,
            "train.max_steps=3",
            "extensions.pcgrad=true",
            "extensions.mnrl=true",
            "extensions.mnrl_sts_threshold=2.5",
            "extensions.smart=true",
            f"train.deepspeed.zero_stage={zero_stage}",
        ],
    )
    steps = _Steps()
    summary = train_trial(cfg, tmp_path / "run", callbacks=[steps])
    assert summary["steps"] == 3 and len(steps.logs) == 3
    for logs in steps.logs:
        for task in ("sst", "para", "sts"):
            assert math.isfinite(logs[f"loss_{task}"])
            assert logs[f"loss_smart_{task}"] >= 0 and math.isfinite(logs[f"loss_smart_{task}"])
        assert all(math.isfinite(logs[f"loss_mnrl_{t}"]) for t in ("para", "sts"))
        assert logs["loss_para"] > logs["loss_mnrl_para"]  # the term is part of its task's loss
    assert any(logs["loss_mnrl_para"] > 0 for logs in steps.logs)
    assert any(logs["loss_smart_sst"] > 0 for logs in steps.logs)
    assert "pcgrad_conflict_rate" in steps.logs[0]
    # the same trial without loss terms logs none, and its task losses differ
    plain = _Steps()
    off = [
        *tiny_overrides,
        "train.max_steps=3",
        "extensions.pcgrad=true",
        f"train.deepspeed.zero_stage={zero_stage}",
    ]
    train_trial(load_trial_config(None, off), tmp_path / "plain", callbacks=[plain])
    assert not any(k.startswith(("loss_mnrl", "loss_smart")) for k in plain.logs[0])
    assert plain.logs[0]["loss_para"] != steps.logs[0]["loss_para"]
