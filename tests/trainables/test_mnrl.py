"""Multiple-negatives ranking loss against a plain-Python implementation of its formula; the
loss-term path of MultitaskBert.loss; its options refused in one line."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from trainables.errors import ConfigError
from trainables.minbert.batching import EncodedSplit
from trainables.minbert.config import load_trial_config
from trainables.minbert.extensions.loss_terms import TaskOutput, make_loss_terms
from trainables.minbert.extensions.mnrl import MultipleNegativesRanking, positive_pairs
from trainables.minbert.hf_folder import minilm_dir
from trainables.minbert.model import BertConfig, BertModel
from trainables.minbert.multitask import MultitaskBert, task_loss
from trainables.minbert.tokenizer import WordPieceTokenizer

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SENTENCES = [
    "A man is slicing a tomato.",
    "Two black dogs are playing on the grass.",
    "How do I learn Python quickly?",
    "What is the best way to prepare for an interview?",
    "Is it worth it?",
    "Stocks fell sharply on Monday.",
    "The cat sat on the mat.",
    "A woman is playing the guitar on a stage.",
    "Why is the sky blue?",
]


def _mnrl(*overrides: str) -> MultipleNegativesRanking:
    return MultipleNegativesRanking(load_trial_config(None, ["extensions.mnrl=true", *overrides]))


def _output(task: str, labels: list[float], u: torch.Tensor, v: torch.Tensor) -> TaskOutput:
    dtype = torch.float32 if task == "sts" else torch.long
    batch = {"task": task, "labels": torch.tensor(labels, dtype=dtype)}
    return TaskOutput(batch, preds=u.sum(dim=1), embeddings=(u, v))


def _reference(
    u: list[list[float]], v: list[list[float]], positives: list[int], scale: float, weight: float
) -> float:
    """Henderson et al.'s loss written out: for each positive i, -log softmax_j(s cos(u_i, v_j))
    at j = i, averaged over the positives, times the weight."""

    def cos(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    total = 0.0
    for i in positives:
        logits = [scale * cos(u[i], v[j]) for j in range(len(v))]
        top = max(logits)
        log_sum = top + math.log(sum(math.exp(x - top) for x in logits))
        total += log_sum - logits[i]
    return weight * total / len(positives)


def _embeddings(n: int = 6, hidden: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(n, hidden, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(n, hidden, generator=gen, dtype=torch.float64, requires_grad=True)
    return u, v


@pytest.mark.parametrize(
    ("overrides", "scale", "weight"),
    [((), 20.0, 1.0), (("extensions.mnrl_scale=5", "extensions.mnrl_weight=0.5"), 5.0, 0.5)],
)
def test_quora_positives_ranked_against_every_second_sentence(overrides, scale, weight) -> None:
    u, v = _embeddings()
    labels = [1, 0, 1, 1, 0, 0]
    value = _mnrl(*overrides)(None, _output("para", labels, u, v))  # type: ignore[arg-type]
    assert value is not None and value.shape == ()
    expected = _reference(u.tolist(), v.tolist(), [0, 2, 3], scale, weight)
    assert value.item() == pytest.approx(expected, rel=1e-9)
    # the negatives' second sentences are candidates: without them the value differs
    only_positives = _reference(
        [u.tolist()[i] for i in (0, 2, 3)], [v.tolist()[i] for i in (0, 2, 3)], [0, 1, 2], scale, 1
    )
    assert abs(expected - weight * only_positives) > 1e-6


def test_sts_positives_are_the_pairs_at_or_above_the_threshold() -> None:
    labels = torch.tensor([4.0, 3.99, 5.0, 0.5, 4.5])
    assert positive_pairs("sts", labels, 4.0).tolist() == [0, 2, 4]
    assert positive_pairs("sts", labels, 3.5).tolist() == [0, 1, 2, 4]
    assert positive_pairs("para", torch.tensor([0, 1, 1, 0]), 4.0).tolist() == [1, 2]
    u, v = _embeddings(5)
    for threshold, positives in ((4.0, [0, 2, 4]), (3.5, [0, 1, 2, 4])):
        term = _mnrl(f"extensions.mnrl_sts_threshold={threshold}")
        value = term(None, _output("sts", labels.tolist(), u, v))  # type: ignore[arg-type]
        assert value is not None
        assert value.item() == pytest.approx(_reference(u.tolist(), v.tolist(), positives, 20, 1))


def test_a_batch_without_positives_gives_a_zero_term_on_the_device() -> None:
    u, v = _embeddings(4)
    value = _mnrl()(None, _output("para", [0, 0, 0, 0], u, v))  # type: ignore[arg-type]
    assert value is not None and value.shape == () and value.item() == 0.0
    assert value.device == u.device
    (u.sum() + value).backward()  # adds to a task loss like any term
    value = _mnrl()(None, _output("sts", [3.9, 0.0, 1.0, 2.0], u, v))  # type: ignore[arg-type]
    assert value is not None and value.item() == 0.0


def test_the_gradient_reaches_both_sides() -> None:
    u, v = _embeddings()
    value = _mnrl()(None, _output("para", [1, 0, 1, 0, 0, 0], u, v))  # type: ignore[arg-type]
    assert value is not None
    value.backward()
    assert u.grad is not None and v.grad is not None
    row_grads = u.grad.abs().sum(dim=1)
    assert bool((row_grads[[0, 2]] > 0).all()) and bool((row_grads[[1, 3, 4, 5]] == 0).all())
    assert bool((v.grad.abs().sum(dim=1) > 0).all())  # every second sentence is a candidate
    # against the gradient of the plain formula, by central differences on one coordinate
    h = 1e-6
    for tensor, grad in ((u, u.grad), (v, v.grad)):
        base = tensor.detach().clone()
        for row, col in ((0, 1), (3, 2)):
            shifted = []
            for sign in (1, -1):
                moved = base.clone()
                moved[row, col] += sign * h
                uu = moved if tensor is u else u.detach()
                vv = moved if tensor is v else v.detach()
                shifted.append(_reference(uu.tolist(), vv.tolist(), [0, 2], 20, 1))
            numeric = (shifted[0] - shifted[1]) / (2 * h)
            assert float(grad[row, col]) == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_it_applies_to_pair_tasks_only_and_needs_both_embeddings() -> None:
    term = _mnrl()
    assert term.tasks == frozenset({"para", "sts"}) and term.name == "mnrl"
    u, v = _embeddings()
    sst = TaskOutput({"task": "sst", "labels": torch.zeros(6, dtype=torch.long)}, u, (u,))
    assert term(None, sst) is None  # type: ignore[arg-type]
    cross = TaskOutput({"task": "para", "labels": torch.ones(6, dtype=torch.long)}, u, (u,))
    with pytest.raises(ValueError, match="siamese"):
        term(None, cross)  # type: ignore[arg-type]


# ------------------------------------------------------------------ through MultitaskBert
@pytest.fixture(scope="module")
def tokenizer() -> WordPieceTokenizer:
    return WordPieceTokenizer.from_checkpoint(minilm_dir())


def _model(tokenizer: WordPieceTokenizer, dropout: float = 0.0) -> MultitaskBert:
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
        hidden_dropout=dropout,
        attention_dropout=dropout,
    )
    torch.manual_seed(0)
    encoder = BertModel.from_config(config, seed=0).double()
    return MultitaskBert(encoder, dropout).double()


def _batch(task: str, tokenizer: WordPieceTokenizer, layout: str = "sentences") -> dict:
    rng = random.Random(3)
    n = 8
    labels = torch.tensor([[1, 0, 1, 1, 0, 0, 1, 0][i] for i in range(n)])
    if task == "sst":
        tokens = tokenizer.encode([SENTENCES[i % 9] for i in range(n)], 32)
        split = EncodedSplit("sst", "train", [str(i) for i in range(n)], labels, tokens=tokens)
    else:
        first = tokenizer.encode([SENTENCES[i % 9] for i in range(n)], 32)
        second = tokenizer.encode([rng.choice(SENTENCES) for _ in range(n)], 32)
        if task == "sts":
            labels = torch.tensor([4.5, 1.0, 4.0, 0.0, 5.0, 2.0, 3.0, 4.2])
        split = EncodedSplit(
            task, "train", [str(i) for i in range(n)], labels, tokens_a=first, tokens_b=second
        )
    return split.make_batch(range(n), tokenizer, layout)  # type: ignore[arg-type]


@pytest.mark.parametrize("task", ["para", "sts"])
def test_through_the_model_the_term_is_added_to_its_task_loss(tokenizer, task) -> None:
    model = _model(tokenizer).train()
    term = _mnrl()
    values: dict[str, torch.Tensor] = {}
    totals = {}
    for layout in ("sentences", "sides"):
        batch = _batch(task, tokenizer, layout)
        totals[layout] = model.loss(batch, [term], values)
        preds, (u, v) = model.forward_with_embeddings(batch)
        positives = positive_pairs(task, batch["labels"], 4.0).tolist()
        expected = _reference(u.tolist(), v.tolist(), positives, 20, 1)
        assert values[f"mnrl_{task}"].item() == pytest.approx(expected, rel=1e-9)
        assert totals[layout].item() == pytest.approx(task_loss(batch, preds).item() + expected)
    assert totals["sentences"].item() == pytest.approx(totals["sides"].item(), abs=1e-10)
    totals["sentences"].backward()
    qkv = model.encoder.encoder.layer[0].attention.self.qkv.weight
    assert qkv.grad is not None and bool(qkv.grad.abs().sum() > 0)


def test_the_plain_loss_is_unchanged_when_no_term_applies(tokenizer) -> None:
    model = _model(tokenizer, dropout=0.2).train()
    for task in ("sst", "para", "sts"):
        batch = _batch(task, tokenizer)
        torch.manual_seed(5)
        plain = model.loss(batch)
        torch.manual_seed(5)
        preds = model(batch)
        labels = batch["labels"]
        if task == "sst":  # the loss as written before loss terms existed
            before = F.cross_entropy(preds, labels)
        elif task == "para":
            before = F.binary_cross_entropy_with_logits(preds, labels.to(preds.dtype))
        else:
            before = F.mse_loss(preds, labels.to(preds.dtype))
        assert torch.equal(plain, before)
        torch.manual_seed(5)
        values: dict[str, torch.Tensor] = {}
        other = model.loss(batch, [_mnrl()] if task == "sst" else [], values)
        assert torch.equal(other, plain) and values == {}  # bit-identical, nothing logged
        torch.manual_seed(5)
        assert torch.equal(model.forward_with_embeddings(batch)[0], preds)
    assert make_loss_terms(load_trial_config(None, [])) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.pair_encoding=cross"], "extensions.mnrl ranks sentence embeddings"),
        (["extensions.mnrl_scale=0"], "extensions.mnrl_scale"),
        (["extensions.mnrl_weight=-1"], "extensions.mnrl_weight"),
        (["extensions.mnrl_sts_threshold=5.5"], "extensions.mnrl_sts_threshold"),
        (["extensions.mnrl_scale=lots"], "extensions.mnrl_scale"),
    ],
)
def test_bad_options_are_refused_in_one_line(overrides, message) -> None:
    with pytest.raises(ConfigError) as err:
        load_trial_config(None, ["extensions.mnrl=true", *overrides])
    assert message in str(err.value) and "\n" not in str(err.value)
