"""Batch streams: shorter data sets restart reshuffled, seeded, resumable, never an endless
loop over nothing (the job `cycle_batches` had before the streams replaced it)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from trainables.minbert.batching import EncodedSplit
from trainables.minbert.extensions.sampling import make_sampler
from trainables.minbert.hf_folder import minilm_dir
from trainables.minbert.streams import TaskStream
from trainables.minbert.tokenizer import WordPieceTokenizer


@pytest.fixture(scope="module")
def tokenizer() -> WordPieceTokenizer:
    return WordPieceTokenizer.from_checkpoint(minilm_dir())


def _split(task: str, n: int, tokenizer: WordPieceTokenizer) -> EncodedSplit:
    ids = [f"{task}{i}" for i in range(n)]
    return EncodedSplit(
        task,
        "train",
        ids,
        torch.zeros(n, dtype=torch.long),
        tokens=tokenizer.encode([f"sentence {i}" for i in range(n)], 16),
    )


def _ids(stream: TaskStream, n: int) -> list[str]:
    return [stream.next()["ids"][0] for _ in range(n)]


def test_cycle_restarts_shorter_sets(tokenizer: WordPieceTokenizer) -> None:
    # Walk a cycle plan the way the loop does, over data sets of 3 and 1 batches.
    streams = {"a": TaskStream(_split("a", 3, tokenizer), 1, tokenizer, seed=0)}
    streams["b"] = TaskStream(_split("b", 1, tokenizer), 1, tokenizer, seed=1)
    plan = make_sampler("cycle").epoch({"a": 3, "b": 1}, random.Random(0))
    seen = [[streams[t].next()["ids"][0] for t in step] for step in plan]
    assert sorted(a for a, _ in seen) == ["a0", "a1", "a2"]  # one pass over the larger set
    assert [b for _, b in seen] == ["b0", "b0", "b0"]  # the one-batch set was restarted twice
    assert Counter({t: s.consumed for t, s in streams.items()}) == {"a": 3, "b": 3}


def test_stream_restarts_with_a_fresh_shuffle_each_pass(tokenizer: WordPieceTokenizer) -> None:
    split = _split("s", 6, tokenizer)
    passes = [
        _ids(TaskStream(split, 1, tokenizer, seed=3), 6 * 4)[k * 6 : k * 6 + 6] for k in range(4)
    ]
    assert all(sorted(p) == sorted(split.ids) for p in passes)  # every pass covers the set once
    assert len({tuple(p) for p in passes}) > 1  # and is shuffled anew


def test_stream_is_seeded_and_resumes_by_skipping(tokenizer: WordPieceTokenizer) -> None:
    split = _split("s", 5, tokenizer)
    whole = _ids(TaskStream(split, 2, tokenizer, seed=7), 9)
    assert whole == _ids(TaskStream(split, 2, tokenizer, seed=7), 9)
    resumed = TaskStream(split, 2, tokenizer, seed=7)
    resumed.skip(4)
    assert resumed.consumed == 4 and _ids(resumed, 5) == whole[4:]


def test_stream_shares_batches_between_ranks(tokenizer: WordPieceTokenizer) -> None:
    split = _split("s", 4, tokenizer)
    ranks = [
        _ids(TaskStream(split, 1, tokenizer, seed=2, rank=r, world_size=2), 2) for r in (0, 1)
    ]
    assert sorted(ranks[0] + ranks[1]) == sorted(split.ids)


def test_stream_refuses_an_empty_source(tokenizer: WordPieceTokenizer) -> None:
    empty = EncodedSplit("s", "train", [], torch.zeros(0, dtype=torch.long), tokens=[])
    with pytest.raises(ValueError, match="no batches"):
        TaskStream(empty, 4, tokenizer, seed=0).next()
