"""Build a sweep's ablation report: Markdown, self-contained HTML, CSV/LaTeX tables, figures.

    python -c "import reports; print(reports.build_report('results/paper_ablation'))"
    # (the CLI: hpsearch report results/paper_ablation)

writes into EXP_DIR/report/:
    report.md            tables rounded to 3 decimals, figures linked from figures/
    report.html          the same, figures embedded as base64 data URIs, no external resources
    <table>.csv          exact values of every table
    <table>.tex          booktabs tables (\\toprule/\\midrule/\\bottomrule)
    figures/<name>.png   the figures
    best_config.yaml     the best trial's config in `hpsearch train` form, with the command
Every file is written atomically (`trainables.atomic`: a temporary file in the same folder,
fsynced, then renamed over the old one), so a reader never sees half a report.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd  # pandas ships no types

from reports import figures
from reports.best_config import RERUN_COMMAND, best_config, best_config_yaml
from reports.effects import toggle_effects, variant_effects
from reports.figures import Figure
from reports.importance import importance_table
from reports.results import STATUSES, Results, load_results
from reports.score_tables import config_table, metric_table
from reports.search_tables import (
    best_per_variant,
    best_trial,
    continuous_keys,
    is_sampled,
    log_scaled,
    objectives,
    pareto_table,
)
from reports.sweep_tables import budget_table, status_table
from reports.table import Table
from reports.tuned import is_tuned_ablation, tuned_sections
from reports.variants import BASELINE, BASELINE_LABEL, order_variants, variant_label
from trainables.atomic import write_bytes_atomic, write_text_atomic

REPORT_DIR = "report"
FIGURE_DIR = "figures"
BEST_CONFIG = "best_config.yaml"


@dataclass
class Code:
    """A verbatim block (YAML, a command line)."""

    text: str


@dataclass
class Section:
    heading: str
    blocks: list[Table | Figure | Code | str] = field(default_factory=list)


def build_report(
    exp_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Path:
    """Read `exp_dir` and write its report; returns the report folder (EXP_DIR/report/).

    Args:
        exp_dir: the experiment folder a sweep wrote (experiment.json, trials/, ...).
        out_dir: where to write instead of EXP_DIR/report/.
        n_resamples: bootstrap resamples for the effect intervals.
        seed: seed of the bootstrap and of fANOVA, so a report is reproducible.

    Raises:
        ReportError: `exp_dir` is not an experiment folder.
    """
    if is_tuned_ablation(exp_dir):  # phases of sweeps: its own sections (reports.tuned)
        folder = Path(exp_dir)
        out = Path(out_dir) if out_dir is not None else folder / REPORT_DIR
        (out / FIGURE_DIR).mkdir(parents=True, exist_ok=True)
        best_path, best_yaml = out / BEST_CONFIG, None
        sections = [
            Section(heading, blocks)
            for heading, blocks in tuned_sections(folder, n_resamples=n_resamples, seed=seed)
        ]
        title = f"Tuned ablation report: {folder.name}"
    else:
        res = load_results(exp_dir)
        out = Path(out_dir) if out_dir is not None else res.exp_dir / REPORT_DIR
        (out / FIGURE_DIR).mkdir(parents=True, exist_ok=True)
        best_path = out / BEST_CONFIG
        sections, best_yaml = assemble(res, best_path, n_resamples=n_resamples, seed=seed)
        title = f"Ablation report: {res.experiment.get('name') or res.exp_dir.name}"

    for section in sections:
        for block in section.blocks:
            if isinstance(block, Table):
                atomic_write(out / f"{block.name}.csv", block.data.to_csv(index=False))
                atomic_write(out / f"{block.name}.tex", latex_table(block))
            elif isinstance(block, Figure):
                png_path = out / FIGURE_DIR / f"{block.name}.png"
                if block.png is not None:
                    atomic_write(png_path, block.png)
                elif png_path.exists():
                    png_path.unlink()  # a figure from an earlier report that no longer applies
    if best_yaml is not None:
        atomic_write(best_path, best_yaml)
    elif best_path.exists():
        best_path.unlink()
    atomic_write(out / "report.md", render_markdown(title, sections))
    atomic_write(out / "report.html", render_html(title, sections))
    return out


def assemble(
    res: Results, best_path: Path, *, n_resamples: int = 10_000, seed: int = 0
) -> tuple[list[Section], str | None]:
    """All sections of the report, in reading order, plus the best_config.yaml text."""
    trials, toggles = res.trials, res.toggles
    objs = objectives(res.experiment)
    metric, mode = objs[0]
    if metric not in trials:
        res.warnings.append(
            f"objective {metric!r} is not a reported metric: ranked by dev_overall (max) instead"
        )
        metric, mode = "dev_overall", "max"
    sampled = is_sampled(trials, res.searched, res.search_space)

    sections = [
        Section(
            "Budget and data notes",
            [
                _headline(res, metric, mode),
                budget_table(trials, res.experiment, res.warnings, sampled),
            ],
        )
    ]

    scores = Section("Scores per variant")
    for split in ("dev", "train", "test"):
        table = metric_table(trials, split, toggles=toggles)
        if sampled:
            table.notes.append(
                "This space was sampled: a variant's trials also differ in "
                f"{', '.join(continuous_keys(trials, res.searched, res.search_space))}"
                ", so the spread mixes seeds and hyperparameters."
            )
        scores.blocks.append(table)
    scores.blocks.append(config_table(trials, toggles=toggles))
    sections.append(scores)

    if sampled or len(objs) > 1:
        search = Section("Search results")
        if sampled:
            search.blocks.append(
                best_per_variant(trials, res.searched, metric, mode, toggles=toggles)
            )
        if len(objs) > 1:
            search.blocks.append(pareto_table(trials, objs))
        sections.append(search)

    baseline = next(
        (
            v
            for v in order_variants(trials["variant"], toggles)
            if variant_label(v, toggles) == BASELINE_LABEL
        ),
        BASELINE,
    )
    by_variant = variant_effects(
        trials, toggles=toggles, baseline=baseline, n_resamples=n_resamples, seed=seed
    )
    by_toggle = toggle_effects(trials, toggles=toggles, n_resamples=n_resamples, seed=seed)
    effects = pd.concat(
        [d for d in (by_variant.data, by_toggle.data) if not d.empty] or [by_variant.data]
    )
    sections.append(
        Section(
            "Effects against the baseline",
            [
                by_variant,
                by_toggle,
                figures.effects_forest(effects),
            ],
        )
    )

    def is_log(key: str) -> bool:
        return log_scaled(key, trials, res.search_space)

    sections.append(
        Section(
            "Training and search",
            [
                figures.learning_curves(res.curves, trials, toggles=toggles),
                figures.score_vs_params(
                    trials,
                    res.searched,
                    is_log,
                    metric if metric in trials else "dev_overall",
                    toggles=toggles,
                ),
                importance_table(res.exp_dir, res.experiment, seed=seed),
                figures.pcgrad_conflicts(res.curves, toggles=toggles),
            ],
        )
    )

    sections.append(Section("Trial status", [status_table(trials, toggles=toggles)]))

    best = best_config(trials, res.configs, metric, mode)
    best_yaml = None
    if best is None:
        sections.append(
            Section(
                "Best configuration",
                [f"No finished trial has a value of {metric}: no best configuration."],
            )
        )
    else:
        row, config = best
        best_yaml = best_config_yaml(
            row, config, metric, mode, str(best_path), str(res.experiment.get("name", ""))
        )
        sections.append(
            Section(
                "Best configuration",
                [
                    f"Trial {row['trial_id']} (variant {row['variant']}) has the best {metric} "
                    f"({mode}): {row[metric]:.3f}{_ranked_note(trials)}. Its config, as "
                    f"`{BEST_CONFIG}`:",
                    Code(best_yaml),
                    "Re-run it with:",
                    Code(RERUN_COMMAND.format(config=best_path)),
                ],
            )
        )
    return sections, best_yaml


def _ranked_note(trials: pd.DataFrame) -> str:
    """Which trials a "best" ranks: the finished ones; trials stopped early by ASHA (pruned in
    the Optuna study) hold partial scores and are not ranked."""
    stopped = int((trials["status"] == "stopped").sum())
    if not stopped:
        return ""
    return (
        f", of the finished trials; {stopped} trial{'s' if stopped != 1 else ''} stopped early "
        "(pruned, partial scores) not ranked"
    )


def _headline(res: Results, metric: str, mode: str) -> str:
    trials = res.trials
    counts = trials["status"].value_counts()
    parts = ", ".join(f"{int(counts[st])} {st}" for st in STATUSES if counts.get(st, 0))
    text = f"{len(trials)} trials ({parts or 'none'})."
    best = best_trial(trials, metric, mode)
    if best is not None:
        text += (
            f" Best {metric}: {best[metric]:.3f} (trial {best['trial_id']}, variant "
            f"{best['variant']}){_ranked_note(trials)}."
        )
    if res.warnings:
        text += f" {len(res.warnings)} data note(s) below."
    return text


# ---------------------------------------------------------------------------- Markdown


def render_markdown(title: str, sections: list[Section]) -> str:
    """The report as Markdown; tables rounded, figures linked from figures/."""
    out = [f"# {title}", ""]
    for section in sections:
        out += [f"## {section.heading}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                out += [f"### {block.title}", ""]
                out += [markdown_table(block.display) if not block.empty else "_(no rows)_", ""]
                out += [f"- {n}" for n in block.notes]
                out += [
                    f"- Exact values: [{block.name}.csv]({block.name}.csv); LaTeX: "
                    f"[{block.name}.tex]({block.name}.tex)",
                    "",
                ]
            elif isinstance(block, Figure):
                out += [f"### {block.title}", ""]
                if block.png is not None:
                    out += [f"![{block.title}]({FIGURE_DIR}/{block.name}.png)", ""]
                else:
                    out += [f"_Figure skipped: {block.note}._", ""]
            elif isinstance(block, Code):
                out += ["```", block.text.rstrip("\n"), "```", ""]
            else:
                out += [block, ""]
    return "\n".join(out)


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table of `df`'s strings, its index as the first column."""

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = [cell(df.index.name or ""), *(cell(c) for c in df.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for idx, row in zip(df.index, df.itertuples(index=False), strict=True):
        lines.append("| " + " | ".join([cell(idx), *(cell(v) for v in row)]) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #bbb;margin-top:2em}
h3{font-size:1.05em;margin-bottom:.4em}
table{border-collapse:collapse;margin:.5em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
thead th{background:#eef2f7}tbody tr:nth-child(even){background:#fafafa}
p.note{font-size:.85em;color:#555;margin:.15em 0}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.9em;color:#444}
pre{background:#f5f5f5;padding:.7em;overflow-x:auto;font-size:.85em}
p.skip{font-style:italic;color:#777}
"""


def render_html(title: str, sections: list[Section]) -> str:
    """The report as one self-contained HTML page (figures as base64 data URIs)."""
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{esc(section.heading)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                body.append(f"<h3>{esc(block.title)}</h3>")
                if block.empty:
                    body.append('<p class="skip">(no rows)</p>')
                else:
                    body.append(
                        _index_as_column(block.display).to_html(escape=True, border=0, index=False)
                    )
                body += [f'<p class="note">{esc(n)}</p>' for n in block.notes]
            elif isinstance(block, Figure):
                if block.png is None:
                    body.append(
                        f'<p class="skip">Figure skipped ({esc(block.title)}): '
                        f"{esc(block.note)}.</p>"
                    )
                    continue
                data = base64.b64encode(block.png).decode("ascii")
                body.append(
                    f'<figure><img src="data:image/png;base64,{data}" '
                    f'alt="{esc(block.title)}"><figcaption>{esc(block.title)}'
                    "</figcaption></figure>"
                )
            elif isinstance(block, Code):
                body.append(f"<pre><code>{esc(block.text)}</code></pre>")
            else:
                body.append(f"<p>{esc(block)}</p>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# ---------------------------------------------------------------------------- LaTeX


def latex_table(table: Table) -> str:
    """A booktabs LaTeX table (needs \\usepackage{booktabs}); notes below the tabular."""
    if table.empty:
        return f"% {_latex_escape(table.title)}: no rows\n"
    frame = _index_as_column(table.display)
    styler = frame.style.format(escape="latex").format_index(escape="latex", axis=1)
    styler = styler.hide(axis="index")
    tex = styler.to_latex(
        hrules=True,
        caption=_latex_escape(table.title),
        label=f"tab:{table.name}",
        position_float="centering",
    )
    if table.notes:
        notes = " ".join(_latex_escape(n) for n in table.notes)
        tex = tex.replace(
            "\\end{table}", f"\\par\\smallskip{{\\footnotesize {notes}}}\n\\end{{table}}"
        )
    for raw, cooked in (("±", r"$\pm$"), ("−", "$-$"), ("–", "--")):
        tex = tex.replace(raw, cooked)
    return tex


def _index_as_column(df: pd.DataFrame) -> pd.DataFrame:
    """The index as the first column, so its name heads it (not a header row of its own)."""
    return df.reset_index(names=df.index.name or "")


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


# ---------------------------------------------------------------------------- files


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write one report file, text or PNG bytes, through the project's one atomic writer."""
    if isinstance(data, str):
        write_text_atomic(path, data)
    else:
        write_bytes_atomic(path, data)


__all__ = [
    "build_report",
    "assemble",
    "render_markdown",
    "render_html",
    "latex_table",
    "markdown_table",
    "atomic_write",
    "Section",
    "Code",
]
