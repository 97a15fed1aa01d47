"""How much each variant and each extension toggle changes the scores, with bootstrap intervals.

    from reports.effects import toggle_effects, variant_effects
    by_variant = variant_effects(res.trials, toggles=res.toggles)   # each variant − baseline
    by_toggle = toggle_effects(res.trials, toggles=res.toggles)     # each toggle on − off

Both compare finished trials only and say in plain words whether the interval settles anything
("interval contains 0 - not distinguishable from baseline"). The toggles compared are the ones
the sweep recorded in experiment.json, in that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd  # pandas ships no types

from reports.results import TASK_METRICS
from reports.stats import Difference, bootstrap_mean_diff
from reports.table import Table, finished_trials, format_score, is_finite, is_missing
from reports.variants import BASELINE, Toggle, order_variants, variant_labels

EFFECT_METRICS = tuple(f"{split}_{m}" for split in ("dev", "test") for m in TASK_METRICS)
CONTAINS_ZERO = "interval contains 0 - not distinguishable from {ref}"
N_RESAMPLES = 10_000
CONFIDENCE = 0.95
_DATA_COLUMNS = [
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
_DISPLAY_COLUMNS = ["Comparison", "Metric", "n", "Difference", "95% CI", "Paired", "Verdict"]


def variant_effects(
    trials: pd.DataFrame,
    *,
    toggles: Sequence[Toggle],
    baseline: str = BASELINE,
    metrics: Sequence[str] = EFFECT_METRICS,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Table:
    """Each variant minus the baseline, per metric, with a bootstrap interval over seeds."""
    finished = finished_trials(trials)
    variants = order_variants(finished["variant"], toggles)
    base = finished[finished["variant"] == baseline]
    records = []
    if not base.empty:
        labels = variant_labels(variants, toggles)
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
                    effect_record(
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
    return effects_table(
        "effects_variants", "Effect of each variant against the baseline", records, notes
    )


def toggle_effects(
    trials: pd.DataFrame,
    *,
    toggles: Sequence[Toggle],
    metrics: Sequence[str] = EFFECT_METRICS,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Table:
    """Each recorded toggle on minus off, over all finished trials, with a bootstrap interval.

    In a full factorial over the toggles that vary this is the main effect (averaged over the
    other toggles); otherwise it is a marginal on-vs-off difference, confounded with whatever
    else differs between the two groups, and the table says so.
    """
    finished = finished_trials(trials)
    varied = [t for t in toggles if _is_on_and_off(finished.get(f"config/{t.key}"))]
    columns = [f"config/{t.key}" for t in varied]
    combos = {
        tuple(bool(r[c]) for c in columns)
        for _, r in finished.iterrows()
        if all(not is_missing(r[c]) for c in columns)
    }
    factorial = bool(varied) and len(combos) == 2 ** len(varied)
    records = []
    for toggle in varied:
        col = finished[f"config/{toggle.key}"]
        known = col.map(lambda v: not is_missing(v))
        is_on = col.map(lambda v: bool(v) if not is_missing(v) else False)
        on, off = finished[known & is_on], finished[known & ~is_on]
        for metric in metrics:
            d = bootstrap_mean_diff(
                on[metric], off[metric], n_resamples=n_resamples, confidence=confidence, seed=seed
            )
            records.append(
                effect_record(f"{toggle.name}: on − off", "toggle", metric, d, "toggle off")
            )
    if not varied:
        design = "No extension toggle is both on and off among the finished trials."
    elif factorial:
        design = (
            "The finished trials cover a full factorial over "
            f"{', '.join(t.key for t in varied)}: each difference is a main effect, averaged "
            "over the other toggles."
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
    return effects_table(
        "effects_toggles", "Effect of each extension toggle (on − off)", records, notes
    )


def effect_verdict(d: Difference, reference: str = "baseline") -> str:
    """Plain words for a difference: single run, contains 0, or above/below the reference."""
    if d.note:
        return d.note
    if d.contains_zero:
        return CONTAINS_ZERO.format(ref=reference)
    return f"interval excludes 0 - {'above' if d.estimate > 0 else 'below'} {reference}"


def _is_on_and_off(column: pd.Series | None) -> bool:
    """Whether a toggle's column holds both True and False among the trials."""
    if column is None:
        return False
    return {bool(v) for v in column.tolist() if not is_missing(v)} == {True, False}


def effect_record(
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


def effects_table(name: str, title: str, records: list[dict[str, Any]], notes: list[str]) -> Table:
    data = pd.DataFrame(records, columns=_DATA_COLUMNS)
    shown = [
        {
            "Comparison": r["comparison"],
            "Metric": r["metric"],
            "n": f"{r['n_a']} vs {r['n_b']}",
            "Difference": format_score(r["diff"], sign=True),
            "95% CI": (
                f"[{format_score(r['ci_low'], sign=True)}, "
                f"{format_score(r['ci_high'], sign=True)}]"
                if is_finite(r["ci_low"])
                else "–"
            ),
            "Paired": "yes" if r["paired"] else "no",
            "Verdict": r["verdict"],
        }
        for r in records
    ]
    display = pd.DataFrame(shown, columns=_DISPLAY_COLUMNS)
    display.index = pd.RangeIndex(1, len(display) + 1, name="#")
    return Table(name=name, title=title, data=data, display=display, notes=notes)


__all__ = [
    "CONTAINS_ZERO",
    "EFFECT_METRICS",
    "effect_record",
    "effect_verdict",
    "effects_table",
    "toggle_effects",
    "variant_effects",
]
