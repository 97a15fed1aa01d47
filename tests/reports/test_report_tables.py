"""Report tables as pure functions: exact numbers on hand-built frames and the fixture sweep."""

from __future__ import annotations

import statistics
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from reports import load_results
from reports.best_config import best_config, best_config_yaml, nest
from reports.effects import EFFECT_METRICS, toggle_effects, variant_effects
from reports.score_tables import config_table, metric_table
from reports.search_tables import (
    best_per_variant,
    continuous_keys,
    is_sampled,
    log_scaled,
    objectives,
    pareto_table,
)
from reports.stats import SINGLE_RUN
from reports.sweep_tables import budget_table, status_table
from reports.table import format_hms
from reports.variants import order_variants, variant_labels

CONTAINS_0 = "interval contains 0 - not distinguishable from baseline"


def frame(rows: list[dict]) -> pd.DataFrame:
    """A trials table with just the columns a test needs (others NaN)."""
    cols = ["trial_id", "status", "variant", "seed", "reason", "n_evals", "last_step",
            "last_epoch", "elapsed_s", "train_time_s", "peak_mem_mb",
            *(f"{s}_{m}" for s in ("dev", "train", "test")
              for m in ("sst_acc", "para_acc", "sts_r", "overall"))]  # fmt: skip
    df = pd.DataFrame(rows)
    for c in cols:
        if c not in df:
            df[c] = np.nan
    return df


def test_metric_table_mean_std_n_and_reference_order(fx: SimpleNamespace) -> None:
    rows = []
    for v, vals in {"extra": [0.7], "all": [0.9], "baseline": [0.50, 0.52, 0.54],
                    "pcgrad": [0.6, 0.64]}.items():  # fmt: skip
        for i, x in enumerate(vals):
            rows.append({"trial_id": f"{v}{i}", "status": "finished", "variant": v, "seed": i,
                         "dev_sst_acc": x, "dev_overall": 0.1 * i})  # fmt: skip
    rows.append({"trial_id": "s", "status": "stopped", "variant": "baseline", "seed": 9,
                 "dev_sst_acc": 0.0})  # fmt: skip
    rows.append({"trial_id": "f", "status": "failed", "variant": "cosine", "seed": 1})
    t = metric_table(frame(rows), "dev", toggles=fx.TOGGLES)
    assert list(t.display.columns) == ["Baseline", "Gradient Surgery", "All Extensions", "extra"]
    assert list(t.display.index) == ["Sentiment Accuracy", "Paraphrase Accuracy",
                                     "Similarity Correlation", "Overall"]  # fmt: skip
    assert t.display.loc["Sentiment Accuracy", "Baseline"] == "0.520 ± 0.020 (n=3)"
    assert t.display.loc["Sentiment Accuracy", "All Extensions"] == "0.900 (n=1)"
    assert t.display.loc["Paraphrase Accuracy", "Baseline"] == "–"
    # "Overall" is the mean of the recorded per-trial values, even when they are not the
    # formula of the averaged parts
    assert t.display.loc["Overall", "Baseline"] == "0.100 ± 0.100 (n=3)"
    exact = t.data.set_index(["metric", "variant"])
    assert exact.loc[("dev_sst_acc", "baseline"), "std"] == pytest.approx(
        statistics.stdev([0.50, 0.52, 0.54]), abs=1e-15
    )
    assert exact.loc[("dev_sst_acc", "pcgrad"), "n"] == 2
    assert any("excluded: 1 stopped early, 1 failed" in n for n in t.notes)
    assert any("ddof=1" in n for n in t.notes)
    assert any("not the overall of the averaged metrics" in n for n in t.notes)
    assert any("cosine" in n for n in t.notes)  # no finished trial, so no column


def test_dev_and_test_tables_of_the_fixture_sweep(paper_exp: Path, fx: SimpleNamespace) -> None:
    res = load_results(paper_exp)
    trials = res.trials
    dev = metric_table(trials, "dev", toggles=res.toggles)
    data = dev.data.set_index(["metric", "variant"])
    for variant, runs in fx.DEV.items():
        for k, metric in enumerate(("dev_sst_acc", "dev_para_acc", "dev_sts_r")):
            values = [runs[s][k] for s in sorted(runs)]
            assert data.loc[(metric, variant), "n"] == len(values)
            assert data.loc[(metric, variant), "mean"] == pytest.approx(np.mean(values),
                                                                        abs=1e-15)  # fmt: skip
            if len(values) > 1:
                assert data.loc[(metric, variant), "std"] == pytest.approx(
                    statistics.stdev(values), abs=1e-15)  # fmt: skip
        overalls = [fx.overall(*runs[s]) for s in sorted(runs)]
        assert data.loc[("dev_overall", variant), "mean"] == pytest.approx(np.mean(overalls))
    assert dev.display.loc["Similarity Correlation", "Cosine"] == "0.420 ± 0.010 (n=3)"
    assert dev.display.loc["Sentiment Accuracy", "Gradient Surgery"] == "0.540 ± 0.014 (n=2)"
    assert (
        dev.display.loc["Overall", "All Extensions"]
        == f"{fx.overall(*fx.DEV['all'][1]):.3f} (n=1)"
    )
    assert list(dev.display.columns) == ["Baseline", "Cosine", "Gradient Surgery",
                                         "Sequential Learning", "All Extensions"]  # fmt: skip
    assert "1 stopped early, 1 failed, 1 never started, 1 with a corrupt" in dev.notes[2]
    test = metric_table(trials, "test", toggles=res.toggles)
    assert test.name == "table3_test"
    assert test.display.loc["Sentiment Accuracy", "Baseline"] == "0.510 ± 0.020 (n=3)"


def test_config_table(paper_exp: Path) -> None:
    res = load_results(paper_exp)
    t = config_table(res.trials, toggles=res.toggles)
    row = t.display.loc["Baseline"]
    assert row["Train time"] == "0:23:49"  # mean of 1428, 1429, 1430 s
    assert row["Train time (s)"] == "1429.0 ± 1.0"
    assert row["Dropout rate"] == "0.3" and row["Learning rate"] == "1.00e-05"
    assert row["Weight decay"] == "1.00e-04" and row["# epochs"] == "1"
    assert t.display.loc["All Extensions", "Extensions"].startswith("cosine_sts, pcgrad, seq")
    data = t.data.set_index("variant")
    assert data.loc["pcgrad", "train_time_s_mean"] == 2701.5
    assert data.loc["baseline", "train.lr"] == 1e-05


def test_config_table_shows_ranges_of_varying_settings(fx: SimpleNamespace) -> None:
    df = frame([
        {"trial_id": "a", "status": "finished", "variant": "baseline", "train_time_s": 10.0,
         "config/train.lr": 1e-5, "config/model.dropout": 0.1},
        {"trial_id": "b", "status": "finished", "variant": "baseline", "train_time_s": 20.0,
         "config/train.lr": 3e-5, "config/model.dropout": 0.1},
    ])  # fmt: skip
    t = config_table(df, toggles=fx.TOGGLES)
    assert t.display.loc["Baseline", "Learning rate"] == "1.00e-05–3.00e-05 (varies)"
    assert t.display.loc["Baseline", "Dropout rate"] == "0.1"
    assert t.display.loc["Baseline", "Train time"] == "0:00:15"


def test_variant_effects_paired_unpaired_single_and_contains_zero(paper_exp: Path) -> None:
    res = load_results(paper_exp)
    trials = res.trials
    t = variant_effects(trials, toggles=res.toggles, n_resamples=10_000, seed=0)
    d = t.data.set_index(["comparison", "metric"])
    cos = d.loc[("Cosine − Baseline", "dev_sts_r")]
    assert cos["paired"] and cos["n_a"] == 3 and cos["n_b"] == 3
    assert cos["diff"] == pytest.approx(0.10)
    assert cos["ci_low"] <= 0.10 <= cos["ci_high"] and cos["ci_low"] > 0
    assert cos["ci_low"] == pytest.approx(0.09, abs=1e-9)
    assert cos["ci_high"] == pytest.approx(0.11, abs=1e-9)
    seq = d.loc[("Sequential Learning − Baseline", "dev_sst_acc")]
    assert seq["contains_zero"] and seq["verdict"] == CONTAINS_0
    assert seq["diff"] == pytest.approx(0.02 / 3)
    pc = d.loc[("Gradient Surgery − Baseline", "dev_overall")]
    assert not pc["paired"] and pc["n_a"] == 2  # seeds {1, 2} against {1, 2, 3}
    one = d.loc[("All Extensions − Baseline", "test_overall")]
    assert one["verdict"] == SINGLE_RUN and np.isnan(one["ci_low"])
    # the same seed gives the same table
    again = variant_effects(trials, toggles=res.toggles, n_resamples=10_000, seed=0).data
    pd.testing.assert_frame_equal(t.data, again)
    assert set(t.data["metric"]) == set(EFFECT_METRICS)
    shown = t.display.set_index(["Comparison", "Metric"])
    assert shown.loc[("Cosine − Baseline", "dev_sts_r"), "Difference"] == "+0.100"
    assert shown.loc[("All Extensions − Baseline", "dev_overall"), "95% CI"] == "–"


def test_toggle_effects_recognise_a_full_factorial(fx: SimpleNamespace) -> None:
    rows = []
    for cos in (False, True):
        for pc in (False, True):
            for seed in (1, 2):
                rows.append({"trial_id": f"{cos}{pc}{seed}", "status": "finished",
                             "variant": "x", "seed": seed,
                             "config/extensions.cosine_sts": cos,
                             "config/extensions.pcgrad": pc,
                             "dev_overall": 0.5 + 0.1 * cos + 0.01 * seed})  # fmt: skip
    t = toggle_effects(frame(rows), toggles=fx.TOGGLES, metrics=["dev_overall"], n_resamples=2000)
    d = t.data.set_index("comparison")
    assert d.loc["cosine_sts: on − off", "diff"] == pytest.approx(0.1)
    assert d.loc["pcgrad: on − off", "diff"] == pytest.approx(0.0, abs=1e-12)
    assert d.loc["pcgrad: on − off", "contains_zero"]
    assert "full factorial" in t.notes[0] and "main effect" in t.notes[0]
    partial = toggle_effects(
        frame(rows[:-2]), toggles=fx.TOGGLES, metrics=["dev_overall"], n_resamples=100
    )
    assert "Not a full factorial" in partial.notes[0]


def test_status_table(paper_exp: Path) -> None:
    res = load_results(paper_exp)
    t = status_table(res.trials, toggles=res.toggles)
    assert list(t.display.index[-4:]) == ["sequential_s4", "pcgrad_s3", "all_s2", "broken"]
    detail = t.data.set_index("trial_id")["detail"]
    assert detail["sequential_s4"] == (
        "stopped early at step 20 after 2 evaluation(s): stopped early by ASHA after 2 evaluations"
    )
    assert detail["pcgrad_s3"] == (
        "failed at step 10 after 1 evaluation(s): non-finite loss at step 13"
    )
    assert detail["all_s2"] == "never started"
    assert detail["baseline_s1"] == "finished at step 30 after 3 evaluation(s)"
    assert t.display.loc["sequential_s4", "Seed"] == "4"
    assert t.notes[0] == "16 trials: 12 finished, 1 stopped, 1 failed, 1 pending, 1 corrupt."


def test_budget_table(paper_exp: Path) -> None:
    res = load_results(paper_exp)
    t = budget_table(res.trials, res.experiment, res.warnings, sampled=False)
    values = dict(zip(t.data["item"], t.data["value"], strict=True))
    assert values["Trials planned"] == 15 and values["Trials found"] == 16
    assert values["finished"] == 12 and values["failed"] == 1
    assert values["Total train time (s)"] == pytest.approx(res.trials["elapsed_s"].sum())
    assert any("truncated" in n for n in t.notes)


def test_sampled_space_best_per_variant(sampled_exp: Path, fx: SimpleNamespace) -> None:
    res = load_results(sampled_exp)
    assert is_sampled(res.trials, res.searched, res.search_space)
    assert continuous_keys(res.trials, res.searched, res.search_space) == [
        "train.lr", "model.dropout"]  # fmt: skip
    assert log_scaled("train.lr", res.trials, res.search_space)
    assert not log_scaled("model.dropout", res.trials, res.search_space)
    t = best_per_variant(res.trials, fx.SAMPLED_SEARCHED, toggles=res.toggles)
    data = t.data.set_index("variant")
    finished = {v: [fx.overall(*d) for _, _, _, c, s, d in fx.SAMPLED if s == "finished"
                    and ("cosine" if c else "baseline") == v] for v in ("baseline", "cosine")}  # fmt: skip
    for v, values in finished.items():
        q25, med, q75 = np.quantile(values, [0.25, 0.5, 0.75])
        assert data.loc[v, "n"] == len(values)
        assert data.loc[v, "median"] == pytest.approx(med)
        assert data.loc[v, "iqr"] == pytest.approx(q75 - q25)
        assert data.loc[v, "dev_overall"] == pytest.approx(max(values))
        assert data.loc[v, "n_stopped"] == 1
    assert data.loc["cosine", "best_trial"] == "t04" and data.loc["cosine", "train.lr"] == 2e-5


def test_grid_is_not_sampled(paper_exp: Path) -> None:
    res = load_results(paper_exp)
    assert not is_sampled(res.trials, res.searched, res.search_space)


def test_pareto_front() -> None:
    df = frame([
        {"trial_id": "a", "status": "finished", "variant": "v", "dev_overall": 0.6,
         "train_time_s": 100.0},
        {"trial_id": "b", "status": "finished", "variant": "v", "dev_overall": 0.7,
         "train_time_s": 300.0},
        {"trial_id": "c", "status": "finished", "variant": "v", "dev_overall": 0.55,
         "train_time_s": 200.0},
    ])  # fmt: skip
    t = pareto_table(df, [("dev_overall", "max"), ("train_time_s", "min")])
    assert sorted(t.data["trial_id"]) == ["a", "b"]


def test_objectives_from_experiment_json() -> None:
    assert objectives({}) == [("dev_overall", "max")]
    assert objectives({"metric": "dev_sts_r", "mode": "max"}) == [("dev_sts_r", "max")]
    exp = {"objectives": [{"metric": "dev_sts_r", "mode": "max"},
                          {"metric": "train_time_s", "mode": "min"}]}  # fmt: skip
    assert objectives(exp) == [("dev_sts_r", "max"), ("train_time_s", "min")]


def test_best_config_round_trips_into_a_trial_config(paper_exp: Path, tmp_path: Path) -> None:
    res = load_results(paper_exp)
    best = best_config(res.trials, res.configs)
    assert best is not None
    row, config = best
    assert row["trial_id"] == "all_s1"
    text = best_config_yaml(row, config, "dev_overall", "max", "out/best_config.yaml", "x")
    assert "# Re-run: hpsearch train out/best_config.yaml" in text
    loaded = yaml.safe_load(text)
    assert loaded == config
    assert loaded["train"]["lr"] == 1e-05 and loaded["train"]["deepspeed"]["zero_stage"] == 0
    assert loaded["extensions"] == {"cosine_sts": True, "pcgrad": True, "sequential_sts": True,
                                    "task_sampling": "cycle"}  # fmt: skip
    # the form `hpsearch train` reads: the trial config loader accepts it unchanged
    from trainables.minbert.config import load_trial_config

    path = tmp_path / "best_config.yaml"
    path.write_text(text)
    assert load_trial_config(path).to_flat_dict().items() >= res.configs["all_s1"].items()


def test_helpers(fx: SimpleNamespace) -> None:
    assert format_hms(3725.4) == "1:02:05" and format_hms(float("nan")) == "–"
    assert order_variants(
        ["zeta", "all", "pcgrad", "baseline", "cosine+pcgrad"], fx.TOGGLES
    ) == [
        "baseline", "pcgrad", "all", "cosine+pcgrad", "zeta"]  # fmt: skip
    assert variant_labels(["cosine", "cosine_sts"], fx.TOGGLES) == {
        "cosine": "Cosine (cosine)",
        "cosine_sts": "Cosine (cosine_sts)",
    }
    assert nest({"a.b.c": 1, "a.d": 2}) == {"a": {"b": {"c": 1}, "d": 2}}
