"""WordPieceTokenizer gives the same ids as transformers' tokenizer for the MiniLM checkpoint."""

from __future__ import annotations

import csv

import pytest
import torch

from trainables.errors import ConfigError
from trainables.minbert.tokenizer import WordPieceTokenizer

FALLBACK_PAIRS = [
    ("A man is playing a guitar.", "A man plays the guitar on stage."),
    ("How do I learn Python quickly?", "What is the fastest way to learn Python?"),
    ("Two black dogs are playing on the grass.", "Two black dogs are playing in a grassy plain."),
    (
        "UN chief welcomes peaceful presidential elections in Guinea",
        "UN chief condemns attack against peacekeepers in Mali",
    ),
    (
        "It 's a lovely film with lovely performances by Buy and Accorsi .",
        "No one goes unindicted here , which is probably for the best .",
    ),
    ("Ça coûte combien ? naïve café, 東京", "Don't split\tthese   spaces -LRB- sic -RRB-"),
    ("", "An empty first sentence."),
    ("supercalifragilisticexpialidocious antidisestablishmentarianism", "ok"),
]


def load_sentences(cs224n_path) -> tuple[list[str], list[tuple[str, str]]]:
    if cs224n_path is None:
        pairs = FALLBACK_PAIRS
        return [s for pair in pairs for s in pair], pairs
    with open(cs224n_path / "ids-sst-dev.csv", newline="") as fp:
        singles = [row["sentence"] for row in csv.DictReader(fp, delimiter="\t")][:200]
    with open(cs224n_path / "sts-dev.csv", newline="") as fp:
        pairs = [
            (row["sentence1"], row["sentence2"]) for row in csv.DictReader(fp, delimiter="\t")
        ][:150]
    return singles + [s for pair in pairs[:50] for s in pair], pairs


@pytest.fixture(scope="module")
def reference(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path))


@pytest.fixture(scope="module")
def ours(minilm_path) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_checkpoint(minilm_path)


@pytest.mark.parametrize("max_length", [128, 12])
def test_single_sentences_match_transformers(ours, reference, cs224n_path, max_length):
    singles, _ = load_sentences(cs224n_path)
    if cs224n_path is not None:
        assert len(singles) >= 200
    expected = reference(singles, truncation=True, max_length=max_length, padding=False)[
        "input_ids"
    ]
    got = ours.encode(singles, max_length=max_length)
    assert got == expected
    if max_length == 12:
        assert max(len(ids) for ids in got) == 12  # truncation happened


@pytest.mark.parametrize("max_length", [128, 20])
def test_sentence_pairs_match_transformers(ours, reference, cs224n_path, max_length):
    _, pairs = load_sentences(cs224n_path)
    first, second = [a for a, _ in pairs], [b for _, b in pairs]
    expected = reference(first, second, truncation=True, max_length=max_length, padding=False)
    ids, type_ids = ours.encode_pairs(first, second, max_length=max_length)
    assert ids == expected["input_ids"]
    assert type_ids == expected["token_type_ids"]


def test_padded_batch_matches_transformers(ours, reference):
    texts = ["a short one", "a considerably longer sentence than the first one"]
    expected = reference(texts, padding=True, return_tensors="pt")
    got = ours.pad(ours.encode(texts, max_length=64))
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(got[key], expected[key]), key


def test_missing_vocab_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="vocab.txt"):
        WordPieceTokenizer(tmp_path / "vocab.txt")
