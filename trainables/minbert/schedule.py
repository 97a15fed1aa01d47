"""The epoch schedule of a trial: every epoch of every phase, its steps, cut at max_steps.

    schedule = build_schedule(phases, batches_per_task, max_steps=cfg.train.max_steps)
    for epoch in schedule: ... epoch.steps[i] names the tasks of step i ...

The schedule is a pure function of the configuration and the data sizes, so a resumed run
rebuilds exactly the schedule of the run it continues.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from trainables.minbert.extensions.phases import Phase

__all__ = ["ScheduledEpoch", "build_schedule"]


@dataclass(frozen=True)
class ScheduledEpoch:
    """One epoch of one phase as the loop runs it.

    Attributes:
        phase: the phase it belongs to.
        epoch: its index within the phase (0-based).
        steps: the tasks of each step, already cut at `train.max_steps`.
        full_length: the steps of the uncut epoch (epoch progress and eval points use it).
    """

    phase: Phase
    epoch: int
    steps: list[tuple[str, ...]]
    full_length: int

    @property
    def key(self) -> tuple[str, int]:
        """(phase name, epoch): how a resume position names this epoch."""
        return (self.phase.name, self.epoch)

    def eval_points(self) -> set[int]:
        """After which steps to evaluate: the phase's points that the (cut) epoch reaches and
        its last step; so `len(eval_points())` is how many evaluations the epoch makes."""
        reached = {p for p in self.phase.eval_points(self.full_length) if p <= len(self.steps)}
        return reached | {len(self.steps)}


def build_schedule(
    phases: Sequence[Phase], batches_per_task: Callable[[str], int], max_steps: int | None
) -> list[ScheduledEpoch]:
    """Every epoch with steps left, in order.

    Args:
        phases: the trial's phases, in training order.
        batches_per_task: task -> batches in one pass over its training set (this worker's).
        max_steps: the budget of the phases that count toward it; None: no budget.
    """
    schedule, budget = [], max_steps
    for phase in phases:
        for epoch in range(phase.epochs):
            plan = phase.epoch_plan({t: batches_per_task(t) for t in phase.tasks}, epoch)
            full = len(plan)
            if phase.counts_toward_max_steps and budget is not None:
                plan, budget = plan[:budget], budget - min(budget, len(plan))
            if plan:
                schedule.append(ScheduledEpoch(phase, epoch, plan, full))
    return schedule
