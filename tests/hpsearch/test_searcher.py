"""The sweep's searcher on real Optuna studies, driven the way Ray Tune 2.60's TuneController
drives it (hpsearch.searcher; the real sweeps are in test_study_states.py).

TuneController hands a searcher each result through `on_trial_result`, except the one on which
the scheduler (or a stopper, or the end of the trial's function) stops the trial: that one goes
to `on_trial_complete(result=...)` only. A failed trial gets `on_trial_complete(error=True)`.
The calls below follow that order; the searcher, the sampler and the study are the real ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hpsearch.experiment import journal_storage
from hpsearch.searcher import (
    RAY_TRIAL_ID,
    FailureAwareOptunaSearch,
    search_algorithm,
    trial_ending,
)
from hpsearch.space_parser import load_search_space
from hpsearch.space_search import serial_startup_trials, tpe_startup_trials
from hpsearch.worker import failed_result

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "search_spaces" / "smoke.yaml"
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _searcher(storage: Any = None, time_limit: float | None = None) -> Any:
    space = load_search_space(SMOKE, overrides={"search.num_samples": 8})
    return search_algorithm(
        space,
        storage=storage,
        study_name="states",
        time_limit=time_limit,
        max_concurrent=None,
        concurrency=1,
    )


def _result(iteration: int, dev: float, **extra: Any) -> dict[str, Any]:
    """A flattened Tune result as the searcher gets it."""
    return {"training_iteration": iteration, "dev_overall": dev, "time_total_s": 1.0 * iteration,
            "step": 4 * iteration, **extra}  # fmt: skip


def _by_ray_id(study: optuna.Study) -> dict[str, optuna.trial.FrozenTrial]:
    return {t.user_attrs[RAY_TRIAL_ID]: t for t in study.get_trials(deepcopy=False)}


def test_each_trial_ends_in_the_state_it_really_has(tmp_path: Path) -> None:
    searcher = _searcher(journal_storage(tmp_path / "optuna.journal"), time_limit=30.0)
    for trial_id in "abcdefg":
        assert isinstance(searcher.suggest(trial_id), dict)
    # a: three evaluations, the third the final one (Tune stops it on its "done")
    searcher.on_trial_result("a", _result(1, 0.30))
    searcher.on_trial_result("a", _result(2, 0.40))
    searcher.on_trial_result("a", _result(3, 0.50, final=True))
    searcher.on_trial_complete("a", result=_result(3, 0.50, final=True))
    # b: ASHA stops it on its second evaluation (that result never reaches on_trial_result)
    searcher.on_trial_result("b", _result(1, 0.35))
    searcher.on_trial_complete("b", result=_result(2, 0.20))
    # c: stopped on its very first evaluation
    searcher.on_trial_complete("c", result=_result(1, 0.10))
    # d: a NaN loss (the trial reports hpsearch.worker.failed_result and ends)
    searcher.on_trial_result("d", _result(1, 0.25))
    searcher.on_trial_result("d", {**_result(2, math.nan), **failed_result("nan")})
    searcher.on_trial_complete("d", result={**_result(2, math.nan), **failed_result("nan")})
    # e: its worker died for good
    searcher.on_trial_result("e", _result(1, 0.33))
    searcher.on_trial_complete("e", error=True)
    # f: past its 30 s time limit (Tune's stopper ended it)
    searcher.on_trial_result("f", _result(1, 0.45))
    searcher.on_trial_complete("f", result=_result(2, 0.46, time_total_s=31.0))
    # g: finished, and ASHA's decision on the final result was to stop it
    searcher.on_trial_result("g", _result(1, 0.31))
    searcher.on_trial_complete("g", result=_result(2, 0.41, final=True))

    # reopened with plain Optuna, as optuna-dashboard or a report would
    study = optuna.load_study(study_name="states", storage=journal_storage(tmp_path / "optuna.journal"))  # fmt: skip
    trials = _by_ray_id(study)
    got = {tid: (t.state, t.value, t.intermediate_values) for tid, t in trials.items()}
    assert got == {
        "a": (TrialState.COMPLETE, 0.50, {1: 0.30, 2: 0.40, 3: 0.50}),
        "b": (TrialState.PRUNED, 0.20, {1: 0.35, 2: 0.20}),
        "c": (TrialState.PRUNED, 0.10, {1: 0.10}),
        "d": (TrialState.FAIL, None, {1: 0.25}),
        "e": (TrialState.FAIL, None, {1: 0.33}),
        "f": (TrialState.FAIL, None, {1: 0.45}),
        "g": (TrialState.COMPLETE, 0.41, {1: 0.31, 2: 0.41}),
    }
    assert study.best_trial.user_attrs[RAY_TRIAL_ID] == "a"  # a pruned score is never "best"


def test_a_resumed_searcher_replaying_ended_trials_changes_nothing(tmp_path: Path) -> None:
    """Ray saves the searcher's state every few seconds; a driver killed after the study heard
    of a trial's end but before that save replays the trial from the older state."""
    journal = tmp_path / "optuna.journal"
    searcher = _searcher(journal_storage(journal))
    searcher.suggest("a"), searcher.suggest("b")
    searcher.on_trial_result("a", _result(1, 0.30))
    searcher.on_trial_result("b", _result(1, 0.20))
    saved = tmp_path / "searcher.pkl"
    searcher.save(str(saved))  # what Tune restores on `hpsearch resume`
    searcher.on_trial_result("a", _result(2, 0.50, final=True))
    searcher.on_trial_complete("a", result=_result(2, 0.50, final=True))
    searcher.on_trial_complete("b", result=_result(2, 0.10))  # pruned

    resumed = _searcher(journal_storage(journal))
    resumed.restore(str(saved))
    # a's run folder holds its summary: the trial reports it again and ends (hpsearch.worker)
    resumed.on_trial_result("a", _result(2, 0.50, final=True))
    resumed.on_trial_complete("a", result=_result(2, 0.50, final=True))
    resumed.on_trial_result("b", _result(2, 0.10))
    resumed.on_trial_complete("b", result=_result(3, 0.12))
    resumed.suggest("c")
    resumed.on_trial_complete("c", result=_result(1, 0.40, final=True))
    study = optuna.load_study(study_name="states", storage=journal_storage(journal))
    got = {tid: (t.state, t.value, t.intermediate_values) for tid, t in _by_ray_id(study).items()}
    assert got == {
        "a": (TrialState.COMPLETE, 0.50, {1: 0.30, 2: 0.50}),
        "b": (TrialState.PRUNED, 0.10, {1: 0.20, 2: 0.10}),
        "c": (TrialState.COMPLETE, 0.40, {1: 0.40}),
    }


def test_multi_objective_trials_complete_with_every_value(tmp_path: Path) -> None:
    doc = yaml.safe_load(SMOKE.read_text())
    doc["search"] = {
        "sampler": "nsga2",
        "num_samples": 4,
        "scheduler": "none",
        "objectives": [{"metric": "dev_sts_r", "mode": "max"}, {"metric": "dev_sst_acc", "mode": "max"}],
    }  # fmt: skip
    path = tmp_path / "moo.yaml"
    path.write_text(yaml.safe_dump(doc))
    searcher = search_algorithm(load_search_space(path), storage=None, study_name="moo",
                                time_limit=None, max_concurrent=None, concurrency=1)  # fmt: skip
    assert isinstance(searcher, FailureAwareOptunaSearch)
    searcher.suggest("a"), searcher.suggest("b")
    scores = {"dev_sts_r": 0.2, "dev_sst_acc": 0.4}
    searcher.on_trial_result("a", {"training_iteration": 1, **scores})  # no intermediate values
    searcher.on_trial_complete("a", result={"training_iteration": 2, "final": True, **scores})
    searcher.on_trial_complete("b", result=failed_result("nan"))
    trials = _by_ray_id(searcher._ot_study)
    assert trials["a"].state == TrialState.COMPLETE and trials["a"].values == [0.2, 0.4]
    assert trials["a"].intermediate_values == {}
    assert trials["b"].state == TrialState.FAIL


def test_how_a_trial_ended_is_read_from_its_last_result() -> None:
    assert trial_ending(_result(3, 0.5, final=True), None) == "finished"
    assert trial_ending(_result(2, 0.5), None) == "stopped"
    assert trial_ending(_result(2, 0.5), 1.5) == "timed_out"
    assert trial_ending(_result(2, 0.5, final=True), 1.5) == "finished"
    assert trial_ending(failed_result("nan"), None) == "failed"
    assert trial_ending({}, None) == trial_ending(None, None) == "failed"


@pytest.mark.parametrize(
    ("num_samples", "concurrency", "startup"),
    [(48, 1, 10), (48, 2, 9), (48, 8, 3), (30, 4, 7), (12, 1, 4), (12, 4, 2), (4, 2, 2)],
)
def test_tpe_random_phase_stays_the_serial_length_whatever_the_concurrency(
    num_samples: int, concurrency: int, startup: int
) -> None:
    """Optuna waits for n_startup_trials ended trials while concurrency - 1 others run: the
    random trials number the serial count in all (at least 2 ended ones first)."""
    assert serial_startup_trials(num_samples) == tpe_startup_trials(num_samples, 1)
    assert tpe_startup_trials(num_samples, concurrency) == startup
    assert startup + concurrency - 1 == max(serial_startup_trials(num_samples), concurrency + 1)
    space = load_search_space(SMOKE, overrides={"search.num_samples": num_samples})
    limiter = search_algorithm(space, storage=None, study_name="tpe", time_limit=None,
                               max_concurrent=concurrency, concurrency=concurrency)  # fmt: skip
    sampler = limiter.searcher._sampler
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._n_startup_trials == startup and sampler._constant_liar is True


def test_ray_keeps_max_concurrent_trials_pending_for_our_searcher() -> None:
    """ray-project/ray#46965: Tune used to hold a custom searcher to one pending trial, so
    trials started one after another. Ray 2.60 lets a ConcurrencyLimiter's searcher have as
    many pending as it allows (ray-project/ray#63770); the limiter holds the rest back."""
    from ray.tune.execution.tune_controller import _get_max_pending_trials
    from ray.tune.search import SearchGenerator

    space = load_search_space(SMOKE, overrides={"search.num_samples": 8})
    limiter = search_algorithm(space, storage=None, study_name="p", time_limit=None,
                               max_concurrent=3, concurrency=3)  # fmt: skip
    assert _get_max_pending_trials(SearchGenerator(limiter)) == 3
    assert [isinstance(limiter.suggest(t), dict) for t in "abcd"] == [True, True, True, False]
    limiter.on_trial_complete("a", result=_result(1, 0.3))
    assert isinstance(limiter.suggest("d"), dict)


def test_warm_start_carries_finished_and_pruned_trials_as_they_were(tmp_path: Path) -> None:
    """--warm-start: the earlier study's COMPLETE and PRUNED trials, values and intermediate
    values included, seed the new study; its FAIL ones are left out (hpsearch.driver)."""
    from hpsearch import driver
    from hpsearch.experiment import Experiment
    from hpsearch.settings import SweepSettings

    space = load_search_space(SMOKE, overrides={"search.num_samples": 8})

    def experiment(name: str) -> Experiment:
        return Experiment.create(tmp_path / name, SMOKE, space, SweepSettings(), {}, [])

    first = experiment("first")
    searcher = search_algorithm(space, storage=first.storage(), study_name=first.study_name,
                                time_limit=None, max_concurrent=None, concurrency=1)  # fmt: skip
    for trial_id in "abc":
        searcher.suggest(trial_id)
        searcher.on_trial_result(trial_id, _result(1, 0.3))
    searcher.on_trial_complete("a", result=_result(2, 0.5, final=True))
    searcher.on_trial_complete("b", result=_result(2, 0.2))
    searcher.on_trial_complete("c", error=True)

    earlier = driver.load_warm_start(str(first.path), space)
    second = experiment("second")
    driver.seed_study(second, space, earlier)
    resumed = search_algorithm(space, storage=second.storage(), study_name=second.study_name,
                               time_limit=None, max_concurrent=None, concurrency=1)  # fmt: skip
    resumed.suggest("d")
    resumed.on_trial_complete("d", result=_result(1, 0.4, final=True))
    study = optuna.load_study(study_name="second", storage=second.storage())
    got = [(t.state, t.value, t.intermediate_values, t.user_attrs) for t in study.trials]
    assert got == [
        (TrialState.COMPLETE, 0.5, {1: 0.3, 2: 0.5},
         {RAY_TRIAL_ID: "a", "warm_start_from": "first"}),
        (TrialState.PRUNED, 0.2, {1: 0.3, 2: 0.2}, {RAY_TRIAL_ID: "b", "warm_start_from": "first"}),
        (TrialState.COMPLETE, 0.4, {1: 0.4}, {RAY_TRIAL_ID: "d"}),
    ]  # fmt: skip


def test_a_trial_replayed_after_a_driver_kill_keeps_its_final_record(tmp_path: Path) -> None:
    """Ray's saved state older than the records: the resumed sweep starts an ASHA-stopped
    trial again, and that replay fails (say its Ray checkpoint is gone). Its record stays
    "stopped" and its study trial PRUNED. A "failed" record is not final: a trial that failed
    and runs again (`hpsearch resume` retries errored trials) gets the record of its retry."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    from hpsearch.driver import StatusRecorder
    from hpsearch.experiment import Experiment
    from hpsearch.settings import SweepSettings

    space = load_search_space(SMOKE, overrides={"search.num_samples": 2})
    exp = Experiment.create(tmp_path / "exp", SMOKE, space, SweepSettings(), {}, [])
    searcher = search_algorithm(space, storage=exp.storage(), study_name=exp.study_name,
                                time_limit=None, max_concurrent=None, concurrency=1)  # fmt: skip
    stopped, failed = (
        Trial("tune_trial", config=searcher.suggest(t), trial_id=t, stub=True,
              storage=StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp",
                                     trial_dir_name=f"trial_{t}"))
        for t in ("aaaa", "bbbb")
    )  # fmt: skip
    first = StatusRecorder(exp, space)
    for trial in (stopped, failed):
        first.on_trial_start(0, [], trial)
        trial.update_last_result(_result(1, 0.3))
        searcher.on_trial_result(trial.trial_id, _result(1, 0.3))
    searcher.on_trial_complete("aaaa", result=_result(1, 0.3))  # ASHA's stop
    first.on_trial_complete(0, [], stopped)
    failed.update_last_result(failed_result("non-finite loss at step 6"))
    searcher.on_trial_complete("bbbb", result=failed_result("non-finite loss at step 6"))
    first.on_trial_complete(0, [], failed)

    resumed = StatusRecorder(exp, space)  # the resumed driver, Ray replaying both trials
    for trial in (stopped, failed):
        resumed.on_trial_start(0, [], trial)
    stopped.update_last_result(failed_result("its Ray checkpoint does not exist anymore"))
    resumed.on_trial_complete(0, [], stopped)
    searcher.on_trial_complete("aaaa", error=True)
    failed.update_last_result(_result(2, 0.5, final=True))
    resumed.on_trial_complete(0, [], failed)

    records = {p.stem: json.loads(p.read_text()) for p in exp.trials_dir.glob("*.json")}
    assert records["aaaa"]["status"] == "stopped" and "ASHA" in records["aaaa"]["reason"]
    assert records["bbbb"]["status"] == "finished"  # the retry of a failed trial counts
    states = {t.user_attrs[RAY_TRIAL_ID]: t.state for t in searcher._ot_study.trials}
    assert states == {"aaaa": TrialState.PRUNED, "bbbb": TrialState.FAIL}


def _grid_searcher(tmp_path: Path, storage: Any) -> Any:
    """The searcher of a 4-point grid (variants slow/fast x seeds 0/1), as a sweep builds it."""
    doc = yaml.safe_load(SMOKE.read_text())
    doc["parameters"] = {}
    doc["variants"] = {"slow": {"train.lr": 1.0e-6}, "fast": {"train.lr": 3.0e-3}}
    doc["seeds"] = [0, 1]
    doc["search"] = {"sampler": "grid", "max_concurrent": 2}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    space = load_search_space(path)
    assert space.grid_size() == 4
    return search_algorithm(space, storage=storage, study_name="grid", time_limit=None,
                            max_concurrent=None, concurrency=2)  # fmt: skip


def test_a_grid_runs_each_point_once_across_a_driver_kill(tmp_path: Path) -> None:
    from ray.tune.search import Searcher

    storage = journal_storage(tmp_path / "optuna.journal")
    first = _grid_searcher(tmp_path, storage)
    order = first._sampler.order  # the grid sampler's seeded order of the 4 points
    assert sorted(order) == [0, 1, 2, 3]
    points = {tid: first.suggest(tid)["grid_point"] for tid in ("a", "b", "c")}
    assert points == {"a": order[0], "b": order[1], "c": order[2]}
    first.on_trial_complete("a", result=_result(3, 0.5, final=True))
    first.on_trial_complete("b", result=_result(2, 0.2))  # stopped by ASHA
    # c is still running when the driver is killed; d was never asked for.

    # The resumed driver's searcher: c was abandoned (no restored searcher knows it).
    second = _grid_searcher(tmp_path, storage)
    assert second.suggest("e")["grid_point"] == order[2]  # c's point is owed again...
    assert second.suggest("f")["grid_point"] == order[3]
    assert second.suggest("g") == Searcher.FINISHED  # ...and nothing else: e, f are running
    second.on_trial_complete("e", error=True)  # a failed point has run: it is not run again
    second.on_trial_complete("f", result=_result(3, 0.4, final=True))
    assert second.suggest("h") == Searcher.FINISHED
    study = optuna.load_study(study_name="grid", storage=storage)
    runs = [t.params["grid_point"] for t in study.trials if t.number != 2]  # c: abandoned
    assert sorted(runs) == [0, 1, 2, 3]  # each point once, c's by its replacement e


def test_warm_start_copies_are_no_runs_of_a_grid(tmp_path: Path) -> None:
    from hpsearch.searcher import WARM_START_FROM

    storage = journal_storage(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="grid", storage=storage, direction="maximize")
    copy = optuna.trial.create_trial(
        params={"grid_point": 0},
        distributions={"grid_point": optuna.distributions.CategoricalDistribution([0, 1, 2, 3])},
        value=0.7,
        user_attrs={WARM_START_FROM: "earlier"},
    )
    study.add_trial(copy)
    searcher = _grid_searcher(tmp_path, storage)
    assert [searcher.suggest(t)["grid_point"] for t in "abcd"] == searcher._sampler.order
