"""The report ranks finished trials only: importances from the study's COMPLETE trials, "best"
rows from finished records, and both say how many trials were stopped early (pruned).

A hand-built experiment written the way a sweep writes it: 10 trials trained to their end,
whose final dev_overall depends on the learning rate, and 10 trials ASHA stopped early, whose
partial scores (higher than any final one, and set by the dropout) are PRUNED in the Optuna
study with their intermediate values. Ranking the pruned scores would make the dropout the
parameter that matters and a stopped trial the best one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from reports import build_report
from reports.importance import load_study, param_importances

SEARCHED = ["train.lr", "model.dropout"]
DISTRIBUTIONS = {
    "train.lr": FloatDistribution(1e-6, 1e-3, log=True),
    "model.dropout": FloatDistribution(0.0, 0.5),
}


def _dev(score: float) -> tuple[float, float, float]:
    """(sst, para, sts) whose overall score (sst + para + (sts + 1) / 2) / 3 is `score`."""
    return (score, score, 2 * score - 1)


def _points() -> list[tuple[str, str, float, float, list[float]]]:
    """(trial_id, status, lr, dropout, dev_overall at each evaluation)."""
    points = []
    for i in range(10):
        lr, dropout = 10 ** (-6 + 3 * i / 9), (i * 7 % 10) / 20
        final = 0.70 - 0.04 * abs(math.log10(lr) + 4.5) - 0.002 * dropout
        points.append((f"f{i:02d}", "finished", lr, dropout, [final - 0.04, final - 0.02, final]))
        lr, dropout = 10 ** (-6 + 3 * ((i * 3) % 10) / 9), i / 20
        partial = 0.75 + 0.3 * dropout  # higher than every final score
        points.append((f"p{i:02d}", "stopped", lr, dropout, [partial - 0.01, partial]))
    return points


def _build(exp: Path, fx: SimpleNamespace) -> None:
    exp.mkdir(parents=True)
    (exp / "experiment.json").write_text(
        json.dumps(
            {
                "name": "pruned",
                "study_name": "pruned",
                "metric": "dev_overall",
                "mode": "max",
                "objectives": [{"metric": "dev_overall", "mode": "max"}],
                "total_trials": 20,
                "toggles": fx.TOGGLE_RECORDS,
            }
        )
    )
    (exp / "search_space.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "pruned",
                "search": {"sampler": "tpe", "num_samples": 20, "scheduler": "asha"},
                "parameters": {
                    "train.lr": {"type": "float", "low": 1e-6, "high": 1e-3, "log": True},
                    "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
                },
            }
        )
    )
    study = optuna.create_study(
        study_name="pruned",
        storage=JournalStorage(JournalFileBackend(str(exp / "optuna.journal"))),
        direction="maximize",
    )
    for tid, status, lr, dropout, curve in _points():
        fx.write_trial(
            exp,
            tid,
            "baseline",
            11711,
            status,
            dev_curve=[(10 * (k + 1), _dev(v)) for k, v in enumerate(curve)],
            summary_dev=_dev(curve[-1]) if status == "finished" else None,
            config=fx.config_for("baseline", 11711, **{"train.lr": lr, "model.dropout": dropout}),
            searched=SEARCHED,
            reason=f"stopped early by ASHA after {len(curve)} evaluations"
            if status == "stopped"
            else None,
        )
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE if status == "finished" else TrialState.PRUNED,
                value=curve[-1],  # a pruned trial's value is its last intermediate one
                params={"train.lr": lr, "model.dropout": dropout},
                distributions=DISTRIBUTIONS,
                intermediate_values=dict(enumerate(curve, start=1)),
                user_attrs={"ray_trial_id": tid},
            )
        )


@pytest.fixture(scope="module")
def pruned_exp(tmp_path_factory: pytest.TempPathFactory, fx: SimpleNamespace) -> Path:
    exp = tmp_path_factory.mktemp("pruned") / "pruned"
    _build(exp, fx)
    return exp


def test_importances_rank_finished_trials_only(pruned_exp: Path) -> None:
    study, note = load_study(pruned_exp, {"study_name": "pruned"})
    assert note == "" and study is not None
    frame, _ = param_importances(study, ["dev_overall"])
    assert frame.index[0] == "train.lr" and frame.loc["train.lr", "dev_overall"] > 0.5
    # the same trials, the pruned ones taken for finished: the dropout would lead instead
    as_complete = optuna.create_study(direction="maximize")
    for trial in study.get_trials(deepcopy=True):
        as_complete.add_trial(
            optuna.trial.create_trial(state=TrialState.COMPLETE, value=trial.value,
                                      params=trial.params, distributions=trial.distributions)
        )  # fmt: skip
    wrong, _ = param_importances(as_complete, ["dev_overall"])
    assert wrong.index[0] == "model.dropout"


def test_the_report_says_how_many_trials_were_pruned(pruned_exp: Path) -> None:
    out = build_report(pruned_exp, n_resamples=500)  # the effects tables are not under test
    md = (out / "report.md").read_text()
    imp = pd.read_csv(out / "param_importance.csv").set_index("parameter")
    assert imp["dev_overall"].idxmax() == "train.lr"
    assert (
        "over the 10 completed trials of the Optuna study (left out: 10 pruned trials, stopped "
        "early with partial scores)" in md
    )
    # the best rows: a finished trial, never a stopped one with its higher partial score
    best = pd.read_csv(out / "best_per_variant.csv").set_index("variant")
    assert best.loc["baseline", "best_trial"].startswith("f")
    assert best.loc["baseline", "n"] == 10 and best.loc["baseline", "n_stopped"] == 10
    finals = {tid: curve[-1] for tid, status, _, _, curve in _points() if status == "finished"}
    top = max(finals, key=finals.__getitem__)
    assert best.loc["baseline", "best_trial"] == top
    assert best.loc["baseline", "dev_overall"] == pytest.approx(finals[top])
    ranked = "of the finished trials; 10 trials stopped early (pruned, partial scores) not ranked"
    assert f"Best dev_overall: {finals[top]:.3f} (trial {top}, variant baseline), {ranked}." in md
    assert f"Trial {top} (variant baseline) has the best dev_overall (max): " in md
    assert f"{finals[top]:.3f}, {ranked}. Its config" in md
    assert f"Best trial of experiment pruned: {top} " in (out / "best_config.yaml").read_text()
