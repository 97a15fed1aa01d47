"""The `tuning:` section of a search space: a tuned ablation (docs/SEARCH_SPACES.md).

A space with `tuning:` is not one search but a plan of several. Each variant is tuned on its
own over the same `parameters` with the same budget (its own Optuna study: `search:` says the
sampler and scheduler, `tuning.trials_per_variant` the trials), then each variant's best
configuration is re-run once per final seed at full length; optionally each variant also runs
at fixed `reference` settings over the same seeds (the comparison a paper at one fixed
configuration makes). `hpsearch.ablation` runs the plan; this module only checks it.

    tuning:
      trials_per_variant: 8            # each variant's tuning budget, the same for all
      final_seeds: [1, 2, 3]           # the best configuration of each variant, once per seed
      overrides: {train.max_steps: 200}  # optional: the tuning trials only (a shorter budget)
      reference: {train.lr: 1.0e-5, model.dropout: 0.3}  # optional: fixed settings, same seeds
      baseline: baseline               # optional: the variant the others are compared with

With one variant the plan is "tune, then confirm": one search, then its best configuration
over the final seeds (at full length, when `tuning.overrides` shortened the search), with no
comparison between variants (`search_spaces/best_minilm.yaml`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hpsearch.space import SEED_KEY, Param, is_int
from hpsearch.space_params import Fail, did_you_mean
from hpsearch.space_search import SearchSection
from trainables.minbert.config import TrainConfig

__all__ = ["TUNING_KEYS", "TuningPlan", "parse_tuning_section"]

TUNING_KEYS = ("trials_per_variant", "final_seeds", "overrides", "reference", "baseline")
_EXAMPLE = "e.g. tuning: {trials_per_variant: 8, final_seeds: [1, 2, 3]}"


@dataclass(frozen=True)
class TuningPlan:
    """A checked `tuning:` section."""

    trials_per_variant: int
    final_seeds: list[int]
    baseline: str
    overrides: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)

    @property
    def phases(self) -> list[str]:
        """Phase names in the order they run (variants' tuning, final runs, reference)."""
        return ["final", "reference"] if self.reference else ["final"]


def parse_tuning_section(
    fail: Fail,
    raw: Any,
    *,
    base: dict[str, Any],
    variants: dict[str, dict[str, Any]],
    params: list[Param],
    seeds: list[int],
    search: SearchSection,
) -> TuningPlan:
    """Check `tuning:` against the rest of the file; every problem is one line."""
    if not isinstance(raw, dict):
        raise fail("tuning", f"must be a mapping ({_EXAMPLE})")
    for key in raw:
        if key not in TUNING_KEYS:
            raise fail(
                f"tuning.{key}",
                f"unknown key{did_you_mean(str(key), TUNING_KEYS)}; valid keys: "
                f"{', '.join(TUNING_KEYS)}",
            )
    if not variants:
        raise fail(
            "variants",
            "a tuned plan needs its variants: declare at least one (one variant: tuned, then "
            "its best re-run over the final seeds; two or more: a tuned ablation)",
        )
    if not [p for p in params if p.kind != "fixed"]:
        raise fail(
            "parameters",
            "a tuned ablation tunes each variant over parameters: declare at least one that is "
            "sampled (e.g. train.lr: {type: float, low: 1.0e-5, high: 3.0e-4, log: true})",
        )
    if seeds:
        raise fail("seeds", "a tuned ablation takes its seeds from tuning.final_seeds: move them")
    if search.sampler not in ("tpe", "random"):
        raise fail(
            "search.sampler",
            f"{search.sampler} cannot tune a variant: use tpe or random (the final runs are "
            "a grid of variants x seeds already)",
        )
    if len(search.objectives) > 1:
        raise fail(
            "search.metric",
            "a tuned ablation picks one best configuration per variant: give one metric",
        )
    if search.num_samples is not None:
        raise fail(
            "search.num_samples",
            "a tuned ablation's budget is tuning.trials_per_variant: remove num_samples",
        )
    given: Any = raw.get("trials_per_variant")
    if not is_int(given) or given < 2:
        raise fail(
            "tuning.trials_per_variant",
            f"{given!r}: give each variant's tuning budget, an integer of at least 2",
        )
    trials = int(given)
    if search.scheduler == "asha" and trials < search.asha_reduction_factor:
        raise fail(
            "tuning.trials_per_variant",
            f"{trials} trials per variant are fewer than ASHA's reduction factor "
            f"{search.asha_reduction_factor}: ASHA could stop none; raise the budget or "
            "set search.scheduler: none",
        )
    final_seeds = raw.get("final_seeds")
    if (
        not isinstance(final_seeds, list)
        or len(final_seeds) < 2
        or not all(is_int(s) for s in final_seeds)
    ):
        raise fail(
            "tuning.final_seeds",
            "must list at least two integer train.seed values (a paired interval over seeds "
            "needs two), e.g. [1, 2, 3]",
        )
    if len(set(final_seeds)) != len(final_seeds):
        raise fail("tuning.final_seeds", "lists a seed twice: remove the duplicate")
    overrides = _mapping(fail, "tuning.overrides", raw.get("overrides", {}))
    tuning_seed = overrides.get(SEED_KEY, base.get(SEED_KEY, TrainConfig().seed))
    if tuning_seed in final_seeds:
        raise fail(
            "tuning.final_seeds",
            f"includes {tuning_seed}, the tuning trials' train.seed: the best tuning trial "
            "would be re-run unchanged and its selection luck counted as a result; use "
            "other seeds",
        )
    sampled = {p.key for p in params}
    for key in overrides:
        if key in sampled:
            raise fail(f"tuning.overrides.{key}", "is a tuned parameter: it cannot be fixed here")
        if any(key in settings for settings in variants.values()):
            raise fail(
                f"tuning.overrides.{key}",
                "is set by a variant: the tuning budget applies to every variant alike",
            )
    reference = _mapping(fail, "tuning.reference", raw.get("reference", {}))
    for key in reference:
        if any(key in settings for settings in variants.values()):
            raise fail(
                f"tuning.reference.{key}",
                "is set by a variant: the reference settings apply to every variant alike",
            )
    if search.scheduler == "asha":
        evaluations = _evaluations({**base, **overrides})
        if evaluations <= search.asha_grace_period:
            raise fail(
                "search.asha.grace_period",
                f"{search.asha_grace_period} is not below a tuning trial's {evaluations} "
                "evaluations (train.epochs x train.evals_per_epoch): ASHA could never stop a "
                "trial; lower the grace period or evaluate more often",
            )
    baseline = raw.get("baseline", "baseline" if "baseline" in variants else next(iter(variants)))
    if baseline not in variants:
        raise fail(
            "tuning.baseline",
            f"{baseline!r} is not a variant{did_you_mean(str(baseline), variants)}; "
            f"variants: {', '.join(variants)}",
        )
    return TuningPlan(
        trials_per_variant=trials,
        final_seeds=list(final_seeds),
        baseline=baseline,
        overrides=overrides,
        reference=reference,
    )


def _mapping(fail: Fail, where: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise fail(where, "must be a mapping of dotted config keys to values")
    return dict(raw)


def _evaluations(flat: dict[str, Any]) -> int:
    """Dev evaluations a trial with these settings makes (the trial config's defaults else)."""
    defaults = TrainConfig()
    epochs = flat.get("train.epochs", defaults.epochs)
    per_epoch = flat.get("train.evals_per_epoch", defaults.evals_per_epoch)
    return int(epochs) * int(per_epoch)
