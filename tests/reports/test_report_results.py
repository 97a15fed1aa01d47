"""Reading experiment folders: every trial a row, damaged files reported, never a crash."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from reports import ReportError, load_results
from reports.variants import variant_name


def test_every_trial_file_is_a_row_with_its_status(paper_exp: Path) -> None:
    res = load_results(paper_exp)
    status = dict(zip(res.trials["trial_id"], res.trials["status"], strict=True))
    assert status["pcgrad_s3"] == "failed"
    assert status["sequential_s4"] == "stopped"
    assert status["all_s2"] == "pending"
    assert status["broken"] == "corrupt"
    assert sum(s == "finished" for s in status.values()) == 12
    assert len(res.trials) == 16
    assert res.searched == ["variant", "train.seed"]
    assert res.experiment["study_name"] == "paper_ablation-study"
    assert any("broken.json is corrupt" in w for w in res.warnings)


def test_finished_trial_reads_its_summary(paper_exp: Path, fx: SimpleNamespace) -> None:
    res = load_results(paper_exp)
    row = res.trials.set_index("trial_id").loc["baseline_s2"]
    sst, para, sts = fx.DEV["baseline"][2]
    assert row["dev_sst_acc"] == sst and row["dev_para_acc"] == para and row["dev_sts_r"] == sts
    assert row["dev_overall"] == pytest.approx(fx.overall(sst, para, sts), abs=1e-12)
    assert row["test_sst_acc"] == pytest.approx(fx.held_out_scores((sst, para, sts))[0], abs=1e-12)
    assert row["train_time_s"] == 1429.0 and row["peak_mem_mb"] == 1002.0
    assert row["seed"] == 2 and row["config/train.lr"] == 1e-05
    assert bool(row["config/extensions.cosine_sts"]) is False
    assert row["n_evals"] == 3 and row["last_step"] == 30


def test_absolute_trial_dir_is_followed(paper_exp: Path, fx: SimpleNamespace) -> None:
    res = load_results(paper_exp)
    row = res.trials.set_index("trial_id").loc["cosine_s2"]
    assert Path(row["trial_dir"]).is_absolute()
    assert row["dev_sst_acc"] == fx.DEV["cosine"][2][0]


def test_truncated_last_metrics_line_is_ignored_and_counted(paper_exp: Path) -> None:
    res = load_results(paper_exp)
    row = res.trials.set_index("trial_id").loc["pcgrad_s3"]
    assert row["n_evals"] == 1 and row["bad_metric_lines"] == 1
    assert row["last_step"] == 10
    assert row["dev_sst_acc"] == 0.40  # its only complete evaluation
    assert math.isnan(row["test_overall"]) and math.isnan(row["train_time_s"])
    assert row["reason"] == "non-finite loss at step 13"
    assert "trial pcgrad_s3: metrics.jsonl ends in a truncated line, ignored" in res.warnings


def test_stopped_trial_gets_latest_dev_metrics_and_nan_elsewhere(
    paper_exp: Path, fx: SimpleNamespace
) -> None:
    res = load_results(paper_exp)
    row = res.trials.set_index("trial_id").loc["sequential_s4"]
    assert row["dev_sst_acc"] == 0.35 and row["dev_sts_r"] == 0.12
    assert row["dev_overall"] == pytest.approx(fx.overall(0.35, 0.62, 0.12))
    assert all(math.isnan(row[c]) for c in ("test_overall", "train_overall", "peak_mem_mb"))
    assert row["elapsed_s"] == 200.0  # the last evaluation's time_s
    assert not row["has_summary"]


def test_pending_and_corrupt_rows_have_no_metrics(paper_exp: Path) -> None:
    res = load_results(paper_exp)
    rows = res.trials.set_index("trial_id")
    for tid in ("all_s2", "broken"):
        assert rows.loc[tid, "n_evals"] == 0
        assert math.isnan(rows.loc[tid, "dev_overall"])
    assert "corrupt" in rows.loc["broken", "reason"]


def test_curves_are_one_row_per_evaluation(paper_exp: Path, fx: SimpleNamespace) -> None:
    res = load_results(paper_exp)
    assert len(res.curves) == 12 * 3 + 1 + 2
    base = res.curves[res.curves["trial_id"] == "baseline_s1"]
    assert base["step"].tolist() == [10.0, 20.0, 30.0]
    assert base["dev_sst_acc"].iloc[-1] == fx.DEV["baseline"][1][0]
    pc = res.curves[res.curves["variant"] == "pcgrad"]["pcgrad_conflict_rate"]
    assert pc.notna().all()
    assert res.curves[res.curves["variant"] == "baseline"]["pcgrad_conflict_rate"].isna().all()


def test_finished_without_summary_and_failed_summary(tmp_path: Path, fx: SimpleNamespace) -> None:
    exp = tmp_path / "exp"
    exp.mkdir()
    fx.write_trial(exp, "a", "baseline", 1, "finished", dev_curve=[(5, (0.5, 0.7, 0.3))])
    fx.write_trial(exp, "b", "pcgrad", 1, "failed", dev_curve=[(5, (0.4, 0.6, 0.2))])
    (exp / "runs" / "b" / "summary.json").write_text(
        json.dumps({"status": "failed", "reason": "non-finite loss at step 7"})
    )
    res = load_results(exp)
    rows = res.trials.set_index("trial_id")
    assert rows.loc["a", "dev_sst_acc"] == 0.5 and math.isnan(rows.loc["a", "test_sst_acc"])
    assert any("a is finished but has no summary.json" in w for w in res.warnings)
    # the failed run's summary has no scores: its last evaluation stands in for dev
    assert rows.loc["b", "dev_sst_acc"] == 0.4 and not rows.loc["b", "has_summary"]
    assert any("experiment.json is missing" in w for w in res.warnings)


def test_missing_variant_is_derived_and_missing_overall_computed(
    tmp_path: Path, fx: SimpleNamespace
) -> None:
    exp = tmp_path / "exp"
    (exp / "trials").mkdir(parents=True)
    (exp / "experiment.json").write_text(json.dumps({"toggles": fx.TOGGLE_RECORDS}))
    (exp / "trials" / "x.json").write_text(json.dumps({
        "trial_id": "x", "status": "running", "trial_dir": "runs/x", "variant": None,
        "config": {"extensions.cosine_sts": True, "extensions.pcgrad": True,
                   "extensions.sequential_sts": False, "train.seed": 3},
        "searched": [],
    }))  # fmt: skip
    (exp / "runs" / "x").mkdir(parents=True)
    (exp / "runs" / "x" / "metrics.jsonl").write_text(
        json.dumps({"step": 4, "dev_sst_acc": 0.5, "dev_para_acc": 0.7, "dev_sts_r": 0.2}) + "\n"
    )
    res = load_results(exp)
    row = res.trials.iloc[0]
    assert row["variant"] == "cosine+pcgrad"
    assert row["dev_overall"] == pytest.approx(fx.overall(0.5, 0.7, 0.2))
    assert any("dev_overall missing, computed" in w for w in res.warnings)


def test_variant_names_from_the_recorded_toggles(fx: SimpleNamespace) -> None:
    off = {"extensions.cosine_sts": False, "extensions.pcgrad": False,
           "extensions.sequential_sts": False}  # fmt: skip
    assert variant_name(off, fx.TOGGLES) == "baseline"
    assert variant_name({**off, "extensions.sequential_sts": True}, fx.TOGGLES) == "sequential"
    assert variant_name({k: True for k in off}, fx.TOGGLES) == "all"


def test_not_an_experiment_folder_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ReportError) as err:
        load_results(tmp_path / "nope")
    assert "does not exist" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ReportError, match="not an experiment folder"):
        load_results(tmp_path)


def test_seed_column_is_numeric(paper_exp: Path) -> None:
    res = load_results(paper_exp)
    finished = res.finished
    assert np.issubdtype(finished["seed"].dtype, np.number)
    assert sorted(finished.loc[finished["variant"] == "baseline", "seed"]) == [1, 2, 3]
