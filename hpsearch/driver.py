"""The sweep driver's side of Ray Tune: the status recorder, the tuner's assembly (its
searcher and scheduler come from hpsearch.searcher), warm start and starting Ray.

Everything here runs in the `hpsearch sweep` / `hpsearch resume` process; the trials themselves
run `hpsearch.worker.tune_trial`. Importing this module imports Ray Tune and Optuna.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune import Callback

from hpsearch.experiment import (
    EXPERIMENT_FILE,
    JOURNAL,
    Experiment,
    journal_storage,
    warm_start_folder,
)
from hpsearch.searcher import (
    FAILED,
    FINISHED,
    STOPPED,
    TIMED_OUT,
    WARM_START_FROM,
    asha_scheduler,
    resource_concurrency,
    search_algorithm,
    trial_ending,
)
from hpsearch.space import SearchSpace
from hpsearch.worker import tune_trial
from trainables.atomic import write_json_atomic
from trainables.errors import ConfigError

__all__ = [
    "StatusRecorder",
    "build_tuner",
    "init_ray",
    "load_warm_start",
    "seed_study",
]

_WORKER_DIED = (
    "ActorDiedError",
    "worker process has died",
    "actor died unexpectedly",
    "ActorUnavailableError",
    "WorkerCrashedError",
)


class StatusRecorder(Callback):
    """Writes trials/<id>.json as trials start, report, finish, stop early or fail.

    A record that says "finished" or "stopped" is final. Ray saves its own state only every few
    seconds, so a driver killed just after a trial ended can leave Ray believing the trial
    still runs; the resumed sweep then starts it again (a stopped one from its checkpoint, if
    Ray still has it). That replay changes neither the record nor the trial's end in the
    Optuna study (hpsearch.searcher). A "failed" record is not final: `hpsearch resume` retries
    trials whose retries ran out (Ray's resume_errored).
    """

    def __init__(self, experiment: Experiment, space: SearchSpace) -> None:
        self.experiment = experiment
        self.space = space
        self.time_limit = experiment.settings.time_limit_per_trial
        self.max_failures = experiment.settings.max_failures
        self.started: dict[str, float] = {}
        self.kept: set[str] = set()  # trials whose final record a replay left as it was
        experiment.trials_dir.mkdir(parents=True, exist_ok=True)

    def _write(self, trial: Any, status: str, reason: str | None) -> None:
        ended = _ended_status(self.experiment.record_path(trial.trial_id))
        if ended is not None:
            if trial.trial_id not in self.kept:
                self.kept.add(trial.trial_id)
                print(
                    f"trial {trial.trial_id} had {ended} before the driver was killed; Ray's "
                    f"saved state was older and runs it again: its record stays {ended}",
                    flush=True,
                )
            return
        try:
            flat = self.space.resolve(trial.config, self.experiment.trial_overrides).to_flat_dict()
        except ConfigError:
            flat = dict(trial.config)
        last = trial.last_result or {}
        write_json_atomic(
            self.experiment.record_path(trial.trial_id),
            {
                "trial_id": trial.trial_id,
                "status": status,
                "reason": reason,
                "trial_dir": f"runs/{trial.trial_id}",
                "variant": self.space.variant_of(trial.config),
                "config": flat,
                "searched": [p.key for p in self.space.parameters if p.kind != "fixed"],
                "evaluations": last.get("training_iteration", 0),
                "ray_trial_dir": trial.path,
                "failures": _failures(trial),
                # wall clock (s since the epoch) as the driver saw the trial start and end
                "started_at": self.started.setdefault(trial.trial_id, time.time()),
                "ended_at": None if status == "running" else time.time(),
            },
        )

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._write(trial, "running", None)

    def on_trial_complete(
        self, iteration: int, trials: list[Any], trial: Any, **info: Any
    ) -> None:
        last = trial.last_result or {}
        evaluations, step = last.get("training_iteration", 0), last.get("step")
        ending = trial_ending(last, self.time_limit)
        if ending == FINISHED:
            self._write(trial, "finished", None)
        elif ending == FAILED:
            self._write(trial, "failed", last.get("error") or "ended without a result")
        elif ending == TIMED_OUT:
            reason = (
                f"time limit of {self.time_limit:g} s reached after {evaluations} evaluations "
                f"(step {step})"
            )
            self._write(trial, "failed", reason)
        else:
            self._write(
                trial,
                "stopped",
                f"stopped early by ASHA after {evaluations} evaluations (step {step})",
            )

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._write(
            trial,
            "running",
            f"retrying from its last checkpoint after failure {_failures(trial)} "
            f"of at most {self.max_failures}: {error_line(trial)}",
        )

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        tries = (
            f"failed {_failures(trial)} time(s), retries exhausted "
            f"(--max-failures {self.max_failures})"
        )
        self._write(trial, "failed", f"{error_line(trial)}; {tries}")


def _ended_status(record: Path) -> str | None:
    """ "finished" or "stopped" when the trial's record already says so (final), else None."""
    try:
        status = json.loads(record.read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None
    return status if status in (FINISHED, STOPPED) else None


def _failures(trial: Any) -> int:
    return int(getattr(trial, "num_failures", 0) or 0)


def error_line(trial: Any) -> str:
    """What went wrong, in one line: the exception and its message (a dead worker named so)."""
    path = getattr(trial, "error_file", None) or getattr(trial, "pickled_error_file", None)
    try:
        text = Path(path).read_text(errors="replace") if path else ""
    except OSError:
        text = ""
    if any(marker in text for marker in _WORKER_DIED):
        kind = re.search(r"[Ww]orker exit type: (\w+)", text)
        return (
            "the trial's worker process died (killed by a signal such as SIGKILL, out of "
            f"memory, or a crash{'; ' + kind.group(1) if kind else ''})"
        )
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else "failed (no error message recorded)"


# ---------------------------------------------------------------------------- the tuner
def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"  # named by id, never by hyperparameter values


AUTH_OFF_WARNING = (
    "warning: RAY_AUTH_MODE={mode} ignored: hpsearch keeps Ray's token authentication on, "
    "because Ray's ports listen on all interfaces (anyone who can reach this machine could "
    "run code on it); unset RAY_AUTH_MODE to silence this"
)


def keep_token_authentication() -> None:
    """Ray's token authentication on for the Ray this process starts or joins, and for every
    process Ray starts from it (they inherit RAY_AUTH_MODE): `token` when the variable is
    unset, and also when it says anything else (one warning line then): Ray reads every
    value but `token` as authentication off (`disabled`, but also `off`, an empty value or
    `token ` with a space), and hpsearch never runs or joins a Ray without authentication.

    Ray turns it on by itself only for a new local cluster; a driver joining a cluster by
    address would otherwise connect without a token. A new local cluster's token is
    Ray's usual one (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, written by Ray
    on first use).
    """
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode == "token":
        return  # already on, as Ray spells it
    if mode is not None and mode.strip().lower() != "token":  # " Token" is only respelled
        print(AUTH_OFF_WARNING.format(mode=mode), file=sys.stderr)
    os.environ["RAY_AUTH_MODE"] = "token"
    if "ray" in sys.modules:
        # Ray reads the variable into its config when imported: refresh it, as Ray does
        # when it turns token authentication on itself (otherwise this process would skip
        # writing a missing token that the GCS it starts then requires).
        from ray._raylet import Config  # type: ignore[attr-defined]  # compiled, no stub entry

        Config.initialize("")


def init_ray(address: str | None, num_cpus: int | None) -> None:
    """Start a local Ray (no dashboard UI, loopback, token authentication on), or connect to
    `address` with this machine's Ray token."""
    import ray
    from ray.exceptions import AuthenticationError

    if ray.is_initialized():
        return
    keep_token_authentication()
    # Trial processes inherit this environment: torch.distributed rendezvous variables left
    # by whatever started the driver would give every trial the same port. Each single-process
    # trial picks a free one itself; Ray Train sets them for data-parallel workers.
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(key, None)
    if address:
        try:
            ray.init(address=address, log_to_driver=True)
        except AuthenticationError as exc:  # token authentication on, and no token here
            raise ConfigError(
                f"--address {address}: {exc.message.strip().splitlines()[0]}: give this "
                "machine the cluster's Ray token in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or "
                "RAY_AUTH_TOKEN (docs/CLUSTER.md)"
            ) from None
        except ConnectionError:  # Ray says no more, whether unreachable or a wrong token
            raise ConfigError(
                f"--address {address}: could not join the Ray cluster there: check that it "
                "runs and that this machine has its Ray token (a wrong token is refused; "
                "docs/CLUSTER.md)"
            ) from None
    else:
        # Ray starts its worker processes at niceness 15 (RAY_worker_niceness): beside any
        # other busy process the trials, which are the sweep's whole work, then get a few
        # percent of a core (30-40x slower beside a CPU hog per core, measured). The local
        # Ray hpsearch starts runs them at the driver's priority, unless the user set it.
        os.environ.setdefault("RAY_worker_niceness", "0")
        # A reused worker runs each trial in a new thread, and glibc gives threads malloc
        # arenas of their own (up to 8 per core), each keeping what it freed: resident
        # memory grew from trial to trial. Two arenas kept it flat (measured over 24 tiny
        # trials, docs/BENCHMARKS.md); trial processes inherit the variable from here.
        os.environ.setdefault("MALLOC_ARENA_MAX", "2")
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            dashboard_host="127.0.0.1",
            log_to_driver=True,
            configure_logging=True,
            logging_level=logging.WARNING,
        )


def build_tuner(experiment: Experiment, space: SearchSpace, restore: bool = False) -> Any:
    """The Tuner of the experiment: a new one, or (restore) Ray's saved one, resumed."""
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from hpsearch.hparams import HParamsRecorder
    from hpsearch.progress import SweepProgress

    # No logger callbacks of Ray's own choosing (read when the tuner runs): its TensorBoard
    # logger would give each trial a second HParams session. CSV and JSON are passed below.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    ray_loggers: list[Any] = [CSVLoggerCallback(), JsonLoggerCallback()]  # type: ignore[no-untyped-call]
    settings = experiment.settings
    trainable = tune.with_resources(
        tune.with_parameters(tune_trial, experiment=experiment, space=space),
        settings.trial_resources(),
    )
    if restore:
        return tune.Tuner.restore(
            str(experiment.path), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    max_concurrent = settings.max_concurrent or space.max_concurrent
    search_alg = search_algorithm(
        space,
        storage=experiment.storage(),
        study_name=experiment.study_name,
        time_limit=settings.time_limit_per_trial,
        max_concurrent=max_concurrent,
        concurrency=max_concurrent or resource_concurrency(settings),
    )
    scheduler = asha_scheduler(space)
    limit = settings.time_limit_per_trial
    return tune.Tuner(
        trainable,
        tune_config=TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=experiment.total_trials,
            # A trial's worker process runs the next trial too (no process start, no imports,
            # warm caches); each trial resets what it set up (docs/BENCHMARKS.md, sweep
            # overhead). Ray Train's workers are started per trial whatever this says, so a
            # data-parallel sweep keeps a fresh process for its driving trials too.
            reuse_actors=not settings.data_parallel,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=RunConfig(
            name=experiment.name,
            storage_path=str(experiment.path.parent),
            stop={"time_total_s": limit} if limit else None,
            failure_config=FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=[
                *ray_loggers,
                StatusRecorder(experiment, space),
                HParamsRecorder(experiment, space),  # after StatusRecorder: it reads the record
                SweepProgress(experiment, space),  # the terminal's line; reads the record too
            ],
            verbose=1,
        ),
    )


# ---------------------------------------------------------------------------- warm start


def load_warm_start(source: str, space: SearchSpace) -> list[optuna.trial.FrozenTrial]:
    """The ended Optuna trials of an earlier experiment, checked against this space: COMPLETE
    ones with their values, PRUNED ones (stopped by ASHA) with their intermediate values, as
    TPE would see them in the earlier study; FAIL and RUNNING ones teach the sampler nothing.
    Each copy names its experiment (user attribute "warm_start_from"). SOURCE may be a
    one-variant tuned plan's folder: its tuning phase is meant (`warm_start_folder`)."""
    folder = warm_start_folder(source).resolve()
    if not (folder / EXPERIMENT_FILE).is_file() or not (folder / JOURNAL).is_file():
        raise ConfigError(
            f"--warm-start {folder}: not an hpsearch experiment folder (no "
            f"{EXPERIMENT_FILE} or {JOURNAL}); pass a folder an earlier sweep wrote"
        )
    study_name = json.loads((folder / EXPERIMENT_FILE).read_text())["study_name"]
    study = optuna.load_study(study_name=study_name, storage=journal_storage(folder / JOURNAL))
    wanted = [d.name.lower() for d in study.directions]
    if wanted != space.directions:
        raise ConfigError(
            f"--warm-start {folder}: its objectives ({', '.join(wanted)}) differ from "
            f"this space's ({', '.join(space.directions)}); warm-start from a "
            "sweep with the same objectives"
        )
    ended = study.get_trials(
        deepcopy=True,
        states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED),
    )
    for trial in ended:
        trial.set_user_attr(WARM_START_FROM, folder.name)
    return ended


def seed_study(
    experiment: Experiment, space: SearchSpace, trials: list[optuna.trial.FrozenTrial]
) -> None:
    """Create this experiment's study holding the earlier trials; OptunaSearch then loads it
    (load_if_exists) and its sampler starts from them. They do not count towards num_samples."""
    study = optuna.create_study(
        study_name=experiment.study_name,
        storage=experiment.storage(),
        directions=space.directions,
    )
    study.add_trials(trials)
