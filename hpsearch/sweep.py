"""`hpsearch sweep` and `hpsearch resume`: a YAML search space becomes a Ray Tune experiment.

    hpsearch sweep search_spaces/default.yaml --data-dir ../shared/data/cs224n --max-concurrent 2

The flow, one module per step:
    pre-flight   hpsearch.preflight    every input checked before Ray starts or anything is written
    experiment   hpsearch.experiment   the folder and experiment.json (typed: Experiment)
    fit          hpsearch.driver       Ray Tune + Optuna (TPE by default, seeded; the study in
                                       EXP_DIR/optuna.journal) + ASHA on the evaluations
                 hpsearch.worker       each trial, inside Ray: one multitask minBERT run
    reconcile    Experiment.reconcile  close what a killed driver left open
    report       reports.build_report  the ablation report

Reliability (docs/RELIABILITY.md): a trial that raises or whose worker dies is retried from its
last intact checkpoint (`--max-failures`); a NaN loss or a time limit ends a trial as failed at
once, never retried and never ranked; a trial whose run folder already holds its final summary
is never trained again.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from hpsearch import preflight
from hpsearch.experiment import SPACE_COPY, Experiment, new_experiment_dir
from hpsearch.settings import SweepSettings
from hpsearch.space_parser import load_search_space
from trainables.errors import ConfigError
from trainables.minbert import faults

__all__ = ["resume_sweep", "run_sweep"]


def run_sweep(space_path: str | Path, settings: SweepSettings | None = None) -> Path:
    """Validate, lay out the experiment folder, run every trial, write the report."""
    settings = settings or SweepSettings()
    space_overrides = {"search.num_samples": settings.num_samples} if settings.num_samples else {}
    space = load_search_space(space_path, overrides=space_overrides)
    if settings.smoke_test and space.sampler != "grid":
        space = dataclasses.replace(space, num_samples=min(space.num_samples, 2))
    # Every check comes before the first write and before Ray starts.
    trial_overrides = preflight.check_sweep(space, settings)
    folder = new_experiment_dir(settings, space.name)
    notes = preflight.check_sweep_data(space, trial_overrides)
    from hpsearch import driver  # Ray Tune: imported once the input is known to be good

    earlier = driver.load_warm_start(settings.warm_start, space) if settings.warm_start else []
    experiment = Experiment.create(
        folder, Path(space_path), space, settings, trial_overrides, notes
    )
    if earlier:
        driver.seed_study(experiment, space, earlier)
        print(
            f"warm start: {len(earlier)} finished trials of {settings.warm_start} seed the sampler"
        )
    driver.init_ray(settings.address, settings.num_cpus)
    _fit(driver.build_tuner(experiment, space), experiment)
    if settings.report:
        _report(experiment)
    return experiment.path


def resume_sweep(
    exp_dir: str | Path,
    address: str | None = None,
    num_cpus: int | None = None,
    report: bool = True,
) -> Path:
    """Continue an interrupted experiment: finished trials stay, unfinished ones resume."""
    experiment = Experiment.load(exp_dir)
    space = load_search_space(experiment.path / SPACE_COPY)
    faults.armed()  # a test hook; a malformed value is refused like any other input
    from ray import tune

    if not tune.Tuner.can_restore(str(experiment.path)):
        raise ConfigError(
            f"{experiment.path}: Ray's experiment state is missing (the sweep stopped before "
            "its first trial started): start a new sweep with another --name, or "
            f"remove {experiment.path} first"
        )
    from hpsearch import driver

    driver.init_ray(address, num_cpus)
    _fit(driver.build_tuner(experiment, space, restore=True), experiment)
    if report:
        _report(experiment)
    return experiment.path


def _fit(tuner: Any, experiment: Experiment) -> None:
    """Run the tuner, record the fit's span, close what a killed driver left, and say so."""
    t0, started_at = time.perf_counter(), time.time()
    grid = tuner.fit()
    experiment.record_fit(started_at, time.time())
    known = {Path(result.path).name.removeprefix("trial_") for result in grid if result.path}
    abandoned = experiment.reconcile(known)
    if abandoned:
        print(
            f"{len(abandoned)} trial(s) abandoned by a killed driver, marked failed: "
            f"{', '.join(abandoned)}"
        )
    counts = experiment.status_counts()
    print(
        f"sweep {experiment.name}: {len(grid)} trials in {time.perf_counter() - t0:.0f} s; "
        + ", ".join(f"{count} {status}" for status, count in counts.items())
    )


def _report(experiment: Experiment) -> None:
    from reports import ReportError, build_report

    armed = faults.armed()
    if armed:  # the driver-side fault (sleep_in_report); a test hook
        faults.before_report(armed, experiment.path)
    try:
        out = build_report(experiment.path)
    except ReportError as exc:
        raise ConfigError(str(exc)) from None
    print(f"report: {out}")
