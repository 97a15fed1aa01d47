"""The `search:` section of a search space file: sampler, budget, objectives, scheduler.

`hpsearch.space_parser` reads the rest of the file and calls `parse_search_section`; every
problem is one `ConfigError` line naming the file, the key and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpsearch.space import (
    METRICS,
    NATURAL_MODE,
    Objective,
    Param,
    constant_liar_tpe,
    is_int,
    serial_startup_trials,
)
from hpsearch.space_params import Fail, did_you_mean, failure

if TYPE_CHECKING:
    import optuna

__all__ = [
    "ASHA_KEYS",
    "SAMPLERS",
    "SCHEDULERS",
    "SEARCH_KEYS",
    "SearchSection",
    "parse_search_section",
    "serial_startup_trials",
    "tpe_sampler",
    "tpe_startup_trials",
]

SAMPLERS = ("tpe", "random", "grid", "nsga2")
SCHEDULERS = ("asha", "none")
SEARCH_KEYS = (
    "sampler",
    "seed",
    "num_samples",
    "metric",
    "mode",
    "objectives",
    "scheduler",
    "asha",
    "max_concurrent",
)
ASHA_KEYS = ("grace_period", "reduction_factor")


@dataclass(frozen=True)
class SearchSection:
    """The checked `search:` settings; `num_samples` None means "not given" (the parser then
    takes the grid size, or 10)."""

    sampler: str
    sampler_seed: int
    num_samples: int | None
    objectives: list[Objective]
    scheduler: str
    asha_grace_period: int
    asha_reduction_factor: int
    max_concurrent: int | None


def parse_search_section(path: Path, raw: Any, params: list[Param]) -> SearchSection:
    """The `search:` mapping, checked against the parameters (a grid enumerates no ranges)."""
    fail = failure(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise fail(
            "search",
            "must be a mapping of search settings (sampler, seed, "
            "num_samples, metric, mode, scheduler, asha, ...)",
        )
    for key in raw:
        if key not in SEARCH_KEYS:
            raise fail(
                f"search.{key}",
                f"unknown search setting"
                f"{did_you_mean(str(key), SEARCH_KEYS)}; valid: "
                f"{', '.join(SEARCH_KEYS)}",
            )
    objectives = _objectives(fail, raw)
    multi = len(objectives) > 1

    sampler = raw.get("sampler", "nsga2" if multi else "tpe")
    if sampler not in SAMPLERS:
        raise fail(
            "search.sampler",
            f"unknown sampler {sampler!r}"
            f"{did_you_mean(str(sampler), SAMPLERS)}; use one of "
            f"{', '.join(SAMPLERS)}",
        )
    seed = raw.get("seed", 0)
    if not is_int(seed):
        raise fail("search.seed", f"{seed!r} is not an integer")

    scheduler = raw.get("scheduler", "none" if multi or sampler == "grid" else "asha")
    if scheduler not in SCHEDULERS:
        raise fail("search.scheduler", f"unknown scheduler {scheduler!r}; use asha or none")
    if multi and scheduler == "asha":
        raise fail(
            "search.scheduler",
            "asha stops trials on one metric but this "
            "search has several objectives: set scheduler: none",
        )
    asha = raw.get("asha") or {}
    if not isinstance(asha, dict):
        raise fail("search.asha", "must be a mapping {grace_period, reduction_factor}")
    for key in asha:
        if key not in ASHA_KEYS:
            raise fail(
                f"search.asha.{key}", f"unknown ASHA setting; valid: {', '.join(ASHA_KEYS)}"
            )
    grace = asha.get("grace_period", 1)
    if not is_int(grace) or grace < 1:
        raise fail(
            "search.asha.grace_period",
            "must be an integer >= 1 (evaluations before a trial can be stopped)",
        )
    factor = asha.get("reduction_factor", 2)
    if not is_int(factor) or factor < 2:
        raise fail("search.asha.reduction_factor", "must be an integer >= 2")

    concurrent = raw.get("max_concurrent")
    if concurrent is not None and (not is_int(concurrent) or concurrent < 1):
        raise fail(
            "search.max_concurrent",
            "must be an integer >= 1 (or null: as many as the resources allow)",
        )
    if sampler == "grid":
        for param in params:
            if param.kind in ("float", "int"):
                raise fail(
                    f"parameters.{param.key}",
                    f"sampler grid cannot enumerate a"
                    f" {param.kind} range: list values as {{type: categorical, "
                    "choices: [...]}, or use sampler tpe or random",
                )
    num_samples = raw.get("num_samples")
    if num_samples is not None and (not is_int(num_samples) or num_samples < 1):
        raise fail("search.num_samples", f"{num_samples!r}: must be an integer >= 1")
    return SearchSection(
        sampler=sampler,
        sampler_seed=seed,
        num_samples=num_samples,
        objectives=objectives,
        scheduler=scheduler,
        asha_grace_period=grace,
        asha_reduction_factor=factor,
        max_concurrent=concurrent,
    )


def _objectives(fail: Fail, raw: dict[str, Any]) -> list[Objective]:
    if "objectives" in raw:
        if "metric" in raw or "mode" in raw:
            raise fail("search.objectives", "give either metric/mode or objectives, not both")
        items = raw["objectives"]
        if not isinstance(items, list) or not items:
            raise fail(
                "search.objectives",
                "must be a non-empty list like "
                "[{metric: dev_sts_r, mode: max}, {metric: train_time_s, "
                "mode: min}]",
            )
        objectives = []
        for i, item in enumerate(items):
            where = f"search.objectives[{i}]"
            if not isinstance(item, dict) or "metric" not in item:
                raise fail(where, "must be a mapping {metric: ..., mode: max|min}")
            for key in item:
                if key not in ("metric", "mode"):
                    raise fail(f"{where}.{key}", "unknown key; use metric and mode")
            objectives.append(_objective(fail, where, item["metric"], item.get("mode")))
        metrics = [o.metric for o in objectives]
        if len(set(metrics)) != len(metrics):
            raise fail("search.objectives", "names a metric twice: remove the duplicate")
        return objectives
    return [_objective(fail, "search", raw.get("metric", "dev_overall"), raw.get("mode"))]


def _objective(fail: Fail, where: str, metric: Any, mode: Any) -> Objective:
    if isinstance(metric, str) and metric.startswith("test_"):
        raise fail(
            f"{where}.metric",
            f"{metric} is the held-out test score, reported "
            "once for the final comparison; choosing hyperparameters on it "
            "leaks the test set into the choice: use "
            f"{'dev_' + metric.removeprefix('test_')} instead",
        )
    if metric not in METRICS:
        raise fail(
            f"{where}.metric",
            f"unknown metric {metric!r}"
            f"{did_you_mean(str(metric), METRICS)}; use one of "
            f"{', '.join(sorted(METRICS))}",
        )
    if mode is None:
        mode = NATURAL_MODE[metric]
    if mode not in ("max", "min"):
        raise fail(f"{where}.mode", f"unknown mode {mode!r}: use max or min")
    return Objective(metric=metric, mode=mode)


# TPE under parallel trials -----------------------------------------------------------
def tpe_startup_trials(num_samples: int, concurrency: int) -> int:
    """TPE's `n_startup_trials` when up to `concurrency` trials run at once (docs/SEARCH_SPACES.md,
    "Parallel search"): the serial count less the trials that run beside one, at least 2.

    Optuna counts only ended trials (COMPLETE or PRUNED) towards `n_startup_trials`, not the
    running ones. With N trials at once, the model's first suggestion therefore comes once that
    many have ended and N - 1 more were started at random meanwhile: the serial count B would
    give B + N - 1 random trials. Asking for B - (N - 1) ended trials keeps the random phase at
    B trials in all, whatever N (at least 2 ended ones, so that the model has two real scores).
    Measured (benchmarks/bench_tpe_startup.py): as good as B, and better than counts that grow
    with N (2N, or B + N - 1), which spend the budget on random trials.
    """
    return max(2, serial_startup_trials(num_samples) - (max(1, concurrency) - 1))


def tpe_sampler(seed: int, num_samples: int, concurrency: int = 1) -> optuna.samplers.TPESampler:
    """The seeded TPE sampler of a search of `num_samples` trials, `concurrency` at a time.

    The constant liar (a running trial counts as a bad result) keeps trials that run at the
    same time from being suggested the same point.
    """
    return constant_liar_tpe(seed, tpe_startup_trials(num_samples, concurrency))
