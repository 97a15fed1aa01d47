"""Loss terms: extra terms added to one task's training loss (the stackable `loss_term` kind).

`MultitaskBert.loss(batch, terms)` computes the task's own loss, then asks every term whose
`tasks` include the batch's task for its value and adds it: the trainer still hands one loss
per task to the optimizer step, so gradient surgery (PCGrad) sees the terms as part of their
task. Any number of loss-term toggles may be on at once (`build_all_active`); with none on the
loss is computed exactly as before, with nothing extra to run. The built-in terms are
multiple-negatives ranking (`mnrl.py`) and SMART smoothness regularisation (`smart.py`).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from trainables.minbert.extensions.registry import build_all_active

if TYPE_CHECKING:
    from trainables.minbert.batching import Batch
    from trainables.minbert.config import TrialConfig
    from trainables.minbert.multitask import MultitaskBert

__all__ = ["LossTerm", "RandomState", "TaskOutput", "make_loss_terms"]


class RandomState:
    """The random-number state of the CPU and, on a GPU, of `device`, taken now, so that a
    later `replay()` draws the same numbers: the same dropout masks as the forward that ran
    after the capture (SMART compares a clean and a perturbed forward under one set of masks,
    so that their difference is the perturbation's, not dropout's)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.accelerator = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Inside: the random state as captured; after: the state as it was before entering."""
        devices = [self.device] if self.accelerator is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.accelerator is not None:
                torch.cuda.set_rng_state(self.accelerator, self.device)
            yield


@dataclass(frozen=True)
class TaskOutput:
    """What one task's training forward produced, as a loss term sees it.

    Attributes:
        batch: the task's batch ("task", "labels", the inputs).
        preds: the head's output: SST logits (B, 5), Quora logits (B,), STS scores (B,).
        embeddings: the sentence embeddings the head was given, before its dropout: (u, v),
            each (B, H), for a siamese pair batch; (u,) for SST or a packed (cross) pair.
        random_state: the random state the forward started from, when a term asked for it
            (`replays_dropout`); None otherwise.
    """

    batch: Batch
    preds: torch.Tensor
    embeddings: tuple[torch.Tensor, ...]
    random_state: RandomState | None = None


class LossTerm(abc.ABC):
    """An extra term of a task's training loss.

    Lifecycle: the trainer builds one instance per toggle that is on (`make_loss_terms`), once
    per trial; at every step `MultitaskBert.loss` calls each term whose `tasks` holds the
    batch's task, after the task's forward, and adds what it returns to the task's loss. The
    step logs record each value as `loss_<name>_<task>` (the weighted value that was added).

    Attributes:
        name: the term's name in the step logs ("mnrl" -> loss_mnrl_para).
        tasks: the tasks it applies to.
        replays_dropout: whether it reruns the forward under the clean forward's dropout masks
            (`TaskOutput.random_state` is then captured before the forward).
    """

    name: ClassVar[str]
    replays_dropout: ClassVar[bool] = False

    def __init__(self, tasks: frozenset[str]) -> None:
        self.tasks = tasks

    @abc.abstractmethod
    def __call__(self, model: MultitaskBert, out: TaskOutput) -> torch.Tensor | None:
        """The term's value on this batch: a scalar tensor on the graph of `out.preds` (its
        gradient flows into the model), or None when it does not apply to the batch."""


def make_loss_terms(cfg: TrialConfig) -> list[LossTerm]:
    """The trial's loss terms: one per `loss_term` toggle that is on, in registry order."""
    return [t for t in build_all_active("loss_term", cfg, LossTerm) if isinstance(t, LossTerm)]
