"""The sweep's searcher and scheduler: every trial's real state in the Optuna study, TPE sized
for the trials that run at once, and ASHA.

    search_alg = search_algorithm(space, storage=experiment.storage(), study_name=...,
                                  time_limit=None, max_concurrent=2, concurrency=2)
    scheduler = asha_scheduler(space)              # None without ASHA
    tune.Tuner(trainable, tune_config=TuneConfig(search_alg=search_alg, scheduler=scheduler))

`trial_ending` is the one rule for how a trial ended (finished, stopped early, failed, past
its time limit), read from its last result: the driver's trial records (hpsearch.driver
StatusRecorder) and the Optuna study's trial states (FailureAwareOptunaSearch) both follow it.
Importing this module imports Ray Tune and Optuna.
"""

from __future__ import annotations

import logging
import math
from typing import Any, TypeGuard, cast

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from hpsearch.settings import SweepSettings
from hpsearch.space import GRID_KEY, SearchSpace
from hpsearch.space_search import tpe_sampler
from hpsearch.worker import MAIN_EVAL

__all__ = [
    "FAILED",
    "FINISHED",
    "RAY_TRIAL_ID",
    "STOPPED",
    "TIMED_OUT",
    "WARM_START_FROM",
    "FailureAwareOptunaSearch",
    "asha_scheduler",
    "resource_concurrency",
    "search_algorithm",
    "trial_ending",
]

ASHA_MAX_T = 10_000  # multitask evaluations; trials end on their own schedule long before
RAY_TRIAL_ID = "ray_trial_id"  # the Optuna trial's user attribute naming its Ray trial
WARM_START_FROM = "warm_start_from"  # the user attribute naming a warm-start trial's experiment
logger = logging.getLogger(__name__)


# How a trial ended, from its last result: the one rule behind both its record's status
# (StatusRecorder) and its state in the Optuna study (FailureAwareOptunaSearch).
FINISHED, STOPPED, FAILED, TIMED_OUT = "finished", "stopped", "failed", "timed_out"


def trial_ending(last: dict[str, Any] | None, time_limit: float | None) -> str:
    """FINISHED, STOPPED, FAILED or TIMED_OUT for a trial whose last result is `last`.

    The final result (`"final": True`) is reported last of all, from TuneReporter.on_train_end
    (hpsearch.worker), once the trial has trained to its end: a trial whose last result lacks it
    was stopped before its end, by ASHA (or a Tune stopper) or by its time limit. A failed
    trial's last result carries `"failed"` (hpsearch.worker.failed_result); no result at all is
    a trial that never reported.
    """
    if not last or last.get("failed"):
        return FAILED
    if last.get("final"):
        return FINISHED
    if time_limit and last.get("time_total_s", 0) >= time_limit:
        return TIMED_OUT
    return STOPPED


class FailureAwareOptunaSearch(OptunaSearch):
    """OptunaSearch whose study holds every trial's real state and values.

    - Each dev evaluation is an intermediate value, `trial.report(value, step)` with step =
      the evaluation's index in the trial (Ray's training_iteration, 1 for the first; ASHA's
      rungs count the multitask loop's alone, so with sequential STS pre-training they lag
      behind), the stopping one and the final one included. Plain
      OptunaSearch skips the result on which the scheduler stops a trial.
    - A trial ASHA stopped is PRUNED (Optuna then takes its last intermediate value as its
      value, and TPE ranks it as pruned); plain OptunaSearch tells its partial score as a
      COMPLETE result. A trial that trained to its end is COMPLETE with its final value(s).
    - A failed trial, one past its time limit and one that never reported are FAIL, never
      ranked (plain OptunaSearch tells a NaN, which Optuna refuses, or a partial score).
    - A resumed sweep replaying a trial whose end the study already holds changes nothing.
    - Every Optuna trial records its Ray trial id (user attribute "ray_trial_id"), which is
      also the name of its trials/<id>.json and runs/<id>.
    - A grid sweep runs each point once, in its sampler's seeded order (`order`): each new
      trial takes the first point with no ended trial and none running here, and the
      searcher says FINISHED once no point is owed. A point whose trial a killed driver left
      RUNNING (abandoned) is owed again; one whose trial failed has run (Ray's max_failures
      retries it). Optuna's GridSampler alone hands out an already-run point when a resumed
      sweep asks for more trials than points are left.

    Multi-objective studies get no intermediate values (Optuna has none for them) and no ASHA.
    """

    def __init__(self, *, time_limit: float | None, **optuna_search: Any) -> None:
        super().__init__(**optuna_search)
        self.time_limit = time_limit
        # steps already reported, per Ray trial (saved with the searcher's state)
        self._steps_reported: dict[str, set[int]] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        grid_order = getattr(self._sampler, "order", None)  # a grid sweep's sampler has one
        if grid_order is not None and trial_id not in self._ot_trials:
            point = self._next_grid_point(grid_order)
            if point is None:
                # (Ray documents FINISHED as suggest's "no more trials", though it hints Dict)
                return Searcher.FINISHED  # type: ignore[return-value]
            self._study.enqueue_trial({GRID_KEY: point})  # the next ask() takes this point
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if isinstance(config, dict) and ot_trial is not None:
            ot_trial.set_user_attr(RAY_TRIAL_ID, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id not in self._completed_trials:
            self._report(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if trial_id in self._completed_trials or ot_trial is None:
            return
        self._completed_trials.add(trial_id)
        ending = FAILED if error else trial_ending(result, self.time_limit)
        if result and ending in (STOPPED, FINISHED):
            # Tune hands the result it stops a trial on (ASHA's, or the "done" of a finished
            # one) to on_trial_complete only: it is an evaluation too.
            self._report(trial_id, result)
        study = self._study
        if self._has_ended(ot_trial):
            return  # a resumed sweep replaying a trial the study saw end
        state, values = optuna.trial.TrialState.FAIL, None
        if ending == STOPPED:
            state = optuna.trial.TrialState.PRUNED
        elif ending == FINISHED and result is not None:
            values = _objective_values(result, self.metric)
            if values is not None:
                state = optuna.trial.TrialState.COMPLETE
        try:
            study.tell(ot_trial, values, state=state)
        except (ValueError, RuntimeError) as exc:  # e.g. an objective Optuna refuses
            logger.warning("trial %s: Optuna refused its result (%s): told FAIL", trial_id, exc)
            if not self._has_ended(ot_trial):
                study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)

    def _next_grid_point(self, order: list[int]) -> int | None:
        """The first grid point in `order` with no ended trial and no trial running in this
        driver."""
        live = {
            trial.number
            for ray_id, trial in self._ot_trials.items()
            if ray_id not in self._completed_trials
        }
        taken = set()
        for frozen in self._study.get_trials(deepcopy=False):
            point = frozen.params.get(GRID_KEY)
            if WARM_START_FROM in frozen.user_attrs or not isinstance(point, int):
                continue  # a warm-start copy is no run of this sweep
            if frozen.state.is_finished() or frozen.number in live:
                taken.add(point)
        return next((p for p in order if p not in taken), None)

    def _report(self, trial_id: str, result: dict[str, Any]) -> None:
        """One evaluation as an intermediate value, once per step (single objective)."""
        metric: str | list[str] = self.metric  # a list for several objectives
        if isinstance(metric, list) or result.get("failed"):
            return  # a failed trial's last result is no evaluation (its score is NaN)
        value, step = result.get(metric), result.get("training_iteration")
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or not _is_number(value) or not isinstance(step, int):
            return
        if not math.isfinite(value):
            return
        # (a searcher saved before this attribute existed has none)
        steps = self.__dict__.setdefault("_steps_reported", {})
        done = steps.setdefault(trial_id, set())
        if step in done:
            return
        done.add(step)
        try:
            ot_trial.report(float(value), step)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # a resumed sweep replaying a trial whose end the study already holds

    @property
    def _study(self) -> optuna.Study:
        return cast(optuna.Study, self._ot_study)  # set up by OptunaSearch before any trial

    def _has_ended(self, ot_trial: optuna.Trial) -> bool:
        """Whether the study (re-read from the journal) already holds this trial's end."""
        frozen = self._study.get_trials(deepcopy=False)[ot_trial.number]
        return bool(frozen.state.is_finished())


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _objective_values(result: dict[str, Any], metric: str | list[str]) -> Any:
    """The final result's objective value (a list of them for several objectives), or None
    when one is missing or not finite (the trial is then FAIL, never ranked)."""
    metrics = metric if isinstance(metric, list) else [metric]
    floats = []
    for name in metrics:
        value = result.get(name)
        if not _is_number(value) or not math.isfinite(float(value)):
            return None
        floats.append(float(value))
    return floats if isinstance(metric, list) else floats[0]


# ---------------------------------------------------------------------------- assembly
def search_algorithm(
    space: SearchSpace,
    *,
    storage: optuna.storages.BaseStorage | None,
    study_name: str,
    time_limit: float | None,
    max_concurrent: int | None,
    concurrency: int,
) -> Any:
    """What Tune asks for new trials: FailureAwareOptunaSearch on the space's sampler, inside a
    ConcurrencyLimiter of `max_concurrent` trials when that is set.

    `concurrency` is how many trials will run at once (it sizes TPE's random start-up, see
    hpsearch.space_search.tpe_startup_trials). Ray Tune 2.60 lets a ConcurrencyLimiter's
    searcher keep that many trials pending (ray-project/ray#63770); a searcher without one gets
    one pending trial at a time, so trials then start one after another, as resources allow.
    `storage` None keeps the study in memory (a benchmark's replay).
    """
    from ray.tune.search import ConcurrencyLimiter

    sampler: optuna.samplers.BaseSampler
    if space.sampler == "tpe":
        sampler = tpe_sampler(space.sampler_seed, space.num_samples, concurrency)
    else:
        sampler = space.optuna_sampler()
    searcher = FailureAwareOptunaSearch(
        time_limit=time_limit,
        space=space.define_by_run,
        metric=space.metric,
        mode=space.mode,
        sampler=sampler,
        storage=storage,
        study_name=study_name,
    )
    return ConcurrencyLimiter(searcher, max_concurrent) if max_concurrent else searcher


def asha_scheduler(space: SearchSpace) -> Any:
    """The space's ASHA on its objective's evaluations, or None (no scheduler, or several
    objectives: ASHA stops trials on one metric).

    Its rungs count the evaluations of a trial's multitask loop (hpsearch.worker.MAIN_EVAL),
    not Ray's training_iteration: an STS-only pre-training epoch's evaluation, where SST and
    Quora are still untrained, says nothing of the objective, and ASHA deciding on it stopped
    trials by their STS score alone (grace_period 1 in best_minilm.yaml v2's tuning phase).
    """
    from ray.tune.schedulers import ASHAScheduler

    if space.scheduler != "asha" or space.multi_objective:
        return None
    return ASHAScheduler(
        time_attr=MAIN_EVAL,
        metric=space.objectives[0].metric,
        mode=space.objectives[0].mode,
        max_t=ASHA_MAX_T,
        grace_period=space.asha_grace_period,
        reduction_factor=space.asha_reduction_factor,
    )


def resource_concurrency(settings: SweepSettings) -> int:
    """How many trials the Ray cluster this process joined fits at once (its CPUs, and GPUs when
    trials ask for them), at least 1."""
    import ray

    if not ray.is_initialized():
        return 1
    total = ray.cluster_resources()  # type: ignore[no-untyped-call]
    fits = int(total.get("CPU", 1.0) // settings.cpus_needed())
    gpus = settings.gpus_per_trial * (settings.workers_per_trial or 1)
    if gpus:
        fits = min(fits, int(total.get("GPU", 0.0) // gpus))
    return max(1, fits)
