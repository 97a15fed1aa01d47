"""Gradient surgery: how per-task gradients of the shared parameters become one update.

The training step (`engine.optimizer_step`) computes each task's gradient with respect to the
shared (encoder) parameters, hands them to a `GradientSurgery`, and applies what `combine`
returns. The plain sum (`SumGradients`, here) is the multitask baseline; PCGrad (Yu et al.
2020, in `pcgrad.py`) removes the conflicting components first.
"""

from __future__ import annotations

import abc
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from trainables.minbert.extensions.registry import build_active

if TYPE_CHECKING:
    from trainables.minbert.config import TrialConfig

__all__ = ["GradientSurgery", "SumGradients", "make_surgery"]


class GradientSurgery(abc.ABC):
    """Combines per-task gradients of the shared parameters into one gradient.

    Lifecycle: the trainer builds one instance per trial (`make_surgery`), then at every step calls
    `combine` with the gradients of the tasks present in that step and writes the result into
    the shared parameters' gradients. After each `combine`, `last_stats` describes the step's
    ORIGINAL task gradients: ``"conflict_rate"`` (share of ordered task pairs ``(i, j)``,
    ``i != j``, whose dot product is negative; 0.0 with fewer than two tasks) and
    ``"cos/<ti>-<tj>"`` (cosine similarity of each unordered pair, names sorted; 0.0 when one
    of the two is all zeros). Tasks are always processed in sorted name order, so the result
    does not depend on the order of the dict.

    When `needs_task_gradients` is False the combination is the plain sum, and the loop may
    skip per-task gradients altogether and call backward once on the summed loss.

    Example:
        >>> import torch
        >>> from trainables.minbert.extensions.pcgrad import PCGrad
        >>> surgery = PCGrad(seed=0)
        >>> grads = {"sst": [torch.tensor([1.0, 0.0])], "sts": [torch.tensor([-1.0, 1.0])]}
        >>> [g.tolist() for g in surgery.combine(grads)]
        [[0.5, 1.5]]
        >>> surgery.last_stats["conflict_rate"]
        1.0
    """

    needs_task_gradients: bool = True

    def __init__(self) -> None:
        self.last_stats: dict[str, float] = {}

    @abc.abstractmethod
    def combine(self, task_grads: dict[str, list[torch.Tensor]]) -> list[torch.Tensor]:
        """Combine the tasks' gradients into one gradient per shared parameter.

        Args:
            task_grads: task name -> one gradient per shared parameter, in the same parameter
                order for every task. A `None` entry (a parameter the task does not reach)
                counts as zeros. Tasks absent from a step are simply absent from the dict.

        Returns:
            One tensor per shared parameter, each with that parameter's shape and the dtype
            of the incoming gradients.
        """

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep to resume the same sequence of combinations."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        if state:
            raise ValueError(
                f"{type(self).__name__} keeps no state but the checkpoint has {sorted(state)}: "
                "resume with the same extensions.pcgrad setting the checkpoint was made with"
            )


class SumGradients(GradientSurgery):
    """The multitask baseline: the gradient of the summed loss, i.e. the sum of task gradients."""

    needs_task_gradients = False

    def combine(self, task_grads: dict[str, list[torch.Tensor]]) -> list[torch.Tensor]:
        names, flat, shapes = flatten_gradients(task_grads)
        self.last_stats = gradient_stats(names, flat)
        return unflatten_gradients(flat.sum(dim=0), shapes)


def make_surgery(cfg: TrialConfig) -> GradientSurgery:
    """The surgery of the trial: the `surgery` toggle that is on (PCGrad, a plug-in's), or the
    plain sum."""
    built = build_active("surgery", cfg, GradientSurgery)
    return built if isinstance(built, GradientSurgery) else SumGradients()


def flatten_gradients(
    task_grads: dict[str, list[torch.Tensor]],
) -> tuple[list[str], torch.Tensor, list[tuple[torch.Size, torch.dtype]]]:
    """Sorted task names, their gradients as rows of one fp32 (T, P) matrix, and param shapes."""
    if not task_grads:
        raise ValueError("gradient surgery needs at least one task's gradients, got none")
    names = sorted(task_grads)
    lengths = {len(task_grads[n]) for n in names}
    if len(lengths) != 1:
        raise ValueError(f"every task must give one gradient per shared parameter, got {lengths}")
    shapes: list[tuple[torch.Size, torch.dtype]] = []
    for k in range(lengths.pop()):
        given = [task_grads[n][k] for n in names if task_grads[n][k] is not None]
        if not given:
            raise ValueError(f"shared parameter {k} has no gradient from any task")
        if any(g.shape != given[0].shape for g in given):
            raise ValueError(f"shared parameter {k}: the tasks' gradient shapes differ")
        shapes.append((given[0].shape, given[0].dtype))
    device = next(g.device for grads in task_grads.values() for g in grads if g is not None)
    total = sum(shape.numel() for shape, _ in shapes)
    flat = torch.zeros(len(names), total, dtype=torch.float32, device=device)  # (T, P)
    for t, name in enumerate(names):
        offset = 0
        for g, (shape, _) in zip(task_grads[name], shapes, strict=True):
            if g is not None:  # a missing gradient stays zeros
                flat[t, offset : offset + shape.numel()].copy_(g.reshape(-1))
            offset += shape.numel()
    return names, flat, shapes


def unflatten_gradients(
    flat: torch.Tensor, shapes: Sequence[tuple[torch.Size, torch.dtype]]
) -> list[torch.Tensor]:
    out, offset = [], 0
    for shape, dtype in shapes:
        size = shape.numel()
        out.append(flat[offset : offset + size].reshape(shape).to(dtype))
        offset += size
    return out


def gradient_stats(names: list[str], flat: torch.Tensor) -> dict[str, float]:
    """Conflict rate and pairwise cosines of the original (T, P) task gradients."""
    gram = flat @ flat.T  # (T, T)
    norms = gram.diagonal().clamp_min(0).sqrt()  # (T,)
    stats: dict[str, float] = {}
    conflicts = 0
    pairs = list(itertools.combinations(range(len(names)), 2))
    for i, j in pairs:
        conflicts += int(gram[i, j] < 0)
        denom = norms[i] * norms[j]
        stats[f"cos/{names[i]}-{names[j]}"] = float(gram[i, j] / denom) if denom > 0 else 0.0
    # Ordered pairs (i, j) and (j, i) conflict together, so the share equals the unordered one.
    stats["conflict_rate"] = conflicts / len(pairs) if pairs else 0.0
    return stats
