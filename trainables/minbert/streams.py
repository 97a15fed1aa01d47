"""Batch streams: the endless, seeded, resumable supply of one task's training batches.

A phase opens one stream per task at the start of each of its epochs (`open_streams`). Every
stream's seed comes from the trial seed, the phase, the epoch and the task's position, so a
resumed run that skips the batches it already consumed sees exactly the batches the
interrupted run would have.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from trainables.minbert.batching import Batch, EncodedSplit, PairLayout
from trainables.minbert.extensions.phases import Phase
from trainables.minbert.tokenizer import WordPieceTokenizer

__all__ = ["TaskStream", "open_streams", "stream_seed"]


class TaskStream:
    """Endless length-bucketed batches of one task within one epoch; restarts when exhausted.

    Every pass is shuffled by its own seeded generator. With data parallelism each rank takes
    every `world_size`-th batch, starting at its `rank`. A split with no batches at all is
    refused (ValueError) instead of looping forever. `pair_layout` lays out siamese pair
    batches (`EncodedSplit.batches`).
    """

    def __init__(
        self,
        split: EncodedSplit,
        batch_size: int,
        tokenizer: WordPieceTokenizer,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        pair_layout: PairLayout = "sentences",
    ) -> None:
        self.split, self.batch_size, self.tokenizer, self.seed = split, batch_size, tokenizer, seed
        self.rank, self.world_size = rank, world_size
        self.pair_layout: PairLayout = pair_layout
        self.consumed = 0  # batches handed out, over every pass
        self._it = self._passes()

    def _passes(self) -> Iterator[Batch]:
        for pass_index in range(10**9):
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + pass_index)
            batches = self.split.batches(
                self.batch_size, self.tokenizer, True, gen, self.pair_layout
            )
            empty = True
            for i, batch in enumerate(batches):  # data parallel: each rank its share of batches
                if i % self.world_size == self.rank:
                    empty = False
                    yield batch
            if empty:
                raise ValueError(
                    f"task stream of {self.split.task!r}: the split gives no batches at all"
                )

    def next(self) -> Batch:
        self.consumed += 1
        return next(self._it)

    def skip(self, n: int) -> None:
        for _ in range(n):
            self.next()


def stream_seed(trial_seed: int, phase: Phase, epoch: int, position: int) -> int:
    """The seed of the stream of the task at `position` in `phase.tasks`, in epoch `epoch`."""
    return trial_seed * 7919 + phase.stream_seed_offset + epoch * 1009 + position


def open_streams(
    phase: Phase,
    epoch: int,
    train: dict[str, EncodedSplit],
    batch_size: int,
    tokenizer: WordPieceTokenizer,
    trial_seed: int,
    consumed: dict[str, int],
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, TaskStream]:
    """One stream per task of `phase` for epoch `epoch`, each past its `consumed` batches."""
    streams = {}
    for position, task in enumerate(phase.tasks):
        stream = TaskStream(
            train[task],
            batch_size,
            tokenizer,
            stream_seed(trial_seed, phase, epoch, position),
            rank,
            world_size,
        )
        stream.skip(consumed.get(task, 0))
        streams[task] = stream
    return streams
