"""`hpsearch sweep`: a YAML search space becomes a Ray Tune experiment.

    hpsearch sweep search_spaces/default.yaml --data-dir ../shared/data/cs224n --max-concurrent 2

Each trial is one multitask minBERT run (`trainables.minbert.trainer`), trained through a
DeepSpeed engine: a single-process engine inside the Tune trial, or, with
`--workers-per-trial N`, N data-parallel DeepSpeed workers through Ray Train (the Train V2
pattern: a Tune function trainable that fits a `TorchTrainer`). Optuna samples the
configurations (TPE by default, seeded) and keeps its study in `EXP_DIR/optuna.journal`;
ASHA stops hopeless trials on the evaluations they report several times per epoch.

The experiment folder, `STORAGE/NAME/`:
    experiment.json        what was asked (space, settings, overrides, trial count, command)
    search_space.yaml      a copy of the space, so that resume and reports need nothing else
    optuna.journal         the Optuna study (optuna.load_study / optuna-dashboard open it)
    trials/<id>.json       each trial's status, reason, variant and resolved configuration
    runs/<id>/             each trial's run folder (metrics.jsonl, summary.json, tb/, ...)
    <ray trial folders>    Ray's own results and the checkpoints trials resume from
    report/                the ablation report (`hpsearch report EXP_DIR`)
On a multi-node cluster, STORAGE must be a file system every node sees (NFS, EFS).

Reliability (docs/RELIABILITY.md): every input is checked before Ray starts or anything is
written; a trial that raises or whose worker dies is retried from its last intact checkpoint
(`--max-failures`); a NaN loss or a time limit ends a trial as failed at once, never retried
and never ranked; a trial whose run folder already holds its final summary is never trained
again, even when Ray's own state (saved every few seconds) lags behind a killed driver.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpsearch.space import SearchSpace, load_search_space
from trainables.atomic import write_json_atomic, write_text_atomic
from trainables.errors import ConfigError, TrialFailure
from trainables.minbert import _faults
from trainables.minbert.callbacks import TimeLimit, TrainerCallback
from trainables.minbert.config import build_trial_config, parse_override

EXPERIMENT_FILE = "experiment.json"
SPACE_COPY = "search_space.yaml"
JOURNAL = "optuna.journal"

# What --smoke-test changes in every trial: a few steps on a little data.
SMOKE_TRIAL_OVERRIDES = {
    "data.max_train_examples": 48,
    "data.max_eval_examples": 32,
    "data.train_eval_examples": 16,
    "data.max_length": 32,
    "train.max_steps": 4,
    "train.evals_per_epoch": 2,
    "train.batch_size": 8,
}


@dataclass
class SweepSettings:
    """How a sweep runs (as opposed to what it searches, which the space file says)."""

    name: str | None = None  # experiment folder name; default: the space's name
    storage_path: str = "results"  # experiments live in STORAGE/NAME
    num_samples: int | None = None  # default: the space's
    max_concurrent: int | None = None  # default: the space's, else as many as resources allow
    cpus_per_trial: float | None = None  # per worker; default 1
    gpus_per_trial: float = 0.0  # per worker
    workers_per_trial: int = 1  # >1: data-parallel DeepSpeed through Ray Train
    data_dir: str | None = None  # CS224N files; None: the built-in synthetic data
    address: str | None = None  # Ray cluster address; None: start a local Ray
    num_cpus: int | None = None  # CPUs of the local Ray
    max_failures: int = 2  # retries of a failed trial from its last checkpoint
    time_limit_per_trial: float | None = None  # seconds
    exist_ok_suffix: bool = False  # NAME exists: use NAME-2, ... instead of refusing
    warm_start: str | None = None  # an earlier experiment whose finished trials seed the sampler
    smoke_test: bool = False
    report: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted, applied to every trial


# ---------------------------------------------------------------------------- preparation
def resolve_trial(space: SearchSpace, sampled: dict[str, Any], extra: dict[str, Any]):
    """The validated TrialConfig of a sampled point, with the sweep-wide overrides on top."""
    cfg = space.resolve(sampled)
    if not extra:
        return cfg
    return build_trial_config(cfg.model_dump(), extra, source="sweep overrides")


_ADDRESS_RE = re.compile(r"^(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


def _check_settings(settings: SweepSettings) -> None:
    """Refuse settings that could never run (a trial bigger than the machine, say)."""
    if settings.max_failures < 0:
        raise ConfigError(
            f"--max-failures {settings.max_failures}: give a number >= 0 "
            "(retries of a failed trial from its last checkpoint)"
        )
    if settings.time_limit_per_trial is not None and not settings.time_limit_per_trial > 0:
        raise ConfigError(
            f"--time-limit-per-trial {settings.time_limit_per_trial:g}: give a "
            "number of seconds > 0, or leave it out for no limit"
        )
    if settings.cpus_per_trial is not None and not settings.cpus_per_trial > 0:
        raise ConfigError(
            f"--cpus-per-trial {settings.cpus_per_trial:g}: give a number > 0 "
            "(a trial with no CPU would never be limited)"
        )
    if settings.address is not None:
        if settings.address not in ("auto", "local") and not _ADDRESS_RE.match(settings.address):
            raise ConfigError(
                f"--address {settings.address!r} is not a Ray address: use auto, "
                "HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:PORT"
            )
        return  # a cluster's resources are known only once connected
    cpus = settings.num_cpus or os.cpu_count() or 1
    need = (settings.cpus_per_trial or 1) * settings.workers_per_trial
    if settings.workers_per_trial > 1:
        need += 0.1  # the Tune trial that drives the Ray Train workers
    if need > cpus:
        raise ConfigError(
            f"one trial needs {need:g} CPUs ({settings.workers_per_trial} worker(s) x "
            f"{settings.cpus_per_trial or 1:g}) but the local Ray has {cpus}: lower "
            "--cpus-per-trial or --workers-per-trial, or raise --num-cpus"
        )
    if settings.gpus_per_trial:
        import torch

        have = torch.cuda.device_count()
        if settings.gpus_per_trial * settings.workers_per_trial > have:
            raise ConfigError(
                f"--gpus-per-trial {settings.gpus_per_trial:g} but this machine has "
                f"{have} GPU(s): trials would wait forever; drop the option, or "
                "pass --address of a cluster with GPUs"
            )


def _check_inputs(space: SearchSpace, settings: SweepSettings) -> dict[str, Any]:
    """Refuse bad input before anything is launched; returns the per-trial overrides."""
    _check_settings(settings)
    _faults.check_env()  # a test hook; a malformed value is refused like any other input
    extra = dict(settings.overrides)
    if settings.smoke_test:
        extra = {**SMOKE_TRIAL_OVERRIDES, **extra}
    if settings.data_dir:
        data_dir = Path(settings.data_dir).expanduser()
        if not data_dir.is_dir():
            raise ConfigError(
                f"--data-dir {data_dir} does not exist: pass the folder holding the "
                "CS224N files (see `hpsearch data download`)"
            )
        extra["data.data_dir"] = str(data_dir.resolve())
    if settings.workers_per_trial > 1:
        extra["train.num_workers"] = settings.workers_per_trial
    # Every override must fit the trial config: resolve one point of the space with them.
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    study = optuna.create_study(
        sampler=space.optuna_sampler(), directions=["maximize"] * max(1, len(space.objectives))
    )
    trial = study.ask()
    constants = space.define_by_run(trial) or {}
    resolve_trial(space, {**trial.params, **constants}, extra)
    return extra


def _check_data(space: SearchSpace, extra: dict[str, Any]) -> list[str]:
    """Load (and so tokenise and cache) the data once in the driver: bad files fail here,
    before any trial starts, and every trial then reads the shared token cache."""
    import optuna

    from trainables.minbert.data import load_multitask_data
    from trainables.minbert.tokenizer import tokenizer_for

    trial = optuna.create_study(
        sampler=space.optuna_sampler(), directions=["maximize"] * max(1, len(space.objectives))
    ).ask()
    constants = space.define_by_run(trial) or {}
    cfg = resolve_trial(space, {**trial.params, **constants}, extra)
    _check_checkpoints(space, extra, cfg.model.checkpoint)
    data = load_multitask_data(cfg.data, tokenizer_for(cfg.model), cfg.model.pair_encoding)
    return data.notes


def _checkpoint_names(space: SearchSpace, extra: dict[str, Any], sampled: str) -> set[str]:
    """Every model.checkpoint a trial of this space can use."""
    key = "model.checkpoint"
    if key in extra:
        return {extra[key]}
    names = {sampled}
    if key in space.base:
        names.add(space.base[key])
    for settings in space.variants.values():
        if key in settings:
            names.add(settings[key])
    for param in space.parameters:
        if param.key == key:
            names.update(param.choices or () if param.kind == "categorical" else (param.value,))
    return {n for n in names if isinstance(n, str)}


def _check_checkpoints(space: SearchSpace, extra: dict[str, Any], sampled: str) -> None:
    """Load every checkpoint folder the trials may use: a missing file, a truncated weights
    file or a malformed config.json fails here, in the driver, before Ray starts."""
    from trainables.minbert.hf_folder import minilm_dir
    from trainables.minbert.model import BertModel

    for name in sorted(_checkpoint_names(space, extra, sampled)):
        if name == "random":
            continue
        if name == "minilm":
            minilm_dir()
            continue
        BertModel.from_pretrained(name)


def _experiment_dir(settings: SweepSettings, space: SearchSpace) -> Path:
    name = settings.name or space.name
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"experiment name {name!r} is not a plain folder name: pass --name NAME")
    root = Path(settings.storage_path).expanduser().resolve()
    exp = root / name
    if exp.exists():
        if not settings.exist_ok_suffix:
            raise ConfigError(
                f"experiment folder {exp} already exists: pass another --name, "
                f"or `hpsearch resume {exp}` to continue it"
            )
        n = 2
        while (root / f"{name}-{n}").exists():
            n += 1
        exp = root / f"{name}-{n}"
        print(f"experiment folder {root / name} exists: writing to {exp} instead", file=sys.stderr)
    return exp


# ---------------------------------------------------------------------------- trials
class _TuneReporter(TrainerCallback):
    """Reports every evaluation to Ray Tune (or Ray Train), with its checkpoint."""

    def __init__(self, report_fn: Any, rank: int = 0, in_tune: bool = True) -> None:
        self.report_fn, self.rank, self.in_tune = report_fn, rank, in_tune

    def on_evaluate(self, trainer: Any, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        if self.in_tune:
            from ray.tune import Checkpoint
        else:
            from ray.train import Checkpoint
        result = {k: v for k, v in metrics.items() if v is not None}
        result["node_id"] = _node_id()
        ckpt = (
            Checkpoint.from_directory(str(checkpoint)) if checkpoint and self.rank == 0 else None
        )
        self.report_fn(result, checkpoint=ckpt)


def _node_id() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # not inside Ray (cannot happen in a sweep, but harmless)
        return "local"


def _run_one(
    cfg_dict: dict[str, Any],
    run_dir: str,
    resume_from: str | None,
    report_fn: Any,
    rank: int,
    in_tune: bool = True,
    time_limit: float | None = None,
) -> None:
    """Train one trial (in this process), report each evaluation and the final summary."""
    from trainables.minbert.config import TrialConfig
    from trainables.minbert.trainer import train_trial

    cfg = TrialConfig.model_validate(cfg_dict)
    callbacks: list[TrainerCallback] = [_TuneReporter(report_fn, rank, in_tune)]
    if time_limit:
        callbacks.insert(0, TimeLimit(time_limit))
    try:  # the final evaluation's report carries "final": True and the train/test scores
        train_trial(cfg, run_dir, callbacks=callbacks, resume_from=resume_from)
    except TrialFailure as exc:
        # A NaN loss or the time limit: retrying would fail the same way. Reported as a
        # failed final result, so the trial ends at once, marked failed, and is never ranked.
        if rank == 0:
            write_json_atomic(
                Path(run_dir) / "summary.json", {"status": "failed", "reason": str(exc)}
            )
        report_fn(_failed_result(str(exc)), checkpoint=None)


def _failed_result(reason: str) -> dict[str, Any]:
    return {"final": True, "failed": 1, "error": reason, "dev_overall": float("nan")}


def _finished_summary(run_dir: Path) -> dict[str, Any] | None:
    """The trial's final summary if its run already ended (finished or failed), else None."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict):
        return None
    if summary.get("status") == "failed" and summary.get("reason"):
        return summary
    if summary.get("status") == "finished" and summary.get("final") is True:
        return summary
    return None


def resume_point(ray_checkpoint: Path | None, run_dir: Path) -> tuple[Path | None, str]:
    """Where a (re)started trial continues from, and why.

    Ray's checkpoint (the one reported with the trial's last result) when it is intact; else
    the newest intact checkpoint in the trial's run folder; else the beginning. Every
    checkpoint is checked against its MANIFEST.json checksums first.
    """
    from trainables.minbert.run_checkpoint import find_checkpoint, verify_checkpoint

    problem = None
    if ray_checkpoint is not None:
        problem = verify_checkpoint(ray_checkpoint)
        if problem is None:
            return ray_checkpoint, f"resuming from Ray's checkpoint {ray_checkpoint.name}"
    try:
        local = find_checkpoint(run_dir)
    except ConfigError:
        local = None
    why = f"Ray's checkpoint is unusable ({problem}); " if problem else ""
    if local is not None:
        return local, f"{why}resuming from {local.relative_to(run_dir)}"
    return None, f"{why}starting from the beginning (no intact checkpoint)"


def _tune_trial(config: dict[str, Any], exp_dir: str) -> None:
    """The Tune function trainable: resolve the sampled point, then train (or fan out)."""
    import ray.tune

    exp = Path(exp_dir)
    meta = json.loads((exp / EXPERIMENT_FILE).read_text())
    space = load_search_space(exp / SPACE_COPY)
    cfg = resolve_trial(space, config, meta["trial_overrides"])
    trial_id = ray.tune.get_context().get_trial_id()
    run_dir = exp / "runs" / trial_id
    done = _finished_summary(run_dir)
    if done is not None:
        # Already ran to its end: a driver killed before Ray saved that fact restarts it.
        # Report the stored result again instead of training a second time.
        print(f"trial {trial_id} already ended ({done['status']}): not run again", flush=True)
        result = done if done["status"] == "finished" else _failed_result(done["reason"])
        ray.tune.report({k: v for k, v in result.items() if v is not None})
        return
    checkpoint = ray.tune.get_checkpoint()
    settings = meta["settings"]
    context = checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext()
    with context as ray_dir:
        resume_from, note = resume_point(Path(ray_dir) if ray_dir else None, run_dir)
        if checkpoint is not None or resume_from is not None:
            print(f"trial {trial_id}: {note}", flush=True)
        resume = str(resume_from) if resume_from else None
        if settings["workers_per_trial"] <= 1:
            _run_one(
                cfg.model_dump(),
                str(run_dir),
                resume,
                ray.tune.report,
                rank=0,
                time_limit=settings.get("time_limit_per_trial"),
            )
            return
        _fit_data_parallel(cfg.model_dump(), str(run_dir), resume, settings, trial_id, exp)


def _train_worker(loop_config: dict[str, Any]) -> None:
    """One data-parallel DeepSpeed worker inside Ray Train."""
    import ray.train

    ctx = ray.train.get_context()
    os.environ.setdefault("LOCAL_RANK", str(ctx.get_local_rank()))
    os.environ.setdefault("RANK", str(ctx.get_world_rank()))
    os.environ.setdefault("WORLD_SIZE", str(ctx.get_world_size()))
    _run_one(
        loop_config["cfg"],
        loop_config["run_dir"],
        loop_config["resume_from"],
        ray.train.report,
        rank=ctx.get_world_rank(),
        in_tune=False,
        time_limit=loop_config.get("time_limit"),
    )


def _fit_data_parallel(
    cfg: dict[str, Any],
    run_dir: str,
    resume_from: str | None,
    settings: dict[str, Any],
    trial_id: str,
    exp: Path,
) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    per_worker = {"CPU": settings["cpus_per_trial"] or 1}
    if settings["gpus_per_trial"]:
        per_worker["GPU"] = settings["gpus_per_trial"]
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={
            "cfg": cfg,
            "run_dir": run_dir,
            "resume_from": resume_from,
            "time_limit": settings.get("time_limit_per_trial"),
        },
        scaling_config=ScalingConfig(
            num_workers=settings["workers_per_trial"],
            use_gpu=bool(settings["gpus_per_trial"]),
            resources_per_worker=per_worker,
        ),
        run_config=RunConfig(
            name=trial_id, storage_path=str(exp / "train_runs"), callbacks=[TuneReportCallback()]
        ),
    )
    trainer.fit()


# ---------------------------------------------------------------------------- statuses
def _status_callback_cls():
    from ray.tune import Callback

    class StatusRecorder(Callback):
        """Writes trials/<id>.json as trials start, report, finish, stop early or fail."""

        def __init__(
            self,
            exp_dir: Path,
            space: SearchSpace,
            extra: dict[str, Any],
            time_limit: float | None,
            max_failures: int = 0,
        ) -> None:
            self.exp_dir, self.space, self.extra, self.time_limit = (
                exp_dir,
                space,
                extra,
                time_limit,
            )
            self.started: dict[str, float] = {}
            self.max_failures = max_failures
            (exp_dir / "trials").mkdir(parents=True, exist_ok=True)

        def _write(self, trial: Any, status: str, reason: str | None) -> None:
            try:
                flat = resolve_trial(self.space, trial.config, self.extra).to_flat_dict()
            except ConfigError:
                flat = dict(trial.config)
            last = trial.last_result or {}
            write_json_atomic(
                self.exp_dir / "trials" / f"{trial.trial_id}.json",
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
                    "failures": int(getattr(trial, "num_failures", 0) or 0),
                    # wall clock (s since the epoch) as the driver saw the trial start and end
                    "started_at": self.started.setdefault(trial.trial_id, time.time()),
                    "ended_at": None if status == "running" else time.time(),
                },
            )

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._write(trial, "running", None)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            last = trial.last_result or {}
            if last.get("failed"):
                self._write(trial, "failed", last.get("error"))
            elif last.get("final"):
                self._write(trial, "finished", None)
            else:
                n, step = last.get("training_iteration", 0), last.get("step")
                limit = self.time_limit
                if limit and last.get("time_total_s", 0) >= limit:
                    reason = (
                        f"time limit of {limit:g} s reached after {n} evaluations (step {step})"
                    )
                    self._write(trial, "failed", reason)
                else:
                    self._write(
                        trial,
                        "stopped",
                        f"stopped early by ASHA after {n} evaluations (step {step})",
                    )

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            n = int(getattr(trial, "num_failures", 0) or 0)
            self._write(
                trial,
                "running",
                f"retrying from its last checkpoint after failure {n} "
                f"of at most {self.max_failures}: {_error_line(trial)}",
            )

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            n = int(getattr(trial, "num_failures", 0) or 0)
            tries = f"failed {n} time(s), retries exhausted (--max-failures {self.max_failures})"
            self._write(trial, "failed", f"{_error_line(trial)}; {tries}")

    return StatusRecorder


_WORKER_DIED = (
    "ActorDiedError",
    "worker process has died",
    "actor died unexpectedly",
    "ActorUnavailableError",
    "WorkerCrashedError",
)


def _searcher_cls(base: type) -> type:
    """OptunaSearch that tells Optuna a failed trial failed (FAIL, never ranked), and that
    lets a resumed sweep replay a trial the study already saw finish.

    Plain OptunaSearch tells the last result's metric: a NaN (refused by Optuna, so the trial
    stays RUNNING in the study forever) or, for a trial stopped at its time limit, a partial
    score that Optuna would then rank among the best.
    """

    import optuna

    class FailureAwareOptunaSearch(base):
        time_limit: float | None = None

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            try:
                super().on_trial_result(trial_id, result)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # a resumed sweep replaying a trial whose end the study already holds

        def on_trial_complete(
            self, trial_id: str, result: dict | None = None, error: bool = False
        ) -> None:
            limit = getattr(self, "time_limit", None)
            if result and (
                result.get("failed")
                or (limit and not result.get("final") and result.get("time_total_s", 0) >= limit)
            ):
                result, error = None, True
            super().on_trial_complete(trial_id, result=result, error=error)

    return FailureAwareOptunaSearch


def _error_line(trial: Any) -> str:
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


# ---------------------------------------------------------------------------- tuner
def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"  # named by id, never by hyperparameter values


def _init_ray(address: str | None, num_cpus: int | None) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return
    # Trial processes inherit this environment: torch.distributed rendezvous variables left
    # by whatever started the driver would give every trial the same port. Each single-process
    # trial picks a free one itself; Ray Train sets them for data-parallel workers.
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(key, None)
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            dashboard_host="127.0.0.1",
            log_to_driver=True,
            configure_logging=True,
            logging_level="WARNING",
        )


def _build_tuner(exp: Path, space: SearchSpace, meta: dict[str, Any], restore: bool = False):
    import optuna
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    s = meta["settings"]
    workers = s["workers_per_trial"]
    per = {"cpu": s["cpus_per_trial"] or 1, "gpu": s["gpus_per_trial"]}
    resources = {"cpu": 0.1} if workers > 1 else per  # >1: the workers hold the resources
    trainable = tune.with_resources(tune.with_parameters(_tune_trial, exp_dir=str(exp)), resources)
    if restore:
        return tune.Tuner.restore(
            str(exp), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp / JOURNAL))
    )
    searcher = _searcher_cls(OptunaSearch)(
        space=space.define_by_run,
        metric=space.metric,
        mode=space.mode,
        sampler=space.optuna_sampler(),
        storage=storage,
        study_name=meta["study_name"],
    )
    searcher.time_limit = s["time_limit_per_trial"]
    max_concurrent = s["max_concurrent"] or space.max_concurrent
    search_alg = ConcurrencyLimiter(searcher, max_concurrent) if max_concurrent else searcher
    scheduler = None
    if space.scheduler == "asha" and not space.multi_objective:
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            metric=space.metric,
            mode=space.mode,
            max_t=10_000,
            grace_period=space.asha_grace_period,
            reduction_factor=space.asha_reduction_factor,
        )
    stop = {"time_total_s": s["time_limit_per_trial"]} if s["time_limit_per_trial"] else None
    recorder = _status_callback_cls()(
        exp, space, meta["trial_overrides"], s["time_limit_per_trial"], s["max_failures"]
    )
    return tune.Tuner(
        trainable,
        tune_config=TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=meta["total_trials"],
            reuse_actors=False,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=RunConfig(
            name=exp.name,
            storage_path=str(exp.parent),
            stop=stop,
            failure_config=FailureConfig(max_failures=s["max_failures"]),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=[recorder],
            verbose=1,
        ),
    )


# ---------------------------------------------------------------------------- warm start
def _directions(space: SearchSpace) -> list[str]:
    return ["maximize" if o.mode == "max" else "minimize" for o in space.objectives]


def _load_warm_start(source: str, space: SearchSpace) -> list:
    """The finished Optuna trials of an earlier experiment, checked against this space."""
    import optuna

    src = Path(source).expanduser().resolve()
    meta_path, journal = src / EXPERIMENT_FILE, src / JOURNAL
    if not meta_path.is_file() or not journal.is_file():
        raise ConfigError(
            f"--warm-start {src}: not an hpsearch experiment folder (no "
            f"{EXPERIMENT_FILE} or {JOURNAL}); pass a folder an earlier sweep wrote"
        )
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    study = optuna.load_study(
        study_name=json.loads(meta_path.read_text())["study_name"], storage=storage
    )
    wanted = [d.name.lower() for d in study.directions]
    if wanted != _directions(space):
        raise ConfigError(
            f"--warm-start {src}: its objectives ({', '.join(wanted)}) differ from "
            f"this space's ({', '.join(_directions(space))}); warm-start from a "
            "sweep with the same objectives"
        )
    return study.get_trials(deepcopy=True, states=(optuna.trial.TrialState.COMPLETE,))


def _seed_study(exp: Path, space: SearchSpace, study_name: str, trials: list) -> None:
    """Create this experiment's study holding the earlier trials; OptunaSearch then loads it
    (load_if_exists) and its sampler starts from them. They do not count towards num_samples."""
    import optuna

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp / JOURNAL))
    )
    study = optuna.create_study(
        study_name=study_name, storage=storage, directions=_directions(space)
    )
    study.add_trials(trials)


# ---------------------------------------------------------------------------- entry points
def run_sweep(space_path: str | Path, settings: SweepSettings | None = None) -> Path:
    """Validate, lay out the experiment folder, run every trial, write the report."""
    settings = settings or SweepSettings()
    space_overrides = {}
    if settings.num_samples:
        space_overrides["search.num_samples"] = settings.num_samples
    space = load_search_space(space_path, overrides=space_overrides or None)
    if settings.smoke_test and space.sampler != "grid":
        space.num_samples = min(space.num_samples, 2)
    # Every check comes before the first write and before Ray starts.
    extra = _check_inputs(space, settings)
    exp = _experiment_dir(settings, space)
    notes = _check_data(space, extra)
    earlier = _load_warm_start(settings.warm_start, space) if settings.warm_start else []
    exp.parent.mkdir(parents=True, exist_ok=True)
    try:
        exp.mkdir()
    except FileExistsError:  # another sweep took the name since _experiment_dir looked
        raise ConfigError(
            f"experiment folder {exp} was just created by someone else: pass another --name"
        ) from None
    write_text_atomic(exp / SPACE_COPY, Path(space_path).read_text())
    meta = {
        "name": exp.name,
        "study_name": exp.name,
        "space": str(Path(space_path).resolve()),
        "metric": space.metric,
        "mode": space.mode,
        "objectives": [asdict(o) for o in space.objectives],
        "total_trials": space.total_trials(),
        "trial_overrides": extra,
        "settings": asdict(settings),
        "data_notes": notes,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
    }
    write_json_atomic(exp / EXPERIMENT_FILE, meta)
    if earlier:
        _seed_study(exp, space, meta["study_name"], earlier)
        print(
            f"warm start: {len(earlier)} finished trials of {settings.warm_start} seed the sampler"
        )
    _init_ray(settings.address, settings.num_cpus)
    tuner = _build_tuner(exp, space, meta)
    _fit(tuner, exp)
    if settings.report:
        _report(exp)
    return exp


def resume_sweep(
    exp_dir: str | Path,
    address: str | None = None,
    num_cpus: int | None = None,
    report: bool = True,
) -> Path:
    """Continue an interrupted experiment: finished trials stay, unfinished ones resume."""
    exp = Path(exp_dir).expanduser().resolve()
    if not (exp / EXPERIMENT_FILE).is_file():
        raise ConfigError(
            f"{exp} is not an hpsearch experiment folder (no {EXPERIMENT_FILE}): "
            "pass the folder a sweep wrote"
        )
    try:
        meta = json.loads((exp / EXPERIMENT_FILE).read_text())
        meta["settings"], meta["trial_overrides"]  # noqa: B018 (presence check)
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(
            f"{exp / EXPERIMENT_FILE} is unreadable or incomplete: the experiment "
            "cannot be resumed; start a new sweep with another --name"
        ) from None
    space = load_search_space(exp / SPACE_COPY)
    _faults.check_env()
    from ray import tune

    if not tune.Tuner.can_restore(str(exp)):
        raise ConfigError(
            f"{exp}: Ray's experiment state is missing (the sweep stopped before its "
            "first trial started): start a new sweep with another --name, or "
            f"remove {exp} first"
        )
    _init_ray(address, num_cpus)
    tuner = _build_tuner(exp, space, meta, restore=True)
    _fit(tuner, exp)
    if report:
        _report(exp)
    return exp


ABANDONED = (
    "abandoned: the sweep driver stopped while this trial was starting or running, "
    "before Ray saved its state; the resumed sweep ran a new trial in its place"
)


def _fit(tuner: Any, exp: Path) -> None:
    t0, started_at = time.perf_counter(), time.time()
    grid = tuner.fit()
    timing_path = exp / "sweep_timing.json"  # one entry per fit: the first run, each resume
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else []
    write_json_atomic(timing_path, [*timing, {"started_at": started_at, "ended_at": time.time()}])
    known = {Path(r.path).name.removeprefix("trial_") for r in grid if r.path}
    abandoned = reconcile_after_fit(exp, known)
    if abandoned:
        print(
            f"{len(abandoned)} trial(s) abandoned by a killed driver, marked failed: "
            f"{', '.join(abandoned)}"
        )
    counts = trial_status_counts(exp)
    print(
        f"sweep {exp.name}: {len(grid)} trials in {time.perf_counter() - t0:.0f} s; "
        + ", ".join(f"{n} {s}" for s, n in counts.items())
    )


def reconcile_after_fit(exp: Path, known: set[str]) -> list[str]:
    """Close what a killed driver left open, once the sweep has ended; returns the trial ids.

    Ray saves its experiment state every few seconds, so a driver killed just after a trial
    started can leave a trial Ray never heard of: its record says "running" and its Optuna
    trial stays RUNNING, though the resumed sweep ran a new trial in its place. Such records
    become "failed" with the reason ABANDONED, and RUNNING Optuna trials become FAIL.
    """
    abandoned = []
    for path in sorted((exp / "trials").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("status") in ("running", "pending") and record.get("trial_id") not in known:
            record.update(status="failed", reason=ABANDONED)
            write_json_atomic(path, record)
            abandoned.append(str(record["trial_id"]))
    journal = exp / JOURNAL
    meta_path = exp / EXPERIMENT_FILE
    if journal.is_file() and meta_path.is_file():
        import optuna

        study_name = json.loads(meta_path.read_text())["study_name"]
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(journal))
        )
        study = optuna.load_study(study_name=study_name, storage=storage)
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return abandoned


def trial_status_counts(exp: Path) -> dict[str, int]:
    """{status: number of trials} from trials/*.json; an unreadable record counts as corrupt."""
    statuses = []
    for path in sorted((exp / "trials").glob("*.json")):
        try:
            statuses.append(str(json.loads(path.read_text())["status"]))
        except (OSError, ValueError, KeyError, TypeError):
            statuses.append("corrupt")
    return {s: statuses.count(s) for s in sorted(set(statuses))}


def _report(exp: Path) -> None:
    from reports import ReportError, build_report

    _faults.in_report(exp)  # test hook; inert unless HPSEARCH_FAULT
    try:
        out = build_report(exp)
    except ReportError as exc:
        raise ConfigError(str(exc)) from None
    print(f"report: {out}")


def settings_from_args(args: argparse.Namespace) -> SweepSettings:
    overrides = dict(parse_override(o) for o in args.overrides)
    return SweepSettings(
        name=args.name,
        storage_path=args.storage_path,
        num_samples=args.num_samples,
        max_concurrent=args.max_concurrent,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        workers_per_trial=args.workers_per_trial,
        data_dir=args.data_dir,
        address=args.address,
        num_cpus=args.num_cpus,
        max_failures=args.max_failures,
        time_limit_per_trial=args.time_limit_per_trial,
        exist_ok_suffix=args.exist_ok_suffix,
        smoke_test=args.smoke_test,
        warm_start=args.warm_start,
        report=not args.no_report,
        overrides=overrides,
    )


def run_sweep_command(args: argparse.Namespace) -> int:
    exp = run_sweep(args.space, settings_from_args(args))
    print(f"experiment folder: {exp}")
    return 0


def run_resume_command(args: argparse.Namespace) -> int:
    resume_sweep(
        args.exp_dir, address=args.address, num_cpus=args.num_cpus, report=not args.no_report
    )
    return 0
