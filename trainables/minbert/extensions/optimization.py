"""How the optimizer sees the model: parameter groups with learning-rate scales, and the
learning-rate multiplier at each optimizer step.

Two interfaces, each a plug-in point of the toggle registry:

- `ParamGroups` (kind "param_groups") splits the trainable parameters into groups, each with
  a scale on `train.lr`. The default, `SingleGroup`, is one group of every trainable
  parameter at `train.lr`; layer-wise learning-rate decay (`llrd.py`) is the other.
- `LrSchedule` (kind "lr_schedule") gives the multiplier on every group's own learning rate
  at each optimizer step. The default, `ConstantLr`, keeps it at 1 and puts no scheduler in
  the engine at all; warm-up then linear or cosine decay (`lr_schedule.py`) is the other.

The engine (`engine.build_engine`) turns the groups into torch param groups with
`optimizer_param_groups` and the schedule into a torch LambdaLR, the engine's lr scheduler:
DeepSpeed steps it at every optimizer step and keeps its state in the engine checkpoint. A
multiplier scales each group's own rate, so the ratios between groups stay as the groups set
them at every step.
"""

from __future__ import annotations

import abc
import math
from typing import TYPE_CHECKING, Any

from torch import nn

from trainables.errors import ConfigError
from trainables.minbert.extensions.registry import build_active

if TYPE_CHECKING:
    from trainables.minbert.config import TrialConfig

__all__ = [
    "ConstantLr",
    "LrSchedule",
    "ParamGroups",
    "SingleGroup",
    "make_lr_schedule",
    "make_param_groups",
    "optimizer_param_groups",
]


class ParamGroups(abc.ABC):
    """Splits a model's trainable parameters into groups, each with a learning-rate scale.

    Lifecycle: the trainer builds one instance per trial (`make_param_groups`); the engine
    asks it once, when it builds the optimizer. `optimizer_param_groups` checks the answer
    (every trainable parameter in exactly one group, no frozen one, scales finite and
    positive) and makes the torch param groups, largest scale first, so that the first
    group's rate, the one the trainer logs as "lr", is the largest.

    Example:
        >>> from torch import nn
        >>> model = nn.Linear(2, 1)
        >>> [(s, len(ps)) for s, ps in SingleGroup().scaled_groups(model)]
        [(1.0, 2)]
    """

    @abc.abstractmethod
    def scaled_groups(self, model: nn.Module) -> list[tuple[float, list[nn.Parameter]]]:
        """The model's trainable parameters as (scale on train.lr, parameters) groups.

        Every parameter with `requires_grad` must appear in exactly one group and no frozen
        one in any; empty groups are dropped.
        """


class SingleGroup(ParamGroups):
    """The default: one group of every trainable parameter, at train.lr."""

    def __init__(self, cfg: TrialConfig | None = None) -> None:
        del cfg  # nothing to configure

    def scaled_groups(self, model: nn.Module) -> list[tuple[float, list[nn.Parameter]]]:
        return [(1.0, [p for p in model.parameters() if p.requires_grad])]


class LrSchedule(abc.ABC):
    """The multiplier on every param group's learning rate at each optimizer step.

    Lifecycle: the trainer builds one instance per trial (`make_lr_schedule`); the engine
    wraps it in a torch LambdaLR for the whole run (every phase, `total` optimizer steps),
    which DeepSpeed steps after each optimizer step and saves with each checkpoint. The
    instance keeps no state of its own: the multiplier is a function of the step alone, so
    a resumed run continues the same sequence.

    When `constant` is True the multiplier is 1 at every step and the engine gets no
    scheduler at all.
    """

    constant: bool = False

    @abc.abstractmethod
    def multiplier(self, step: int, total: int) -> float:
        """The factor on each group's learning rate for the optimizer step that follows
        `step` steps already taken (0 for the first), in a run of `total` (at least 1)."""


class ConstantLr(LrSchedule):
    """The default: every group keeps its learning rate for the whole run (the CS224N
    starter's constant rate)."""

    constant = True

    def __init__(self, cfg: TrialConfig | None = None) -> None:
        del cfg  # nothing to configure

    def multiplier(self, step: int, total: int) -> float:
        return 1.0


def make_param_groups(cfg: TrialConfig) -> ParamGroups:
    """The trial's parameter grouping: its `param_groups` toggle's (llrd) or one group."""
    built = build_active("param_groups", cfg, ParamGroups)
    return built if isinstance(built, ParamGroups) else SingleGroup()


def make_lr_schedule(cfg: TrialConfig) -> LrSchedule:
    """The trial's learning-rate schedule: its `lr_schedule` toggle's, or a constant rate."""
    built = build_active("lr_schedule", cfg, LrSchedule)
    return built if isinstance(built, LrSchedule) else ConstantLr()


def optimizer_param_groups(
    groups: ParamGroups, model: nn.Module, lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Torch param groups `{"params", "lr", "weight_decay"}` from `groups`' answer for `model`.

    Each group's "lr" is `lr * scale` and its "weight_decay" is `weight_decay`; groups come
    largest scale first (ties in the order given). ConfigError, naming the class, when the
    answer leaves a trainable parameter out, lists one twice, includes a frozen one or gives
    a scale that is not a finite positive number.
    """
    name = type(groups).__name__
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    seen: set[int] = set()
    made: list[tuple[float, list[nn.Parameter]]] = []
    for scale, params in groups.scaled_groups(model):
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ConfigError(f"{name}: learning-rate scale {scale!r} is not a positive number")
        for p in params:
            if id(p) not in trainable:
                raise ConfigError(f"{name}: a group holds a frozen parameter or another model's")
            if id(p) in seen:
                raise ConfigError(
                    f"{name}: a parameter of shape {tuple(p.shape)} is in two groups"
                )
            seen.add(id(p))
        if params:
            made.append((float(scale), list(params)))
    if seen != trainable:
        raise ConfigError(
            f"{name}: {len(trainable - seen)} trainable parameters are in no group; "
            "every one must be in exactly one"
        )
    made.sort(key=lambda group: -group[0])  # stable: ties keep their order
    return [{"params": ps, "lr": lr * s, "weight_decay": weight_decay} for s, ps in made]
