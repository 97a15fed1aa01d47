"""Tables 1-4 of the reference report: scores per variant, and each variant's configuration.

    from reports.score_tables import config_table, metric_table
    t1 = metric_table(res.trials, "dev", toggles=res.toggles)
    print(t1.display)          # Baseline / Cosine / ... columns, "0.520 ± 0.020 (n=3)" cells

Both score finished trials only; the others are counted in a footnote.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd  # pandas ships no types

from reports.results import STATUSES, TASK_METRICS
from reports.stats import describe
from reports.table import (
    MISSING,
    Table,
    finished_trials,
    format_hms,
    format_mean_std,
    format_setting,
    format_spread,
    is_missing,
    is_number,
)
from reports.variants import Toggle, order_variants, variant_labels

ROW_LABELS = {
    "sst_acc": "Sentiment Accuracy",
    "para_acc": "Paraphrase Accuracy",
    "sts_r": "Similarity Correlation",
    "overall": "Overall",
}
CONFIG_COLUMNS = {
    "model.dropout": "Dropout rate",
    "train.lr": "Learning rate",
    "train.weight_decay": "Weight decay",
    "train.epochs": "# epochs",
}
STD_NOTE = "Cells: mean ± sample standard deviation (ddof=1) over seeds, with n; n=1: one run."
OVERALL_NOTE = (
    "Overall: the CS224N score (sst_acc + para_acc + (sts_r + 1) / 2) / 3 as recorded for each "
    "trial, then averaged over trials (the average of per-trial overall scores, not the "
    "overall of the averaged metrics)."
)
_SPLIT_NUMBER = {"dev": 1, "train": 2, "test": 3}
_SPLIT_TITLE = {
    "dev": "Dev scores per variant",
    "train": "Train scores per variant (on a subset of the training data)",
    "test": "Test scores per variant (held-out split of the train files)",
}
_EXCLUDED_WORDS = {
    "stopped": "stopped early",
    "failed": "failed",
    "running": "still running",
    "pending": "never started",
    "corrupt": "with a corrupt trial file",
}


def metric_table(trials: pd.DataFrame, split: str, *, toggles: Sequence[Toggle]) -> Table:
    """Tables 1-3 of the reference: per-variant `split` ("dev", "train", "test") scores.

    Rows: Sentiment Accuracy, Paraphrase Accuracy, Similarity Correlation, Overall; columns:
    variants in the reference order; finished trials only, the rest counted in a note.
    """
    number = _SPLIT_NUMBER[split]
    finished = finished_trials(trials)
    variants = order_variants(finished["variant"], toggles)
    labels = variant_labels(variants, toggles)
    records = []
    cells: dict[str, dict[str, str]] = {labels[v]: {} for v in variants}
    for metric in TASK_METRICS:
        col = f"{split}_{metric}"
        for v in variants:
            spread = describe(finished.loc[finished["variant"] == v, col])
            records.append(
                {
                    "metric": col,
                    "row": ROW_LABELS[metric],
                    "variant": v,
                    "column": labels[v],
                    "mean": spread.mean,
                    "std": spread.std,
                    "n": spread.n,
                }
            )
            cells[labels[v]][ROW_LABELS[metric]] = format_spread(spread)
    display = pd.DataFrame(cells, index=list(ROW_LABELS.values()), columns=list(cells))
    display.index.name = "Metric"
    notes = [STD_NOTE, OVERALL_NOTE, excluded_note(trials)]
    if split == "test":
        notes.append(
            "Test: the trainable's held-out share of each train file (data.test_fraction); "
            "the official CS224N test files carry no labels."
        )
    missing = sorted(set(order_variants(trials["variant"], toggles)) - set(variants))
    if missing:
        notes.append(f"No finished trial, so no column: {', '.join(missing)}.")
    return Table(
        name=f"table{number}_{split}",
        title=f"Table {number}: {_SPLIT_TITLE[split]}",
        data=pd.DataFrame(
            records, columns=["metric", "row", "variant", "column", "mean", "std", "n"]
        ),
        display=display,
        notes=[n for n in notes if n],
    )


def excluded_note(trials: pd.DataFrame) -> str:
    """ "Finished trials only; excluded: 1 stopped early, 1 failed (see Trial status)."."""
    counts = trials["status"].value_counts()
    parts = [
        f"{int(counts[status])} {_EXCLUDED_WORDS[status]}"
        for status in STATUSES[1:]
        if counts.get(status, 0)
    ]
    if not parts:
        return "Finished trials only; every trial finished."
    return f"Finished trials only; excluded: {', '.join(parts)} (see the trial status table)."


def config_table(trials: pd.DataFrame, *, toggles: Sequence[Toggle]) -> Table:
    """Table 4 of the reference: configuration, training time and peak memory per variant."""
    finished = finished_trials(trials)
    variants = order_variants(finished["variant"], toggles)
    labels = variant_labels(variants, toggles)
    records, shown = [], []
    for v in variants:
        sub = finished[finished["variant"] == v]
        train_time = describe(sub["train_time_s"])
        mem = describe(sub["peak_mem_mb"])
        rec: dict[str, Any] = {
            "variant": v,
            "n": len(sub),
            "train_time_s_mean": train_time.mean,
            "train_time_s_std": train_time.std,
            "peak_mem_mb_mean": mem.mean,
        }
        row = {
            "Train time": format_hms(train_time.mean),
            "Train time (s)": format_mean_std(train_time, 1),
        }
        for key, label in CONFIG_COLUMNS.items():
            exact, text = _config_value(sub.get(f"config/{key}"), key)
            rec[key] = exact
            row[label] = text
        rec["extensions"] = row["Extensions"] = _extensions_text(sub, toggles)
        row["Peak memory (MB)"] = MISSING if mem.n == 0 else f"{mem.mean:.0f}"
        row["n"] = str(len(sub))
        records.append(rec)
        shown.append(row)
    display = pd.DataFrame(shown, index=[labels[v] for v in variants])
    display.index.name = "Variant"
    return Table(
        name="table4_configs",
        title="Table 4: Configurations and training time per variant",
        data=pd.DataFrame(records),
        display=display,
        notes=[
            "Train time: mean over the variant's finished trials (h:mm:ss, and seconds as "
            "mean ± std); peak memory: mean of each trial's peak.",
            "A setting that differs between the variant's trials is shown as its range.",
            excluded_note(trials),
        ],
    )


def _config_value(column: pd.Series | None, key: str) -> tuple[Any, str]:
    """(exact value, shown text) of one setting over a variant's trials; a range if it varies."""
    if column is None:
        return math.nan, MISSING
    values = [v for v in column.tolist() if not is_missing(v)]
    unique = sorted(set(values), key=str)
    if not unique:
        return math.nan, MISSING
    if len(unique) == 1:
        return unique[0], format_setting(unique[0], key)
    if all(is_number(v) for v in unique):
        lo, hi = min(unique), max(unique)
        return f"{lo}..{hi}", f"{format_setting(lo, key)}–{format_setting(hi, key)} (varies)"
    return "|".join(map(str, unique)), "/".join(map(str, unique)) + " (varies)"


def _extensions_text(sub: pd.DataFrame, toggles: Sequence[Toggle]) -> str:
    """The recorded toggles on in every trial (or "(some)" of them), and the task sampling."""
    parts = []
    for toggle in toggles:
        col = sub.get(f"config/{toggle.key}")
        if col is None:
            continue
        values = [bool(v) for v in col.tolist() if not is_missing(v)]
        if values and all(values):
            parts.append(toggle.name)
        elif any(values):
            parts.append(f"{toggle.name} (some)")
    sampling = sub.get("config/extensions.task_sampling")
    if sampling is not None:
        kinds = sorted({str(v) for v in sampling.tolist() if not is_missing(v)})
        if kinds:
            parts.append(f"sampling {'/'.join(kinds)}")
    return ", ".join(parts) if parts else "none"


__all__ = [
    "CONFIG_COLUMNS",
    "OVERALL_NOTE",
    "ROW_LABELS",
    "STD_NOTE",
    "config_table",
    "excluded_note",
    "metric_table",
]
