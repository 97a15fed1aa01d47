"""Sequential learning: STS-only epochs before the multitask loop (the `sequential_sts` toggle).

`extensions.sequential_sts_epochs` epochs of STS batches alone come first; each ends with a
dev evaluation, and `train.max_steps` does not count them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainables.minbert.extensions.phases import Phase, PhasePlan

if TYPE_CHECKING:
    from trainables.minbert.config import TrialConfig

__all__ = ["SequentialSts", "StsOnlyPhase"]


class StsOnlyPhase(Phase):
    """Every step one STS batch; an epoch is one pass over the STS training set."""

    name = "sequential"
    tasks = ("sts",)
    counts_toward_max_steps = False
    stream_seed_offset = 0

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def epoch_plan(self, num_batches: dict[str, int], epoch: int) -> list[tuple[str, ...]]:
        return [("sts",)] * num_batches["sts"]

    def eval_points(self, epoch_steps: int) -> set[int]:
        return {epoch_steps}  # once, at the end of each epoch


class SequentialSts(PhasePlan):
    """`extensions.sequential_sts_epochs` STS-only epochs, then the multitask phase."""

    def __init__(self, cfg: TrialConfig) -> None:
        self.epochs = int(cfg.extensions.option("sequential_sts_epochs"))

    def phases(self, multitask: Phase) -> list[Phase]:
        return [StsOnlyPhase(self.epochs), multitask]
