"""Search space files: loading, validation, Optuna sampling and resolution to TrialConfig.

Everything runs on real optuna studies (ask/tell, as Ray's OptunaSearch drives them) and real
TrialConfig validation; nothing is mocked.
"""

from __future__ import annotations

import itertools
import math
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpsearch.space import METRICS, SearchSpace
from hpsearch.space_parser import default_folder, load_search_space, validate_all
from trainables.errors import ConfigError
from trainables.minbert.config import TrialConfig
from trainables.minbert.extensions import registry

optuna.logging.set_verbosity(optuna.logging.WARNING)

SHIPPED = sorted(default_folder().glob("*.yaml"))


def _write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _study(space: SearchSpace) -> optuna.Study:
    if space.multi_objective:
        directions = ["maximize" if m == "max" else "minimize" for m in space.mode]
        return optuna.create_study(sampler=space.optuna_sampler(), directions=directions)
    direction = "maximize" if space.mode == "max" else "minimize"
    return optuna.create_study(sampler=space.optuna_sampler(), direction=direction)


def _score(space: SearchSpace, cfg: TrialConfig) -> float | list[float]:
    """A deterministic stand-in objective that depends on the sampled values."""
    value = -abs(math.log10(cfg.train.lr) + 4.5) - cfg.model.dropout + 0.1 * cfg.extensions.pcgrad
    if space.multi_objective:
        return [value, float(cfg.train.epochs)][: len(space.objectives)]
    return value


def _ask(space: SearchSpace, study: optuna.Study) -> tuple[optuna.Trial, dict[str, Any]]:
    """One trial as Ray's OptunaSearch makes it: captured suggestions + returned dict."""
    trial = study.ask()
    returned = space.define_by_run(trial)
    return trial, {**trial.params, **returned}


def _run(space: SearchSpace, n: int) -> list[dict[str, Any]]:
    study = _study(space)
    configs = []
    for _ in range(n):
        trial, config = _ask(space, study)
        study.tell(trial, _score(space, space.resolve(config)))
        configs.append(config)
    return configs


def _holds(when: dict[str, tuple[Any, ...]], config: dict[str, Any]) -> bool:
    return all(
        ref in config and any(type(config[ref]) is type(v) and config[ref] == v for v in allowed)
        for ref, allowed in when.items()
    )


def _check_config(space: SearchSpace, config: dict[str, Any]) -> None:
    cfg = space.resolve(config)
    assert isinstance(cfg, TrialConfig)
    flat = cfg.to_flat_dict()
    for key, value in space.base.items():
        assert flat[key] == value, key
    for param in space.parameters:
        if param.when and not _holds(param.when, config):
            assert param.key not in config, f"{param.key} present though its condition is off"
            continue
        assert param.key in config, f"{param.key} missing though its condition holds"
        value = config[param.key]
        assert flat[param.key] == value
        if param.kind == "float":
            assert isinstance(value, float) and param.low <= value <= param.high
            if param.step:
                steps = (value - param.low) / param.step
                assert abs(steps - round(steps)) < 1e-6
        elif param.kind == "int":
            assert isinstance(value, int) and param.low <= value <= param.high
        elif param.kind == "categorical":
            assert any(type(value) is type(c) and value == c for c in param.choices)
        else:
            assert value == param.value
    if space.variants:
        assert config["variant"] in space.variants
        for key, value in space.variants[config["variant"]].items():
            assert flat[key] == value
    if space.seeds:
        assert config["train.seed"] in space.seeds
        assert cfg.train.seed == config["train.seed"]
    assert space.variant_of(config) == config["variant"]


# -- the shipped spaces ---------------------------------------------------------------------


def test_shipped_folder_has_the_four_spaces():
    names = {p.stem for p in SHIPPED}
    assert {"default", "paper_ablation", "demo", "smoke"} <= names
    assert [s.path for s in validate_all()] == SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_file_loads_and_documents_itself(path: Path):
    space = load_search_space(path)
    assert space.name == path.stem
    assert space.num_samples >= 1
    assert set(space.metric if space.multi_objective else [space.metric]) <= METRICS
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    text = "\n".join(header)
    assert len(header) >= 5, "every space opens with a comment block"
    assert f"search_spaces/{path.name}" in text, "the header gives the exact command"
    assert "Budget" in text or "budget" in text


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_file_samples_valid_trial_configs(path: Path):
    space = load_search_space(path)
    n = min(30, space.num_samples) if space.sampler == "grid" else 30
    configs = _run(space, n)
    for config in configs:
        _check_config(space, config)
    for param in space.parameters:  # every condition is seen both on and off
        if param.when and param.kind != "fixed":
            present = {param.key in c for c in configs}
            assert present == {True, False}, param.key


def test_default_space_covers_the_extensions():
    space = load_search_space(default_folder() / "default.yaml")
    keys = {p.key: p for p in space.parameters}
    for toggle in ("extensions.cosine_sts", "extensions.pcgrad", "extensions.sequential_sts"):
        assert keys[toggle].choices == (False, True)
    assert keys["extensions.task_sampling"].choices == ("cycle", "proportional")
    assert keys["extensions.sequential_sts_epochs"].when == {"extensions.sequential_sts": (True,)}
    assert keys["train.lr"].log and keys["train.weight_decay"].log
    assert space.sampler == "tpe" and space.scheduler == "asha"
    assert isinstance(space.optuna_sampler(), optuna.samplers.TPESampler)


def test_building_a_sampler_warns_nothing():
    """Optuna 4 calls `constant_liar` experimental and warns; a sweep's stderr must stay
    quiet (bad input is refused in exactly one line, and the CLI tests count them)."""
    space = load_search_space(default_folder() / "default.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert space.optuna_sampler()._constant_liar  # the liar is on, silently


def test_paper_ablation_is_the_report_grid():
    space = load_search_space(default_folder() / "paper_ablation.yaml")
    assert list(space.variants) == ["baseline", "cosine", "pcgrad", "sequential", "all"]
    assert space.seeds == [11711, 1, 2]
    assert space.sampler == "grid" and space.scheduler == "none"
    assert space.num_samples == space.grid_size() == 15
    cfg = space.resolve(space.grid_points()[0])
    assert (cfg.model.dropout, cfg.train.lr, cfg.train.weight_decay, cfg.train.epochs) == (
        0.3,
        1e-5,
        1e-4,
        1,
    )
    assert cfg.extensions.task_sampling == "cycle"
    expected = {
        "baseline": (False, False, False),
        "cosine": (True, False, False),
        "pcgrad": (False, True, False),
        "sequential": (False, False, True),
        "all": (True, True, True),
    }
    for point in space.grid_points():
        ext = space.resolve(point).extensions
        assert (ext.cosine_sts, ext.pcgrad, ext.sequential_sts) == expected[point["variant"]]
        # The declared names agree with the names derived from the toggles.
        assert space.variant_of(point) == point["variant"]


def test_demo_and_smoke_use_the_synthetic_data_and_small_budgets():
    demo = load_search_space(default_folder() / "demo.yaml")
    smoke = load_search_space(default_folder() / "smoke.yaml")
    for space in (demo, smoke):
        assert "data.data_dir" not in space.base
        assert space.num_samples <= 6 and space.max_concurrent == 2
    assert smoke.base["model.checkpoint"] == "random"
    assert {p.kind for p in smoke.parameters} == {"float", "int", "categorical", "fixed"}
    assert any(p.log for p in smoke.parameters) and any(p.when for p in smoke.parameters)


# -- samplers -------------------------------------------------------------------------------


def test_grid_enumerates_the_product_once_each_even_when_trials_overlap(tmp_path: Path):
    path = _write(
        tmp_path,
        """
search: {sampler: grid}
parameters:
  extensions.pcgrad: {type: categorical, choices: [false, true]}
  extensions.task_sampling: {type: categorical, choices: [cycle, proportional]}
  model.dropout: 0.2
variants:
  plain: {}
  cosine: {extensions.cosine_sts: true}
seeds: [1, 2, 3]
""",
    )
    space = load_search_space(path)
    assert space.num_samples == space.grid_size() == 2 * 2 * 2 * 3
    study = _study(space)
    # All trials asked before any is told, as when Ray runs them concurrently.
    asked = [_ask(space, study) for _ in range(space.num_samples)]
    seen = [
        (c["variant"], c["extensions.pcgrad"], c["extensions.task_sampling"], c["train.seed"])
        for _, c in asked
    ]
    product = set(
        itertools.product(["plain", "cosine"], [False, True], ["cycle", "proportional"], [1, 2, 3])
    )
    assert len(seen) == len(set(seen)) and set(seen) == product
    for trial, config in asked:
        _check_config(space, config)
        assert config["model.dropout"] == 0.2
        study.tell(trial, 0.5)  # the last tells must not raise (GridSampler's study.stop())


def test_grid_honours_conditions_and_variant_conditions(tmp_path: Path):
    path = _write(
        tmp_path,
        """
search: {sampler: grid}
variants:
  a: {}
  b: {extensions.cosine_sts: true}
parameters:
  extensions.sequential_sts: {type: categorical, choices: [false, true]}
  extensions.sequential_sts_epochs:
    {type: categorical, choices: [1, 2], when: {extensions.sequential_sts: true}}
  extensions.pcgrad: {type: categorical, choices: [false, true], when: {variant: b}}
""",
    )
    space = load_search_space(path)
    points = {
        tuple(
            sorted(
                (k, v)
                for k, v in p.items()
                if k != "grid_point"
                and k
                in (
                    "variant",
                    "extensions.sequential_sts",
                    "extensions.sequential_sts_epochs",
                    "extensions.pcgrad",
                )
            )
        )
        for p in space.grid_points()
    }
    # variant a: seq off | seq on x 2 epochs = 3; variant b: the same x pcgrad 2 = 6.
    assert space.grid_size() == len(points) == 9
    assert all(("extensions.pcgrad" in dict(p)) == (dict(p)["variant"] == "b") for p in points)


def test_grid_num_samples_may_limit_but_not_exceed_the_grid(tmp_path: Path):
    text = "search: {sampler: grid, num_samples: %d}\nseeds: [1, 2, 3]\n"
    assert load_search_space(_write(tmp_path, text % 3)).num_samples == 3
    assert load_search_space(_write(tmp_path, text % 2)).num_samples == 2
    with pytest.raises(ConfigError, match="exceeds the grid's 3 points"):
        load_search_space(_write(tmp_path, text % 4))


def test_tpe_and_random_sample_variants_and_seeds_as_categoricals(tmp_path: Path):
    for sampler in ("tpe", "random"):
        space = load_search_space(
            _write(
                tmp_path,
                f"""
search: {{sampler: {sampler}, num_samples: 12}}
variants: {{baseline: {{}}, cosine: {{extensions.cosine_sts: true}}}}
seeds: [5, 6]
parameters:
  train.lr: {{type: float, low: 1.0e-5, high: 1.0e-3, log: true}}
""",
            )
        )
        configs = _run(space, 12)
        assert {c["variant"] for c in configs} == {"baseline", "cosine"}
        assert {c["train.seed"] for c in configs} == {5, 6}
        for config in configs:
            _check_config(space, config)


def test_multi_objective_picks_nsga2_and_no_early_stopping(tmp_path: Path):
    space = load_search_space(
        _write(
            tmp_path,
            """
search:
  num_samples: 8
  objectives: [{metric: dev_sts_r, mode: max}, {metric: train_time_s}]
parameters:
  train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
  train.epochs: {type: int, low: 1, high: 3}
""",
        )
    )
    assert space.multi_objective
    assert space.metric == ["dev_sts_r", "train_time_s"]
    assert space.mode == ["max", "min"]  # train_time_s defaults to its natural direction
    assert space.scheduler == "none" and space.sampler == "nsga2"
    assert isinstance(space.optuna_sampler(), optuna.samplers.NSGAIISampler)
    for config in _run(space, 8):
        _check_config(space, config)


def test_tpe_is_deterministic_for_a_seed():
    path = default_folder() / "default.yaml"

    def params(seed: int) -> list[dict[str, Any]]:
        space = load_search_space(path, {"search.seed": seed})
        return [{k: v for k, v in c.items()} for c in _run(space, 12)]

    first = params(0)
    assert first == params(0)
    assert first != params(1)


def test_ray_optuna_search_drives_the_space():
    """The real Ray searcher: suggestions are flat dotted configs that resolve."""
    from ray.tune.search.optuna import OptunaSearch

    for name in ("paper_ablation.yaml", "smoke.yaml"):
        space = load_search_space(default_folder() / name)
        searcher = OptunaSearch(
            space=space.define_by_run,
            sampler=space.optuna_sampler(),
            metric=space.metric,
            mode=space.mode,
        )
        seen = []
        for i in range(space.num_samples):
            config = searcher.suggest(f"t{i}")
            _check_config(space, config)
            seen.append(space.resolve(config).to_flat_dict())
            searcher.on_trial_complete(
                f"t{i}", result={space.metric: 0.5, "training_iteration": 1}
            )
        if space.sampler == "grid":
            assert len({tuple(sorted(s.items())) for s in seen}) == space.grid_size()


# -- resolve, variant_of, overrides ---------------------------------------------------------


@pytest.mark.parametrize(
    "toggles, name",
    [
        ({}, "baseline"),
        ({"extensions.cosine_sts": True}, "cosine"),
        ({"extensions.pcgrad": True}, "pcgrad"),
        ({"extensions.sequential_sts": True}, "sequential"),
        ({"extensions.cosine_sts": True, "extensions.pcgrad": True}, "cosine+pcgrad"),
        ({"extensions.pcgrad": True, "extensions.sequential_sts": True}, "pcgrad+sequential"),
        (
            {
                "extensions.cosine_sts": True,
                "extensions.pcgrad": True,
                "extensions.sequential_sts": True,
            },
            "cosine+pcgrad+sequential",  # "all" is every registered toggle, not these three
        ),
        ({t.key: True for t in registry.toggles()}, "all"),
    ],
)
def test_variant_is_derived_from_the_toggles(toggles: dict[str, bool], name: str):
    space = load_search_space(default_folder() / "smoke.yaml")
    assert space.variant_of(toggles) == name


def test_resolve_fills_in_base_and_drops_bookkeeping():
    space = load_search_space(default_folder() / "paper_ablation.yaml")
    cfg = space.resolve({"variant": "cosine", "train.seed": 2})
    assert cfg.extensions.cosine_sts and cfg.train.seed == 2 and cfg.model.dropout == 0.3
    with pytest.raises(ConfigError, match="unknown variant 'cosin'"):
        space.resolve({"variant": "cosin", "train.seed": 2})
    with pytest.raises(ConfigError, match="grid_point 99"):
        space.resolve({"grid_point": 99})


def test_overrides(tmp_path: Path):
    path = default_folder() / "default.yaml"
    space = load_search_space(
        path,
        {
            "search.num_samples": 3,
            "data.data_dir": "/data",
            "train.epochs": 1,
            "search.asha.grace_period": 2,
            "name": "quick",
        },
    )
    assert space.num_samples == 3 and space.name == "quick"
    assert space.base["data.data_dir"] == "/data"
    assert space.asha_grace_period == 2
    epochs = next(p for p in space.parameters if p.key == "train.epochs")
    assert (epochs.kind, epochs.value) == ("fixed", 1)  # a sampled parameter gets pinned
    for config in _run(space, 3):
        assert space.resolve(config).train.epochs == 1
    with pytest.raises(ConfigError, match="override 'search.numsamples'"):
        load_search_space(path, {"search.numsamples": 3})
    with pytest.raises(ConfigError, match="did you mean 'train.lr'"):
        load_search_space(path, {"train.lrr": 3})
    with pytest.raises(ConfigError, match="extensions.pcgrad"):  # set by a variant there
        load_search_space(default_folder() / "paper_ablation.yaml", {"extensions.pcgrad": True})


def test_validate_all_refuses_a_folder_with_a_bad_file(tmp_path: Path):
    _write(tmp_path, "search: {num_samples: 2}\nseeds: [1, 2]\n", "good.yaml")
    assert [s.name for s in validate_all(tmp_path)] == ["good"]
    _write(tmp_path, "search: {num_samples: 0}\n", "bad.yaml")
    with pytest.raises(ConfigError, match="bad.yaml"):
        validate_all(tmp_path)
    with pytest.raises(ConfigError, match="no \\*.yaml"):
        validate_all(tmp_path / "missing")


def test_missing_file():
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_search_space("nope.yaml")


# -- bad files ------------------------------------------------------------------------------

LR = "train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}"

BAD = [
    # (id, file text, fragments the one-line message must contain)
    ("yaml_syntax", f"parameters:\n  {LR[:-1]}\n  model.dropout: 0.1\n", ["line"]),
    (
        "duplicate_key",
        "parameters:\n  model.dropout: 0.1\n  model.dropout: 0.2\n",
        ["model.dropout", "twice", "line 3"],
    ),
    ("top_level_list", "- train.lr\n- model.dropout\n", ["top level", "mapping"]),
    ("empty_file", "", ["the file is empty", "parameters, variants or seeds"]),
    ("comments_only", "# a space, one day\n", ["the file is empty", "smoke.yaml"]),
    ("empty_mapping", "{}\n", ["the file is empty"]),
    (
        "nothing_to_search",
        "name: same\nbase: {train.lr: 1.0e-3}\nsearch: {num_samples: 3}\n",
        ["nothing to search", "no parameters, variants or seeds", "hpsearch train"],
    ),
    ("only_a_search_section", "search: {sampler: random}\n", ["nothing to search"]),
    ("unknown_top_key", "paramters: {}\n", ["paramters", "did you mean 'parameters'"]),
    ("unknown_search_key", "search: {samplr: tpe}\n", ["search.samplr", "'sampler'"]),
    ("unknown_asha_key", "search: {asha: {grace: 1}}\n", ["search.asha.grace"]),
    (
        "unknown_spec_key",
        "parameters:\n  train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, choices: [1]}\n",
        ["parameters.train.lr.choices", "allowed"],
    ),
    (
        "unknown_param_name",
        "parameters:\n  train.weight_decy: {type: float, low: 0.0, high: 0.1}\n",
        ["parameters.train.weight_decy", "did you mean 'train.weight_decay'"],
    ),
    (
        "unknown_type",
        "parameters:\n  train.lr: {type: uniform, low: 1.0e-5, high: 1.0e-3}\n",
        ["parameters.train.lr.type", "uniform"],
    ),
    (
        "missing_type",
        "parameters:\n  train.lr: {low: 1.0e-5, high: 1.0e-3}\n",
        ["parameters.train.lr", "missing 'type'"],
    ),
    (
        "inverted_range",
        "parameters:\n  train.lr: {type: float, low: 1.0e-3, high: 1.0e-5}\n",
        ["parameters.train.lr", "low"],
    ),
    (
        "empty_range",
        "parameters:\n  train.epochs: {type: int, low: 2, high: 2}\n",
        ["parameters.train.epochs", "empty range"],
    ),
    (
        "log_touching_zero",
        "parameters:\n  train.weight_decay: {type: float, low: 0.0, high: 0.1, log: true}\n",
        ["parameters.train.weight_decay.low", "above zero"],
    ),
    (
        "step_does_not_fit",
        "parameters:\n  model.dropout: {type: float, low: 0.0, high: 0.5, step: 0.2}\n",
        ["parameters.model.dropout.step", "multiple"],
    ),
    (
        "step_with_log",
        "parameters:\n  train.epochs: {type: int, low: 1, high: 4, step: 1, log: true}\n",
        ["parameters.train.epochs.step", "log"],
    ),
    (
        "duplicate_choice",
        "parameters:\n  extensions.task_sampling: {type: categorical, choices: [cycle, cycle]}\n",
        ["parameters.extensions.task_sampling.choices", "twice"],
    ),
    ("duplicate_seed", "seeds: [1, 1]\n", ["seeds", "twice"]),
    (
        "empty_choices",
        "parameters:\n  extensions.pcgrad: {type: categorical, choices: []}\n",
        ["parameters.extensions.pcgrad.choices", "non-empty"],
    ),
    (
        "float_range_on_int_field",
        "parameters:\n  train.epochs: {type: float, low: 1.0, high: 3.0}\n",
        ["parameters.train.epochs", "type: int"],
    ),
    (
        "choice_not_allowed",
        "parameters:\n  extensions.task_sampling: {type: categorical, choices: [cycle, random]}\n",
        ["parameters.extensions.task_sampling", "random"],
    ),
    (
        "choice_quoted_bool",
        "parameters:\n  extensions.pcgrad: {type: categorical, choices: ['false', 'true']}\n",
        ["parameters.extensions.pcgrad", "str"],
    ),
    (
        "fixed_out_of_range",
        "parameters:\n  model.dropout: 1.5\n",
        ["parameters.model.dropout", "less than 1"],
    ),
    (
        "bound_read_as_text",
        "parameters:\n  train.lr: {type: float, low: 1e-6, high: 1.0e-4}\n",
        ["parameters.train.lr.low", "write 1.0e-06"],
    ),
    (
        "list_as_spec",
        "parameters:\n  model.dropout: [0.1, 0.2]\n",
        ["parameters.model.dropout", "categorical"],
    ),
    ("unknown_metric", "search: {metric: dev_acc}\n", ["search.metric", "dev_acc"]),
    (
        "test_metric",
        "search: {metric: test_overall}\n",
        ["search.metric", "test_overall", "dev_overall"],
    ),
    (
        "unknown_mode",
        "search: {metric: dev_overall, mode: maximize}\n",
        ["search.mode", "maximize"],
    ),
    (
        "metric_and_objectives",
        "search: {metric: dev_overall, objectives: [{metric: dev_sts_r}]}\n",
        ["search.objectives", "not both"],
    ),
    ("unknown_sampler", "search: {sampler: tpee}\n", ["search.sampler", "'tpe'"]),
    (
        "grid_with_range",
        f"search: {{sampler: grid}}\nparameters:\n  {LR}\n",
        ["parameters.train.lr", "grid"],
    ),
    (
        "when_unknown_param",
        "parameters:\n  extensions.sequential_sts_epochs: "
        "{type: int, low: 1, high: 2, when: {extensions.sequential: true}}\n",
        ["extensions.sequential_sts_epochs.when.extensions.sequential"],
    ),
    (
        "when_later_param",
        "parameters:\n  extensions.sequential_sts_epochs: "
        "{type: int, low: 1, high: 2, when: {extensions.sequential_sts: true}}\n"
        "  extensions.sequential_sts: {type: categorical, choices: [false, true]}\n",
        ["when.extensions.sequential_sts", "later"],
    ),
    (
        "when_value_not_a_choice",
        "parameters:\n  extensions.task_sampling: {type: categorical, choices: [cycle, proportional]}\n"
        "  extensions.pcgrad: {type: categorical, choices: [false, true], "
        "when: {extensions.task_sampling: random}}\n",
        ["parameters.extensions.pcgrad.when.extensions.task_sampling", "'random'"],
    ),
    (
        "when_range_param",
        "parameters:\n  train.epochs: {type: int, low: 1, high: 3}\n"
        "  extensions.pcgrad: {type: categorical, choices: [false, true], "
        "when: {train.epochs: 2}}\n",
        ["parameters.extensions.pcgrad.when.train.epochs", "an integer range", "categorical"],
    ),
    (
        "when_variant_without_variants",
        "parameters:\n  extensions.pcgrad: {type: categorical, choices: [false, true], "
        "when: {variant: a}}\n",
        ["parameters.extensions.pcgrad.when.variant", "no variants"],
    ),
    (
        "base_and_parameters",
        f"base: {{train.lr: 1.0e-5}}\nparameters:\n  {LR}\n",
        ["parameters.train.lr", "also in base"],
    ),
    ("base_unknown_key", "base: {train.learning_rate: 1.0e-5}\n", ["base.train.learning_rate"]),
    (
        "base_wrong_value",
        "base: {data.max_length: 4}\n",
        ["base", "data.max_length", "greater than or equal to 8"],
    ),
    (
        "variant_unknown_key",
        "variants:\n  cosine: {extensions.cosine: true}\n",
        ["variants.cosine.extensions.cosine", "did you mean 'extensions.cosine_sts'"],
    ),
    (
        "variant_and_parameter",
        "variants:\n  pc: {extensions.pcgrad: true}\n"
        "parameters:\n  extensions.pcgrad: {type: categorical, choices: [false, true]}\n",
        ["parameters.extensions.pcgrad", "variants.pc"],
    ),
    (
        "variant_name_read_as_bool",
        "variants:\n  on: {extensions.pcgrad: true}\n",
        ["variants.True", "quote the name"],
    ),
    ("seeds_not_ints", "seeds: [1, two]\n", ["seeds", "'two'"]),
    (
        "seeds_and_seed_param",
        "seeds: [1, 2]\nparameters:\n  train.seed: 3\n",
        ["parameters.train.seed", "seeds"],
    ),
    ("num_samples_zero", "search: {num_samples: 0}\n", ["search.num_samples", ">= 1"]),
    (
        "multi_objective_with_asha",
        "search:\n  scheduler: asha\n  objectives: [{metric: dev_sts_r}, {metric: train_time_s}]\n",
        ["search.scheduler", "scheduler: none"],
    ),
    (
        "pcgrad_with_zero3",
        "base: {train.deepspeed.zero_stage: 3}\n"
        "parameters:\n  extensions.pcgrad: {type: categorical, choices: [false, true]}\n",
        ["parameters.extensions.pcgrad", "zero_stage"],
    ),
    (
        "grid_point_breaks_a_cross_field_rule",
        "search: {sampler: grid}\n"
        "variants:\n  siamese: {}\n  cross: {model.pair_encoding: cross}\n"
        "parameters:\n  extensions.cosine_sts: {type: categorical, choices: [false, true]}\n",
        ["grid point", "variant='cross'", "extensions.cosine_sts=True", "pair_encoding"],
    ),
    ("bad_name", "name: my sweep\n", ["name", "letters"]),
    (
        "asha_reduction_factor",
        "search: {asha: {reduction_factor: 1}}\n",
        ["search.asha.reduction_factor", ">= 2"],
    ),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_file_is_refused_in_one_line(tmp_path: Path, case: tuple[str, str, list[str]]):
    ident, text, fragments = case
    path = _write(tmp_path, text, f"bad_{ident}.yaml")
    with pytest.raises(ConfigError) as info:
        load_search_space(path)
    message = str(info.value)
    assert "\n" not in message
    assert path.name in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
