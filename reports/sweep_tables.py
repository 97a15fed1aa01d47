"""Where the sweep stands: its budget (trials, statuses, time, data notes) and every trial's fate.

from reports.sweep_tables import budget_table, status_table
budget = budget_table(res.trials, res.experiment, res.warnings, sampled=False)
status = status_table(res.trials, toggles=res.toggles)   # why each trial ended as it did
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd  # pandas ships no types

from reports.results import STATUSES
from reports.search_tables import objectives
from reports.table import MISSING, Table, format_hms, format_score, is_missing, seed_text
from reports.variants import Toggle, order_variants

_STATUS_COLUMNS = [
    "trial_id",
    "variant",
    "seed",
    "status",
    "reason",
    "n_evals",
    "last_step",
    "last_epoch",
    "dev_overall",
    "elapsed_s",
]


def status_table(trials: pd.DataFrame, *, toggles: Sequence[Toggle]) -> Table:
    """Every trial with its status and why it ended (stopped early when, failed why)."""
    status_rank = {s: i for i, s in enumerate(STATUSES)}
    variant_rank = {v: i for i, v in enumerate(order_variants(trials["variant"], toggles))}
    rows = trials.assign(
        _status_rank=trials["status"].map(lambda st: status_rank.get(st, len(status_rank))),
        _variant_rank=trials["variant"].map(lambda v: variant_rank.get(v, len(variant_rank))),
    ).sort_values(["_status_rank", "_variant_rank", "trial_id"], kind="stable")
    data = rows[_STATUS_COLUMNS].reset_index(drop=True)
    data["detail"] = [_status_detail(r) for _, r in rows.iterrows()]
    display = pd.DataFrame(
        {
            "Variant": data["variant"].map(lambda v: MISSING if is_missing(v) else str(v)),
            "Seed": data["seed"].map(seed_text),
            "Status": data["status"],
            "Evaluations": data["n_evals"].astype(str),
            "Last step": data["last_step"].map(
                lambda step: MISSING if is_missing(step) else str(int(step))
            ),
            "Latest dev_overall": data["dev_overall"].map(format_score),
            "Time": data["elapsed_s"].map(format_hms),
            "Detail": data["detail"],
        }
    )
    display.index = pd.Index(data["trial_id"], name="Trial")
    counts = trials["status"].value_counts()
    summary = ", ".join(f"{int(counts[st])} {st}" for st in STATUSES if counts.get(st, 0))
    return Table(
        name="trial_status",
        title="Trial status",
        data=data,
        display=display,
        notes=[
            f"{len(trials)} trials: {summary or 'none'}.",
            "Latest dev_overall: from summary.json when finished, else the last evaluation "
            "in metrics.jsonl.",
        ],
    )


def _status_detail(r: pd.Series) -> str:
    status, reason = r["status"], r["reason"]
    reason = "" if is_missing(reason) else str(reason)
    where = (
        f"at step {int(r['last_step'])} after {int(r['n_evals'])} evaluation(s)"
        if not is_missing(r["last_step"])
        else "before its first evaluation"
    )
    if status == "finished":
        return f"finished {where}"
    if status == "stopped":
        return f"stopped early {where}" + (f": {reason}" if reason else "")
    if status == "failed":
        return f"failed {where}: {reason or 'no reason recorded'}"
    if status == "running":
        return f"still running, last evaluation {where}"
    if status == "pending":
        return "never started"
    return reason or "corrupt trial file"


def budget_table(
    trials: pd.DataFrame,
    experiment: dict[str, Any],
    warnings: Sequence[str] = (),
    sampled: bool | None = None,
) -> Table:
    """The budget: trials planned and found, statuses, total train time, evaluations."""
    counts = trials["status"].value_counts()
    total_s = float(np.nansum(trials["elapsed_s"].to_numpy(dtype=float))) if len(trials) else 0.0
    objs = objectives(experiment)
    items: list[tuple[str, Any, str]] = [
        ("Experiment", experiment.get("name", "–"), str(experiment.get("name", "–"))),
        (
            "Optuna study",
            experiment.get("study_name", "–"),
            str(experiment.get("study_name", "–")),
        ),
        (
            "Objective",
            "; ".join(f"{m} {d}" for m, d in objs),
            "; ".join(f"{m} ({d})" for m, d in objs),
        ),
        ("Command", experiment.get("command", "–"), str(experiment.get("command", "–"))),
        ("Created", experiment.get("created", "–"), str(experiment.get("created", "–"))),
        (
            "Trials planned",
            experiment.get("total_trials", math.nan),
            str(experiment.get("total_trials", "–")),
        ),
        ("Trials found", len(trials), str(len(trials))),
    ]
    for status in STATUSES:
        n = int(counts.get(status, 0))
        items.append((f"  {status}", n, str(n)))
    items += [
        ("Total train time (s)", total_s, f"{format_hms(total_s)} ({total_s:.0f} s)"),
        ("Evaluations", int(trials["n_evals"].sum()), str(int(trials["n_evals"].sum()))),
    ]
    if sampled is not None:
        items.append(
            (
                "Search",
                "sampled" if sampled else "grid",
                "sampled (continuous keys searched)" if sampled else "grid",
            )
        )
    data = pd.DataFrame([(k.strip(), v) for k, v, _ in items], columns=["item", "value"])
    display = pd.DataFrame(
        {"Value": [t for _, _, t in items]},
        index=pd.Index([k for k, _, _ in items], name="Budget"),
    )
    notes = [
        "Total train time: summary.json's train_time_s for finished trials, the last "
        "evaluation's time_s for the others."
    ]
    notes += [f"Data note: {w}" for w in warnings]
    return Table(name="budget", title="Budget", data=data, display=display, notes=notes)


__all__ = ["budget_table", "status_table"]
