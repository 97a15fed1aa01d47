"""Search spaces as data: the validated space, and Optuna sampling over it.

A search space file (see docs/SEARCH_SPACES.md and the files in search_spaces/) declares fixed
trial settings (`base`), sampled `parameters` over dotted `TrialConfig` keys, optional named
`variants` and replication `seeds`, and how to search (`search`: sampler, budget, objective,
scheduler). `hpsearch.space_parser.load_search_space` reads and checks a file and returns the
`SearchSpace` defined here; nothing in this module reads YAML.

    space = load_search_space("search_spaces/default.yaml", {"search.num_samples": 4})
    searcher = OptunaSearch(space=space.define_by_run, sampler=space.optuna_sampler(),
                            metric=space.metric, mode=space.mode, storage=storage)
    ...
    cfg = space.resolve(trial_config)   # in the trial: flat Ray config -> TrialConfig

A trial's Ray config is a flat dict of dotted keys ({"train.lr": 2e-05, ...}) plus two
bookkeeping keys that are not config fields: "variant" (always) and "grid_point" (grid only).
A SearchSpace is plain data (it pickles), so the sweep hands it to Ray workers as it is.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import optuna

from trainables.errors import ConfigError
from trainables.minbert.config import TrialConfig, build_trial_config
from trainables.minbert.extensions.registry import variant_name

if TYPE_CHECKING:
    from hpsearch.space_tuning import TuningPlan

__all__ = [
    "GRID_KEY",
    "METRICS",
    "NATURAL_MODE",
    "NON_CONFIG_KEYS",
    "SEED_KEY",
    "VARIANT_KEY",
    "Objective",
    "Param",
    "SearchSpace",
]

# Metrics a trial reports and a sweep may optimise, with their natural direction (the default
# `mode`). test_* scores are reported too, but never searched on (the parser refuses them).
NATURAL_MODE: dict[str, str] = {
    "dev_overall": "max",  # CS224N overall score: (sst_acc + para_acc + (sts_r + 1) / 2) / 3
    "dev_sst_acc": "max",
    "dev_para_acc": "max",
    "dev_sts_r": "max",
    "train_time_s": "min",
}
METRICS: frozenset[str] = frozenset(NATURAL_MODE)

VARIANT_KEY = "variant"  # the variant's name in every trial config
GRID_KEY = "grid_point"  # the single Optuna parameter of a grid sweep: an index into the grid
SEED_KEY = "train.seed"  # the key `seeds:` replicates over
NON_CONFIG_KEYS: frozenset[str] = frozenset({VARIANT_KEY, GRID_KEY})
# Every config default: a toggle a space leaves unset is off (or on) as TrialConfig says.
_DEFAULTS: dict[str, Any] = TrialConfig().to_flat_dict()


def serial_startup_trials(num_samples: int) -> int:
    """Random start-up trials of a TPE search that runs one trial at a time: a third of the
    budget, at least 2 and at most Optuna's default of 10, so that small budgets still get
    model-based suggestions."""
    return min(10, max(2, num_samples // 3))


def constant_liar_tpe(seed: int | None, n_startup_trials: int) -> optuna.samplers.TPESampler:
    """Optuna's seeded TPE sampler with the constant liar (a running trial counts as a bad
    result, so trials that run at the same time are not suggested the same point).

    Optuna 4 marks ``constant_liar`` experimental and warns at every construction; the warning
    is not the user's to act on and would break the one-line errors of the CLI, so it is
    silenced here, for this construction only.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=n_startup_trials, constant_liar=True
        )


@dataclass(frozen=True)
class Param:
    """One entry of `parameters`: a sampled range, a categorical choice, or a fixed value.

    Attributes:
        key: dotted TrialConfig key, e.g. "train.lr".
        kind: "float" | "int" | "categorical" | "fixed".
        low, high, log, step: the range of a float/int parameter (high inclusive).
        choices: the options of a categorical parameter.
        value: the value of a fixed parameter.
        when: conditions, {earlier parameter or "variant": allowed values}; the parameter exists
            only in trials where every condition holds (all of them: a logical and).
    """

    key: str
    kind: Literal["float", "int", "categorical", "fixed"]
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None
    value: Any = None
    when: dict[str, tuple[Any, ...]] | None = None

    def active(self, chosen: Mapping[str, Any]) -> bool:
        """Whether this parameter exists, given the values chosen before it."""
        if not self.when:
            return True
        return all(
            ref in chosen and is_member(chosen[ref], allowed) for ref, allowed in self.when.items()
        )

    def suggest(self, trial: optuna.Trial) -> Any:
        """Ask Optuna for a value (fixed parameters are constants and never asked for)."""
        if self.kind in ("float", "int"):
            if self.low is None or self.high is None:
                raise ValueError(f"range parameter {self.key} has no bounds")
            if self.kind == "int":
                return trial.suggest_int(
                    self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
                )
            step = None if self.step is None else float(self.step)
            return trial.suggest_float(
                self.key, float(self.low), float(self.high), log=self.log, step=step
            )
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices or ()))
        raise ValueError(f"fixed parameter {self.key} is a constant, not a suggestion")


@dataclass(frozen=True)
class Objective:
    """One metric to optimise and its direction."""

    metric: str
    mode: Literal["max", "min"]


@dataclass
class SearchSpace:
    """A validated search space; build it with `load_search_space`."""

    path: Path
    name: str
    description: str
    base: dict[str, Any]
    parameters: list[Param]
    variants: dict[str, dict[str, Any]]
    seeds: list[int]
    sampler: str
    sampler_seed: int
    num_samples: int
    objectives: list[Objective]
    scheduler: str
    asha_grace_period: int
    asha_reduction_factor: int
    max_concurrent: int | None
    # a grid sweep's points (the chosen values of each, in grid_point order); [] otherwise
    grid: list[dict[str, Any]] = field(default_factory=list, repr=False)
    # a tuned ablation's plan (the `tuning:` section, hpsearch.ablation runs it); None otherwise
    tuning: TuningPlan | None = None

    @property
    def multi_objective(self) -> bool:
        """Whether the search has several objectives (NSGA-II, no ASHA)."""
        return len(self.objectives) > 1

    @property
    def metric(self) -> str | list[str]:
        """The metric(s) as OptunaSearch and Tune take them: a list when multi-objective."""
        if self.multi_objective:
            return [o.metric for o in self.objectives]
        return self.objectives[0].metric

    @property
    def mode(self) -> str | list[str]:
        """The mode(s), "max" or "min", matching `metric`."""
        if self.multi_objective:
            return [o.mode for o in self.objectives]
        return self.objectives[0].mode

    @property
    def directions(self) -> list[Literal["maximize", "minimize"]]:
        """Optuna's study directions, one per objective ("maximize" or "minimize")."""
        return ["maximize" if o.mode == "max" else "minimize" for o in self.objectives]

    def define_by_run(self, trial: optuna.Trial) -> dict[str, Any]:
        """Optuna define-by-run function for Ray's OptunaSearch: suggest, then return the rest.

        Suggests the sampled parameters (a grid suggests only "grid_point") and returns the
        trial's complete flat config: base settings, the variant's settings and name, fixed
        values and the sampled values again. Ray merges the returned dict over the captured
        suggestions; both hold the same values. No computation happens here.
        """
        if self.sampler == "grid":
            index = trial.suggest_categorical(GRID_KEY, list(range(len(self.grid))))
            return {**self.assemble(self.grid[index]), GRID_KEY: index}
        chosen: dict[str, Any] = {}
        if self.variants:
            chosen[VARIANT_KEY] = trial.suggest_categorical(VARIANT_KEY, list(self.variants))
        if self.seeds:
            chosen[SEED_KEY] = trial.suggest_categorical(SEED_KEY, list(self.seeds))
        for param in self.parameters:
            if param.active(chosen):
                chosen[param.key] = param.value if param.kind == "fixed" else param.suggest(trial)
        return self.assemble(chosen)

    def optuna_sampler(self) -> optuna.samplers.BaseSampler:
        """A seeded sampler for this space: TPE, random, NSGA-II or the grid."""
        if self.sampler == "grid":
            return _GridPointSampler(
                {GRID_KEY: list(range(len(self.grid)))}, seed=self.sampler_seed
            )
        if self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=self.sampler_seed)
        if self.sampler == "nsga2":
            # Several generations even on small budgets (Optuna's default population is 50).
            population = max(2, min(50, self.num_samples // 3))
            return optuna.samplers.NSGAIISampler(
                seed=self.sampler_seed, population_size=population
            )
        # TPE: random start-up trials then model-based (a sweep running trials in parallel
        # uses space_search.tpe_sampler, which counts the trials running beside one).
        return constant_liar_tpe(self.sampler_seed, serial_startup_trials(self.num_samples))

    def grid_size(self) -> int:
        """Number of distinct grid points (0 unless the sampler is grid)."""
        return len(self.grid)

    def grid_points(self) -> list[dict[str, Any]]:
        """Every grid point's complete flat config, in grid_point order (grid only)."""
        return [{**self.assemble(p), GRID_KEY: i} for i, p in enumerate(self.grid)]

    def resolve(
        self, sampled: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
    ) -> TrialConfig:
        """A trial's flat Ray config (or just its Optuna params) -> a validated TrialConfig.

        Base settings, fixed values and the variant's settings are filled in when missing;
        "variant" and "grid_point" are bookkeeping and dropped. `overrides` (a sweep's
        per-trial overrides: smoke test, --data-dir, ...) go on top, validated again.
        """
        flat = {k: v for k, v in self._complete(sampled).items() if k not in NON_CONFIG_KEYS}
        cfg = build_trial_config(flat=flat, source=f"{self.path}: trial config")
        if not overrides:
            return cfg
        return build_trial_config(cfg.model_dump(), dict(overrides), source="sweep overrides")

    def variant_of(self, sampled: Mapping[str, Any]) -> str:
        """The trial's variant: its declared name, or one derived from the extension toggles.

        Without `variants`, the name lists the toggles that are on: "baseline", "cosine",
        "pcgrad", "sequential", "cosine+pcgrad", ..., and "all" with every registered toggle on.
        """
        return str(self._complete(sampled)[VARIANT_KEY])

    # -- internals ---------------------------------------------------------------------------

    def _complete(self, sampled: Mapping[str, Any]) -> dict[str, Any]:
        chosen = dict(sampled)
        if self.sampler == "grid" and GRID_KEY in chosen:
            index = chosen[GRID_KEY]
            if not isinstance(index, int) or not 0 <= index < len(self.grid):
                raise ConfigError(
                    f"{self.path}: grid_point {index!r} is not in "
                    f"0..{len(self.grid) - 1}: the trial is not from this space"
                )
            chosen = {**self.grid[index], **chosen}
        name = chosen.get(VARIANT_KEY)
        if self.variants and name is None:
            raise ConfigError(
                f"{self.path}: the trial config has no 'variant' (one of "
                f"{', '.join(self.variants)}): it is not from this space"
            )
        if self.variants and name not in self.variants:
            raise ConfigError(
                f"{self.path}: unknown variant {name!r}: "
                f"expected one of {', '.join(self.variants)}"
            )
        flat = {**self.assemble(chosen), **chosen}
        if not self.variants:  # derived from the toggles, wherever they were set
            flat[VARIANT_KEY] = _variant_from_toggles(flat)
        return flat

    def assemble(self, chosen: Mapping[str, Any]) -> dict[str, Any]:
        """base | variant settings | seed, fixed and chosen parameter values | variant name."""
        name = chosen.get(VARIANT_KEY)
        flat = dict(self.base)
        if self.variants and name in self.variants:
            flat.update(self.variants[name])
        values: dict[str, Any] = {VARIANT_KEY: name} if name is not None else {}
        if SEED_KEY in chosen:
            values[SEED_KEY] = chosen[SEED_KEY]
        for param in self.parameters:  # in file order: conditions look at earlier values
            if param.active(values):
                if param.kind == "fixed":
                    values[param.key] = param.value
                elif param.key in chosen:
                    values[param.key] = chosen[param.key]
        values.pop(VARIANT_KEY, None)
        flat.update(values)
        flat[VARIANT_KEY] = name if self.variants else _variant_from_toggles(flat)
        return flat


def _variant_from_toggles(flat: Mapping[str, Any]) -> str:
    """The registry's name for the toggles that are on (unset ones at their default)."""
    return variant_name({**_DEFAULTS, **flat})


class _GridPointSampler(optuna.samplers.GridSampler):
    """optuna's GridSampler without the study.stop() it calls once the grid is exhausted.

    That call only works inside `study.optimize`; under Ray's ask/tell it raises RuntimeError
    from the tell of the last trials. Ray stops after `num_samples` trials anyway.
    """

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None

    @property
    def order(self) -> list[int]:
        """The grid points' indices in the order this sampler hands them out (seeded)."""
        return [cast(int, point[0]) for point in self._all_grids]  # one parameter: the index


# -- value helpers (YAML types matter: true is not 1, 1 is not 1.0) --------------------------


def is_int(value: Any) -> bool:
    """An integer, and not a boolean."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float, and not a boolean."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_scalar(value: Any) -> bool:
    """One YAML value: null, a boolean, a number or text."""
    return value is None or isinstance(value, (bool, int, float, str))


def same_value(a: Any, b: Any) -> bool:
    """Equality that keeps true apart from 1 and 1 apart from 1.0 (YAML types matter here)."""
    return type(a) is type(b) and a == b


def is_member(value: Any, options: Any) -> bool:
    """Whether `value` is among `options`, by `same_value`."""
    return any(same_value(value, option) for option in options)
