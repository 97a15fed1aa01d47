"""A toy extension plug-in: averages the task gradients instead of summing them.

What a third-party extension looks like: one small class behind one of the narrow interfaces
(here `GradientSurgery`), and one `Toggle` that the `hpsearch.extensions` entry point names
(see hpsearch_toy_mean_grad-0.1.dist-info/entry_points.txt beside this file). Nothing in
hpsearch, trainables or reports knows about it.

When $TOY_MEAN_GRAD_MARKS names a folder, every `combine` call leaves a file there, so that a
test can see the extension really ran inside the trial.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from trainables.minbert.extensions.registry import Toggle
from trainables.minbert.extensions.surgery import GradientSurgery

TOGGLE = Toggle(
    name="mean_grad",
    short="meangrad",
    label="Mean Gradients",
    kind="surgery",
    factory="hpsearch_toy_mean_grad:MeanGradients",
    help="average the task gradients instead of summing them (a toy plug-in)",
)


class MeanGradients(GradientSurgery):
    """The mean of the task gradients: the plain sum divided by the number of tasks."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__()

    def combine(self, task_grads: dict[str, list[torch.Tensor]]) -> list[torch.Tensor]:
        names = sorted(task_grads)
        marks = os.environ.get("TOY_MEAN_GRAD_MARKS")
        if marks:
            Path(marks, f"combine-{os.getpid()}").touch()
        per_param = zip(*(task_grads[t] for t in names), strict=True)
        self.last_stats = {}
        return [sum(gs) / len(names) for gs in per_param]
