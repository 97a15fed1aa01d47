"""Task-specific top layers (the `task_layers` toggle): a shared bottom, one top per task.

The bottom layers of the encoder stay shared by every task; the top `task_layers_count`
transformer layers are taken out of the shared stack and copied, with their pre-trained
weights, once per task (sst, para, sts), so that each task's token states pass through its
own copy before pooling and its head. The strongest CS224N multitask reports use this to let
the tasks disagree at the top while they share what the pre-trained encoder knows; it is the
"hard parameter sharing" of multitask learning (Caruana 1997; Ruder 2017's overview) with a
shared trunk and task-specific upper layers, as in MT-DNN (Liu et al. 2019), whose shared
BERT feeds task-specific output layers.

`MultitaskBert` hands the encoder to `attach` once, when it is built (before the engine):
the shared encoder then holds only the bottom layers, so `MultitaskBert.shared_parameters()`
(what gradient surgery projects) is exactly what every task shares, and the copies are task
parameters like the heads, each reached by its own task's loss only.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from trainables.errors import ConfigError
from trainables.minbert.extensions.registry import build_active
from trainables.minbert.model import BertModel, Packed

if TYPE_CHECKING:
    from trainables.minbert.config import TrialConfig

__all__ = [
    "TaskLayers",
    "TaskTopLayers",
    "layer_parameter_count",
    "make_task_layers",
]


class TaskLayers(nn.Module, abc.ABC):
    """Per-task layers between the shared encoder and the heads.

    Lifecycle: built from the trial's config (`make_task_layers`), then `attach`ed once to
    the encoder by `MultitaskBert.__init__`, before the engine exists; from then on it maps
    the shared encoder's token states of a batch to the token states a task pools.
    """

    @abc.abstractmethod
    def attach(self, encoder: BertModel, tasks: Sequence[str]) -> None:
        """Take what the per-task layers need from `encoder` (which may lose layers to them:
        what stays in it is shared by every task), making one set per task of `tasks`."""

    @abc.abstractmethod
    def forward(
        self, task: str, hidden: torch.Tensor, mask: torch.Tensor | Packed | None
    ) -> torch.Tensor:
        """The token states of `task`: `hidden` (B, T, H), or (N, H) laid out as `Packed`,
        through the task's own layers, under the additive attention `mask` the encoder used."""


class TaskTopLayers(TaskLayers):
    """The top `count` encoder layers, copied once per task; the layers below stay shared.

    Args:
        cfg: the trial's configuration (how the registry builds it); its
            `extensions.task_layers_count` is the count.
        count: the count, given directly instead of `cfg`; 1 up to the encoder's layer count
            (all of them: only the embeddings stay shared).

    Extra parameters, counted from `BertLayer` (H hidden size, I feed-forward width): one layer
    holds a fused qkv projection (3H^2 + 3H), the attention output projection (H^2 + H), the
    feed-forward in and out (2HI + I + H) and two LayerNorms (4H), 4H^2 + 2HI + 9H + I in all
    (`layer_parameter_count`). The top `count` layers exist once per task instead of once, so
    T tasks add (T - 1) * count of them: for MiniLM-L6 (H 384, I 1536) a layer is 1,774,464
    parameters and the three tasks add 3,548,928 per top layer made task-specific, 15.6% of
    its 22.7M; in fp32 with AdamW's two moments and the gradient, 57 MB of training memory
    and 43 MB of checkpoint per layer.

    Extra compute: none in the forward and backward of training, since every sentence still
    passes through the same number of layers, only the top ones are its task's; AdamW steps
    over the extra parameters (+15.6% of its per-step work for one MiniLM layer), and gradient
    surgery projects fewer shared parameters (the copies are not shared). Evaluation runs the
    shared layers once per distinct sentence and each task's top layers once per distinct
    sentence of that task (`evaluation.encode_sequences`): a sentence used by two tasks pays
    `count` layers more; in the CS224N files the three tasks hardly share a sentence.
    """

    def __init__(self, cfg: TrialConfig | None = None, *, count: int | None = None) -> None:
        super().__init__()
        if count is None:
            if cfg is None:
                raise TypeError("TaskTopLayers needs the trial's config or a count")
            count = int(cfg.extensions.option("task_layers_count"))
        if count < 1:
            raise ConfigError(f"extensions.task_layers_count must be at least 1, got {count}")
        self.count = count
        self.layers = nn.ModuleDict()  # task -> its copies of the top layers, bottom first
        self.first_index = -1  # the encoder index the first copied layer had (set by attach)

    def attach(self, encoder: BertModel, tasks: Sequence[str]) -> None:
        if len(self.layers):
            raise RuntimeError("TaskTopLayers is already attached to an encoder")
        stack = encoder.encoder.layer
        if self.count > len(stack):
            raise ConfigError(
                f"extensions.task_layers_count is {self.count} but the encoder has "
                f"{len(stack)} layers: set it to at most {len(stack)}"
            )
        self.first_index = len(stack) - self.count
        top = [stack[i] for i in range(self.first_index, len(stack))]
        del stack[self.first_index :]  # the shared encoder keeps the bottom layers only
        for task in tasks:
            self.layers[task] = nn.ModuleList(copy.deepcopy(layer) for layer in top)

    def forward(
        self, task: str, hidden: torch.Tensor, mask: torch.Tensor | Packed | None
    ) -> torch.Tensor:
        if task not in self.layers:
            raise ValueError(f"no task-specific layers for task {task!r}")
        for layer in cast(nn.ModuleList, self.layers[task]):
            hidden = layer(hidden, mask)
        return hidden

    def extra_repr(self) -> str:
        return f"count={self.count}, first_index={self.first_index}"


def layer_parameter_count(hidden: int, intermediate: int) -> int:
    """Parameters of one `BertLayer` of width `hidden` and feed-forward width `intermediate`:
    4H^2 + 2HI + 9H + I."""
    return 4 * hidden**2 + 2 * hidden * intermediate + 9 * hidden + intermediate


def make_task_layers(cfg: TrialConfig) -> TaskLayers | None:
    """The trial's per-task layers: the `task_layers` toggle's class, or None when it is off
    (every layer shared, as the encoder was loaded)."""
    built = build_active("task_layers", cfg, TaskLayers)
    return built if isinstance(built, TaskLayers) else None
