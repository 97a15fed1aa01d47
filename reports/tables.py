"""Report tables as pure functions of the trials DataFrame (see `reports.results`).

Each function returns a `Table`: `data` holds exact numbers (written as CSV), `display` holds
the rounded strings a reader sees (Markdown, HTML, LaTeX), and `notes` are its footnotes.

    from reports.results import load_results
    from reports import tables
    res = load_results("results/paper_ablation")
    t1 = tables.metric_table(res.trials, "dev")
    print(t1.display)          # Baseline / Cosine / ... columns, "0.520 ± 0.020 (n=3)" cells
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import yaml

from reports.results import EXTENSION_TOGGLES, STATUSES, TASK_METRICS
from reports.stats import NO_RUNS, SINGLE_RUN, Difference, Spread, bootstrap_mean_diff, describe

ROW_LABELS = {
    "sst_acc": "Sentiment Accuracy",
    "para_acc": "Paraphrase Accuracy",
    "sts_r": "Similarity Correlation",
    "overall": "Overall",
}
METRIC_LABELS = {
    f"{s}_{m}": f"{s} {ROW_LABELS[m].lower()}"
    for s in ("dev", "train", "test")
    for m in TASK_METRICS
}
REFERENCE_ORDER = (
    "Baseline",
    "Cosine",
    "Gradient Surgery",
    "Sequential Learning",
    "All Extensions",
)
_VARIANT_LABELS = {
    "baseline": "Baseline",
    "cosine": "Cosine",
    "cosine_sts": "Cosine",
    "cosine_similarity": "Cosine",
    "pcgrad": "Gradient Surgery",
    "gradient_surgery": "Gradient Surgery",
    "surgery": "Gradient Surgery",
    "sequential": "Sequential Learning",
    "sequential_sts": "Sequential Learning",
    "sequential_learning": "Sequential Learning",
    "all": "All Extensions",
    "all_extensions": "All Extensions",
}
EFFECT_METRICS = tuple(f"{s}_{m}" for s in ("dev", "test") for m in TASK_METRICS)
CONFIG_COLUMNS = {
    "model.dropout": "Dropout rate",
    "train.lr": "Learning rate",
    "train.weight_decay": "Weight decay",
    "train.epochs": "# epochs",
}
NOT_HYPERPARAMETERS = ("variant", "train.seed", "grid_point")
STD_NOTE = "Cells: mean ± sample standard deviation (ddof=1) over seeds, with n; n=1: one run."
OVERALL_NOTE = (
    "Overall: the CS224N score (sst_acc + para_acc + (sts_r + 1) / 2) / 3 as recorded for each "
    "trial, then averaged over trials (the average of per-trial overall scores, not the "
    "overall of the averaged metrics)."
)
CONTAINS_ZERO = "interval contains 0 - not distinguishable from {ref}"


@dataclass
class Table:
    """One report table.

    Attributes:
        name: file stem of its CSV/TeX files (e.g. "table1_dev").
        title: caption.
        data: exact values, written to `<name>.csv`.
        display: rounded strings for reading; its index is shown as the first column.
        notes: footnotes, one sentence each.
    """

    name: str
    title: str
    data: pd.DataFrame
    display: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.display.empty


# ---------------------------------------------------------------------------- variants


def variant_label(variant: str) -> str:
    """Reference-report column name of a variant ("pcgrad" -> "Gradient Surgery")."""
    key = str(variant).strip().lower().replace("-", "_").replace(" ", "_")
    return _VARIANT_LABELS.get(key, str(variant))


def order_variants(variants: Iterable[Any]) -> list[str]:
    """The reference's order (Baseline, Cosine, Gradient Surgery, Sequential, All), then a-z."""
    names = sorted({str(v) for v in variants if isinstance(v, str) and v})

    def rank(v: str) -> tuple[int, str]:
        label = variant_label(v)
        return (
            REFERENCE_ORDER.index(label) if label in REFERENCE_ORDER else len(REFERENCE_ORDER),
            v,
        )

    return sorted(names, key=rank)


def variant_labels(variants: Sequence[str]) -> dict[str, str]:
    """Unique display labels; two variants with the same label keep their own names too."""
    labels = {v: variant_label(v) for v in variants}
    counts = pd.Series(list(labels.values())).value_counts()
    return {v: (f"{lab} ({v})" if counts[lab] > 1 else lab) for v, lab in labels.items()}


# ---------------------------------------------------------------------------- Tables 1-3


def metric_table(trials: pd.DataFrame, split: str) -> Table:
    """Tables 1-3 of the reference: per-variant `split` ("dev", "train", "test") scores.

    Rows: Sentiment Accuracy, Paraphrase Accuracy, Similarity Correlation, Overall; columns:
    variants in the reference order; finished trials only, the rest counted in a note.
    """
    number = {"dev": 1, "train": 2, "test": 3}[split]
    finished = _finished(trials)
    variants = order_variants(finished["variant"])
    labels = variant_labels(variants)
    records = []
    cells: dict[str, dict[str, str]] = {labels[v]: {} for v in variants}
    for metric in TASK_METRICS:
        col = f"{split}_{metric}"
        for v in variants:
            s = describe(finished.loc[finished["variant"] == v, col])
            records.append(
                {
                    "metric": col,
                    "row": ROW_LABELS[metric],
                    "variant": v,
                    "column": labels[v],
                    "mean": s.mean,
                    "std": s.std,
                    "n": s.n,
                }
            )
            cells[labels[v]][ROW_LABELS[metric]] = format_spread(s)
    display = pd.DataFrame(cells, index=list(ROW_LABELS.values()), columns=list(cells))
    display.index.name = "Metric"
    what = {
        "dev": "Dev scores per variant",
        "train": "Train scores per variant (on a subset of the training data)",
        "test": "Test scores per variant (held-out split of the train files)",
    }[split]
    notes = [STD_NOTE, OVERALL_NOTE, excluded_note(trials)]
    if split == "test":
        notes.append(
            "Test: the trainable's held-out share of each train file (data.test_fraction); "
            "the official CS224N test files carry no labels."
        )
    missing = sorted(set(order_variants(trials["variant"])) - set(variants))
    if missing:
        notes.append(f"No finished trial, so no column: {', '.join(missing)}.")
    return Table(
        name=f"table{number}_{split}",
        title=f"Table {number}: {what}",
        data=pd.DataFrame(
            records, columns=["metric", "row", "variant", "column", "mean", "std", "n"]
        ),
        display=display,
        notes=[n for n in notes if n],
    )


def format_spread(s: Spread, digits: int = 3) -> str:
    """ "0.520 ± 0.020 (n=3)", "0.504 (n=1)" or "–" (no value)."""
    if s.n == 0:
        return "–"
    if s.n == 1:
        return f"{s.mean:.{digits}f} (n=1)"
    return f"{s.mean:.{digits}f} ± {s.std:.{digits}f} (n={s.n})"


def excluded_note(trials: pd.DataFrame) -> str:
    """ "Finished trials only; excluded: 1 stopped early, 1 failed (see Trial status)."."""
    counts = trials["status"].value_counts()
    words = {
        "stopped": "stopped early",
        "failed": "failed",
        "running": "still running",
        "pending": "never started",
        "corrupt": "with a corrupt trial file",
    }
    parts = [f"{int(counts[s])} {words[s]}" for s in STATUSES[1:] if counts.get(s, 0)]
    if not parts:
        return "Finished trials only; every trial finished."
    return f"Finished trials only; excluded: {', '.join(parts)} (see the trial status table)."


# ---------------------------------------------------------------------------- Table 4


def config_table(trials: pd.DataFrame) -> Table:
    """Table 4 of the reference: configuration, training time and peak memory per variant."""
    finished = _finished(trials)
    variants = order_variants(finished["variant"])
    labels = variant_labels(variants)
    records, shown = [], []
    for v in variants:
        sub = finished[finished["variant"] == v]
        t = describe(sub["train_time_s"])
        mem = describe(sub["peak_mem_mb"])
        rec: dict[str, Any] = {
            "variant": v,
            "n": len(sub),
            "train_time_s_mean": t.mean,
            "train_time_s_std": t.std,
            "peak_mem_mb_mean": mem.mean,
        }
        row = {"Train time": format_hms(t.mean), "Train time (s)": _fmt_mean_std(t, 1)}
        for key, label in CONFIG_COLUMNS.items():
            exact, text = _config_value(sub.get(f"config/{key}"), key)
            rec[key] = exact
            row[label] = text
        rec["extensions"] = row["Extensions"] = _extensions_text(sub)
        row["Peak memory (MB)"] = "–" if mem.n == 0 else f"{mem.mean:.0f}"
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


def format_hms(seconds: float) -> str:
    """3725.4 -> "1:02:05"; NaN -> "–"."""
    if not _is_finite(seconds):
        return "–"
    total = int(round(float(seconds)))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def _config_value(column: pd.Series | None, key: str) -> tuple[Any, str]:
    if column is None:
        return math.nan, "–"
    values = [v for v in column.tolist() if not _is_missing(v)]
    unique = sorted(set(values), key=str)
    if not unique:
        return math.nan, "–"
    if len(unique) == 1:
        return unique[0], _fmt_setting(unique[0], key)
    if all(_is_number(v) for v in unique):
        lo, hi = min(unique), max(unique)
        return f"{lo}..{hi}", f"{_fmt_setting(lo, key)}–{_fmt_setting(hi, key)} (varies)"
    return "|".join(map(str, unique)), "/".join(map(str, unique)) + " (varies)"


def _fmt_setting(value: Any, key: str) -> str:
    if key in ("train.lr", "train.weight_decay") and _is_number(value):
        return f"{float(value):.2e}"
    if isinstance(value, float) and value.is_integer() and key == "train.epochs":
        return str(int(value))
    if isinstance(value, float):  # rounded for reading; the CSV keeps the exact value
        return f"{value:.3g}"
    return str(value)


def _extensions_text(sub: pd.DataFrame) -> str:
    parts = []
    for key in EXTENSION_TOGGLES:
        col = sub.get(f"config/{key}")
        if col is None:
            continue
        values = [bool(v) for v in col.tolist() if not _is_missing(v)]
        if values and all(values):
            parts.append(key.split(".")[1])
        elif any(values):
            parts.append(f"{key.split('.')[1]} (some)")
    sampling = sub.get("config/extensions.task_sampling")
    if sampling is not None:
        kinds = sorted({str(v) for v in sampling.tolist() if not _is_missing(v)})
        if kinds:
            parts.append(f"sampling {'/'.join(kinds)}")
    return ", ".join(parts) if parts else "none"


# ---------------------------------------------------------------------------- sampled spaces


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
        values = [v for v in col.tolist() if not _is_missing(v)]
        if values and all(_is_number(v) for v in values) and len(set(values)) > 1:
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
    values = [float(v) for v in col.tolist() if _is_number(v) and not _is_missing(v)]
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 100


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
    return [(m, d if d in ("max", "min") else "max") for m, d in found] or [("dev_overall", "max")]


def best_per_variant(
    trials: pd.DataFrame, searched: Sequence[str], metric: str = "dev_overall", mode: str = "max"
) -> Table:
    """Best finished trial of each variant, with the distribution of `metric` behind it."""
    finished = _finished(trials)
    keys = [k for k in searched if k not in NOT_HYPERPARAMETERS]
    variants = order_variants(finished["variant"])
    labels = variant_labels(variants)
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
        rec.update({k: _plain(best.get(f"config/{k}")) for k in keys})
        records.append(rec)
        row = {
            "Best trial": best["trial_id"],
            f"Best {metric}": _fmt3(best[metric]),
            "Its test_overall": _fmt3(best.get("test_overall", math.nan)),
        }
        row.update({k: _fmt_setting(_plain(best.get(f"config/{k}")), k) for k in keys})
        row.update(
            {
                "n": str(values.size),
                "Median": _fmt3(median),
                "IQR": f"{_fmt3(q25)}–{_fmt3(q75)}",
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


def best_trial(
    trials: pd.DataFrame, metric: str = "dev_overall", mode: str = "max"
) -> pd.Series | None:
    """The finished trial with the best finite `metric` (first in table order on ties)."""
    if metric not in trials:
        return None
    finished = _finished(trials)
    values = pd.to_numeric(finished[metric], errors="coerce")
    values = values[np.isfinite(values.to_numpy(dtype=float))]
    if values.empty:
        return None
    label = values.idxmax() if mode == "max" else values.idxmin()
    return finished.loc[label]


def pareto_table(trials: pd.DataFrame, objs: Sequence[tuple[str, str]]) -> Table:
    """Finished trials no other finished trial beats on every objective (multi-objective)."""
    finished = _finished(trials)
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
    display = display.assign(**{c: display[c].map(_fmt3) for c in cols})
    return Table(
        name="pareto_front",
        title="Pareto front over " + ", ".join(f"{m} ({d})" for m, d in objs),
        data=data,
        display=display,
        notes=[
            "Finished trials that no other finished trial matches or beats on every objective."
        ],
    )


# ---------------------------------------------------------------------------- effects


def variant_effects(
    trials: pd.DataFrame,
    *,
    baseline: str = "baseline",
    metrics: Sequence[str] = EFFECT_METRICS,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Table:
    """Each variant minus the baseline, per metric, with a bootstrap interval over seeds."""
    finished = _finished(trials)
    variants = order_variants(finished["variant"])
    base = finished[finished["variant"] == baseline]
    records = []
    if not base.empty:
        labels = variant_labels(variants)
        for v in variants:
            if v == baseline:
                continue
            sub = finished[finished["variant"] == v]
            for metric in metrics:
                d = bootstrap_mean_diff(
                    sub[metric],
                    base[metric],
                    seeds_a=sub["seed"].tolist(),
                    seeds_b=base["seed"].tolist(),
                    n_resamples=n_resamples,
                    confidence=confidence,
                    seed=seed,
                )
                records.append(
                    _effect_record(
                        f"{labels[v]} − {labels[baseline]}", "variant", metric, d, "baseline"
                    )
                )
    notes = [
        f"Difference: mean over the variant's finished trials minus the baseline's; "
        f"{confidence:.0%} percentile bootstrap interval ({n_resamples:,} resamples, generator "
        f"seed {seed}), paired by training seed when both ran the same seeds, otherwise "
        "resampled independently.",
        "With a handful of seeds a bootstrap interval is rough (with 2 paired seeds it only "
        "spans the two per-seed differences) and no substitute for more seeds; 'contains 0' "
        "means these runs cannot tell the variant from the baseline.",
    ]
    if base.empty:
        notes.insert(0, f"No finished '{baseline}' trial: nothing to compare against.")
    return _effects_table(
        "effects_variants", "Effect of each variant against the baseline", records, notes
    )


def toggle_effects(
    trials: pd.DataFrame,
    *,
    metrics: Sequence[str] = EFFECT_METRICS,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Table:
    """Each extension toggle on minus off, over all finished trials, with a bootstrap interval.

    In a full factorial over the toggles that vary this is the main effect (averaged over the
    other toggles); otherwise it is a marginal on-vs-off difference, confounded with whatever
    else differs between the two groups, and the table says so.
    """
    finished = _finished(trials)
    toggles = []
    for key in EXTENSION_TOGGLES:
        col = finished.get(f"config/{key}")
        if col is not None and {bool(v) for v in col.tolist() if not _is_missing(v)} == {
            True,
            False,
        }:
            toggles.append(key)
    combos = {
        tuple(bool(r[f"config/{k}"]) for k in toggles)
        for _, r in finished.iterrows()
        if all(not _is_missing(r[f"config/{k}"]) for k in toggles)
    }
    factorial = bool(toggles) and len(combos) == 2 ** len(toggles)
    records = []
    for key in toggles:
        col = finished[f"config/{key}"]
        mask = col.map(lambda v: not _is_missing(v))
        on = finished[mask & col.map(lambda v: bool(v) if not _is_missing(v) else False)]
        off = finished[mask & ~col.map(lambda v: bool(v) if not _is_missing(v) else False)]
        for metric in metrics:
            d = bootstrap_mean_diff(
                on[metric], off[metric], n_resamples=n_resamples, confidence=confidence, seed=seed
            )
            records.append(
                _effect_record(f"{key.split('.')[1]}: on − off", "toggle", metric, d, "toggle off")
            )
    if not toggles:
        design = "No extension toggle is both on and off among the finished trials."
    elif factorial:
        design = (
            "The finished trials cover a full factorial over "
            f"{', '.join(toggles)}: each difference is a main effect, averaged over the "
            "other toggles."
        )
    else:
        design = (
            "Not a full factorial over the toggles: each difference is on-vs-off over "
            "all finished trials, confounded with the other settings that differ "
            "between the two groups."
        )
    notes = [
        design,
        f"{confidence:.0%} percentile bootstrap interval ({n_resamples:,} resamples, generator "
        f"seed {seed}), the two groups resampled independently.",
    ]
    return _effects_table(
        "effects_toggles", "Effect of each extension toggle (on − off)", records, notes
    )


def effect_verdict(d: Difference, reference: str = "baseline") -> str:
    """Plain words for a difference: single run, contains 0, or above/below the reference."""
    if d.note:
        return d.note
    if d.contains_zero:
        return CONTAINS_ZERO.format(ref=reference)
    return f"interval excludes 0 - {'above' if d.estimate > 0 else 'below'} {reference}"


def _effect_record(
    comparison: str, kind: str, metric: str, d: Difference, ref: str
) -> dict[str, Any]:
    return {
        "comparison": comparison,
        "kind": kind,
        "metric": metric,
        "n_a": d.n_a,
        "n_b": d.n_b,
        "paired": d.paired,
        "diff": d.estimate,
        "ci_low": d.ci_low,
        "ci_high": d.ci_high,
        "contains_zero": d.contains_zero,
        "verdict": effect_verdict(d, ref),
    }


def _effects_table(
    name: str, title: str, records: list[dict[str, Any]], notes: list[str]
) -> Table:
    columns = [
        "comparison",
        "kind",
        "metric",
        "n_a",
        "n_b",
        "paired",
        "diff",
        "ci_low",
        "ci_high",
        "contains_zero",
        "verdict",
    ]
    data = pd.DataFrame(records, columns=columns)
    shown = [
        {
            "Comparison": r["comparison"],
            "Metric": r["metric"],
            "n": f"{r['n_a']} vs {r['n_b']}",
            "Difference": _fmt3(r["diff"], sign=True),
            "95% CI": (
                f"[{_fmt3(r['ci_low'], sign=True)}, {_fmt3(r['ci_high'], sign=True)}]"
                if _is_finite(r["ci_low"])
                else "–"
            ),
            "Paired": "yes" if r["paired"] else "no",
            "Verdict": r["verdict"],
        }
        for r in records
    ]
    display = pd.DataFrame(
        shown, columns=["Comparison", "Metric", "n", "Difference", "95% CI", "Paired", "Verdict"]
    )
    display.index = pd.RangeIndex(1, len(display) + 1, name="#")
    return Table(name=name, title=title, data=data, display=display, notes=notes)


# ---------------------------------------------------------------------------- status, budget


def status_table(trials: pd.DataFrame) -> Table:
    """Every trial with its status and why it ended (stopped early when, failed why)."""
    order = {s: i for i, s in enumerate(STATUSES)}
    vorder = {v: i for i, v in enumerate(order_variants(trials["variant"]))}
    rows = trials.assign(
        _s=trials["status"].map(lambda s: order.get(s, len(order))),
        _v=trials["variant"].map(lambda v: vorder.get(v, len(vorder))),
    ).sort_values(["_s", "_v", "trial_id"], kind="stable")
    cols = [
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
    data = rows[cols].reset_index(drop=True)
    data["detail"] = [_status_detail(r) for _, r in rows.iterrows()]
    display = pd.DataFrame(
        {
            "Variant": data["variant"].map(lambda v: "–" if _is_missing(v) else str(v)),
            "Seed": data["seed"].map(_seed_text),
            "Status": data["status"],
            "Evaluations": data["n_evals"].astype(str),
            "Last step": data["last_step"].map(lambda s: "–" if _is_missing(s) else str(int(s))),
            "Latest dev_overall": data["dev_overall"].map(_fmt3),
            "Time": data["elapsed_s"].map(format_hms),
            "Detail": data["detail"],
        }
    )
    display.index = pd.Index(data["trial_id"], name="Trial")
    counts = trials["status"].value_counts()
    summary = ", ".join(f"{int(counts[s])} {s}" for s in STATUSES if counts.get(s, 0))
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
    reason = "" if _is_missing(reason) else str(reason)
    where = (
        f"at step {int(r['last_step'])} after {int(r['n_evals'])} evaluation(s)"
        if not _is_missing(r["last_step"])
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
    for s in STATUSES:
        items.append((f"  {s}", int(counts.get(s, 0)), str(int(counts.get(s, 0)))))
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


# ---------------------------------------------------------------------------- best config


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


CONFIG_SECTIONS = ("model", "data", "train", "extensions")
RERUN_COMMAND = "hpsearch train {config}"


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
        f"(variant {best['variant']}, seed {_seed_text(best['seed'])})",
        f"# Selected by {metric} ({mode}): {_fmt_full(score)}; "
        f"test_overall {_fmt_full(best.get('test_overall', math.nan))}",
        f"# Re-run: {RERUN_COMMAND.format(config=config_path)}",
    ]
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    return "\n".join(header) + "\n" + body


# ---------------------------------------------------------------------------- helpers


def _finished(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["status"] == "finished"]


def _space_parameters(search_space: dict[str, Any] | None) -> dict[str, Any]:
    params = (search_space or {}).get("parameters")
    return params if isinstance(params, dict) else {}


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _is_finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(float(value))


def _plain(value: Any) -> Any:
    """numpy scalars -> Python; NaN -> None."""
    if _is_missing(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _seed_text(value: Any) -> str:
    """Seeds come back as floats from a column with gaps: 2.0 -> "2"."""
    value = _plain(value)
    if value is None:
        return "–"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _fmt3(value: Any, sign: bool = False) -> str:
    if not _is_finite(value):
        return "–"
    return f"{float(value):+.3f}" if sign else f"{float(value):.3f}"


def _fmt_mean_std(s: Spread, digits: int) -> str:
    if s.n == 0:
        return "–"
    if s.n == 1:
        return f"{s.mean:.{digits}f}"
    return f"{s.mean:.{digits}f} ± {s.std:.{digits}f}"


def _fmt_full(value: Any) -> str:
    return repr(float(value)) if _is_finite(value) else "n/a"


__all__ = [
    "Table",
    "metric_table",
    "config_table",
    "best_per_variant",
    "best_trial",
    "pareto_table",
    "variant_effects",
    "toggle_effects",
    "status_table",
    "budget_table",
    "best_config",
    "best_config_yaml",
    "continuous_keys",
    "is_sampled",
    "log_scaled",
    "objectives",
    "order_variants",
    "variant_label",
    "variant_labels",
    "format_spread",
    "format_hms",
    "effect_verdict",
    "nest",
    "NO_RUNS",
    "SINGLE_RUN",
]
