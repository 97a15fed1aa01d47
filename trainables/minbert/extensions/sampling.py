"""Task samplers: which tasks contribute a batch to each multitask step, and how long an epoch is.

`extensions.task_sampling` names one (a choice, not a toggle). The multitask phase asks the
sampler for one epoch's plan, then the loop walks it, pulling the next batch of each named
task from that task's endless stream (`streams.TaskStream`, which restarts, reshuffled, when
a shorter data set runs out):

    plan = make_sampler("cycle").epoch({"sst": 534, "para": 17686, "sts": 376}, rng)
    for step in plan:
        losses = {t: loss_of(t, streams[t].next()) for t in step}
"""

from __future__ import annotations

import abc
import random
from collections.abc import Callable

from trainables.errors import ConfigError

__all__ = ["CycleSampler", "ProportionalSampler", "TaskSampler", "make_sampler"]


class TaskSampler(abc.ABC):
    """Plans the steps of one multitask epoch.

    Lifecycle: at the start of every epoch the loop calls `epoch` with the number of batches
    each task's training set holds and the trial's `random.Random`; it then runs one step per
    entry. A sampler keeps no state between epochs: everything random comes from `rng`, so a
    seeded `rng` gives the same plan. Task names are visited in sorted order before any
    shuffling, so the plan does not depend on the dict's order. Tasks with zero batches are
    left out.

    Example:
        >>> import random
        >>> from trainables.minbert.extensions.sampling import make_sampler
        >>> make_sampler("cycle").epoch({"sst": 2, "sts": 1}, random.Random(0))
        [('sst', 'sts'), ('sst', 'sts')]
        >>> sorted(make_sampler("proportional").epoch({"sst": 2, "sts": 1}, random.Random(0)))
        [('sst',), ('sst',), ('sts',)]
    """

    @abc.abstractmethod
    def epoch(self, num_batches: dict[str, int], rng: random.Random) -> list[tuple[str, ...]]:
        """The steps of one epoch; each step names the tasks that contribute one batch to it.

        Args:
            num_batches: task name -> number of batches in one pass over its training set.
            rng: the source of all randomness for this epoch's plan.

        Returns:
            One tuple of task names per step.
        """


class CycleSampler(TaskSampler):
    """Every step takes one batch from every task; an epoch is one pass over the largest set.

    This is the reference report's cycling loader: shorter data sets restart (reshuffled) when
    they run out, so the epoch has max(num_batches) steps.
    """

    def epoch(self, num_batches: dict[str, int], rng: random.Random) -> list[tuple[str, ...]]:
        tasks = _nonempty_tasks(num_batches)
        if not tasks:
            return []
        steps = max(num_batches[t] for t in tasks)
        return [tuple(tasks)] * steps


class ProportionalSampler(TaskSampler):
    """Every step takes one batch of ONE task; an epoch is one pass over every data set.

    The sum(num_batches) single-task steps come in a random order, so at any point of the epoch
    each task has been drawn in proportion to its size, and no batch is seen twice.
    """

    def epoch(self, num_batches: dict[str, int], rng: random.Random) -> list[tuple[str, ...]]:
        plan: list[tuple[str, ...]] = [
            (t,) for t in _nonempty_tasks(num_batches) for _ in range(num_batches[t])
        ]
        rng.shuffle(plan)
        return plan


_SAMPLERS: dict[str, Callable[[], TaskSampler]] = {
    "cycle": CycleSampler,
    "proportional": ProportionalSampler,
}


def make_sampler(name: str) -> TaskSampler:
    """The sampler named by `extensions.task_sampling`."""
    try:
        return _SAMPLERS[name]()
    except KeyError:
        valid = ", ".join(sorted(_SAMPLERS))
        raise ConfigError(
            f"extensions.task_sampling: unknown sampler '{name}': use one of {valid}"
        ) from None


def _nonempty_tasks(num_batches: dict[str, int]) -> list[str]:
    for task, n in num_batches.items():
        if n < 0:
            raise ValueError(f"task '{task}' has a negative number of batches ({n})")
    return sorted(t for t, n in num_batches.items() if n > 0)
