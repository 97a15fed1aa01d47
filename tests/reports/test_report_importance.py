"""fANOVA importances from real Optuna studies, and the notes when there is nothing to rank."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
from optuna.distributions import FloatDistribution

from reports.importance import param_importances


def _study(n: int, params: tuple[str, ...], directions: list[str]) -> optuna.Study:
    study = optuna.create_study(directions=directions)
    for i in range(n):
        values = {p: (i * (k + 3) % 7) / 7 for k, p in enumerate(params)}
        score = 3 * values[params[0]] + (0.1 * values[params[-1]] if len(params) > 1 else 0)
        objs = [score, -score + values[params[-1]]][: len(directions)]
        study.add_trial(optuna.trial.create_trial(
            params=values, distributions={p: FloatDistribution(0, 1) for p in params},
            values=objs))  # fmt: skip
    return study


def test_importances_rank_the_parameter_that_matters() -> None:
    frame, note = param_importances(_study(12, ("train.lr", "model.dropout"), ["maximize"]),
                                    ["dev_overall"])  # fmt: skip
    assert note == ""
    assert list(frame.index) == ["train.lr", "model.dropout"]
    assert frame["dev_overall"].sum() == pytest.approx(1.0)
    assert frame.loc["train.lr", "dev_overall"] > 0.5


def test_multi_objective_gets_one_column_per_objective() -> None:
    study = _study(12, ("train.lr", "model.dropout"), ["maximize", "minimize"])
    frame, _ = param_importances(study, ["dev_sts_r", "train_time_s"])
    assert list(frame.columns) == ["dev_sts_r", "train_time_s"]
    assert frame.sum().tolist() == pytest.approx([1.0, 1.0])


def test_nothing_to_rank_is_a_note() -> None:
    frame, note = param_importances(_study(1, ("a", "b"), ["maximize"]))
    assert frame.empty and "only 1 completed trial" in note
    frame, note = param_importances(_study(6, ("grid_point",), ["maximize"]))
    assert frame.empty and "a single searched parameter (grid_point)" in note


def test_reports_import_neither_hpsearch_nor_trainables_beyond_its_utilities() -> None:
    # the one atomic writer and the error types are stdlib-only; nothing else of trainables
    allowed = ("trainables", "trainables.atomic", "trainables.errors")
    code = ("import sys, reports, reports.render, reports.importance; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('trainables', 'hpsearch') "
            f"and m not in {allowed!r}); "
            "print(bad); sys.exit(1 if bad else 0)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
