"""Tokenised splits and their batches: length bucketing, padding, one pass per shuffle.

split = EncodedSplit("sst", "train", ids, labels, tokens=tokenizer.encode(texts, 128))
for batch in split.batches(16, tokenizer, shuffle=True, generator=g): ...

A siamese pair batch of B pairs is 2B single sentences to the encoder. Training batches
(`TaskStream`) lay them out as `pair_layout="sentences"`: sorted by length and cut into a few
groups, each padded only to its own longest sentence (`group_by_length`), instead of padding
side a and side b each to its longest and widening both to the wider ("sides", the layout
before and still the default of `EncodedSplit.batches`): on Quora and STS training batches
that computes a fraction of the padding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from trainables.minbert.tokenizer import WordPieceTokenizer

__all__ = [
    "CHUNK_BATCHES",
    "GROUP_OVERHEAD_POSITIONS",
    "Batch",
    "EncodedSplit",
    "PairLayout",
    "batch_indices",
    "computed_positions",
    "group_by_length",
    "padding_share",
]

CHUNK_BATCHES = 50  # length bucketing sorts within shuffled chunks of this many batches
# What one more sentence group costs, in token positions: its own attention calls in every
# layer, forward and backward (the other layers run once over all groups). Measured for a
# MiniLM Quora batch of 16 pairs in bf16 on one CPU thread (CPU time, 8 batches, interleaved):
# 0.88x the two-sided layout's time at 16, 0.91x at 8, 0.93x at 0 (one group per length),
# 0.94x at 64; `group_by_length` opens a group only where it saves more padding than this.
GROUP_OVERHEAD_POSITIONS = 16

# How a siamese pair batch reaches the encoder: "sentences" (the 2B sentences in length-sorted
# groups, the default) or "sides" (side a and side b, each padded to its longest).
PairLayout = Literal["sentences", "sides"]

# A collated batch: "task", "ids", "labels", and then one of
#   "inputs"             single sequences (sst) or packed cross pairs: a dict of (B, T) tensors
#   "sentences"          siamese pairs, layout "sentences": the 2B sentences sorted longest
#                        first, in groups, flat: {"input_ids", "attention_mask"} (N,), group
#                        after group, each group `rows` sentences padded to its `width`
#                        (`trainables.minbert.model.Packed`);
#     "sentence_groups"  [(rows, width)] of the groups, in order (python ints);
#     "sentence_index"   (2B,) long: the row, over all groups, of a_0..a_{B-1}, b_0..b_{B-1}
#   "inputs_a"/"inputs_b"  siamese pairs, layout "sides": a dict of (B, T) tensors per side
Batch = dict[str, Any]


@dataclass
class EncodedSplit:
    """One task's split, tokenised: single sentences (`tokens`), siamese pairs (`tokens_a`,
    `tokens_b`) or packed cross pairs (`tokens` + `type_ids`)."""

    task: str
    split: str
    ids: list[str]
    labels: torch.Tensor  # (N,) long for sst/para, float32 for sts
    tokens: list[list[int]] | None = None
    type_ids: list[list[int]] | None = None
    tokens_a: list[list[int]] | None = None
    tokens_b: list[list[int]] | None = None
    sort_keys: list[int] = field(init=False, repr=False)  # length bucketing sorts by these

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.tokens_a is not None or self.tokens_b is not None:
            if self.tokens_a is None or self.tokens_b is None or self.tokens is not None:
                raise ValueError("siamese splits need tokens_a and tokens_b and no tokens")
            seqs = [self.tokens_a, self.tokens_b]
        elif self.tokens is not None:
            seqs = [self.tokens] + ([self.type_ids] if self.type_ids is not None else [])
        else:
            raise ValueError("an EncodedSplit needs tokens, or tokens_a and tokens_b")
        if any(len(s) != n for s in seqs) or self.labels.shape != (n,):
            raise ValueError(f"{self.task}/{self.split}: ids, labels and tokens differ in length")
        if self.tokens_a is not None and self.tokens_b is not None:
            # Sorting by the longer sentence, then the shorter, keeps a batch's 2B sentences
            # to few lengths (measured on a shuffled pass of Quora / STS train, batch 16, layout
            # "sentences": 4.0% / 3.5% padding vs 4.9% / 4.2% for (longer, first), 6.2% / 5.1%
            # for a+b; in layout "sides" (longer, shorter) and (longer, first) pad alike).
            self.sort_keys = [
                max(len(a), len(b)) * 1024 + min(len(a), len(b))
                for a, b in zip(self.tokens_a, self.tokens_b, strict=True)
            ]
        else:
            self.sort_keys = [len(t) for t in seqs[0]]

    @property
    def is_siamese(self) -> bool:
        return self.tokens_a is not None

    def __len__(self) -> int:
        return len(self.ids)

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def head(self, n: int | None) -> EncodedSplit:
        """The first n examples (all if n is None or larger), under the same split name."""
        return self.select(range(min(len(self), n if n is not None else len(self))))

    def select(self, indices: Sequence[int], split: str | None = None) -> EncodedSplit:
        idx = list(indices)

        def pick(seqs: list[list[int]] | None) -> list[list[int]] | None:
            return None if seqs is None else [seqs[i] for i in idx]

        return EncodedSplit(
            self.task,
            split or self.split,
            [self.ids[i] for i in idx],
            self.labels[torch.as_tensor(idx, dtype=torch.long)],
            pick(self.tokens),
            pick(self.type_ids),
            pick(self.tokens_a),
            pick(self.tokens_b),
        )

    def batches(
        self,
        batch_size: int,
        tokenizer: WordPieceTokenizer,
        shuffle: bool,
        generator: torch.Generator | None = None,
        pair_layout: PairLayout = "sides",
    ) -> Iterator[Batch]:
        """Yield padded batches covering every example exactly once.

        Args:
            batch_size: examples per batch (the last one may be smaller).
            tokenizer: pads each batch (or each group of a pair batch) to its longest item.
            shuffle: training order: length-bucketed batches in a shuffled order. False:
                evaluation order, longest first, no randomness.
            generator: seeds the shuffle; None uses torch's global generator.
            pair_layout: how siamese pairs are laid out (see `Batch`); others ignore it.
                Training streams ask for "sentences"; "sides" is the layout before.

        Yields:
            {"task", "ids", "labels", "inputs"} for single sequences (sst, cross pairs);
            {"task", "ids", "labels", "inputs_a", "inputs_b"} for siamese pairs, or with
            pair_layout "sentences" {"task", "ids", "labels", "sentences", "sentence_groups",
            "sentence_index"}. Inputs are dicts of (B, T) tensors input_ids / attention_mask
            (/ token_type_ids); "sentences" holds flat (N,) ones.
        """
        for idx in batch_indices(self.sort_keys, batch_size, shuffle, generator):
            yield self.make_batch(idx, tokenizer, pair_layout)

    def make_batch(
        self,
        idx: Sequence[int],
        tokenizer: WordPieceTokenizer,
        pair_layout: PairLayout = "sides",
    ) -> Batch:
        """The batch of examples `idx`, in that order (see `batches`)."""
        batch: Batch = {
            "task": self.task,
            "ids": [self.ids[i] for i in idx],
            "labels": self.labels[torch.as_tensor(list(idx), dtype=torch.long)],
        }
        if self.tokens_a is not None and self.tokens_b is not None:
            side_a = [self.tokens_a[i] for i in idx]
            side_b = [self.tokens_b[i] for i in idx]
            if pair_layout == "sides":
                batch["inputs_a"] = tokenizer.pad(side_a)
                batch["inputs_b"] = tokenizer.pad(side_b)
            elif pair_layout == "sentences":
                batch.update(_sentence_groups(side_a + side_b, tokenizer))
            else:
                raise ValueError(f"unknown pair_layout {pair_layout!r}: use sentences or sides")
        else:
            assert self.tokens is not None
            types = None if self.type_ids is None else [self.type_ids[i] for i in idx]
            batch["inputs"] = tokenizer.pad([self.tokens[i] for i in idx], types)
        return batch


def group_by_length(
    lengths: Sequence[int], group_overhead: int = GROUP_OVERHEAD_POSITIONS
) -> tuple[list[int], list[tuple[int, int, int]]]:
    """Sort sequences longest first and cut them into groups that are each padded to their own
    longest, at the least cost: padded positions computed plus `group_overhead` per group.

    Args:
        lengths: the sequences' lengths (at least one).
        group_overhead: what another group costs, in token positions.

    Returns:
        (order, groups): `order` the sequence indices longest first (ties keep their order);
        `groups` the (start, end, width) ranges of `order`, in order, `width` the length of
        the group's first (longest) sequence.

    An exact dynamic programme over the sorted lengths. A group boundary inside a run of
    equal lengths never helps (moving those sequences to the later group keeps its width and
    shortens the earlier one), so only the starts of runs are tried: at most one candidate
    per distinct length.
    """
    if not lengths:
        raise ValueError("group_by_length needs at least one sequence")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    widths = [lengths[i] for i in order]
    n = len(widths)
    cuts = [k for k in range(n) if k == 0 or widths[k] != widths[k - 1]] + [n]
    best = [0] + [-1] * (len(cuts) - 1)  # best[j]: least cost of order[:cuts[j]]
    start_of = [0] * len(cuts)
    for j in range(1, len(cuts)):
        end = cuts[j]
        for i in range(j):
            cost = best[i] + (end - cuts[i]) * widths[cuts[i]] + group_overhead
            if best[j] < 0 or cost < best[j]:
                best[j], start_of[j] = cost, i
    groups: list[tuple[int, int, int]] = []
    j = len(cuts) - 1
    while j > 0:
        i = start_of[j]
        groups.append((cuts[i], cuts[j], widths[cuts[i]]))
        j = i
    return order, groups[::-1]


def _sentence_groups(sentences: list[list[int]], tokenizer: WordPieceTokenizer) -> Batch:
    """The "sentences" layout of a pair batch's 2B sentences (see `Batch`)."""
    order, groups = group_by_length([len(s) for s in sentences], GROUP_OVERHEAD_POSITIONS)
    parts = [tokenizer.pad([sentences[i] for i in order[start:end]]) for start, end, _ in groups]
    index = torch.empty(len(order), dtype=torch.long)
    index[torch.as_tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return {
        # all token types are 0: the encoder then adds type embedding 0 without a lookup
        "sentences": {
            k: torch.cat([p[k].view(-1) for p in parts]) for k in ("input_ids", "attention_mask")
        },
        "sentence_groups": [(end - start, width) for start, end, width in groups],
        "sentence_index": index,
    }


def computed_positions(batch: Batch) -> tuple[int, int]:
    """(positions, pads): the token positions the encoder computes for `batch`, padding
    included, and how many of them are padding.

    "inputs": the padded tensor; "sentences": each group's rows at its own width; "sides"
    pairs: both sides widened to the wider, as `MultitaskBert` encodes them in one call.
    """
    if "sentences" in batch:
        mask = batch["sentences"]["attention_mask"]
        positions = sum(rows * width for rows, width in batch["sentence_groups"])
        return positions, positions - int(mask.sum())
    if "inputs_a" in batch:
        a, b = batch["inputs_a"]["attention_mask"], batch["inputs_b"]["attention_mask"]
        positions = 2 * a.shape[0] * max(a.shape[1], b.shape[1])
        return positions, positions - int(a.sum()) - int(b.sum())
    mask = batch["inputs"]["attention_mask"]
    return mask.numel(), int((mask == 0).sum())


def batch_indices(
    sort_keys: Sequence[int],
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    bucket: bool = True,
    chunk_batches: int = CHUNK_BATCHES,
) -> list[list[int]]:
    """Cut example indices 0..len(sort_keys)-1 into batches; each appears exactly once.

    shuffle=True: shuffle, sort by key (length) inside chunks of `chunk_batches` batches (so a
    batch holds similar lengths and little padding), cut, then shuffle the batch order. With
    bucket=False the shuffled order is cut as is. shuffle=False: sorted longest first.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(sort_keys)
    if not shuffle:
        order = sorted(range(n), key=lambda i: -sort_keys[i])
        return [order[s : s + batch_size] for s in range(0, n, batch_size)]
    perm = torch.randperm(n, generator=generator).tolist()
    if not bucket:
        return [perm[s : s + batch_size] for s in range(0, n, batch_size)]
    chunk = batch_size * chunk_batches
    batches: list[list[int]] = []
    for start in range(0, n, chunk):
        part = sorted(perm[start : start + chunk], key=sort_keys.__getitem__)
        batches.extend(part[s : s + batch_size] for s in range(0, len(part), batch_size))
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def padding_share(
    split: EncodedSplit,
    batch_size: int,
    tokenizer: WordPieceTokenizer,
    bucketed: bool,
    seed: int = 0,
    pair_layout: PairLayout = "sides",
) -> float:
    """Share of padded positions over all positions of one shuffled pass of training batches,
    each padded tensor counted on its own: a group of the "sentences" layout, or each side of
    the "sides" layout at its own width (`computed_positions` counts the sides widened)."""
    gen = torch.Generator().manual_seed(seed)
    pads = total = 0
    for idx in batch_indices(split.sort_keys, batch_size, True, gen, bucket=bucketed):
        batch = split.make_batch(idx, tokenizer, pair_layout)
        if "sentences" in batch:
            positions, padded = computed_positions(batch)
            total, pads = total + positions, pads + padded
            continue
        for key in ("inputs", "inputs_a", "inputs_b"):
            if key in batch:
                mask = batch[key]["attention_mask"]
                pads += int((mask == 0).sum())
                total += mask.numel()
    return pads / total if total else 0.0
