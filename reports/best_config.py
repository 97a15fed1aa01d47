"""The best finished trial's config, in the nested form `hpsearch train` reads.

    from reports.best_config import best_config, best_config_yaml
    found = best_config(res.trials, res.configs, "dev_overall", "max")
    if found:
        row, config = found
        text = best_config_yaml(row, config, "dev_overall", "max", "report/best_config.yaml")

The file starts with a comment header naming the trial, its scores and the re-run command.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd  # pandas ships no types
import yaml

from reports.search_tables import best_trial
from reports.table import format_full, seed_text

CONFIG_SECTIONS = ("model", "data", "train", "extensions")
RERUN_COMMAND = "hpsearch train {config}"


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"train.lr": 1e-5} -> {"train": {"lr": 1e-5}} (any depth)."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def best_config(
    trials: pd.DataFrame,
    configs: dict[str, dict[str, Any]],
    metric: str = "dev_overall",
    mode: str = "max",
) -> tuple[pd.Series, dict[str, Any]] | None:
    """(best finished trial, its nested config with sections model/data/train/extensions)."""
    best = best_trial(trials, metric, mode)
    if best is None:
        return None
    flat = configs.get(best["trial_id"], {})
    kept = {k: v for k, v in flat.items() if k.split(".")[0] in CONFIG_SECTIONS and "." in k}
    return best, nest(kept)


def best_config_yaml(
    best: pd.Series,
    config: dict[str, Any],
    metric: str,
    mode: str,
    config_path: str,
    experiment_name: str = "",
) -> str:
    """The text of best_config.yaml: a comment header (trial, scores, re-run command) + YAML."""
    score = best.get(metric, math.nan)
    header = [
        f"# Best trial of experiment {experiment_name or '?'}: {best['trial_id']} "
        f"(variant {best['variant']}, seed {seed_text(best['seed'])})",
        f"# Selected by {metric} ({mode}): {format_full(score)}; "
        f"test_overall {format_full(best.get('test_overall', math.nan))}",
        f"# Re-run: {RERUN_COMMAND.format(config=config_path)}",
    ]
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    return "\n".join(header) + "\n" + body


__all__ = ["CONFIG_SECTIONS", "RERUN_COMMAND", "best_config", "best_config_yaml", "nest"]
