"""Multitask extensions behind narrow interfaces: gradient surgery and task sampling.

from trainables.minbert.extensions import make_sampler, make_surgery
surgery = make_surgery(pcgrad=cfg.extensions.pcgrad, seed=cfg.train.seed)
sampler = make_sampler(cfg.extensions.task_sampling)
"""

from __future__ import annotations

from trainables.minbert.extensions._sampling import (
    CycleSampler,
    ProportionalSampler,
    TaskSampler,
    cycle_batches,
    make_sampler,
)
from trainables.minbert.extensions._surgery import (
    GradientSurgery,
    PCGrad,
    SumGradients,
    make_surgery,
)

__all__ = [
    "CycleSampler",
    "GradientSurgery",
    "PCGrad",
    "ProportionalSampler",
    "SumGradients",
    "TaskSampler",
    "cycle_batches",
    "make_sampler",
    "make_surgery",
]
