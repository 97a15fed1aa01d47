"""Phase plans: which phases a trial trains through, in order, each a set of tasks and epochs.

The trainer asks for the trial's phases (`make_phases`) and walks them; it has no notion of
what a phase is for. Without a `phases` toggle a trial has one phase, the multitask loop; the
sequential_sts extension (`sequential_sts.py`) puts STS-only epochs before it.

A phase's `name` is recorded with every evaluation (the "phase" column of metrics.jsonl) and
in the resume position of every checkpoint, so names must be unique within a plan and must not
change once runs exist.
"""

from __future__ import annotations

import abc
import random
from typing import TYPE_CHECKING

from trainables.minbert.extensions.registry import build_active
from trainables.minbert.extensions.sampling import TaskSampler, make_sampler

if TYPE_CHECKING:
    from trainables.minbert.config import TrialConfig

__all__ = [
    "MultitaskOnly",
    "MultitaskPhase",
    "Phase",
    "PhasePlan",
    "make_phase_plan",
    "make_phases",
]


class Phase(abc.ABC):
    """One stretch of training: which tasks draw batches, for how many epochs, in what steps.

    Attributes:
        name: the phase's name in metrics and resume positions ("multitask", "sequential").
        tasks: the tasks whose batch streams the phase opens, in stream order (a stream's
            seed depends on its position here).
        epochs: how many epochs the phase runs.
        counts_toward_max_steps: whether `train.max_steps` counts (and cuts) its steps.
        stream_seed_offset: added to the seed of each of the phase's batch streams, so that
            two phases never draw the same batch order.
    """

    name: str
    tasks: tuple[str, ...]
    epochs: int
    counts_toward_max_steps: bool
    stream_seed_offset: int

    @abc.abstractmethod
    def epoch_plan(self, num_batches: dict[str, int], epoch: int) -> list[tuple[str, ...]]:
        """The steps of epoch `epoch` (0-based); each names the tasks that give it a batch.

        Args:
            num_batches: each of `tasks` -> batches in one pass over its training set (this
                worker's share, at least 1).
            epoch: which epoch of the phase; a seeded plan must depend on nothing else.
        """

    @abc.abstractmethod
    def eval_points(self, epoch_steps: int) -> set[int]:
        """After which steps (1-based, within an epoch of `epoch_steps`) to evaluate on dev."""


class MultitaskPhase(Phase):
    """The multitask loop: every task, `train.epochs` epochs planned by the task sampler,
    `train.evals_per_epoch` evaluations per epoch, cut at `train.max_steps`."""

    name = "multitask"
    counts_toward_max_steps = True
    stream_seed_offset = 104729

    def __init__(
        self,
        sampler: TaskSampler,
        tasks: tuple[str, ...],
        epochs: int,
        evals_per_epoch: int,
        seed: int,
    ) -> None:
        self.sampler, self.tasks, self.epochs = sampler, tasks, epochs
        self.evals_per_epoch, self.seed = evals_per_epoch, seed

    def epoch_plan(self, num_batches: dict[str, int], epoch: int) -> list[tuple[str, ...]]:
        return self.sampler.epoch(num_batches, random.Random(f"{self.seed}-{self.name}-{epoch}"))

    def eval_points(self, epoch_steps: int) -> set[int]:
        k = self.evals_per_epoch
        return {max(1, round(epoch_steps * (i + 1) / k)) for i in range(k)}


class PhasePlan(abc.ABC):
    """Arranges a trial's phases around the multitask phase.

    Lifecycle: the trainer builds one plan per trial (`make_phase_plan`), asks it once for
    the phases and then trains through them in order. A plan keeps no state: the same
    configuration always gives the same phases.
    """

    @abc.abstractmethod
    def phases(self, multitask: Phase) -> list[Phase]:
        """Every phase of the trial, in training order, `multitask` among them."""


class MultitaskOnly(PhasePlan):
    """The default: the multitask phase alone."""

    def __init__(self, cfg: TrialConfig | None = None) -> None:
        pass

    def phases(self, multitask: Phase) -> list[Phase]:
        return [multitask]


def make_phase_plan(cfg: TrialConfig) -> PhasePlan:
    """The trial's plan: the `phases` toggle that is on (sequential_sts), or `MultitaskOnly`."""
    built = build_active("phases", cfg, PhasePlan)
    return built if isinstance(built, PhasePlan) else MultitaskOnly()


def make_phases(cfg: TrialConfig, tasks: tuple[str, ...]) -> list[Phase]:
    """The phases of the trial, in training order."""
    train = cfg.train
    sampler = make_sampler(cfg.extensions.task_sampling)
    multitask = MultitaskPhase(sampler, tasks, train.epochs, train.evals_per_epoch, train.seed)
    return make_phase_plan(cfg).phases(multitask)
