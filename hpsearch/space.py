"""Search spaces as data: the YAML format, its validation, and Optuna sampling.

A search space file (see docs/SEARCH_SPACES.md and the files in search_spaces/) declares fixed
trial settings (`base`), sampled `parameters` over dotted `TrialConfig` keys, optional named
`variants` and replication `seeds`, and how to search (`search`: sampler, budget, objective,
scheduler). Everything is checked when the file is loaded, before Ray starts anything; every
problem is one `ConfigError` line naming the file, the key and the fix.

    space = load_search_space("search_spaces/default.yaml", {"search.num_samples": 4})
    searcher = OptunaSearch(space=space.define_by_run, sampler=space.optuna_sampler(),
                            metric=space.metric, mode=space.mode, storage=storage)
    ...
    cfg = space.resolve(trial_config)   # in the trial: flat Ray config -> TrialConfig

A trial's Ray config is a flat dict of dotted keys ({"train.lr": 2e-05, ...}) plus two
bookkeeping keys that are not config fields: "variant" (always) and "grid_point" (grid only).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
import yaml

from trainables.errors import ConfigError
from trainables.minbert.config import TrialConfig, build_trial_config, known_keys

__all__ = [
    "METRICS",
    "NON_CONFIG_KEYS",
    "Objective",
    "Param",
    "SearchSpace",
    "default_folder",
    "load_search_space",
    "validate_all",
]

# Metrics a trial reports and a sweep may optimise, with their natural direction (the default
# `mode`). test_* scores are reported too, but never searched on (see _check_metric).
_NATURAL_MODE: dict[str, str] = {
    "dev_overall": "max",  # CS224N overall score: (sst_acc + para_acc + (sts_r + 1) / 2) / 3
    "dev_sst_acc": "max",
    "dev_para_acc": "max",
    "dev_sts_r": "max",
    "train_time_s": "min",
}
METRICS: frozenset[str] = frozenset(_NATURAL_MODE)

VARIANT_KEY = "variant"  # the variant's name in every trial config
GRID_KEY = "grid_point"  # the single Optuna parameter of a grid sweep: an index into the grid
SEED_KEY = "train.seed"  # the key `seeds:` replicates over
NON_CONFIG_KEYS: frozenset[str] = frozenset({VARIANT_KEY, GRID_KEY})

SAMPLERS = ("tpe", "random", "grid", "nsga2")
SCHEDULERS = ("asha", "none")
_TOP_KEYS = ("name", "description", "base", "search", "parameters", "variants", "seeds")
_SEARCH_KEYS = (
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
_ASHA_KEYS = ("grace_period", "reduction_factor")
_SPEC_KEYS: dict[str, tuple[str, ...]] = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
    "fixed": ("type", "value", "when"),
}
# Extension toggles that name a variant when a space declares no `variants` (in this order).
_TOGGLES = (
    ("extensions.cosine_sts", "cosine"),
    ("extensions.pcgrad", "pcgrad"),
    ("extensions.sequential_sts", "sequential"),
)
_MAX_GRID = 10_000  # refuse bigger grids: that many trials is never what was meant
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DEFAULTS: dict[str, Any] = TrialConfig().to_flat_dict()


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
            ref in chosen and _member(chosen[ref], allowed) for ref, allowed in self.when.items()
        )

    def suggest(self, trial: optuna.Trial) -> Any:
        """Ask Optuna for a value (fixed parameters are constants and never asked for)."""
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(
                self.key, self.low, self.high, log=self.log, step=self.step or 1
            )
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices or ()))
        raise ValueError(f"fixed parameter {self.key} is a constant, not a suggestion")


@dataclass(frozen=True)
class Objective:
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
    _grid: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def metric(self) -> str | list[str]:
        """The metric(s) as OptunaSearch and Tune take them: a list when multi-objective."""
        if self.multi_objective:
            return [o.metric for o in self.objectives]
        return self.objectives[0].metric

    @property
    def mode(self) -> str | list[str]:
        if self.multi_objective:
            return [o.mode for o in self.objectives]
        return self.objectives[0].mode

    def define_by_run(self, trial: optuna.Trial) -> dict[str, Any]:
        """Optuna define-by-run function for Ray's OptunaSearch: suggest, then return the rest.

        Suggests the sampled parameters (a grid suggests only "grid_point") and returns the
        trial's complete flat config: base settings, the variant's settings and name, fixed
        values and the sampled values again. Ray merges the returned dict over the captured
        suggestions; both hold the same values. No computation happens here.
        """
        if self.sampler == "grid":
            index = trial.suggest_categorical(GRID_KEY, list(range(len(self._grid))))
            return {**self._assemble(self._grid[index]), GRID_KEY: index}
        chosen: dict[str, Any] = {}
        if self.variants:
            chosen[VARIANT_KEY] = trial.suggest_categorical(VARIANT_KEY, list(self.variants))
        if self.seeds:
            chosen[SEED_KEY] = trial.suggest_categorical(SEED_KEY, list(self.seeds))
        for param in self.parameters:
            if param.active(chosen):
                chosen[param.key] = param.value if param.kind == "fixed" else param.suggest(trial)
        return self._assemble(chosen)

    def optuna_sampler(self) -> optuna.samplers.BaseSampler:
        """A seeded sampler for this space: TPE, random, NSGA-II or the grid."""
        if self.sampler == "grid":
            return _GridPointSampler(
                {GRID_KEY: list(range(len(self._grid)))}, seed=self.sampler_seed
            )
        if self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=self.sampler_seed)
        if self.sampler == "nsga2":
            # Several generations even on small budgets (Optuna's default population is 50).
            population = max(2, min(50, self.num_samples // 3))
            return optuna.samplers.NSGAIISampler(
                seed=self.sampler_seed, population_size=population
            )
        # TPE: random start-up trials then model-based; a third of the budget (at most 10, as
        # Optuna's default) so that small budgets still get model-based suggestions. The
        # constant liar keeps concurrent Ray trials from being suggested the same point.
        startup = min(10, max(2, self.num_samples // 3))
        return optuna.samplers.TPESampler(
            seed=self.sampler_seed, n_startup_trials=startup, constant_liar=True
        )

    def total_trials(self) -> int:
        """Trials the sweep runs: the grid size for a grid (unless limited), else num_samples."""
        return self.num_samples

    def grid_size(self) -> int:
        """Number of distinct grid points (0 unless the sampler is grid)."""
        return len(self._grid)

    def grid_points(self) -> list[dict[str, Any]]:
        """Every grid point's complete flat config, in grid_point order (grid only)."""
        return [{**self._assemble(p), GRID_KEY: i} for i, p in enumerate(self._grid)]

    def resolve(self, sampled: Mapping[str, Any]) -> TrialConfig:
        """A trial's flat Ray config (or just its Optuna params) -> a validated TrialConfig.

        Base settings, fixed values and the variant's settings are filled in when missing;
        "variant" and "grid_point" are bookkeeping and dropped.
        """
        flat = {k: v for k, v in self._complete(sampled).items() if k not in NON_CONFIG_KEYS}
        return build_trial_config(flat=flat, source=f"{self.path}: trial config")

    def variant_of(self, sampled: Mapping[str, Any]) -> str:
        """The trial's variant: its declared name, or one derived from the extension toggles.

        Without `variants`, the name lists the toggles that are on: "baseline", "cosine",
        "pcgrad", "sequential", "cosine+pcgrad", ..., and "all" for all three.
        """
        return str(self._complete(sampled)[VARIANT_KEY])

    # -- internals ---------------------------------------------------------------------------

    def _complete(self, sampled: Mapping[str, Any]) -> dict[str, Any]:
        chosen = dict(sampled)
        if self.sampler == "grid" and GRID_KEY in chosen:
            index = chosen[GRID_KEY]
            if not isinstance(index, int) or not 0 <= index < len(self._grid):
                raise ConfigError(
                    f"{self.path}: grid_point {index!r} is not in "
                    f"0..{len(self._grid) - 1}: the trial is not from this space"
                )
            chosen = {**self._grid[index], **chosen}
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
        flat = {**self._assemble(chosen), **chosen}
        if not self.variants:  # derived from the toggles, wherever they were set
            flat[VARIANT_KEY] = _derived_variant(flat)
        return flat

    def _assemble(self, chosen: Mapping[str, Any]) -> dict[str, Any]:
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
        flat[VARIANT_KEY] = name if self.variants else _derived_variant(flat)
        return flat


def load_search_space(path: str | Path, overrides: dict[str, Any] | None = None) -> SearchSpace:
    """Read and validate a search space file.

    Args:
        path: the YAML file.
        overrides: dotted keys replacing what the file says, applied before validation:
            "name", "description", "seeds", "search.<key>" (e.g. "search.num_samples": 2,
            "search.asha.grace_period": 2), or a TrialConfig key (e.g. "data.data_dir"), which
            becomes a fixed setting for every trial (a sampled parameter of that key is pinned).

    Returns:
        The validated SearchSpace.

    Raises:
        ConfigError: one line naming the file, the key and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"search space file {path} does not exist: check the path "
            f"(shipped spaces are in {default_folder()})"
        )
    try:
        doc = yaml.load(path.read_text(), Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}: fix the syntax") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping with keys "
            f"{', '.join(_TOP_KEYS)} (got a YAML {type(doc).__name__})"
        )
    return _Parser(path, doc, overrides or {}).build()


def default_folder() -> Path:
    """The shipped search_spaces/ folder."""
    import search_spaces

    return Path(next(iter(search_spaces.__path__)))


def validate_all(folder: str | Path | None = None) -> list[SearchSpace]:
    """Load every *.yaml in `folder` (default: the shipped search_spaces/), refusing any bad one."""
    folder = Path(folder) if folder is not None else default_folder()
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise ConfigError(f"{folder}: no *.yaml search spaces found: check the folder")
    return [load_search_space(f) for f in files]


# -- parsing and validation ------------------------------------------------------------------


class _Parser:
    """Turns a YAML document into a SearchSpace, refusing the first problem found."""

    def __init__(self, path: Path, doc: dict[str, Any], overrides: dict[str, Any]) -> None:
        self.path = path
        self.doc = doc
        self.overrides = overrides

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {message}")

    def build(self) -> SearchSpace:
        for key in self.doc:
            if key not in _TOP_KEYS:
                raise self.fail(
                    str(key),
                    f"unknown top-level key{_did_you_mean(key, _TOP_KEYS)};"
                    f" valid keys: {', '.join(_TOP_KEYS)}",
                )
        self._apply_overrides()
        doc = self.doc
        name = doc.get("name", self.path.stem)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise self.fail(
                "name",
                f"{name!r} is not a usable experiment name: use letters, "
                "digits, '_', '-' and '.' only",
            )
        description = doc.get("description", "")
        if not isinstance(description, str):
            raise self.fail("description", "must be text: quote it")

        base = self._settings("base", doc.get("base"))
        self._check_config("base", base)
        seeds = self._seeds(doc.get("seeds"), base)
        variants = self._variants(doc.get("variants"), base, seeds)
        params = self._parameters(doc.get("parameters"), base, variants, seeds)
        search = self._search(doc.get("search"), params)

        space = SearchSpace(
            path=self.path,
            name=name,
            description=description,
            base=base,
            parameters=params,
            variants=variants,
            seeds=seeds,
            **search,
        )
        self._finish(space)
        return space

    # overrides ---------------------------------------------------------------------------

    def _apply_overrides(self) -> None:
        for key, value in self.overrides.items():
            where = f"override '{key}'"
            if key in ("name", "description", "seeds"):
                self.doc[key] = value
            elif key.startswith("search."):
                parts = key.split(".")[1:]
                search = self.doc.setdefault("search", {})
                if not isinstance(search, dict):
                    raise self.fail("search", "must be a mapping of search settings")
                if (
                    parts[0] not in _SEARCH_KEYS
                    or (parts[0] == "asha") != (len(parts) == 2)
                    or len(parts) > 2
                    or (len(parts) == 2 and parts[1] not in _ASHA_KEYS)
                ):
                    valid = [f"search.{k}" for k in _SEARCH_KEYS if k != "asha"]
                    valid += [f"search.asha.{k}" for k in _ASHA_KEYS]
                    raise self.fail(where, f"unknown search setting; valid: {', '.join(valid)}")
                if len(parts) == 2:
                    search.setdefault("asha", {})
                    if not isinstance(search["asha"], dict):
                        raise self.fail("search.asha", "must be a mapping")
                    search["asha"][parts[1]] = value
                else:
                    search[parts[0]] = value
                    if parts[0] == "metric":
                        search.pop("objectives", None)
                    elif parts[0] == "objectives":
                        search.pop("metric", None)
                        search.pop("mode", None)
            elif key in known_keys():
                params = self.doc.get("parameters")
                if isinstance(params, dict) and key in params:
                    spec = params[key]
                    when = spec.get("when") if isinstance(spec, dict) else None
                    params[key] = {
                        "type": "fixed",
                        "value": value,
                        **({"when": when} if when is not None else {}),
                    }
                else:
                    base = self.doc.get("base")
                    if base is None:
                        base = self.doc["base"] = {}
                    if not isinstance(base, dict):
                        raise self.fail("base", "must be a mapping of dotted config keys")
                    base[key] = value
            else:
                raise self.fail(
                    where,
                    "not a config key nor one of name, description, seeds, "
                    f"search.<setting>{_did_you_mean(key, known_keys())}",
                )

    # sections ----------------------------------------------------------------------------

    def _settings(self, where: str, raw: Any) -> dict[str, Any]:
        """A mapping of dotted config keys to plain values (base, a variant)."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.fail(
                where, "must be a mapping of dotted config keys to values, e.g. {train.lr: 2.0e-5}"
            )
        for key, value in raw.items():
            self._known(f"{where}.{key}", key)
            if isinstance(value, (dict, list)):
                raise self.fail(
                    f"{where}.{key}",
                    f"a setting takes one value, not a YAML "
                    f"{type(value).__name__}; sampled values belong"
                    " under parameters",
                )
        return dict(raw)

    def _known(self, where: str, key: Any) -> None:
        if not isinstance(key, str) or key not in known_keys():
            raise self.fail(
                where,
                f"unknown config key{_did_you_mean(str(key), known_keys())}"
                " (keys are dotted TrialConfig fields, e.g. train.lr)",
            )

    def _seeds(self, raw: Any, base: dict[str, Any]) -> list[int]:
        if raw is None:
            return []
        if not isinstance(raw, list) or not raw:
            raise self.fail("seeds", "must be a non-empty list of integers, e.g. [11711, 1, 2]")
        for seed in raw:
            if not _is_int(seed):
                raise self.fail(
                    "seeds",
                    f"{seed!r} is not an integer: seeds are train.seed values, e.g. [11711, 1, 2]",
                )
        if len(set(raw)) != len(raw):
            raise self.fail("seeds", "lists a seed twice: remove the duplicate")
        if SEED_KEY in base:
            raise self.fail(f"base.{SEED_KEY}", "is set by `seeds`: remove it from base")
        return list(raw)

    def _variants(
        self, raw: Any, base: dict[str, Any], seeds: list[int]
    ) -> dict[str, dict[str, Any]]:
        if raw is None:
            return {}
        if not isinstance(raw, dict) or not raw:
            raise self.fail(
                "variants",
                "must be a mapping of variant names to settings, "
                "e.g. {baseline: {}, cosine: {extensions.cosine_sts: "
                "true}}",
            )
        variants: dict[str, dict[str, Any]] = {}
        for name, settings in raw.items():
            where = f"variants.{name}"
            if not isinstance(name, str) or not _NAME_RE.match(name):
                hint = (
                    " (YAML reads yes/no/on/off/true/false as booleans: quote the name)"
                    if isinstance(name, bool)
                    else ""
                )
                raise self.fail(
                    where, f"variant names use letters, digits, '_', '-', '.' only{hint}"
                )
            variants[name] = self._settings(where, settings)
            for key in variants[name]:
                if key in base:
                    raise self.fail(
                        f"{where}.{key}",
                        "is also in base: set it in the variants "
                        "only (variants do not override base)",
                    )
                if key == SEED_KEY and seeds:
                    raise self.fail(f"{where}.{key}", "is set by `seeds`: remove it here")
            self._check_config(where, {**base, **variants[name]}, strict=variants[name])
        return variants

    def _parameters(
        self, raw: Any, base: dict[str, Any], variants: dict[str, dict[str, Any]], seeds: list[int]
    ) -> list[Param]:
        if raw is None:
            return []
        if not isinstance(raw, dict):
            raise self.fail(
                "parameters",
                "must be a mapping of dotted config keys to specs, "
                "e.g. {train.lr: {type: float, low: 1.0e-6, "
                "high: 1.0e-4, log: true}}",
            )
        params: list[Param] = []
        for key, spec in raw.items():
            where = f"parameters.{key}"
            self._known(where, key)
            if key in base:
                raise self.fail(
                    where,
                    "is also in base: keep it in one place (base fixes it, parameters sample it)",
                )
            if key == SEED_KEY and seeds:
                raise self.fail(where, "train.seed is set by `seeds`: remove one of the two")
            for vname, settings in variants.items():
                if key in settings:
                    raise self.fail(
                        where,
                        f"is also set by variants.{vname}: a key is either "
                        "sampled or set by variants, not both",
                    )
            param = self._param(where, key, spec)
            self._check_when(where, param, params, variants)
            self._check_param_values(where, param, base)
            params.append(param)
        return params

    def _param(self, where: str, key: str, spec: Any) -> Param:
        if isinstance(spec, list):
            raise self.fail(
                where, "a list is not a parameter spec: write {type: categorical, choices: [...]}"
            )
        if not isinstance(spec, dict):
            return Param(key=key, kind="fixed", value=spec)
        kind = spec.get("type")
        if kind is None:
            raise self.fail(where, "missing 'type': one of float, int, categorical, fixed")
        if kind not in _SPEC_KEYS:
            raise self.fail(
                f"{where}.type",
                f"unknown type {kind!r}"
                f"{_did_you_mean(str(kind), _SPEC_KEYS)}; use one "
                "of float, int, categorical, fixed",
            )
        for item in spec:
            if item not in _SPEC_KEYS[kind]:
                raise self.fail(
                    f"{where}.{item}",
                    f"unknown key for a {kind} parameter; allowed: {', '.join(_SPEC_KEYS[kind])}",
                )
        when = self._when(f"{where}.when", spec.get("when"))
        if kind == "fixed":
            if "value" not in spec:
                raise self.fail(where, "a fixed parameter needs 'value'")
            return Param(key=key, kind="fixed", value=spec["value"], when=when)
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise self.fail(f"{where}.choices", "must be a non-empty list, e.g. [false, true]")
            for i, choice in enumerate(choices):
                if not _is_scalar(choice):
                    raise self.fail(f"{where}.choices", f"{choice!r} is not a single value")
                if any(_same(choice, c) for c in choices[:i]):
                    raise self.fail(f"{where}.choices", f"{choice!r} is listed twice")
            return Param(key=key, kind="categorical", choices=tuple(choices), when=when)
        return self._range(where, key, kind, spec, when)

    def _range(
        self,
        where: str,
        key: str,
        kind: str,
        spec: dict[str, Any],
        when: dict[str, tuple[Any, ...]] | None,
    ) -> Param:
        bounds = {}
        for end in ("low", "high"):
            if end not in spec:
                raise self.fail(where, f"a {kind} parameter needs 'low' and 'high'")
            value = spec[end]
            ok = _is_int(value) if kind == "int" else _is_number(value)
            if not ok:
                raise self.fail(
                    f"{where}.{end}", f"{value!r} is not {_a(kind)}{_text_number_hint(value)}"
                )
            bounds[end] = value if kind == "int" else float(value)
        low, high = bounds["low"], bounds["high"]
        if low >= high:
            raise self.fail(
                where,
                f"empty range: low ({low}) must be below high ({high}); for "
                "one value write it plainly (a fixed parameter)",
            )
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise self.fail(f"{where}.log", "must be true or false")
        if log and low <= 0:
            raise self.fail(
                f"{where}.low",
                f"a log range must stay above zero (low is {low}): raise low or drop log",
            )
        step = spec.get("step")
        if step is not None:
            ok = _is_int(step) if kind == "int" else _is_number(step)
            if not ok or step <= 0:
                raise self.fail(f"{where}.step", f"must be a positive {kind}")
            if log:
                raise self.fail(f"{where}.step", "cannot be combined with log: drop one")
            steps = (high - low) / step
            if abs(steps - round(steps)) > 1e-9 * max(1.0, steps):
                raise self.fail(
                    f"{where}.step",
                    f"step {step} does not fit the range "
                    f"{low}..{high}: high - low must be a multiple"
                    " of step",
                )
            step = step if kind == "int" else float(step)
        return Param(
            key=key,
            kind=kind,
            low=low,
            high=high,
            log=log,
            step=step,  # type: ignore[arg-type]
            when=when,
        )

    def _when(self, where: str, raw: Any) -> dict[str, tuple[Any, ...]] | None:
        if raw is None:
            return None
        if not isinstance(raw, dict) or not raw:
            raise self.fail(
                where,
                "must map an earlier parameter (or variant) to its value(s), "
                "e.g. {extensions.sequential_sts: true}",
            )
        when: dict[str, tuple[Any, ...]] = {}
        for ref, allowed in raw.items():
            values = allowed if isinstance(allowed, list) else [allowed]
            if not values or not all(_is_scalar(v) for v in values):
                raise self.fail(f"{where}.{ref}", "give one value or a list of values")
            when[str(ref)] = tuple(values)
        return when

    def _check_when(
        self, where: str, param: Param, earlier: list[Param], variants: dict[str, dict[str, Any]]
    ) -> None:
        for ref, allowed in (param.when or {}).items():
            if ref == VARIANT_KEY:
                if not variants:
                    raise self.fail(f"{where}.when.{ref}", "the file declares no variants")
                options: tuple[Any, ...] | None = tuple(variants)
            else:
                target = next((p for p in earlier if p.key == ref), None)
                if target is None:
                    if ref in (self.doc.get("parameters") or {}):
                        fix = "names a parameter defined later: move this parameter below it"
                    else:
                        fix = (
                            f"is not a parameter defined above"
                            f"{_did_you_mean(ref, [p.key for p in earlier])}: conditions "
                            "test earlier parameters or variant"
                        )
                    raise self.fail(f"{where}.when.{ref}", fix)
                if target.kind in ("float", "int"):
                    raise self.fail(
                        f"{where}.when.{ref}",
                        f"{ref} is {_a(target.kind)} range: "
                        "conditions test categorical or fixed parameters only",
                    )
                options = target.choices  # None for fixed: any value of the right type
            if options is not None:
                for value in allowed:
                    if not _member(value, options):
                        raise self.fail(
                            f"{where}.when.{ref}",
                            f"{value!r} is not among its "
                            f"choices ({', '.join(repr(o) for o in options)})",
                        )

    def _check_param_values(self, where: str, param: Param, base: dict[str, Any]) -> None:
        if param.kind == "fixed":
            probes = [param.value]
        elif param.kind == "categorical":
            probes = list(param.choices or ())
        elif param.kind == "int":
            probes = [param.low, param.high]
        else:
            low, high = float(param.low or 0.0), float(param.high or 0.0)
            # An interior value with a fraction proves the field takes floats (1.0 and 3.0
            # would pass an int field); on a step grid, the first step.
            inner = (
                low + param.step
                if param.step
                else math.exp(math.log(low) + 0.37 * (math.log(high) - math.log(low)))
                if param.log
                else low + 0.37 * (high - low)
            )
            probes = [low, high, inner]
        for value in probes:
            self._check_config(where, {**base, param.key: value}, strict={param.key: value})

    def _search(self, raw: Any, params: list[Param]) -> dict[str, Any]:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise self.fail(
                "search",
                "must be a mapping of search settings (sampler, seed, "
                "num_samples, metric, mode, scheduler, asha, ...)",
            )
        for key in raw:
            if key not in _SEARCH_KEYS:
                raise self.fail(
                    f"search.{key}",
                    f"unknown search setting"
                    f"{_did_you_mean(str(key), _SEARCH_KEYS)}; valid: "
                    f"{', '.join(_SEARCH_KEYS)}",
                )
        objectives = self._objectives(raw)
        multi = len(objectives) > 1

        sampler = raw.get("sampler", "nsga2" if multi else "tpe")
        if sampler not in SAMPLERS:
            raise self.fail(
                "search.sampler",
                f"unknown sampler {sampler!r}"
                f"{_did_you_mean(str(sampler), SAMPLERS)}; use one of "
                f"{', '.join(SAMPLERS)}",
            )
        seed = raw.get("seed", 0)
        if not _is_int(seed):
            raise self.fail("search.seed", f"{seed!r} is not an integer")

        scheduler = raw.get("scheduler", "none" if multi or sampler == "grid" else "asha")
        if scheduler not in SCHEDULERS:
            raise self.fail(
                "search.scheduler", f"unknown scheduler {scheduler!r}; use asha or none"
            )
        if multi and scheduler == "asha":
            raise self.fail(
                "search.scheduler",
                "asha stops trials on one metric but this "
                "search has several objectives: set scheduler: none",
            )
        asha = raw.get("asha") or {}
        if not isinstance(asha, dict):
            raise self.fail("search.asha", "must be a mapping {grace_period, reduction_factor}")
        for key in asha:
            if key not in _ASHA_KEYS:
                raise self.fail(
                    f"search.asha.{key}", f"unknown ASHA setting; valid: {', '.join(_ASHA_KEYS)}"
                )
        grace = asha.get("grace_period", 1)
        if not _is_int(grace) or grace < 1:
            raise self.fail(
                "search.asha.grace_period",
                "must be an integer >= 1 (evaluations before a trial can be stopped)",
            )
        factor = asha.get("reduction_factor", 2)
        if not _is_int(factor) or factor < 2:
            raise self.fail("search.asha.reduction_factor", "must be an integer >= 2")

        concurrent = raw.get("max_concurrent")
        if concurrent is not None and (not _is_int(concurrent) or concurrent < 1):
            raise self.fail(
                "search.max_concurrent",
                "must be an integer >= 1 (or null: as many as the resources allow)",
            )
        if sampler == "grid":
            for param in params:
                if param.kind in ("float", "int"):
                    raise self.fail(
                        f"parameters.{param.key}",
                        f"sampler grid cannot enumerate a"
                        f" {param.kind} range: list values as {{type: categorical, "
                        "choices: [...]}, or use sampler tpe or random",
                    )
        num_samples = raw.get("num_samples")
        if num_samples is not None and (not _is_int(num_samples) or num_samples < 1):
            raise self.fail("search.num_samples", f"{num_samples!r}: must be an integer >= 1")
        return {
            "sampler": sampler,
            "sampler_seed": seed,
            "num_samples": num_samples,
            "objectives": objectives,
            "scheduler": scheduler,
            "asha_grace_period": grace,
            "asha_reduction_factor": factor,
            "max_concurrent": concurrent,
        }

    def _objectives(self, raw: dict[str, Any]) -> list[Objective]:
        if "objectives" in raw:
            if "metric" in raw or "mode" in raw:
                raise self.fail(
                    "search.objectives", "give either metric/mode or objectives, not both"
                )
            items = raw["objectives"]
            if not isinstance(items, list) or not items:
                raise self.fail(
                    "search.objectives",
                    "must be a non-empty list like "
                    "[{metric: dev_sts_r, mode: max}, {metric: train_time_s, "
                    "mode: min}]",
                )
            objectives = []
            for i, item in enumerate(items):
                where = f"search.objectives[{i}]"
                if not isinstance(item, dict) or "metric" not in item:
                    raise self.fail(where, "must be a mapping {metric: ..., mode: max|min}")
                for key in item:
                    if key not in ("metric", "mode"):
                        raise self.fail(f"{where}.{key}", "unknown key; use metric and mode")
                objectives.append(self._objective(where, item["metric"], item.get("mode")))
            metrics = [o.metric for o in objectives]
            if len(set(metrics)) != len(metrics):
                raise self.fail("search.objectives", "names a metric twice: remove the duplicate")
            return objectives
        return [self._objective("search", raw.get("metric", "dev_overall"), raw.get("mode"))]

    def _objective(self, where: str, metric: Any, mode: Any) -> Objective:
        if isinstance(metric, str) and metric.startswith("test_"):
            raise self.fail(
                f"{where}.metric",
                f"{metric} is the held-out test score, reported "
                "once for the final comparison; choosing hyperparameters on it "
                "leaks the test set into the choice: use "
                f"{'dev_' + metric.removeprefix('test_')} instead",
            )
        if metric not in METRICS:
            raise self.fail(
                f"{where}.metric",
                f"unknown metric {metric!r}"
                f"{_did_you_mean(str(metric), METRICS)}; use one of "
                f"{', '.join(sorted(METRICS))}",
            )
        if mode is None:
            mode = _NATURAL_MODE[metric]
        if mode not in ("max", "min"):
            raise self.fail(f"{where}.mode", f"unknown mode {mode!r}: use max or min")
        return Objective(metric=metric, mode=mode)

    # whole-space checks ------------------------------------------------------------------

    def _finish(self, space: SearchSpace) -> None:
        if space.sampler == "grid":
            space._grid = list(self._enumerate(space))
            size = len(space._grid)
            if space.num_samples is None:
                space.num_samples = size
            elif space.num_samples > size:
                raise self.fail(
                    "search.num_samples",
                    f"{space.num_samples} exceeds the grid's "
                    f"{size} points: drop num_samples (it defaults to the grid "
                    "size) or use seeds to replicate",
                )
            # Every point is a complete trial: validate them all (cheap), cross-field rules too.
            for index, point in enumerate(space._grid):
                flat = {
                    k: v for k, v in space._assemble(point).items() if k not in NON_CONFIG_KEYS
                }
                self._check_config(f"grid point {index} ({_describe(point)})", flat)
        elif space.num_samples is None:
            space.num_samples = 10

    def _enumerate(self, space: SearchSpace) -> Iterator[dict[str, Any]]:
        """Grid points: variants x categorical choices (conditions honoured) x seeds."""
        starts: list[dict[str, Any]] = (
            [{VARIANT_KEY: name} for name in space.variants] if space.variants else [{}]
        )
        count = 0
        for start in starts:
            for point in self._expand(start, space.parameters):
                for seed in space.seeds or [None]:
                    count += 1
                    if count > _MAX_GRID:
                        raise self.fail(
                            "search.sampler",
                            f"grid has more than {_MAX_GRID} "
                            "points: use fewer choices, or sampler tpe or random",
                        )
                    yield point if seed is None else {**point, SEED_KEY: seed}

    def _expand(self, chosen: dict[str, Any], params: list[Param]) -> Iterator[dict[str, Any]]:
        if not params:
            yield chosen
            return
        param, rest = params[0], params[1:]
        if not param.active(chosen):
            yield from self._expand(chosen, rest)
        elif param.kind == "fixed":
            yield from self._expand({**chosen, param.key: param.value}, rest)
        else:
            for choice in param.choices or ():
                yield from self._expand({**chosen, param.key: choice}, rest)

    def _check_config(
        self, where: str, flat: dict[str, Any], strict: dict[str, Any] | None = None
    ) -> None:
        """Build a TrialConfig from `flat`; the `strict` values must keep their YAML type."""
        cfg = build_trial_config(flat=flat, source=f"{self.path}: {where}")
        resolved = cfg.to_flat_dict()
        for key, given in (flat if strict is None else strict).items():
            problem = _type_problem(given, resolved[key])
            if problem:
                raise self.fail(where, f"{key}: {problem}")


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _construct_mapping(
    loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _GridPointSampler(optuna.samplers.GridSampler):
    """optuna's GridSampler without the study.stop() it calls once the grid is exhausted.

    That call only works inside `study.optimize`; under Ray's ask/tell it raises RuntimeError
    from the tell of the last trials. Ray stops after `total_trials()` trials anyway.
    """

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


# -- small helpers ---------------------------------------------------------------------------


def _derived_variant(flat: Mapping[str, Any]) -> str:
    on = [name for key, name in _TOGGLES if flat.get(key, _DEFAULTS[key]) is True]
    if not on:
        return "baseline"
    if len(on) == len(_TOGGLES):
        return "all"
    return "+".join(on)


def _describe(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in point.items())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps true apart from 1 and 1 apart from 1.0 (YAML types matter here)."""
    return type(a) is type(b) and a == b


def _member(value: Any, options: Any) -> bool:
    return any(_same(value, option) for option in options)


def _a(kind: str) -> str:
    return {"int": "an integer", "float": "a number"}.get(kind, kind)


def _yaml_float(value: float) -> str:
    """1e-06 -> "1.0e-06": the spelling YAML 1.1 (PyYAML) reads as a float."""
    mantissa, exponent = f"{value:e}".split("e")
    mantissa = mantissa.rstrip("0")
    return f"{mantissa}0e{exponent}" if mantissa.endswith(".") else f"{mantissa}e{exponent}"


def _text_number_hint(value: Any) -> str:
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return ""
        if "e" not in value.lower() or not math.isfinite(number):
            return " but text: remove the quotes"
        return (
            f" but text: YAML reads {value} as a string; write {_yaml_float(number)} "
            "(a decimal point and a signed exponent)"
        )
    return ""


def _type_problem(given: Any, resolved: Any) -> str | None:
    """Why a YAML value would change type on its way into TrialConfig (None: it would not)."""
    if given is None or isinstance(given, bool):
        ok = type(resolved) is type(given)
    elif isinstance(given, int):
        ok = type(resolved) in (int, float)  # an int is a fine float
    else:
        ok = type(resolved) is type(given)
    if ok:
        return None
    field_kind = {
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "text",
        type(None): "null",
    }.get(type(resolved), type(resolved).__name__)
    hint = _text_number_hint(given) or (
        "; for an integer field use type: int" if isinstance(given, float) else ""
    )
    return f"{given!r} is a {type(given).__name__} but the field takes {field_kind}{hint}"


def _did_you_mean(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, sorted(str(o) for o in options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
