"""Warm-up, then linear or cosine decay of the learning rate: the `lr_schedule` toggle.

The BERT fine-tuning recipe (Devlin et al. 2019: linear warm-up over the first 10% of the
steps, then linear decay to 0) and its half-cosine variant (Loshchilov & Hutter 2017, SGDR,
without restarts), in the form of Hugging Face's `get_linear_schedule_with_warmup` and
`get_cosine_schedule_with_warmup`. Over a run of T optimizer steps with W = min(ceil(w * T),
T - 1) warm-up steps (w: `extensions.lr_schedule_warmup`), the multiplier on every param
group's rate for the step that follows s steps already taken is

    s / W                                      s < W      (warm-up from 0)
    (T - s) / (T - W)                          s >= W     linear decay to 0 at s = T
    (1 + cos(pi * (s - W) / (T - W))) / 2      s >= W     cosine decay to 0 at s = T

so the first step of a warm-up trains at rate 0 (as in Hugging Face's), the step after the
warm-up at the full rate, and W < T leaves at least one step at the full rate. T counts
optimizer steps over the whole run, every phase included: with train.grad_accum > 1, one
per grad_accum calls of the training step.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from trainables.errors import ConfigError
from trainables.minbert.extensions.optimization import LrSchedule

if TYPE_CHECKING:
    from trainables.minbert.config import TrialConfig

__all__ = ["DECAY_SHAPES", "WarmupDecay"]

DECAY_SHAPES = ("linear", "cosine")


class WarmupDecay(LrSchedule):
    """Linear warm-up from 0 over a share of the steps, then linear or half-cosine decay to 0.

    Args:
        cfg: the trial's configuration (how the registry builds it): its
            `extensions.lr_schedule_warmup` and `extensions.lr_schedule_decay`.
        warmup: the share of the optimizer steps spent warming up, in [0, 1), given directly
            instead of `cfg` (with `decay`).
        decay: "linear" or "cosine".

    Example:
        >>> schedule = WarmupDecay(warmup=0.25, decay="linear")
        >>> [round(schedule.multiplier(s, 8), 4) for s in range(9)]
        [0.0, 0.5, 1.0, 0.8333, 0.6667, 0.5, 0.3333, 0.1667, 0.0]
    """

    def __init__(
        self,
        cfg: TrialConfig | None = None,
        *,
        warmup: float | None = None,
        decay: str | None = None,
    ) -> None:
        if warmup is None or decay is None:
            if cfg is None:
                raise TypeError("WarmupDecay needs the trial's config, or warmup and decay")
            warmup = float(cfg.extensions.option("lr_schedule_warmup"))
            decay = str(cfg.extensions.option("lr_schedule_decay"))
        if not 0.0 <= warmup < 1.0:
            raise ConfigError(f"extensions.lr_schedule_warmup must be in [0, 1), got {warmup}")
        if decay not in DECAY_SHAPES:
            raise ConfigError(
                f"extensions.lr_schedule_decay: unknown {decay!r}: use linear or cosine"
            )
        self.warmup = warmup
        self.decay = decay

    def warmup_steps(self, total: int) -> int:
        """W: the optimizer steps of the warm-up in a run of `total`."""
        if total < 1:
            raise ValueError(f"a schedule needs at least one optimizer step, got {total}")
        return min(math.ceil(self.warmup * total), total - 1)

    def multiplier(self, step: int, total: int) -> float:
        warm = self.warmup_steps(total)
        if step < warm:
            return step / warm
        progress = min(1.0, (step - warm) / (total - warm))  # 0 at the peak, 1 at the end
        if self.decay == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))
