"""Ablation reports from a finished (or crashed) sweep's experiment folder.

    import reports
    report_dir = reports.build_report("results/paper_ablation")   # -> results/paper_ablation/report

Reports read result files only (experiment.json, trials/*.json, metrics.jsonl, summary.json,
optuna.journal) and never import `trainables` or `hpsearch`. The tables are pure functions of
the trials DataFrame (`reports.tables`), so they can be tested with hand-built frames.
"""

from __future__ import annotations

from reports.errors import ReportError
from reports.render import build_report
from reports.results import Results, load_results

__all__ = ["build_report", "load_results", "Results", "ReportError"]
