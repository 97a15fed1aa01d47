"""What the search optimised and what it found: objectives, sampled keys, best trials, Pareto.

    from reports.search_tables import best_per_variant, is_sampled, objectives
    metric, mode = objectives(res.experiment)[0]
    if is_sampled(res.trials, res.searched, res.search_space):
        best = best_per_variant(res.trials, res.searched, toggles=res.toggles)

A grid over variants and seeds is not "sampled"; a space with a continuous key searched is, and
then the best trial of each variant (with the spread behind it) is worth a table of its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd  # pandas ships no types

from reports.table import (
    Table,
    finished_trials,
    format_score,
    format_setting,
    is_missing,
    is_number,
    plain,
)
from reports.variants import Toggle, order_variants, variant_labels

NOT_HYPERPARAMETERS = ("variant", "train.seed", "grid_point")
DEFAULT_OBJECTIVE = ("dev_overall", "max")


def objectives(experiment: dict[str, Any]) -> list[tuple[str, str]]:
    """[(metric, mode)] from experiment.json; [("dev_overall", "max")] when it names none."""
    found: list[tuple[str, str]] = []
    for obj in experiment.get("objectives") or []:
        if isinstance(obj, dict) and isinstance(obj.get("metric"), str):
            found.append((obj["metric"], str(obj.get("mode", "max"))))
        elif isinstance(obj, str):
            found.append((obj, "max"))
    if not found:
        metric, mode = experiment.get("metric"), experiment.get("mode")
        if isinstance(metric, list):
            modes = mode if isinstance(mode, list) else ["max"] * len(metric)
            found = [(str(m), str(d)) for m, d in zip(metric, modes, strict=False)]
        elif isinstance(metric, str):
            found = [(metric, str(mode or "max"))]
    return [(m, d if d in ("max", "min") else "max") for m, d in found] or [DEFAULT_OBJECTIVE]


def continuous_keys(
    trials: pd.DataFrame, searched: Sequence[str], search_space: dict[str, Any] | None = None
) -> list[str]:
    """Searched keys with numeric ranges (not toggles, categories, variant or seed)."""
    params = _space_parameters(search_space)
    keys = []
    for key in searched:
        if key in NOT_HYPERPARAMETERS:
            continue
        spec = params.get(key)
        if isinstance(spec, dict) and spec.get("type") in ("float", "int"):
            keys.append(key)
            continue
        if isinstance(spec, dict) and spec.get("type") is not None:
            continue
        col = trials.get(f"config/{key}")
        if col is None:
            continue
        values = [v for v in col.tolist() if not is_missing(v)]
        if values and all(is_number(v) for v in values) and len(set(values)) > 1:
            keys.append(key)
    return keys


def is_sampled(
    trials: pd.DataFrame, searched: Sequence[str], search_space: dict[str, Any] | None = None
) -> bool:
    """True when the sweep sampled a space (continuous keys searched), False for a grid."""
    sampler = ((search_space or {}).get("search") or {}).get("sampler")
    if sampler == "grid":
        return False
    return bool(continuous_keys(trials, searched, search_space))


def log_scaled(key: str, trials: pd.DataFrame, search_space: dict[str, Any] | None = None) -> bool:
    """Whether `key` was searched on a log scale (search_space.yaml `log: true`; else a guess
    from its values: all positive and spanning at least two decades)."""
    spec = _space_parameters(search_space).get(key)
    if isinstance(spec, dict) and "log" in spec:
        return bool(spec["log"])
    col = trials.get(f"config/{key}")
    if col is None:
        return False
    values = [float(v) for v in col.tolist() if is_number(v) and not is_missing(v)]
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 100


def best_trial(
    trials: pd.DataFrame, metric: str = "dev_overall", mode: str = "max"
) -> pd.Series | None:
    """The finished trial with the best finite `metric` (first in table order on ties)."""
    if metric not in trials:
        return None
    finished = finished_trials(trials)
    values = pd.to_numeric(finished[metric], errors="coerce")
    values = values[np.isfinite(values.to_numpy(dtype=float))]
    if values.empty:
        return None
    label = values.idxmax() if mode == "max" else values.idxmin()
    return finished.loc[label]


def best_per_variant(
    trials: pd.DataFrame,
    searched: Sequence[str],
    metric: str = "dev_overall",
    mode: str = "max",
    *,
    toggles: Sequence[Toggle],
) -> Table:
    """Best finished trial of each variant, with the distribution of `metric` behind it."""
    finished = finished_trials(trials)
    keys = [k for k in searched if k not in NOT_HYPERPARAMETERS]
    variants = order_variants(finished["variant"], toggles)
    labels = variant_labels(variants, toggles)
    records, shown = [], []
    for v in variants:
        sub = finished[finished["variant"] == v]
        best = best_trial(sub, metric, mode)
        if best is None:
            continue
        values = sub[metric].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        q25, median, q75 = np.quantile(values, [0.25, 0.5, 0.75])
        n_stopped = int(((trials["variant"] == v) & (trials["status"] == "stopped")).sum())
        rec = {
            "variant": v,
            "best_trial": best["trial_id"],
            metric: best[metric],
            "test_overall": best.get("test_overall", math.nan),
            "n": int(values.size),
            "n_stopped": n_stopped,
            "median": float(median),
            "q25": float(q25),
            "q75": float(q75),
            "iqr": float(q75 - q25),
        }
        rec.update({k: plain(best.get(f"config/{k}")) for k in keys})
        records.append(rec)
        row = {
            "Best trial": best["trial_id"],
            f"Best {metric}": format_score(best[metric]),
            "Its test_overall": format_score(best.get("test_overall", math.nan)),
        }
        row.update({k: format_setting(plain(best.get(f"config/{k}")), k) for k in keys})
        row.update(
            {
                "n": str(values.size),
                "Median": format_score(median),
                "IQR": f"{format_score(q25)}–{format_score(q75)}",
                "Stopped early": str(n_stopped),
            }
        )
        shown.append(row)
    display = pd.DataFrame(shown, index=[labels[r["variant"]] for r in records])
    display.index.name = "Variant"
    return Table(
        name="best_per_variant",
        title=f"Best trial per variant ({metric}, {mode}) and the distribution behind it",
        data=pd.DataFrame(records),
        display=display,
        notes=[
            f"n, median and IQR (25th-75th percentile) of {metric} over the variant's "
            "finished trials; trials stopped early are counted but not included.",
        ],
    )


def pareto_table(trials: pd.DataFrame, objs: Sequence[tuple[str, str]]) -> Table:
    """Finished trials no other finished trial beats on every objective (multi-objective)."""
    finished = finished_trials(trials)
    cols = [m for m, _ in objs if m in finished]
    sub = finished.dropna(subset=cols) if cols else finished.iloc[0:0]
    signs = np.array([1.0 if mode == "max" else -1.0 for m, mode in objs if m in cols])
    vals = sub[cols].to_numpy(dtype=float) * signs if cols else np.zeros((0, 0))
    keep = [
        i
        for i in range(len(sub))
        if not any(
            (vals[j] >= vals[i]).all() and (vals[j] > vals[i]).any() for j in range(len(sub))
        )
    ]
    front = sub.iloc[keep]
    data = front[["trial_id", "variant", *cols]].reset_index(drop=True)
    display = data.set_index("trial_id")
    display = display.assign(**{c: display[c].map(format_score) for c in cols})
    return Table(
        name="pareto_front",
        title="Pareto front over " + ", ".join(f"{m} ({d})" for m, d in objs),
        data=data,
        display=display,
        notes=[
            "Finished trials that no other finished trial matches or beats on every objective."
        ],
    )


def _space_parameters(search_space: dict[str, Any] | None) -> dict[str, Any]:
    params = (search_space or {}).get("parameters")
    return params if isinstance(params, dict) else {}


__all__ = [
    "NOT_HYPERPARAMETERS",
    "best_per_variant",
    "best_trial",
    "continuous_keys",
    "is_sampled",
    "log_scaled",
    "objectives",
    "pareto_table",
]
