"""Report figures as PNG bytes (matplotlib, Agg backend), one function per figure.

Every function takes DataFrames and returns a `Figure`: either `png` bytes or, when there is
nothing to draw, `png is None` and a `note` saying why the figure was skipped.

    from reports import figures
    fig = figures.learning_curves(res.curves, res.trials, toggles=res.toggles)
    if fig.png: Path("curves.png").write_bytes(fig.png)
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd  # pandas ships no types

from reports.score_tables import ROW_LABELS
from reports.search_tables import NOT_HYPERPARAMETERS
from reports.variants import Toggle, order_variants, variant_labels

STATUS_COLOURS = {
    "finished": "#1f77b4",
    "stopped": "#ff7f0e",
    "failed": "#d62728",
    "running": "#7f7f7f",
    "pending": "#bcbd22",
    "corrupt": "#9467bd",
}
DPI = 100


@dataclass(frozen=True)
class Figure:
    """A rendered figure (`png`) or the reason it was skipped (`note`)."""

    name: str
    title: str
    png: bytes | None
    note: str = ""


def learning_curves(
    curves: pd.DataFrame, trials: pd.DataFrame, *, toggles: Sequence[Toggle]
) -> Figure:
    """Dev metrics against step, per variant: mean over its finished trials, band ± 1 std.

    A variant with no finished trial is drawn from all of its trials (dashed).
    """
    name, title = "learning_curves", "Dev metrics during training (mean over seeds, band ± 1 std)"
    if curves.empty or curves["step"].notna().sum() == 0:
        return Figure(name, title, None, "no evaluations in any metrics.jsonl")
    finished_ids = set(trials.loc[trials["status"] == "finished", "trial_id"])
    variants = order_variants(curves["variant"], toggles)
    labels = variant_labels(variants, toggles)
    colours = variant_colours(curves, toggles)

    def draw(axes: Any) -> None:
        for ax, metric in zip(axes.ravel(), ROW_LABELS, strict=False):
            col = f"dev_{metric}"
            for v in variants:
                sub = curves[curves["variant"] == v]
                done = sub[sub["trial_id"].isin(finished_ids)]
                dashed = done.empty
                stats = (
                    (sub if dashed else done).groupby("step")[col].agg(["mean", "std", "count"])
                )
                stats = stats[stats["mean"].notna()]
                if stats.empty:
                    continue
                colour = colours[v]
                x = stats.index.to_numpy(dtype=float)
                ax.plot(
                    x,
                    stats["mean"],
                    color=colour,
                    linestyle="--" if dashed else "-",
                    marker="o",
                    markersize=3,
                    label=labels[v],
                )
                band = stats["count"] >= 2
                if band.any():
                    lo = stats["mean"] - stats["std"].fillna(0)
                    hi = stats["mean"] + stats["std"].fillna(0)
                    ax.fill_between(
                        x, lo, hi, where=band.to_numpy(), color=colour, alpha=0.2, linewidth=0
                    )
            ax.set_title(ROW_LABELS[metric] + " (dev)", fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes.ravel()[0].legend(fontsize=8)

    return Figure(name, title, _render(draw, nrows=2, ncols=2, size=(10, 7)))


def score_vs_params(
    trials: pd.DataFrame,
    searched: Sequence[str],
    is_log: Callable[[str], bool],
    metric: str = "dev_overall",
    *,
    toggles: Sequence[Toggle],
) -> Figure:
    """`metric` of every trial against each searched hyperparameter, coloured by status.

    Args:
        trials: the trials table.
        searched: dotted keys the search varied ("variant"/"train.seed" are skipped).
        is_log: whether a key was searched on a log scale (log x axis).
        metric: the y axis; for unfinished trials their latest evaluation.
        toggles: the recorded extension toggles (they order the variant axis).
    """
    name, title = "score_vs_params", f"{metric} against each searched hyperparameter"
    keys = [k for k in searched if k not in NOT_HYPERPARAMETERS and f"config/{k}" in trials]
    if "variant" in searched or not keys:  # a grid over variants and seeds: score by variant
        keys.append("variant")
    plotted = trials[pd.to_numeric(trials[metric], errors="coerce").notna()]
    if plotted.empty:
        return Figure(name, title, None, f"no trial has a value of {metric}")
    column = {k: plotted["variant"] if k == "variant" else plotted[f"config/{k}"] for k in keys}
    keys = [k for k in keys if column[k].dropna().map(repr).nunique() > 1]
    if not keys:
        return Figure(name, title, None, "no searched hyperparameter varies across trials")
    ncols = min(3, len(keys))
    nrows = -(-len(keys) // ncols)

    def draw(axes: Any) -> None:
        flat = axes.ravel()
        for ax, key in zip(flat, keys, strict=False):
            col = column[key]
            numeric = key != "variant" and all(
                isinstance(v, (int, float, np.integer, np.floating))
                and not isinstance(v, (bool, np.bool_))
                for v in col.dropna()
            )
            if numeric:
                x = col.to_numpy(dtype=float)
                if is_log(key):
                    ax.set_xscale("log")
            else:
                cats = (
                    order_variants(col.dropna(), toggles)
                    if key == "variant"
                    else sorted({str(v) for v in col.dropna()})
                )
                pos = {c: i for i, c in enumerate(cats)}
                jitter = np.random.default_rng(0).uniform(-0.15, 0.15, size=len(col))
                x = np.array([pos.get(str(v), np.nan) for v in col]) + jitter
                ax.set_xticks(range(len(cats)), cats, rotation=30, fontsize=8)
            for status, colour in STATUS_COLOURS.items():
                mask = (plotted["status"] == status).to_numpy()
                if mask.any():
                    ax.scatter(
                        x[mask],
                        plotted[metric].to_numpy(dtype=float)[mask],
                        s=25,
                        color=colour,
                        label=status,
                        alpha=0.8,
                    )
            ax.set_xlabel(key + (" (log)" if numeric and is_log(key) else ""))
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
        flat[0].legend(fontsize=8)
        for ax in flat[len(keys) :]:
            ax.set_visible(False)

    return Figure(name, title, _render(draw, nrows, ncols, size=(4.2 * ncols, 3.4 * nrows)))


def effects_forest(
    effects: pd.DataFrame, metrics: Sequence[str] = ("dev_overall", "test_overall")
) -> Figure:
    """Forest plot: each comparison's difference with its interval, one panel per metric.

    Args:
        effects: rows of `variant_effects(...).data` and/or `toggle_effects(...).data`.
        metrics: metrics to draw (one panel each).
    """
    name, title = "effects_forest", "Differences against the baseline / toggle off, 95% CI"
    sub = effects[effects["metric"].isin(metrics)] if not effects.empty else effects
    sub = sub[pd.to_numeric(sub["diff"], errors="coerce").notna()] if not sub.empty else sub
    if sub.empty:
        return Figure(name, title, None, "no comparison has a difference to show")
    panels = [m for m in metrics if (sub["metric"] == m).any()]
    comparisons = list(dict.fromkeys(sub["comparison"]))

    def draw(axes: Any) -> None:
        for ax, metric in zip(axes.ravel(), panels, strict=False):
            rows = sub[sub["metric"] == metric].set_index("comparison")
            for y, comp in enumerate(comparisons):
                if comp not in rows.index:
                    continue
                r = rows.loc[comp]
                has_ci = np.isfinite(float(r["ci_low"])) and np.isfinite(float(r["ci_high"]))
                colour = "#7f7f7f" if not has_ci or r["contains_zero"] else "#1f77b4"
                if has_ci:
                    ax.plot([r["ci_low"], r["ci_high"]], [y, y], color=colour, linewidth=2)
                ax.plot(
                    r["diff"],
                    y,
                    "o",
                    color=colour,
                    markerfacecolor="white" if not has_ci else colour,
                )
                if not has_ci:
                    ax.annotate(
                        "single run",
                        (r["diff"], y),
                        textcoords="offset points",
                        xytext=(6, 4),
                        fontsize=7,
                    )
            ax.axvline(0.0, color="black", linestyle="--", linewidth=1)
            ax.set_yticks(range(len(comparisons)), comparisons, fontsize=8)
            ax.invert_yaxis()
            ax.set_title(metric, fontsize=10)
            ax.set_xlabel("difference")
            ax.grid(axis="x", alpha=0.3)

    height = max(2.5, 0.45 * len(comparisons) + 1.2)
    return Figure(name, title, _render(draw, 1, len(panels), size=(5.5 * len(panels), height)))


def pcgrad_conflicts(curves: pd.DataFrame, *, toggles: Sequence[Toggle]) -> Figure:
    """PCGrad's gradient conflict rate against step: each trial thin, variant mean thick."""
    name, title = "pcgrad_conflicts", "PCGrad: share of conflicting task-gradient pairs"
    has = curves[pd.to_numeric(curves["pcgrad_conflict_rate"], errors="coerce").notna()]
    if has.empty:
        return Figure(name, title, None, "no trial recorded pcgrad_conflict_rate")
    variants = order_variants(has["variant"], toggles)
    labels = variant_labels(variants, toggles)
    colours = variant_colours(curves, toggles)

    def draw(axes: Any) -> None:
        ax = axes.ravel()[0]
        for v in variants:
            colour = colours[v]
            sub = has[has["variant"] == v]
            for _, trial in sub.groupby("trial_id"):
                ax.plot(
                    trial["step"],
                    trial["pcgrad_conflict_rate"],
                    color=colour,
                    alpha=0.3,
                    linewidth=0.8,
                )
            mean = sub.groupby("step")["pcgrad_conflict_rate"].mean()
            ax.plot(mean.index, mean.to_numpy(), color=colour, linewidth=2, label=labels[v])
        ax.set_xlabel("step")
        ax.set_ylabel("conflict rate")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    return Figure(name, title, _render(draw, 1, 1, size=(7, 4)))


def variant_colours(curves: pd.DataFrame, toggles: Sequence[Toggle]) -> dict[str, str]:
    """One colour per variant, the same in every figure drawn from these curves."""
    return {v: f"C{i % 10}" for i, v in enumerate(order_variants(curves["variant"], toggles))}


def _render(
    draw: Callable[[Any], None], nrows: int, ncols: int, size: tuple[float, float]
) -> bytes:
    """Draw on a fresh Agg figure (no pyplot state) and return its PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False))
    draw(axes)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()
