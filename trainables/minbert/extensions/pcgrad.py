"""PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning"): the `pcgrad` toggle."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import torch

from trainables.minbert.extensions.surgery import (
    GradientSurgery,
    flatten_gradients,
    gradient_stats,
    unflatten_gradients,
)

if TYPE_CHECKING:
    from trainables.minbert.config import TrialConfig

__all__ = ["PCGrad"]


class PCGrad(GradientSurgery):
    """Projecting conflicting gradients (Yu et al. 2020, Algorithm 1).

    For each task i, starting from its flattened gradient g_i, visit every other task j in a
    fresh random order; whenever the projected g_i' conflicts with the ORIGINAL g_j
    (g_i' . g_j < 0), remove that component: g_i' <- g_i' - (g_i' . g_j / ||g_j||^2) g_j.
    Tasks with an all-zero gradient are never projected onto. The update is sum_i g_i'.

    Args:
        cfg: the trial's configuration (how the registry builds it); its `train.seed` seeds
            this instance's own random number generator (the visiting orders).
        seed: the seed, given directly instead of `cfg`. Two instances with the same seed
            combine identically.
    """

    def __init__(self, cfg: TrialConfig | None = None, *, seed: int | None = None) -> None:
        super().__init__()
        if seed is None:
            if cfg is None:
                raise TypeError("PCGrad needs the trial's config or a seed")
            seed = cfg.train.seed
        self._rng = random.Random(seed)

    def combine(self, task_grads: dict[str, list[torch.Tensor]]) -> list[torch.Tensor]:
        names, flat, shapes = flatten_gradients(task_grads)
        self.last_stats = gradient_stats(names, flat)
        return unflatten_gradients(self.project(flat).sum(dim=0), shapes)

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


def _as_rng_state(state: Any) -> tuple[Any, ...]:
    """random.Random state from a checkpoint, where tuples may have come back as lists."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
