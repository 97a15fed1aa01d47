"""The report of a tuned ablation (hpsearch.ablation): variants compared tuned against tuned.

It reads only files: the tuned ablation's `ablation.json` (the plan and each variant's tuned
configuration) and its phases' experiment folders (`phases/<phase>/`, read with
`load_results` like any sweep). Sections, in reading order:

    Tuned ablation        the plan: variants, the tuning budget per variant, the final seeds
    Scores                each variant at the reference settings and tuned, dev and held-out
                          test, per task and overall: mean ± std over the final seeds
    Effects               each variant minus the baseline at the same setting (tuned minus
                          tuned, reference minus reference), paired bootstrap interval over
                          seeds; and whether an advantage at the reference survives tuning
    Tuned configurations  each variant's best tuning trial and its settings
    Compute               each phase: trials, their states, trial time and wall time
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd  # pandas ships no types

from reports import figures
from reports.effects import effect_record, effects_table
from reports.errors import ReportError
from reports.results import TASK_METRICS, Results, load_results
from reports.stats import Difference, bootstrap_mean_diff, describe
from reports.table import Table, format_hms, format_setting, format_spread, is_finite

__all__ = ["ABLATION_FILE", "SETTINGS", "is_tuned_ablation", "tuned_sections"]

ABLATION_FILE = "ablation.json"
PHASES_DIR = "phases"
# (phase, label): the comparisons, in the order they are shown
SETTINGS = (("reference", "reference"), ("final", "tuned"))
SPLITS = ("dev", "test")
_TIMING = "sweep_timing.json"


def is_tuned_ablation(folder: str | Path) -> bool:
    return (Path(folder) / ABLATION_FILE).is_file()


def tuned_sections(
    folder: Path, *, n_resamples: int = 10_000, seed: int = 0
) -> list[tuple[str, list[Any]]]:
    """(heading, blocks) of every section; blocks are Tables, Figures and sentences."""
    plan = _read_plan(folder)
    phases = {
        phase: load_results(folder / PHASES_DIR / phase)
        for phase in plan["phases"]
        if (folder / PHASES_DIR / phase).is_dir()
    }
    variants: list[str] = plan["variants"]
    baseline: str = plan["baseline"]
    settings = [(phase, label) for phase, label in SETTINGS if phase in phases]
    sections: list[tuple[str, list[Any]]] = [
        ("Tuned ablation", [_headline(plan, phases)]),
        ("Scores", [scores_table(phases, settings, variants, split) for split in SPLITS]),
    ]
    if len(variants) > 1:  # one variant ("tune, then confirm") has nothing to compare with
        effects = effects_by_setting(
            phases, settings, variants, baseline, n_resamples=n_resamples, seed=seed
        )
        sections.append(
            (
                "Effects against the baseline",
                [
                    effects,
                    survival_table(effects.data, variants, baseline),
                    figures.effects_forest(effects.data, metrics=("dev_overall", "test_overall")),
                ],
            )
        )
    sections += [
        ("Tuned configurations", [tuned_config_table(plan, phases)]),
        ("Compute", [compute_table(folder, plan, phases)]),
    ]
    warnings = [w for res in phases.values() for w in res.warnings]
    if warnings:
        sections.append(("Data warnings", [" ".join(warnings[:20])]))
    return sections


def _read_plan(folder: Path) -> dict[str, Any]:
    try:
        plan: dict[str, Any] = json.loads((folder / ABLATION_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"{folder / ABLATION_FILE}: unreadable ({exc})") from None
    return plan


def _headline(plan: dict[str, Any], phases: dict[str, Results]) -> str:
    missing = [p for p in plan["phases"] if p not in phases]
    seeds = ", ".join(map(str, plan["final_seeds"]))
    if len(plan["variants"]) == 1:
        text = (
            f"'{plan['variants'][0]}' was tuned over {', '.join(plan['parameters'])} in "
            f"{plan['trials_per_variant']} trials (one Optuna study), selected by "
            f"{plan['metric']} ({plan['mode']}) on dev among finished trials; its best "
            f"configuration was then re-run once per final seed ({seeds}), at seeds the tuning "
            "never used."
        )
    else:
        text = (
            f"Each of the {len(plan['variants'])} variants ({', '.join(plan['variants'])}) was "
            f"tuned on its own over {', '.join(plan['parameters'])} with the same budget, "
            f"{plan['trials_per_variant']} trials each (its own Optuna study), selected by "
            f"{plan['metric']} ({plan['mode']}) on dev among finished trials; each variant's "
            f"best configuration was then re-run once per final seed ({seeds}), at seeds the "
            "tuning never used. Differences are against the baseline "
            f"'{plan['baseline']}' at the same setting, paired by seed."
        )
    if plan.get("reference"):
        shown = ", ".join(f"{k}={v}" for k, v in plan["reference"].items())
        text += f" The reference rows run every variant at fixed settings ({shown})."
    if missing:
        text += f" Not run yet: {', '.join(missing)} (`hpsearch resume` continues)."
    return text


def _finished(res: Results, variant: str) -> pd.DataFrame:
    trials = res.trials
    return trials[(trials["status"] == "finished") & (trials["variant"] == variant)]


def scores_table(
    phases: dict[str, Results],
    settings: Sequence[tuple[str, str]],
    variants: list[str],
    split: str,
) -> Table:
    """Mean ± std over seeds of each task metric, per variant and setting, for one split."""
    metrics = [f"{split}_{m}" for m in TASK_METRICS]
    records, shown = [], []
    for variant in variants:
        for phase, label in settings:
            rows = _finished(phases[phase], variant)
            record: dict[str, Any] = {"variant": variant, "setting": label, "n": len(rows)}
            cells: dict[str, Any] = {"Variant": variant, "Setting": label}
            for metric in metrics:
                spread = describe(rows[metric]) if metric in rows else describe([])
                record[f"{metric}_mean"], record[f"{metric}_std"] = spread.mean, spread.std
                cells[metric] = format_spread(spread)
            records.append(record)
            shown.append(cells)
    display = pd.DataFrame(shown)
    display.index = pd.RangeIndex(1, len(display) + 1, name="#")
    return Table(
        name=f"tuned_scores_{split}" if split != "dev" else "tuned_scores",
        title=f"{split} scores: each variant at the reference settings and tuned (over seeds)",
        data=pd.DataFrame(records),
        display=display,
        notes=["mean ± sample std over the final seeds (n finished runs)."],
    )


def effects_by_setting(
    phases: dict[str, Results],
    settings: Sequence[tuple[str, str]],
    variants: list[str],
    baseline: str,
    *,
    n_resamples: int,
    seed: int,
) -> Table:
    """Each variant minus the baseline at the same setting, per metric, paired by seed."""
    records = []
    metrics = [f"{split}_{m}" for split in SPLITS for m in TASK_METRICS]
    for phase, label in settings:
        base = _finished(phases[phase], baseline)
        for variant in variants:
            if variant == baseline:
                continue
            rows = _finished(phases[phase], variant)
            for metric in metrics:
                diff = _paired(rows, base, metric, n_resamples, seed)
                comparison = f"{variant} − {baseline} ({label})"
                records.append(
                    effect_record(comparison, label, metric, diff, f"{baseline} ({label})")
                )
    return effects_table(
        "tuned_effects",
        "Each variant against the baseline at the same setting (tuned vs tuned)",
        records,
        [
            f"Paired by training seed; 95% percentile bootstrap ({n_resamples:,} resamples, "
            f"generator seed {seed}). With a handful of seeds an interval is rough; 'contains "
            "0' means these runs cannot tell the variant from the baseline."
        ],
    )


def _paired(
    rows: pd.DataFrame, base: pd.DataFrame, metric: str, n_resamples: int, seed: int
) -> Difference:
    if metric not in rows or metric not in base:
        return bootstrap_mean_diff([], [], n_resamples=n_resamples, seed=seed)
    return bootstrap_mean_diff(
        rows[metric],
        base[metric],
        seeds_a=rows["seed"].tolist(),
        seeds_b=base["seed"].tolist(),
        n_resamples=n_resamples,
        seed=seed,
    )


def survival_table(effects: pd.DataFrame, variants: list[str], baseline: str) -> Table:
    """Does a variant's difference at the reference settings survive when every variant is
    tuned? One row per variant and overall metric."""
    records, shown = [], []
    for variant in variants:
        if variant == baseline:
            continue
        for metric in ("dev_overall", "test_overall"):
            ref = _effect(effects, variant, baseline, "reference", metric)
            tuned = _effect(effects, variant, baseline, "tuned", metric)
            verdict = _survival(ref, tuned)
            records.append(
                {
                    "variant": variant,
                    "metric": metric,
                    "reference_diff": ref["diff"] if ref else math.nan,
                    "tuned_diff": tuned["diff"] if tuned else math.nan,
                    "verdict": verdict,
                }
            )
            shown.append(
                {
                    "Variant": variant,
                    "Metric": metric,
                    "At the reference": _interval(ref),
                    "Tuned vs tuned": _interval(tuned),
                    "Verdict": verdict,
                }
            )
    display = pd.DataFrame(shown)
    display.index = pd.RangeIndex(1, len(display) + 1, name="#")
    data = pd.DataFrame(records)
    return Table(
        name="tuned_survival",
        title="Does an advantage at the fixed reference settings survive tuning?",
        data=data,
        display=display,
        notes=["Difference to the baseline [95% CI], paired by seed."],
    )


def _effect(
    effects: pd.DataFrame, variant: str, baseline: str, label: str, metric: str
) -> dict[str, Any] | None:
    if effects.empty:
        return None
    rows = effects[
        (effects["comparison"] == f"{variant} − {baseline} ({label})")
        & (effects["metric"] == metric)
    ]
    return None if rows.empty else dict(rows.iloc[0])


def _sign(effect: dict[str, Any] | None) -> int | None:
    """+1 / -1 when the interval excludes 0 above / below, 0 when it contains 0, None when
    there is no interval."""
    if effect is None or not is_finite(effect["ci_low"]) or not is_finite(effect["ci_high"]):
        return None
    if effect["ci_low"] > 0:
        return 1
    if effect["ci_high"] < 0:
        return -1
    return 0


def _survival(ref: dict[str, Any] | None, tuned: dict[str, Any] | None) -> str:
    r, t = _sign(ref), _sign(tuned)
    if t is None:
        return "no interval for the tuned runs"
    if r is None:
        return {
            1: "better than the baseline, tuned",
            -1: "worse, tuned",
            0: "no difference, tuned",
        }[t]
    if r == 1:
        return "advantage survives tuning" if t == 1 else "advantage vanishes when tuned"
    if r == -1:
        return "disadvantage survives tuning" if t == -1 else "disadvantage vanishes when tuned"
    if t == 0:
        return "no difference either way"
    return "a difference appears only when tuned"


def _interval(effect: dict[str, Any] | None) -> str:
    if effect is None or not is_finite(effect["diff"]):
        return "–"
    if not is_finite(effect["ci_low"]):
        return f"{effect['diff']:+.3f}"
    return f"{effect['diff']:+.3f} [{effect['ci_low']:+.3f}, {effect['ci_high']:+.3f}]"


def tuned_config_table(plan: dict[str, Any], phases: dict[str, Results]) -> Table:
    """Each variant's tuned configuration, its tuning score and how its tuning went."""
    tuned = plan.get("tuned") or {}
    records, shown = [], []
    for variant in plan["variants"]:
        chosen = tuned.get(variant)
        tuning = phases.get(f"tune-{variant}")
        counts = tuning.trials["status"].value_counts().to_dict() if tuning is not None else {}
        record: dict[str, Any] = {
            "variant": variant,
            "best_trial": chosen["trial_id"] if chosen else None,
            f"tuning_{plan['metric']}": chosen["value"] if chosen else math.nan,
            **{f"tuning_{s}": int(counts.get(s, 0)) for s in ("finished", "stopped", "failed")},
            **(chosen["settings"] if chosen else {}),
        }
        records.append(record)
        cells: dict[str, Any] = {
            "Variant": variant,
            f"Tuning {plan['metric']}": f"{chosen['value']:.3f}" if chosen else "–",
            "Tuning trials (finished / stopped / failed)": (
                f"{counts.get('finished', 0)} / {counts.get('stopped', 0)} / {counts.get('failed', 0)}"
            ),
        }
        for key in plan["parameters"]:
            value = chosen["settings"].get(key) if chosen else None
            cells[key] = format_setting(value, key) if value is not None else "–"
        shown.append(cells)
    display = pd.DataFrame(shown)
    display.index = pd.RangeIndex(1, len(display) + 1, name="#")
    notes = ["Stopped (ASHA) and failed tuning trials are never chosen."]
    notes += _same_choice_note(plan, tuned)
    return Table(
        name="tuned_configs",
        title="Each variant's tuned configuration (its best finished tuning trial on dev)",
        data=pd.DataFrame(records),
        display=display,
        notes=notes,
    )


def _same_choice_note(plan: dict[str, Any], tuned: dict[str, Any]) -> list[str]:
    """A warning when every variant chose the same settings: the tuned rows then compare the
    variants at one configuration, not each at an optimum of its own."""
    chosen = [tuned[v]["settings"] for v in plan["variants"] if v in tuned]
    if len(plan["variants"]) < 2 or len(chosen) < len(plan["variants"]):
        return []
    if any(c != chosen[0] for c in chosen[1:]):
        return []
    return [
        "Every variant chose the same settings: the tuned rows compare the variants at one "
        "configuration, not each at an optimum of its own. Studies with one sampler seed "
        "share their first candidates; a larger tuning.trials_per_variant (or no early "
        "stopping at a small budget) gives each variant more of its own."
    ]


def compute_table(folder: Path, plan: dict[str, Any], phases: dict[str, Results]) -> Table:
    """Per phase: trials and their states, summed trial time, and the fits' wall time."""
    records, shown = [], []
    for phase in plan["phases"]:
        res = phases.get(phase)
        counts = res.trials["status"].value_counts().to_dict() if res is not None else {}
        trial_s = (
            float(pd.to_numeric(res.trials["elapsed_s"], errors="coerce").sum())
            if res is not None
            else 0.0
        )
        wall_s = _wall_seconds(folder / PHASES_DIR / phase)
        records.append(
            {
                "phase": phase,
                "trials": sum(counts.values()),
                **counts,
                "trial_s": trial_s,
                "wall_s": wall_s,
            }
        )
        shown.append(
            {
                "Phase": phase,
                "Trials": sum(counts.values()),
                "Finished / stopped / failed": (
                    f"{counts.get('finished', 0)} / {counts.get('stopped', 0)} / {counts.get('failed', 0)}"
                ),
                "Trial time": format_hms(trial_s) if res is not None else "–",
                "Wall time": format_hms(wall_s) if wall_s else "–",
            }
        )
    total_trial = sum(r["trial_s"] for r in records)
    total_wall = sum(r["wall_s"] for r in records)
    shown.append(
        {
            "Phase": "all",
            "Trials": sum(r["trials"] for r in records),
            "Finished / stopped / failed": "",
            "Trial time": format_hms(total_trial),
            "Wall time": format_hms(total_wall),
        }
    )
    display = pd.DataFrame(shown)
    display.index = pd.RangeIndex(1, len(display) + 1, name="#")
    return Table(
        name="tuned_compute",
        title="Compute per phase",
        data=pd.DataFrame(records),
        display=display,
        notes=[
            "Trial time: the trials' own wall time summed (several run at once); wall time: "
            "each phase's fits (the first run and every resume) from sweep_timing.json."
        ],
    )


def _wall_seconds(phase_dir: Path) -> float:
    path = phase_dir / _TIMING
    if not path.is_file():
        return 0.0
    try:
        spans = json.loads(path.read_text())
        return float(sum(s["ended_at"] - s["started_at"] for s in spans))
    except (ValueError, KeyError, TypeError):
        return 0.0
