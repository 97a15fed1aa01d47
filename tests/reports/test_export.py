"""`hpsearch export`: an experiment's checkable results copied to a new folder, nothing else.

.venv/bin/python -m pytest tests/reports/test_export.py -q
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from reports.errors import ReportError
from reports.export import GZIP_OVER, TRIAL_FILES, export_results

REPO = Path(__file__).resolve().parents[2]


def _dress(trial_dir: Path, big: bool = False) -> None:
    """What a real run folder also holds: predictions, checkpoints, TensorBoard events."""
    (trial_dir / "config.json").write_text(json.dumps({"train": {"lr": 1e-5}}))
    (trial_dir / "data_report.json").write_text(json.dumps({"dropped": {}}))
    pred = trial_dir / "predictions"
    pred.mkdir(exist_ok=True)
    (pred / "sst-dev-output.csv").write_text("id,Predicted_Sentiment\nab12,3\n")
    rows = "".join(f"q{i:07d},1\n" for i in range(GZIP_OVER // 10 + 1)) if big else "q1,0\n"
    (pred / "para-dev-output.csv").write_text("id,Predicted_Is_Paraphrase\n" + rows)
    (trial_dir / "checkpoints" / "step_00000010").mkdir(parents=True, exist_ok=True)
    (trial_dir / "checkpoints" / "step_00000010" / "model.pt").write_bytes(b"x" * 1000)
    (trial_dir / "tb").mkdir(exist_ok=True)
    (trial_dir / "tb" / "events.out.tfevents.1").write_bytes(b"e")


def test_an_experiment_exports_its_report_results_and_finished_trials_files(
    tmp_path, paper_exp, paper_report
):
    import shutil

    exp = tmp_path / "exp"
    shutil.copytree(paper_exp, exp)
    finished = [
        json.loads(p.read_text())
        for p in sorted((exp / "trials").glob("*.json"))
        if p.name != "broken.json" and json.loads(p.read_text())["status"] == "finished"
    ]
    for k, rec in enumerate(finished):
        _dress(exp / rec["trial_dir"], big=k == 0)
    dest = tmp_path / "out"
    written = export_results(exp, dest)

    assert all(p.is_relative_to(dest) for p in written) and written
    table = pd.read_csv(dest / "results.csv")
    assert len(table) == len(list((exp / "trials").glob("*.json")))
    assert {"trial_id", "status", "variant", "seed", "dev_overall", "test_overall"} <= set(table)
    assert "trial_dir" not in table  # paths on the machine that ran it mean nothing elsewhere
    assert (dest / "report" / "report.md").read_text() == (
        exp / "report" / "report.md"
    ).read_text()
    copied = sorted(p.name for p in (dest / "trials").iterdir())
    assert copied == sorted(r["trial_id"] for r in finished)
    first = dest / "trials" / finished[0]["trial_id"]
    for name in ("summary.json", "metrics.jsonl", "config.json", "data_report.json"):
        src = exp / finished[0]["trial_dir"] / name
        assert (first / name).read_bytes() == src.read_bytes()
    big = exp / finished[0]["trial_dir"] / "predictions" / "para-dev-output.csv"
    with gzip.open(first / "predictions" / "para-dev-output.csv.gz", "rb") as f:
        assert f.read() == big.read_bytes()  # over GZIP_OVER: stored gzipped, byte for byte
    assert (first / "predictions" / "sst-dev-output.csv").is_file()
    names = {p.name for p in dest.rglob("*")}
    assert "model.pt" not in names and not any(n.startswith("events.out") for n in names)
    assert not list(tmp_path.glob(".out.export-*"))  # no staging folder left
    assert set(TRIAL_FILES) >= {p.name for p in first.iterdir() if p.is_file()}


def test_an_export_never_overwrites_and_a_bad_source_is_refused(tmp_path, paper_exp):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(ReportError, match="exists and is not empty"):
        export_results(paper_exp, dest)
    assert (dest / "keep.txt").read_text() == "mine" and len(list(dest.iterdir())) == 1
    with pytest.raises(ReportError, match="neither an experiment folder"):
        export_results(tmp_path / "out", tmp_path / "other")
    with pytest.raises(ReportError, match="inside"):
        export_results(paper_exp, paper_exp / "copy")
    assert not (tmp_path / "other").exists()


def test_a_run_folder_exports_as_one_trial_and_the_command_says_what_it_wrote(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"status": "finished", "dev_overall": 0.7}))
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    _dress(run)
    dest = tmp_path / "docs" / "all_extensions"
    proc = subprocess.run(
        [sys.executable, "-m", "hpsearch.cli", "export", str(run), str(dest)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"exported to {dest}" in proc.stdout
    assert sorted(p.name for p in dest.iterdir()) == [
        "config.json", "data_report.json", "metrics.jsonl", "predictions", "summary.json",
    ]  # fmt: skip
    again = subprocess.run(
        [sys.executable, "-m", "hpsearch.cli", "export", str(run), str(dest)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1, again.stderr
    assert "not empty" in again.stderr


def test_a_tuned_ablation_exports_its_tuning_phases_reports_and_its_final_trials(
    tmp_path, paper_exp, paper_report
):
    import shutil

    plan = tmp_path / "plan"
    (plan / "report").mkdir(parents=True)
    (plan / "ablation.json").write_text(json.dumps({"variants": ["baseline"]}))
    (plan / "report" / "report.md").write_text("# the plan's report\n")
    for phase in ("tune-baseline", "final"):  # each phase is an ordinary experiment
        shutil.copytree(paper_exp, plan / "phases" / phase)
    for path in sorted((plan / "phases" / "final" / "trials").glob("*.json")):
        rec = json.loads(path.read_text()) if path.name != "broken.json" else {}
        if rec.get("status") == "finished":
            _dress(plan / "phases" / "final" / rec["trial_dir"])
    out = tmp_path / "out"
    export_results(plan, out)
    assert (out / "report" / "report.md").read_text() == "# the plan's report\n"
    tune, final = out / "phases" / "tune-baseline", out / "phases" / "final"
    # the tuning phase's own report (its search: toggle effects, importance) comes along...
    report_md = (paper_exp / "report" / "report.md").read_text()
    assert (tune / "report" / "report.md").read_text() == report_md
    assert not (tune / "trials").exists()  # ...its trials' files do not, by default
    assert not (final / "report").exists()  # the final phase is in the plan's report
    finished = pd.read_csv(final / "results.csv").query("status == 'finished'")
    assert sorted(p.name for p in (final / "trials").iterdir()) == sorted(
        finished["trial_id"].astype(str)
    )
    for phase in (tune, final):
        assert (phase / "results.csv").is_file()


def test_an_export_carries_the_study_so_it_reopens_and_can_warm_start(tmp_path, sampled_exp):
    """The copy's optuna.journal is the experiment's study: the same trials, states, values
    and intermediate values when re-opened with optuna."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    out = tmp_path / "out"
    export_results(sampled_exp, out)
    assert (out / "optuna.journal").read_bytes() == (sampled_exp / "optuna.journal").read_bytes()

    def trials(folder: Path) -> list[tuple]:
        storage = JournalStorage(JournalFileBackend(str(folder / "optuna.journal")))
        study = optuna.load_study(study_name="tpe_demo", storage=storage)
        return [
            (t.number, t.state, t.params, t.values, t.intermediate_values) for t in study.trials
        ]

    copied = trials(out)
    assert copied == trials(sampled_exp) and len(copied) == 9  # the fixture's 9 trials
    assert {state for _, state, *_ in copied} >= {optuna.trial.TrialState.PRUNED}
