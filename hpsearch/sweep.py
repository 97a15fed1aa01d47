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
is never trained again. Ctrl-C stops the sweep as Ray Tune does (a last save of the experiment
state; a second Ctrl-C skips it) and ends with the `hpsearch resume EXP_DIR` line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from hpsearch import preflight
from hpsearch.experiment import SPACE_COPY, Experiment, new_experiment_dir
from hpsearch.settings import SweepSettings
from hpsearch.space_parser import load_search_space
from trainables.errors import ConfigError
from trainables.minbert import faults

__all__ = ["SweepInterrupted", "resume_sweep", "run_sweep"]


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep's fit. `resumable`: Ray saved the experiment's state, so
    `hpsearch resume` continues it (finished trials kept, unfinished ones resumed)."""

    def __init__(self, path: Path, resumable: bool) -> None:
        super().__init__(str(path))
        self.path = path
        self.resumable = resumable

    @property
    def resume_command(self) -> str | None:
        return f"hpsearch resume {self.path}" if self.resumable else None


def run_sweep(space_path: str | Path, settings: SweepSettings | None = None) -> Path:
    """Validate, lay out the experiment folder, run every trial, write the report."""
    settings = settings or SweepSettings()
    space_overrides = {"search.num_samples": settings.num_samples} if settings.num_samples else {}
    space = load_search_space(space_path, overrides=space_overrides)
    if space.tuning is not None:  # a tuned ablation: phases, each one sweep (hpsearch.ablation)
        from hpsearch import ablation

        return ablation.run_tuned_ablation(
            Path(space_path), space, settings, run_phase=run_sweep, resume_phase=resume_sweep
        )
    if settings.smoke_test and space.sampler != "grid":
        space = dataclasses.replace(space, num_samples=min(space.num_samples, 2))
    # Every check comes before the first write and before Ray starts.
    trial_overrides = preflight.check_sweep(space, settings)
    folder = new_experiment_dir(settings, space.name)
    notes = preflight.check_sweep_data(space, trial_overrides)
    from hpsearch import driver  # Ray Tune: imported once the input is known to be good

    earlier = []
    if settings.warm_start:
        earlier = driver.load_warm_start(settings.warm_start, space)
    # Ray before the first write too: a missing or wrong Ray token is refused like bad input.
    driver.init_ray(settings.address, settings.num_cpus)
    experiment = Experiment.create(
        folder, Path(space_path), space, settings, trial_overrides, notes
    )
    if earlier:
        driver.seed_study(experiment, space, earlier)
        pruned = sum(t.state.name == "PRUNED" for t in earlier)
        counted = f"{len(earlier) - pruned} finished" + (f" and {pruned} pruned" if pruned else "")
        print(f"warm start: {counted} trials of {settings.warm_start} seed the sampler")
    _fit(lambda: driver.build_tuner(experiment, space), experiment)
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
    from hpsearch import ablation

    if ablation.is_tuned_ablation(exp_dir):
        return ablation.resume_tuned_ablation(
            exp_dir, run_sweep, resume_sweep, address=address, num_cpus=num_cpus, report=report
        )
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
    _fit(lambda: driver.build_tuner(experiment, space, restore=True), experiment)
    if report:
        _report(experiment)
    return experiment.path


def _fit(make_tuner: Callable[[], Any], experiment: Experiment) -> None:
    """Build and run the tuner, record the fit's span, close what a killed driver left, and
    say so. Ctrl-C: SweepInterrupted, once Ray has saved what it could (nothing reconciled).

    Meanwhile the terminal shows one progress line (`hpsearch.progress`); what Ray and the
    trials print goes to EXP_DIR/driver.log."""
    from hpsearch import progress  # Ray Tune, as the driver

    log_path = experiment.path / progress.DRIVER_LOG
    print(f"Ray's output: {log_path}", flush=True)
    t0, started_at = time.perf_counter(), time.time()
    with progress.quiet_console(log_path), _ctrl_c_stops_tune() as interrupt:
        try:
            tuner = make_tuner()
            t0, started_at = time.perf_counter(), time.time()  # the fit's span, as before
            grid = tuner.fit()
        except KeyboardInterrupt:  # a second Ctrl-C, or one before Tune's loop began
            interrupt.set()
    experiment.record_fit(started_at, time.time())
    if interrupt.is_set():
        import ray
        from ray import tune

        ray.shutdown()  # the trials' processes end with the driver's Ray
        raise SweepInterrupted(experiment.path, tune.Tuner.can_restore(str(experiment.path)))
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


# Ray Tune's hint after a Ctrl-C names its Python API (`Tuner.restore(path=...,
# trainable=...)`); the CLI names `hpsearch resume` instead.
_TUNE_INTERRUPT_LINES = ("Resume experiment with", "Trials did not complete")


class _DropTuneInterruptHints(logging.Filter):
    def __init__(self, interrupt: threading.Event) -> None:
        super().__init__()
        self.interrupt = interrupt

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            self.interrupt.is_set() and any(line in message for line in _TUNE_INTERRUPT_LINES)
        )


@contextlib.contextmanager
def _ctrl_c_stops_tune() -> Iterator[threading.Event]:
    """During a fit, the first SIGINT asks Ray Tune to stop as its own SIGINT handler would
    (through the SIGUSR1 handler Tune installs for that: a last save of the experiment state,
    then fit() returns) and is remembered in the event; a second one raises KeyboardInterrupt
    (Tune's "press Ctrl-C again to skip"). Tune's own SIGINT handler is off meanwhile
    (TUNE_DISABLE_SIGINT_HANDLER), so the interruption is known here, not guessed from logs.
    """
    interrupt = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupt  # signal handlers can only be set in the main thread
        return

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if interrupt.is_set():
            raise KeyboardInterrupt
        interrupt.set()
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if not callable(tune_stop):  # Tune's loop has not started: nothing to stop gently
            raise KeyboardInterrupt
        tune_stop(signal.SIGUSR1, frame)

    tune_logger = logging.getLogger("ray.tune.tune")
    hints = _DropTuneInterruptHints(interrupt)
    before_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    before_handler = signal.signal(signal.SIGINT, on_sigint)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    tune_logger.addFilter(hints)
    try:
        yield interrupt
    finally:
        signal.signal(signal.SIGINT, before_handler)
        tune_logger.removeFilter(hints)
        if before_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = before_env
