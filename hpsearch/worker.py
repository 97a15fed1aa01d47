"""What runs inside Ray workers: the Tune function trainable, the Ray Train worker loop, the
reporter callback, and where a restarted trial resumes from.

The driver hands every trial the typed `Experiment` (settings, per-trial overrides, folder) and
the parsed `SearchSpace` through `tune.with_parameters`; nothing here re-reads experiment.json
or re-parses the space. Each trial is one multitask minBERT run (`trainables.minbert.trainer`):
a single-process DeepSpeed engine inside the Tune trial, or, with `workers_per_trial > 1`, N
data-parallel DeepSpeed workers through Ray Train (the Train V2 pattern: a Tune function
trainable that fits a `TorchTrainer`).

A trial whose run folder already holds its final summary is never trained again, even when
Ray's own state (saved every few seconds) lags behind a killed driver; a NaN loss or a time
limit ends a trial as failed at once, never retried and never ranked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainables.atomic import write_json_atomic
from trainables.errors import ConfigError, TrialFailure
from trainables.minbert.callbacks import TimeLimit, TrainerCallback

if TYPE_CHECKING:
    from hpsearch.experiment import Experiment
    from hpsearch.space import SearchSpace
    from trainables.minbert.config import TrialConfig
    from trainables.minbert.trainer import MultitaskTrainer

__all__ = [
    "MAIN_EVAL",
    "RAY_POINTER",
    "TrialRun",
    "TuneReporter",
    "finished_summary",
    "pointed_checkpoint",
    "resume_point",
    "tune_trial",
    "write_pointer",
]

# ray.tune.report / ray.train.report: (metrics, checkpoint=...) -> None
ReportFn = Callable[..., None]

# What a Ray checkpoint holds: a pointer to the run checkpoint, which is already on the
# experiment's storage (every node sees it). Ray copies each reported checkpoint into its own
# trial folder; a full copy was 300 MB per evaluation for MiniLM, read by nothing that the
# run folder could not serve.
RAY_POINTER = "run_checkpoint.json"
# The result key ASHA counts its rungs in (hpsearch.searcher.asha_scheduler): the evaluation's
# index among those of the trial's last phase, the multitask loop that the objective judges (1
# for its first). An evaluation of an earlier phase (sequential_sts's STS-only epochs, where the
# SST and Quora heads are untrained) carries none, so ASHA never stops a trial on it and its
# grace period counts what `train.epochs x train.evals_per_epoch` says. Ray's own
# training_iteration counts every evaluation (the Optuna study's intermediate-value steps).
MAIN_EVAL = "main_eval"
# Seconds a reused worker waits for the previous trial's thread to end (its engine destroyed,
# its files closed) before Ray gives the process up; Ray's default, 2 s, is short for a
# trial stopped mid-training on a loaded machine.
THREAD_END_TIMEOUT_S = "60"


@dataclass(frozen=True)
class TrialRun:
    """One training run of a trial, as a Tune trial or a Ray Train worker runs it."""

    cfg: TrialConfig
    run_dir: Path
    resume_from: Path | None
    time_limit: float | None


class TuneReporter(TrainerCallback):
    """Reports every evaluation to Ray Tune (or Ray Train), with its checkpoint.

    The final evaluation is reported last of all, from `on_train_end`, once the trainer's own
    callbacks have written `summary.json` and closed the TensorBoard events: as soon as Ray has
    the final result it may stop the trial's process (ASHA does, at a trial's last rung), and a
    trial recorded as finished must have its files on disk.

    The trial's TensorBoard HParams session is the driver's (`hpsearch.hparams`), so that
    trials stopped or failed have one too: the trainer's TensorBoardLogger writes scalars only.
    """

    hparams_elsewhere = True

    def __init__(self, report_fn: ReportFn, rank: int = 0, in_tune: bool = True) -> None:
        self.report_fn = report_fn
        self.rank = rank
        self.in_tune = in_tune
        self._final_checkpoint: Path | None = None

    def on_evaluate(
        self, trainer: MultitaskTrainer, metrics: dict[str, Any], checkpoint: Path | None
    ) -> None:
        if metrics.get("final"):
            self._final_checkpoint = checkpoint  # reported with the summary, in on_train_end
            return
        self._report(trainer, metrics, checkpoint)

    def on_train_end(self, trainer: MultitaskTrainer, summary: dict[str, Any]) -> None:
        self._report(trainer, summary, self._final_checkpoint)

    def _report(
        self, trainer: MultitaskTrainer, metrics: dict[str, Any], checkpoint: Path | None
    ) -> None:
        from ray.train import Checkpoint as TrainCheckpoint
        from ray.tune import Checkpoint as TuneCheckpoint

        result = {k: v for k, v in metrics.items() if v is not None}
        result["node_id"] = _node_id()
        main_eval = main_phase_eval(trainer, metrics.get("phase"))
        if main_eval is not None:
            result[MAIN_EVAL] = main_eval
        if not (checkpoint and self.rank == 0):
            self.report_fn(result, checkpoint=None)
            return
        kind = TuneCheckpoint if self.in_tune else TrainCheckpoint
        # Ray copies what it is given into its own folder, during this call: a pointer to the
        # run checkpoint, not the checkpoint's hundreds of MB (see RAY_POINTER).
        with tempfile.TemporaryDirectory(prefix="hpsearch-ray-checkpoint-") as folder:
            write_pointer(Path(folder), checkpoint)
            self.report_fn(result, checkpoint=kind.from_directory(folder))


def main_phase_eval(trainer: MultitaskTrainer, phase: str | None) -> int | None:
    """The index of the trainer's latest evaluation among those of its last phase (1 for the
    first), or None when it evaluated in an earlier phase (see MAIN_EVAL).

    Counted from the trainer's `evals_done`, which a resumed trial restores from its
    checkpoint, less the evaluations the earlier phases make (each of their epochs, whole).
    """
    main = trainer.schedule[-1].phase.name
    if phase != main:
        return None
    before = sum(len(e.eval_points()) for e in trainer.schedule if e.phase.name != main)
    return trainer.evals_done - before


def _node_id() -> str:
    import ray

    try:
        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # not inside Ray (cannot happen in a sweep, but harmless)
        return "local"


def _train(run: TrialRun, report_fn: ReportFn, rank: int, in_tune: bool = True) -> None:
    """Train one trial (in this process), report each evaluation and the final summary."""
    from trainables.minbert.trainer import train_trial

    callbacks: list[TrainerCallback] = [TuneReporter(report_fn, rank, in_tune)]
    if run.time_limit:
        callbacks.insert(0, TimeLimit(run.time_limit))
    try:  # the final evaluation's report carries "final": True and the train/test scores
        train_trial(run.cfg, run.run_dir, callbacks=callbacks, resume_from=run.resume_from)
    except TrialFailure as exc:
        # A NaN loss or the time limit: retrying would fail the same way. Reported as a
        # failed final result, so the trial ends at once, marked failed, and is never ranked.
        if rank == 0:
            write_json_atomic(
                run.run_dir / "summary.json", {"status": "failed", "reason": str(exc)}
            )
        report_fn(failed_result(str(exc)), checkpoint=None)


def failed_result(reason: str) -> dict[str, Any]:
    """The final result of a trial that failed for good."""
    return {"final": True, "failed": 1, "error": reason, "dev_overall": float("nan")}


def finished_summary(run_dir: Path) -> dict[str, Any] | None:
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


def write_pointer(folder: Path, checkpoint: Path) -> Path:
    """Write into `folder` the Ray checkpoint that stands for the sealed run checkpoint
    `checkpoint` (RUN/checkpoints/step-N): its name and its manifest's digest."""
    manifest = (checkpoint / "MANIFEST.json").read_bytes()
    pointer = {
        "format": 1,
        "checkpoint": checkpoint.name,
        "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
    }
    write_json_atomic(folder / RAY_POINTER, pointer)
    return folder / RAY_POINTER


def pointed_checkpoint(ray_checkpoint: Path, run_dir: Path) -> tuple[Path | None, str | None]:
    """The run checkpoint a Ray checkpoint stands for, or (None, why not).

    A Ray checkpoint holding RAY_POINTER names a checkpoint of the trial's own run folder,
    which must still be there with the same manifest. One without it (as earlier versions
    reported) is a full copy and stands for itself.
    """
    path = ray_checkpoint / RAY_POINTER
    if not path.is_file():
        return ray_checkpoint, None
    try:
        pointer = json.loads(path.read_text())
        name, digest = str(pointer["checkpoint"]), str(pointer["manifest_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"{RAY_POINTER} in Ray's checkpoint is unreadable"
    if not re.fullmatch(r"step-\d{8}", name):
        return None, f"{RAY_POINTER} names {name!r}, not a run checkpoint"
    folder = run_dir / "checkpoints" / name
    try:
        manifest = (folder / "MANIFEST.json").read_bytes()
    except OSError:
        return None, f"{name} is no longer in the run folder"
    if hashlib.sha256(manifest).hexdigest() != digest:
        return None, f"{name} in the run folder is not the one Ray was given"
    return folder, None


def resume_point(ray_checkpoint: Path | None, run_dir: Path) -> tuple[Path | None, str]:
    """Where a (re)started trial continues from, and why.

    The run checkpoint Ray's checkpoint (the one reported with the trial's last result)
    points to, when it is intact; else the newest intact checkpoint in the trial's run
    folder; else the beginning. Every checkpoint is checked against its MANIFEST.json
    checksums first.
    """
    from trainables.minbert.run_checkpoint import find_checkpoint, verify_checkpoint

    problem = None
    if ray_checkpoint is not None:
        target, problem = pointed_checkpoint(ray_checkpoint, run_dir)
        if target is not None:
            problem = verify_checkpoint(target)
            if problem is None:
                return target, f"resuming from Ray's checkpoint {target.name}"
    try:
        local = find_checkpoint(run_dir)
    except ConfigError:
        local = None
    why = f"Ray's checkpoint is unusable ({problem}); " if problem else ""
    if local is not None:
        return local, f"{why}resuming from {local.relative_to(run_dir)}"
    return None, f"{why}starting from the beginning (no intact checkpoint)"


def tune_trial(config: dict[str, Any], experiment: Experiment, space: SearchSpace) -> None:
    """The Tune function trainable: resolve the sampled point, then train (or fan out)."""
    import ray.tune

    # Read by Ray in this process when it hands it the next trial (reuse_actors).
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", THREAD_END_TIMEOUT_S)
    cfg = space.resolve(config, experiment.trial_overrides)
    trial_id = str(ray.tune.get_context().get_trial_id())
    run_dir = experiment.run_dir(trial_id)
    done = finished_summary(run_dir)
    if done is not None:
        # Already ran to its end: a driver killed before Ray saved that fact restarts it.
        # Report the stored result again instead of training a second time.
        print(f"trial {trial_id} already ended ({done['status']}): not run again", flush=True)
        result = done if done["status"] == "finished" else failed_result(done["reason"])
        ray.tune.report({k: v for k, v in result.items() if v is not None})
        return
    checkpoint = ray.tune.get_checkpoint()
    settings = experiment.settings
    context = checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext()
    with context as ray_dir:
        resume_from, note = resume_point(Path(ray_dir) if ray_dir else None, run_dir)
        if checkpoint is not None or resume_from is not None:
            print(f"trial {trial_id}: {note}", flush=True)
        run = TrialRun(cfg, run_dir, resume_from, settings.time_limit_per_trial)
        if not settings.data_parallel:
            _train(run, ray.tune.report, rank=0)
            return
        _fit_data_parallel(run, experiment, trial_id)


def _train_worker(loop_config: dict[str, TrialRun]) -> None:
    """One data-parallel DeepSpeed worker inside Ray Train."""
    import ray.train

    context = ray.train.get_context()
    os.environ.setdefault("LOCAL_RANK", str(context.get_local_rank()))
    os.environ.setdefault("RANK", str(context.get_world_rank()))
    os.environ.setdefault("WORLD_SIZE", str(context.get_world_size()))
    _train(loop_config["run"], ray.train.report, rank=context.get_world_rank(), in_tune=False)


def _fit_data_parallel(run: TrialRun, experiment: Experiment, trial_id: str) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    settings = experiment.settings
    # untyped in Ray: a Ray Train callback that forwards each report to the Tune trial
    report_to_tune: Any = TuneReportCallback()  # type: ignore[no-untyped-call]
    per_worker = {"CPU": settings.cpus_per_worker}
    if settings.gpus_per_trial:
        per_worker["GPU"] = settings.gpus_per_trial
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"run": run},
        scaling_config=ScalingConfig(
            num_workers=settings.workers_per_trial,
            use_gpu=bool(settings.gpus_per_trial),
            resources_per_worker=per_worker,
        ),
        run_config=RunConfig(
            name=trial_id,
            storage_path=str(experiment.train_runs_dir),
            callbacks=[report_to_tune],
        ),
    )
    trainer.fit()
