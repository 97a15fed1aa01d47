"""Reading a search space file: the YAML document, checked, becomes a `SearchSpace`.

Everything is checked when the file is loaded, before Ray starts anything; every problem is one
`ConfigError` line naming the file, the key and the fix. Each setting a space fixes or samples
is probed through `build_trial_config` (the base, every variant, each parameter's bounds and
choices, every grid point), so a trial can never meet a value its config refuses. The
`search:` section has its own module, `hpsearch.space_search`.

    space = load_search_space("search_spaces/default.yaml", {"search.num_samples": 4})
    spaces = validate_all()   # every shipped space
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from hpsearch._yaml import load_strict
from hpsearch.space import (
    NON_CONFIG_KEYS,
    SEED_KEY,
    VARIANT_KEY,
    Param,
    SearchSpace,
    is_int,
    is_member,
)
from hpsearch.space_params import a_kind, did_you_mean, failure, parse_param, type_problem
from hpsearch.space_search import ASHA_KEYS, SEARCH_KEYS, parse_search_section
from hpsearch.space_tuning import parse_tuning_section
from trainables.errors import ConfigError
from trainables.minbert.config import build_trial_config, known_keys

__all__ = ["default_folder", "load_search_space", "validate_all"]

_TOP_KEYS = (
    "name",
    "description",
    "base",
    "search",
    "parameters",
    "variants",
    "seeds",
    "tuning",
)
_MAX_GRID = 10_000  # refuse bigger grids: that many trials is never what was meant
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_EXAMPLE = "e.g. parameters: {train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}}"


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
        doc = load_strict(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}: fix the syntax") from None
    if doc is None or doc == {}:
        raise ConfigError(
            f"{path}: the file is empty: a search space names what to search, "
            f"under parameters, variants or seeds ({_EXAMPLE}; see {default_folder()}/smoke.yaml)"
        )
    if not isinstance(doc, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping with keys "
            f"{', '.join(_TOP_KEYS)} (got a YAML {type(doc).__name__})"
        )
    return SpaceFileParser(path, doc, overrides or {}).build()


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


class SpaceFileParser:
    """Turns a YAML document into a SearchSpace, refusing the first problem found."""

    def __init__(self, path: Path, doc: dict[str, Any], overrides: dict[str, Any]) -> None:
        self.path = path
        self.doc = doc
        self.overrides = overrides
        self.fail = failure(path)

    def build(self) -> SearchSpace:
        for key in self.doc:
            if key not in _TOP_KEYS:
                raise self.fail(
                    str(key),
                    f"unknown top-level key{did_you_mean(key, _TOP_KEYS)};"
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
        if "tuning" in doc and doc.get("seeds") is not None:
            raise self.fail(
                "seeds", "a tuned ablation takes its seeds from tuning.final_seeds: move them"
            )
        seeds = self._seeds(doc.get("seeds"), base)
        variants = self._variants(doc.get("variants"), base, seeds)
        params = self._parameters(doc.get("parameters"), base, variants, seeds)
        search = parse_search_section(self.path, doc.get("search"), params)
        tuning = None
        if "tuning" in doc:
            tuning = parse_tuning_section(
                self.fail,
                doc["tuning"],
                base=base,
                variants=variants,
                params=params,
                seeds=seeds,
                search=search,
            )
        if not (params or variants or seeds):
            raise ConfigError(
                f"{self.path}: nothing to search: the file has no parameters, variants or "
                f"seeds, so every trial would be the same run; add one ({_EXAMPLE}), "
                "or run one configuration with `hpsearch train`"
            )
        grid: list[dict[str, Any]] = []
        num_samples = search.num_samples
        if search.sampler == "grid":
            grid = list(self._enumerate(variants, params, seeds))
            if num_samples is None:
                num_samples = len(grid)
            elif num_samples > len(grid):
                raise self.fail(
                    "search.num_samples",
                    f"{num_samples} exceeds the grid's "
                    f"{len(grid)} points: drop num_samples (it defaults to the grid "
                    "size) or use seeds to replicate",
                )
        elif num_samples is None:
            num_samples = 10
        space = SearchSpace(
            path=self.path,
            name=name,
            description=description,
            base=base,
            parameters=params,
            variants=variants,
            seeds=seeds,
            sampler=search.sampler,
            sampler_seed=search.sampler_seed,
            num_samples=num_samples,
            objectives=search.objectives,
            scheduler=search.scheduler,
            asha_grace_period=search.asha_grace_period,
            asha_reduction_factor=search.asha_reduction_factor,
            max_concurrent=search.max_concurrent,
            grid=grid,
            tuning=tuning,
        )
        # Every grid point is a complete trial: validate them all (cheap), cross-field rules too.
        for index, point in enumerate(grid):
            flat = {k: v for k, v in space.assemble(point).items() if k not in NON_CONFIG_KEYS}
            self._check_config(f"grid point {index} ({_describe(point)})", flat)
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
                    parts[0] not in SEARCH_KEYS
                    or (parts[0] == "asha") != (len(parts) == 2)
                    or len(parts) > 2
                    or (len(parts) == 2 and parts[1] not in ASHA_KEYS)
                ):
                    valid = [f"search.{k}" for k in SEARCH_KEYS if k != "asha"]
                    valid += [f"search.asha.{k}" for k in ASHA_KEYS]
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
                    f"search.<setting>{did_you_mean(key, known_keys())}",
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
                f"unknown config key{did_you_mean(str(key), known_keys())}"
                " (keys are dotted TrialConfig fields, e.g. train.lr)",
            )

    def _seeds(self, raw: Any, base: dict[str, Any]) -> list[int]:
        if raw is None:
            return []
        if not isinstance(raw, list) or not raw:
            raise self.fail("seeds", "must be a non-empty list of integers, e.g. [11711, 1, 2]")
        for seed in raw:
            if not is_int(seed):
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
            param = parse_param(self.fail, where, key, spec)
            self._check_when(where, param, params, variants)
            self._check_param_values(where, param, base)
            params.append(param)
        return params

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
                            f"{did_you_mean(ref, [p.key for p in earlier])}: conditions "
                            "test earlier parameters or variant"
                        )
                    raise self.fail(f"{where}.when.{ref}", fix)
                if target.kind in ("float", "int"):
                    raise self.fail(
                        f"{where}.when.{ref}",
                        f"{ref} is {a_kind(target.kind)} range: "
                        "conditions test categorical or fixed parameters only",
                    )
                options = target.choices  # None for fixed: any value of the right type
            if options is not None:
                for value in allowed:
                    if not is_member(value, options):
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

    def _enumerate(
        self, variants: dict[str, dict[str, Any]], params: list[Param], seeds: list[int]
    ) -> Iterator[dict[str, Any]]:
        """Grid points: variants x categorical choices (conditions honoured) x seeds."""
        starts: list[dict[str, Any]] = [{VARIANT_KEY: name} for name in variants] or [{}]
        replicas: list[int | None] = [*seeds] or [None]
        count = 0
        for start in starts:
            for point in self._expand(start, params):
                for seed in replicas:
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
            problem = type_problem(given, resolved[key])
            if problem:
                raise self.fail(where, f"{key}: {problem}")


def _describe(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in point.items())
