"""Gradient surgery: how per-task gradients of the shared parameters become one update.

The training loop computes each task's gradient with respect to the shared (encoder)
parameters, hands them to a `GradientSurgery`, and applies what `combine` returns. The plain
sum is the multitask baseline; PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task
Learning") removes the conflicting components first.
"""

from __future__ import annotations

import abc
import itertools
import random
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["GradientSurgery", "PCGrad", "SumGradients", "make_surgery"]


class GradientSurgery(abc.ABC):
    """Combines per-task gradients of the shared parameters into one gradient.

    Lifecycle: the loop builds one instance per trial (`make_surgery`), then at every step calls
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
        >>> from trainables.minbert.extensions import make_surgery
        >>> surgery = make_surgery(pcgrad=True, seed=0)
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
        names, flat, shapes = _flatten(task_grads)
        self.last_stats = _stats(names, flat)
        return _unflatten(flat.sum(dim=0), shapes)


class PCGrad(GradientSurgery):
    """Projecting conflicting gradients (Yu et al. 2020, Algorithm 1).

    For each task i, starting from its flattened gradient g_i, visit every other task j in a
    fresh random order; whenever the projected g_i' conflicts with the ORIGINAL g_j
    (g_i' . g_j < 0), remove that component: g_i' <- g_i' - (g_i' . g_j / ||g_j||^2) g_j.
    Tasks with an all-zero gradient are never projected onto. The update is sum_i g_i'.

    Args:
        seed: seeds this instance's own random number generator (the visiting orders), so
            two instances with the same seed combine identically.
    """

    def __init__(self, seed: int) -> None:
        super().__init__()
        self._rng = random.Random(seed)

    def combine(self, task_grads: dict[str, list[torch.Tensor]]) -> list[torch.Tensor]:
        names, flat, shapes = _flatten(task_grads)
        self.last_stats = _stats(names, flat)
        return _unflatten(self.project(flat).sum(dim=0), shapes)

    def project(self, flat: torch.Tensor) -> torch.Tensor:
        """Project each row of `flat` (T, P), one flattened gradient per task; returns (T, P)."""
        sq_norms = (flat * flat).sum(dim=1)  # (T,)
        projected = flat.clone()
        num_tasks = flat.shape[0]
        for i in range(num_tasks):
            others = [j for j in range(num_tasks) if j != i]
            self._rng.shuffle(others)
            for j in others:
                if sq_norms[j] <= 0:
                    continue
                dot = torch.dot(projected[i], flat[j])
                if dot < 0:
                    projected[i] -= (dot / sq_norms[j]) * flat[j]
        return projected

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.setstate(_as_rng_state(state["rng"]))


def make_surgery(pcgrad: bool, seed: int) -> GradientSurgery:
    """The surgery a trial's `extensions.pcgrad` asks for; `seed` feeds PCGrad's random order."""
    return PCGrad(seed) if pcgrad else SumGradients()


def _flatten(
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


def _unflatten(
    flat: torch.Tensor, shapes: Sequence[tuple[torch.Size, torch.dtype]]
) -> list[torch.Tensor]:
    out, offset = [], 0
    for shape, dtype in shapes:
        size = shape.numel()
        out.append(flat[offset : offset + size].reshape(shape).to(dtype))
        offset += size
    return out


def _stats(names: list[str], flat: torch.Tensor) -> dict[str, float]:
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


def _as_rng_state(state: Any) -> tuple:
    """random.Random state from a checkpoint, where tuples may have come back as lists."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
