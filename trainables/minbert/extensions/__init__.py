"""Extensions behind narrow interfaces, one file each, switched on by the toggle registry.

    surgery.py          GradientSurgery, SumGradients (default), make_surgery(cfg)
    pcgrad.py           PCGrad                       extensions.pcgrad
    sampling.py         TaskSampler, CycleSampler, ProportionalSampler, make_sampler(name)
    phases.py           Phase, PhasePlan, MultitaskOnly (default), make_phases(cfg, tasks)
    sequential_sts.py   SequentialSts                extensions.sequential_sts
    pair_similarity.py  PairSimilarity, PairHead (default), make_pair_similarity(cfg, hidden)
    cosine_sts.py       CosineSimilarity             extensions.cosine_sts
    registry.py         the toggles: config key, short name, report label, factory

Importing this package is cheap (the trial config imports the registry, and hpsearch imports
the config without wanting torch): the names below load their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "GradientSurgery": "surgery",
    "SumGradients": "surgery",
    "make_surgery": "surgery",
    "PCGrad": "pcgrad",
    "TaskSampler": "sampling",
    "CycleSampler": "sampling",
    "ProportionalSampler": "sampling",
    "make_sampler": "sampling",
    "Phase": "phases",
    "PhasePlan": "phases",
    "MultitaskOnly": "phases",
    "make_phase_plan": "phases",
    "make_phases": "phases",
    "SequentialSts": "sequential_sts",
    "PairSimilarity": "pair_similarity",
    "PairHead": "pair_similarity",
    "make_pair_similarity": "pair_similarity",
    "CosineSimilarity": "cosine_sts",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
