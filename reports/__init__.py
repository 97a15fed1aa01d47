"""Ablation reports from a finished (or crashed) sweep's experiment folder.

    import reports
    report_dir = reports.build_report("results/paper_ablation")   # -> results/paper_ablation/report

Reports read result files only (experiment.json, trials/*.json, metrics.jsonl, summary.json,
optuna.journal) and never import `hpsearch` or `trainables` (apart from its stdlib-only
`trainables.atomic` writer and `trainables.errors`). Variant names and labels come from the
toggles each sweep records in experiment.json (`Results.toggles`), never from code.

Every table is a pure function of the trials DataFrame, so it can be tested with hand-built
frames; each module answers one question:

    reports.results        read the folder: Results (trials, curves, toggles, warnings)
    reports.variants       variant names, labels and order, from the recorded toggles
    reports.table          the Table type and how cells are formatted
    reports.score_tables   Tables 1-4: scores and configurations per variant
    reports.search_tables  objectives, sampled spaces, best trials, Pareto front
    reports.effects        variant and toggle effects with bootstrap intervals
    reports.sweep_tables   budget and trial status
    reports.best_config    the best trial's config as best_config.yaml
    reports.importance     fANOVA importances from the Optuna journal
    reports.figures        the figures (PNG)
    reports.render         the report files: Markdown, HTML, CSV, LaTeX
"""

from __future__ import annotations

from reports.best_config import best_config, best_config_yaml
from reports.effects import toggle_effects, variant_effects
from reports.errors import ReportError
from reports.render import build_report
from reports.results import Results, load_results
from reports.score_tables import config_table, metric_table
from reports.search_tables import best_per_variant, objectives, pareto_table
from reports.sweep_tables import budget_table, status_table
from reports.table import Table
from reports.variants import Toggle, order_variants, variant_label, variant_labels, variant_name

__all__ = [
    "ReportError",
    "Results",
    "Table",
    "Toggle",
    "best_config",
    "best_config_yaml",
    "best_per_variant",
    "budget_table",
    "build_report",
    "config_table",
    "load_results",
    "metric_table",
    "objectives",
    "order_variants",
    "pareto_table",
    "status_table",
    "toggle_effects",
    "variant_effects",
    "variant_label",
    "variant_labels",
    "variant_name",
]
