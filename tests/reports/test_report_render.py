"""The written report: files, exact CSVs, rounded Markdown, LaTeX, self-contained HTML."""

from __future__ import annotations

import base64
import io
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import yaml

from reports import ReportError, build_report, load_results
from reports.effects import variant_effects
from reports.render import atomic_write

TABLES = ["budget", "table1_dev", "table2_train", "table3_test", "table4_configs",
          "effects_variants", "effects_toggles", "param_importance", "trial_status"]  # fmt: skip


class ImgCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src") or "")
        for key in ("href", "src"):
            if a.get(key) and tag != "img":
                self.links.append(a[key] or "")


def html_images(path: Path) -> ImgCollector:
    parser = ImgCollector()
    parser.feed(path.read_text())
    return parser


def decode_data_uri_png(src: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    return mpimg.imread(io.BytesIO(base64.b64decode(src[len(prefix) :])), format="png")


def braces_balance(tex: str) -> bool:
    """Unescaped { and } pair up and never close before they open."""
    depth = 0
    for ch in tex.replace("\\{", "").replace("\\}", ""):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def test_report_folder_holds_every_file(paper_report: Path, paper_exp: Path) -> None:
    assert paper_report == paper_exp / "report"
    for name in TABLES:
        assert (paper_report / f"{name}.csv").is_file(), name
        assert (paper_report / f"{name}.tex").is_file(), name
    for name in ("report.md", "report.html", "best_config.yaml"):
        assert (paper_report / name).is_file()
    pngs = sorted(p.name for p in (paper_report / "figures").glob("*.png"))
    assert pngs == ["effects_forest.png", "learning_curves.png", "pcgrad_conflicts.png",
                    "score_vs_params.png"]  # fmt: skip
    assert not list(paper_report.rglob("*.tmp")), "atomic writes leave no temporary files"


def test_csv_holds_exact_values(paper_report: Path, fx: SimpleNamespace) -> None:
    t1 = pd.read_csv(paper_report / "table1_dev.csv").set_index(["metric", "variant"])
    sts = [fx.DEV["cosine"][s][2] for s in (1, 2, 3)]
    assert t1.loc[("dev_sts_r", "cosine"), "mean"] == np.mean(sts)  # not rounded
    assert t1.loc[("dev_sts_r", "cosine"), "std"] == np.std(sts, ddof=1)
    assert t1.loc[("dev_sts_r", "all"), "n"] == 1 and np.isnan(t1.loc[("dev_sts_r", "all"), "std"])
    status = pd.read_csv(paper_report / "trial_status.csv").set_index("trial_id")
    assert status.loc["pcgrad_s3", "status"] == "failed"
    assert status.loc["sequential_s4", "dev_overall"] == fx.overall(0.35, 0.62, 0.12)
    effects = pd.read_csv(paper_report / "effects_variants.csv")
    res = load_results(paper_report.parent)
    in_memory = variant_effects(res.trials, toggles=res.toggles)
    assert effects["diff"].tolist() == pytest.approx(in_memory.data["diff"].tolist(), abs=0)


def test_markdown_is_rounded_and_links_figures(paper_report: Path) -> None:
    md = (paper_report / "report.md").read_text()
    assert "| Sentiment Accuracy | 0.520 ± 0.020 (n=3) |" in md
    assert "0.560 (n=1)" in md
    for name in ("learning_curves", "effects_forest", "score_vs_params", "pcgrad_conflicts"):
        assert f"(figures/{name}.png)" in md
    assert "interval contains 0 - not distinguishable from baseline" in md
    assert "single run: no interval" in md
    assert "Importances skipped: a single searched parameter (grid_point)" in md
    assert "hpsearch train " in md and "best_config.yaml" in md
    # 3 decimals in every score cell of Table 1
    table1 = md.split("### Table 1")[1].split("###")[0]
    numbers = re.findall(r"\d+\.\d+", table1.split("- ")[0])
    assert numbers and all(len(n.split(".")[1]) == 3 for n in numbers)


def test_latex_tables_are_booktabs(paper_report: Path) -> None:
    for name in TABLES:
        tex = (paper_report / f"{name}.tex").read_text()
        if name == "param_importance":
            assert tex.startswith("%")  # no rows in a grid: a comment only
            continue
        assert "\\begin{tabular}" in tex and "\\end{tabular}" in tex, name
        assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
        assert braces_balance(tex), name
        assert "±" not in tex and "−" not in tex
        assert re.search(r"(?<!\\)_", tex.split("\\label")[0].split("\\caption")[-1]) is None
    t1 = (paper_report / "table1_dev.tex").read_text()
    assert "0.520 $\\pm$ 0.020 (n=3)" in t1


def test_html_is_self_contained_and_embeds_every_figure(paper_report: Path) -> None:
    html = paper_report / "report.html"
    found = html_images(html)
    pngs = list((paper_report / "figures").glob("*.png"))
    assert len(found.srcs) == len(pngs) == 4
    for src in found.srcs:
        img = decode_data_uri_png(src)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    text = html.read_text()
    assert "http://" not in text and "https://" not in text
    assert not [x for x in found.links if not x.startswith("data:")]
    assert "<table" in text and "0.520 ± 0.020 (n=3)" in text


def test_best_config_file_round_trips(paper_report: Path) -> None:
    text = (paper_report / "best_config.yaml").read_text()
    config = yaml.safe_load(text)
    assert set(config) == {"model", "data", "train", "extensions"}
    assert config["train"]["seed"] == 1 and config["extensions"]["pcgrad"] is True
    assert f"hpsearch train {paper_report / 'best_config.yaml'}" in text


def test_report_is_reproducible(paper_exp: Path, tmp_path: Path) -> None:
    out = build_report(paper_exp, tmp_path / "again")
    for name in ("table1_dev.csv", "effects_variants.csv", "effects_toggles.csv"):
        assert (out / name).read_text() == (paper_exp / "report" / name).read_text()


def test_sampled_report(sampled_report: Path) -> None:
    best = pd.read_csv(sampled_report / "best_per_variant.csv").set_index("variant")
    assert best.loc["cosine", "best_trial"] == "t04"
    imp = pd.read_csv(sampled_report / "param_importance.csv")
    assert sorted(imp["parameter"]) == ["extensions.cosine_sts", "model.dropout", "train.lr"]
    assert imp["dev_overall"].sum() == pytest.approx(1.0)
    assert (imp["dev_overall"] >= 0).all()
    md = (sampled_report / "report.md").read_text()
    assert "_Figure skipped: no trial recorded pcgrad_conflict_rate._" in md
    assert not (sampled_report / "figures" / "pcgrad_conflicts.png").exists()
    assert "This space was sampled" in md
    assert len(html_images(sampled_report / "report.html").srcs) == 3


def test_damaged_journal_and_empty_experiment(tmp_path: Path, fx: SimpleNamespace) -> None:
    exp = tmp_path / "exp"
    fx.build_sampled_exp(exp)
    with open(exp / "optuna.journal", "ab") as f:
        f.write(b'{"op_code": 5, "worker_id": "x", "trial_id"')  # killed mid-write
    out = build_report(exp)
    imp = pd.read_csv(out / "param_importance.csv")
    assert len(imp) == 3  # the complete lines are still read
    (exp / "optuna.journal").unlink()
    md = (build_report(exp) / "report.md").read_text()
    assert "Importances skipped: no optuna.journal" in md

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "experiment.json").write_text('{"name": "empty", "total_trials": 4}')
    out = build_report(empty)
    md = (out / "report.md").read_text()
    assert "0 trials (none)." in md and "holds no trial files" in md
    assert "No finished trial has a value of dev_overall" in md
    assert not (out / "best_config.yaml").exists()


def test_not_an_experiment_folder(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="not an experiment folder"):
        build_report(tmp_path)


def test_atomic_write_keeps_the_old_file_when_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "report.md"
    atomic_write(target, "old")

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
