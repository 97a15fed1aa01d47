"""Siamese pair batches as 2B length-grouped single sentences (layout "sentences") against the
two widened sides (layout "sides", the path before): the same losses and gradients on a tiny
model, fewer computed positions, and the grouping itself; the frozen word-embedding switch.
"""

from __future__ import annotations

import random

import pytest
import torch

from trainables.errors import ConfigError
from trainables.minbert.batching import (
    EncodedSplit,
    batch_indices,
    computed_positions,
    group_by_length,
)
from trainables.minbert.config import load_trial_config
from trainables.minbert.encoder import build_encoder
from trainables.minbert.engine import build_engine
from trainables.minbert.extensions.pair_similarity import make_pair_similarity
from trainables.minbert.hf_folder import minilm_dir
from trainables.minbert.model import BertConfig, BertModel
from trainables.minbert.multitask import MultitaskBert
from trainables.minbert.streams import TaskStream
from trainables.minbert.tokenizer import WordPieceTokenizer

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SENTENCES = [
    "A man is slicing a tomato.",
    "Two black dogs are playing on the grass while their owner watches from a bench.",
    "ok",
    "How do I learn Python quickly?",
    "What is the best way to prepare for an interview at a large technology company?",
    "Is it worth it?",
    "Stocks fell sharply on Monday after the central bank raised interest rates again.",
    "The cat sat on the mat.",
    "Hm.",
    "A woman is playing the guitar on a stage in front of a small and quiet audience.",
    "UN chief welcomes peaceful presidential elections in Guinea",
    "Why is the sky blue?",
]


@pytest.fixture(scope="module")
def tokenizer() -> WordPieceTokenizer:
    return WordPieceTokenizer.from_checkpoint(minilm_dir())


def _pair_split(task: str, tokenizer: WordPieceTokenizer, n: int = 12) -> EncodedSplit:
    rng = random.Random(5)
    first = [SENTENCES[i % len(SENTENCES)] for i in range(n)]
    second = [rng.choice(SENTENCES) for _ in range(n)]
    labels = torch.tensor([float(i % 2) if task == "para" else i % 6 * 1.0 for i in range(n)])
    return EncodedSplit(
        task,
        "train",
        [f"{task}{i}" for i in range(n)],
        labels,
        tokens_a=tokenizer.encode(first, 32),
        tokens_b=tokenizer.encode(second, 32),
    )


def _tiny_model(tokenizer: WordPieceTokenizer, pooling: str, seed: int = 3) -> MultitaskBert:
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    torch.manual_seed(seed)
    encoder = BertModel.from_config(config, seed=seed).double()
    return MultitaskBert(encoder, 0.0, "siamese", pooling).double()


def _loss_and_grads(model: MultitaskBert, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    model.train()  # every dropout is 0: the training path, deterministic
    loss = model.loss(batch)
    loss.backward()
    value = loss.item()
    grads = {
        n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
        for n, p in model.named_parameters()
    }
    return value, grads


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("task", ["para", "sts"])
def test_sentences_layout_gives_the_sides_loss_and_gradients(tokenizer, task, pooling) -> None:
    split = _pair_split(task, tokenizer)
    model = _tiny_model(tokenizer, pooling)
    idx = [3, 0, 7, 11, 5, 2, 9]
    sides = split.make_batch(idx, tokenizer, "sides")
    grouped = split.make_batch(idx, tokenizer, "sentences")
    assert len(grouped["sentence_groups"]) >= 1
    loss_sides, grads_sides = _loss_and_grads(model, sides)
    loss_grouped, grads_grouped = _loss_and_grads(model, grouped)
    assert loss_grouped == pytest.approx(loss_sides, abs=1e-10)
    assert grads_grouped.keys() == grads_sides.keys()
    for name, g in grads_sides.items():
        torch.testing.assert_close(grads_grouped[name], g, rtol=0, atol=1e-10, msg=name)
    # the same in float32, within 1e-5
    model32 = _tiny_model(tokenizer, pooling).float()
    loss32_sides, g32_sides = _loss_and_grads(model32, sides)
    loss32_grouped, g32_grouped = _loss_and_grads(model32, grouped)
    assert loss32_grouped == pytest.approx(loss32_sides, abs=1e-5)
    for name, g in g32_sides.items():
        torch.testing.assert_close(g32_grouped[name], g, rtol=0, atol=1e-5, msg=name)
    # eval mode: the predictions agree too
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(grouped), model(sides), rtol=0, atol=1e-10)


def test_sentences_layout_with_dropout_trains(tokenizer) -> None:
    split = _pair_split("sts", tokenizer)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
    )
    model = MultitaskBert(BertModel.from_config(config, seed=0), 0.3)
    model.train()
    batch = split.make_batch(range(8), tokenizer, "sentences")
    loss = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    qkv = model.encoder.encoder.layer[0].attention.self.qkv.weight
    assert qkv.grad is not None and bool(qkv.grad.abs().sum() > 0)


def test_sentences_batch_holds_every_sentence_once_in_groups(tokenizer) -> None:
    split = _pair_split("para", tokenizer)
    idx = [4, 1, 9, 0, 6]
    batch = split.make_batch(idx, tokenizer, "sentences")
    assert "inputs_a" not in batch and batch["ids"] == [split.ids[i] for i in idx]
    ids, mask = batch["sentences"]["input_ids"], batch["sentences"]["attention_mask"]
    groups = batch["sentence_groups"]
    assert ids.shape == mask.shape == (sum(r * w for r, w in groups),)
    rows: list[list[int]] = []
    start = 0
    for r, w in groups:
        block_ids = ids[start : start + r * w].view(r, w)
        block_mask = mask[start : start + r * w].view(r, w)
        assert bool(block_mask[0].all())  # the group's first row is its longest
        rows += [row[m.bool()].tolist() for row, m in zip(block_ids, block_mask, strict=True)]
        start += r * w
    widths = [w for _, w in groups]
    assert widths == sorted(widths, reverse=True)
    sides = [split.tokens_a[i] for i in idx] + [split.tokens_b[i] for i in idx]  # type: ignore[index]
    assert [rows[k] for k in batch["sentence_index"].tolist()] == sides
    positions, pads = computed_positions(batch)
    assert positions == ids.numel() and pads == int((mask == 0).sum())
    sides_batch = split.make_batch(idx, tokenizer, "sides")
    assert computed_positions(sides_batch)[0] >= positions


def test_group_by_length_is_the_cheapest_cut() -> None:
    assert group_by_length([5]) == ([0], [(0, 1, 5)])
    # no overhead: one group per distinct length, no padding at all
    order, groups = group_by_length([3, 7, 3, 5, 7], group_overhead=0)
    assert order == [1, 4, 3, 0, 2]  # longest first, ties in their order
    assert groups == [(0, 2, 7), (2, 3, 5), (3, 5, 3)]
    # a huge overhead: one group, padded to the longest
    assert group_by_length([3, 7, 3, 5, 7], group_overhead=10**6)[1] == [(0, 5, 7)]
    # against brute force over every cut of the sorted lengths
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 20) for _ in range(rng.randint(1, 9))]
        overhead = rng.choice([0, 3, 8, 16])
        order, groups = group_by_length(lengths, overhead)
        widths = [lengths[i] for i in order]
        assert sorted(order) == list(range(len(lengths)))
        assert groups[0][0] == 0 and groups[-1][1] == len(lengths)
        assert all(a[1] == b[0] for a, b in zip(groups, groups[1:], strict=False))
        cost = sum((e - s) * w + overhead for s, e, w in groups)
        assert all(w == widths[s] for s, _, w in groups)
        n = len(widths)
        best = min(
            sum(
                (e - s) * widths[s] + overhead for s, e in zip([0, *cuts], [*cuts, n], strict=True)
            )
            for mask in range(2 ** (n - 1))
            for cuts in [[k for k in range(1, n) if mask >> (k - 1) & 1]]
        )
        assert cost == best
    with pytest.raises(ValueError):
        group_by_length([])


def test_streams_use_the_sentences_layout_unless_told(tokenizer) -> None:
    split = _pair_split("sts", tokenizer)
    grouped = TaskStream(split, 4, tokenizer, seed=1).next()
    sides = TaskStream(split, 4, tokenizer, seed=1, pair_layout="sides").next()
    assert "sentences" in grouped and "inputs_a" in sides
    assert grouped["ids"] == sides["ids"]  # the same examples, laid out differently
    with pytest.raises(ValueError, match="pair_layout"):
        split.make_batch([0], tokenizer, "diagonal")  # type: ignore[arg-type]


def test_sort_key_keeps_a_pass_of_every_example(tokenizer) -> None:
    split = _pair_split("para", tokenizer)
    gen = torch.Generator().manual_seed(0)
    seen = [i for b in batch_indices(split.sort_keys, 5, True, gen) for i in b]
    assert sorted(seen) == list(range(len(split)))


# --- model.freeze_word_embeddings -----------------------------------------------------------


def test_freeze_word_embeddings_reaches_the_engine(tmp_path) -> None:
    overrides = [
        "model.checkpoint=random",
        "model.freeze_word_embeddings=true",
        f"data.cache_dir={tmp_path}",
    ]
    cfg = load_trial_config(None, overrides)
    assert cfg.model.freeze_word_embeddings is True
    assert (
        load_trial_config(None, ["model.checkpoint=random"]).model.freeze_word_embeddings is False
    )
    tokenizer, encoder = build_encoder(cfg)
    model = MultitaskBert(
        encoder,
        cfg.model.dropout,
        sts_head=make_pair_similarity(cfg, encoder.config.hidden_size),
        freeze_word_embeddings=cfg.model.freeze_word_embeddings,
    )
    words = model.encoder.embeddings.word_embeddings.weight
    assert not words.requires_grad
    assert all(p is not words for p in model.shared_parameters())
    engine = build_engine(model, cfg.train)  # bf16 where the CPU has it: compare after the cast
    try:
        module_words = engine.module.encoder.embeddings.word_embeddings.weight
        before = module_words.detach().clone()
        others = {
            n: p.detach().clone() for n, p in engine.module.named_parameters() if p.requires_grad
        }
        optimised = {id(p) for g in engine.basic_optimizer.param_groups for p in g["params"]}
        assert len(optimised) == len(others)
        assert all(
            p.numel() != words.numel()
            for g in engine.basic_optimizer.param_groups
            for p in g["params"]
        )
        batch = _pair_split("sts", tokenizer).make_batch(range(6), tokenizer, "sentences")
        engine.module.train()
        engine.backward(engine.module.loss(batch))
        assert module_words.grad is None
        engine.step()
        assert torch.equal(module_words.detach(), before)
        moved = [
            n
            for n, p in engine.module.named_parameters()
            if p.requires_grad and not torch.equal(p.detach(), others[n])
        ]
        assert moved  # the rest of the model trained
    finally:
        engine.destroy()


def test_freeze_word_embeddings_refuses_a_non_boolean() -> None:
    with pytest.raises(ConfigError, match="freeze_word_embeddings"):
        load_trial_config(None, ["model.freeze_word_embeddings=maybe"])
