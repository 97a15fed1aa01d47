"""What happens around the training loop: metric files, TensorBoard, progress, time limits.

The loop in `trainer.py` calls these hooks at fixed points and knows nothing of what they do.
A Ray Tune trial adds its own callback (in `hpsearch`) that reports each evaluation; the fault
injector of the reliability tests (`faults.py`) is one more callback.

    on_setup(trainer)                            set-up begins, config.json just written
    on_train_start(trainer)                      after setup, before the first step
    on_step_begin(trainer, step)                 before optimizer step `step` draws its batches
    on_losses(trainer, step, losses) -> losses   the step's task losses, before they are checked
    on_step_end(trainer, logs)                   after every optimizer step
    on_checkpoint_staged(trainer, step, staging) a checkpoint written but not yet sealed
    on_evaluate(trainer, metrics, checkpoint)    after every dev evaluation (checkpoint or None)
    on_train_end(trainer, summary)               once, with the final summary
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from trainables.atomic import write_json_atomic, write_text_atomic
from trainables.errors import TimeLimitExceeded

if TYPE_CHECKING:
    from torch import Tensor
    from torch.utils.tensorboard import SummaryWriter

    from trainables.minbert.trainer import MultitaskTrainer


class TrainerCallback:
    """No-op hooks; override the ones you need. Steps are 1-based, counted over all phases."""

    # True on a callback that means someone else (a sweep's driver) writes the run's
    # TensorBoard HParams session; TensorBoardLogger then writes scalars only.
    hparams_elsewhere: ClassVar[bool] = False

    def on_setup(self, trainer: MultitaskTrainer) -> None:
        """Set-up begins: the run folder and config.json exist; data and model do not yet."""

    def on_train_start(self, trainer: MultitaskTrainer) -> None:
        pass

    def on_step_begin(self, trainer: MultitaskTrainer, step: int) -> None:
        """Optimizer step `step` is about to draw its batches."""

    def on_losses(
        self, trainer: MultitaskTrainer, step: int, losses: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """The per-task losses of step `step` before they are checked and combined.

        Return them unchanged, or replacements (the loop uses what the last callback returns).
        """
        return losses

    def on_checkpoint_staged(self, trainer: MultitaskTrainer, step: int, staging: Path) -> None:
        """The checkpoint of step `step` is written to `staging` and not yet sealed."""

    def on_step_end(self, trainer: MultitaskTrainer, logs: dict[str, Any]) -> None:
        pass

    def on_evaluate(
        self, trainer: MultitaskTrainer, metrics: dict[str, Any], checkpoint: Path | None
    ) -> None:
        pass

    def on_train_end(self, trainer: MultitaskTrainer, summary: dict[str, Any]) -> None:
        pass


class MetricsFileWriter(TrainerCallback):
    """`metrics.jsonl`, one line per evaluation, and `summary.json` at the end.

    At the start of a run the file is cut back to the evaluations up to the step the run
    starts from (none for a fresh start), so a run restarted after a crash neither repeats
    the evaluations it redoes nor keeps a half-written last line.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def on_train_start(self, trainer: MultitaskTrainer) -> None:
        path = self.out_dir / "metrics.jsonl"
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            if (
                isinstance(record, dict)
                and isinstance(record.get("step"), int)
                and record["step"] <= trainer.step
            ):
                kept.append(line + "\n")
        write_text_atomic(path, "".join(kept))

    def on_evaluate(
        self, trainer: MultitaskTrainer, metrics: dict[str, Any], checkpoint: Path | None
    ) -> None:
        line = json.dumps({k: _finite_or_none(v) for k, v in metrics.items()}, sort_keys=True)
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def on_train_end(self, trainer: MultitaskTrainer, summary: dict[str, Any]) -> None:
        write_json_atomic(self.out_dir / "summary.json", summary)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class TimeLimit(TrainerCallback):
    """Stops a run once it has taken `limit_s` seconds: checked after every optimizer step.

    Time counts from this callback's creation (so set-up is included) plus the training time
    of the run this one resumed; at the limit the run raises `TimeLimitExceeded`, a
    `TrialFailure`, and is marked failed rather than retried.
    """

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.t0 = time.monotonic()
        self.before_s = 0.0

    def on_train_start(self, trainer: MultitaskTrainer) -> None:
        self.before_s = trainer.train_time_s  # restored from the checkpoint when resuming

    def on_step_end(self, trainer: MultitaskTrainer, logs: dict[str, Any]) -> None:
        elapsed = self.before_s + time.monotonic() - self.t0
        if elapsed >= self.limit_s:
            raise TimeLimitExceeded(
                f"time limit of {self.limit_s:g} s reached at step "
                f"{logs['step']} ({elapsed:.1f} s)"
            )


class TensorBoardLogger(TrainerCallback):
    """Per-step task losses, learning rate, PCGrad statistics and dev metrics as scalars; and,
    for a run on its own (`hpsearch train`), the run's one TensorBoard HParams session.

    In a sweep the driver writes each trial's session (`hpsearch.hparams`), so that trials
    stopped early or failed are in the HParams view too; a callback with
    `hparams_elsewhere = True` among the trainer's callbacks (the sweep's reporter) says so,
    and this logger then writes scalars only. On its own, the session starts with the run
    (every scalar setting of the config as a hyperparameter, booleans as booleans) and ends
    with its outcome: success when training ends, failure when the process exits before that
    (an error, Ctrl-C).
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._writer: SummaryWriter | None = None
        self._session_open = False

    @property
    def writer(self) -> SummaryWriter:
        """The open event writer (from on_train_start on)."""
        if self._writer is None:
            raise RuntimeError("TensorBoardLogger: on_train_start has not been called")
        return self._writer

    def on_train_start(self, trainer: MultitaskTrainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if not any(cb.hparams_elsewhere for cb in trainer.callbacks):
            hparams = {
                k: v
                for k, v in trainer.cfg.to_flat_dict().items()
                if isinstance(v, (bool, int, float, str))
            }
            start_hparams_session(self.log_dir, hparams)
            self._session_open = True
            atexit.register(self._end_session, "failed")  # unless on_train_end comes first
        self._writer = SummaryWriter(str(self.log_dir))

    def on_step_end(self, trainer: MultitaskTrainer, logs: dict[str, Any]) -> None:
        step = logs["step"]
        for key, value in logs.items():
            if key.startswith("loss_"):
                self.writer.add_scalar(f"loss/{key[5:]}", value, step)
            elif key.startswith("pcgrad_"):
                self.writer.add_scalar(f"pcgrad/{key[7:]}", value, step)
        self.writer.add_scalar("train/lr", logs["lr"], step)

    def on_evaluate(
        self, trainer: MultitaskTrainer, metrics: dict[str, Any], checkpoint: Path | None
    ) -> None:
        for key, value in metrics.items():
            if key.startswith("dev_") and isinstance(value, float):
                self.writer.add_scalar(f"dev/{key[4:]}", value, metrics["step"])
        self.writer.flush()

    def on_train_end(self, trainer: MultitaskTrainer, summary: dict[str, Any]) -> None:
        self.writer.close()
        self._end_session("finished")

    def _end_session(self, status: str) -> None:
        if not self._session_open:
            return
        self._session_open = False
        atexit.unregister(self._end_session)
        if self.log_dir.is_dir():  # at exit, a test's temporary folder may be gone
            with contextlib.suppress(OSError):
                end_hparams_session(self.log_dir, status)


# ---------------------------------------------------------------- TensorBoard HParams sessions
# One session is one TensorBoard run (a folder of event files): its session-start summary
# (the hyperparameters), its scalars, and its session-end summary (the status). TensorBoard
# keeps the first summary of a tag in a run, so a session's start and end are each written
# once, in event files of their own (named *.hparams). The protobufs are built with the
# tensorboard package's hparams plugin modules, which need no TensorFlow.

# The HParams metrics: the dev scores TensorBoardLogger writes as scalars, and nothing else
# (no train-subset or held-out test score: a configuration is never chosen on those).
HPARAMS_METRICS = ("dev/overall", "dev/sst_acc", "dev/para_acc", "dev/sts_r")
HPARAMS_SUFFIX = ".hparams"  # the event files that hold a session's start or end
# run outcome -> TensorBoard's session status; a running session has no end yet ("unknown")
SESSION_STATUS = {"finished": "STATUS_SUCCESS", "stopped": "STATUS_SUCCESS"}


def start_hparams_session(
    log_dir: Path,
    hparams: dict[str, bool | int | float | str],
    hparam_infos: list[Any] | None = None,
    start_time: float | None = None,
) -> None:
    """Begin the HParams session of the run in `log_dir`: its hyperparameters, and the
    experiment's columns (`hparam_infos`, api_pb2.HParamInfo; by default one per
    hyperparameter, typed by its value) and HPARAMS_METRICS as its metrics.

    Session files an earlier attempt of the same run left are removed first, so that a run
    started again ends with the outcome of its last attempt (in a TensorBoard started after).
    """
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    if hparam_infos is None:
        hparam_infos = [api_pb2.HParamInfo(name=k, type=_data_type(v)) for k, v in hparams.items()]
    now = time.time() if start_time is None else start_time
    experiment = api_pb2.Experiment(
        hparam_infos=hparam_infos,
        metric_infos=[
            api_pb2.MetricInfo(
                name=api_pb2.MetricName(group="", tag=tag),
                dataset_type=api_pb2.DATASET_VALIDATION,
            )
            for tag in HPARAMS_METRICS
        ],
        time_created_secs=now,
    )
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=now)
    for key, value in hparams.items():
        if isinstance(value, bool):  # before int: a bool is an int to Python
            start.hparams[key].bool_value = value
        elif isinstance(value, (int, float)):
            start.hparams[key].number_value = value
        else:
            start.hparams[key].string_value = str(value)
    for old in log_dir.glob(f"events.out.tfevents.*{HPARAMS_SUFFIX}"):
        old.unlink(missing_ok=True)
    _write_summaries(
        log_dir,
        now,
        [
            (metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
            (
                metadata.SESSION_START_INFO_TAG,
                plugin_data_pb2.HParamsPluginData(session_start_info=start),
            ),
        ],
    )


def end_hparams_session(log_dir: Path, status: str, end_time: float | None = None) -> None:
    """End the HParams session in `log_dir`: "finished" and "stopped" (early, by the
    scheduler) show as success, anything else ("failed") as failure."""
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    now = time.time() if end_time is None else end_time
    end = plugin_data_pb2.SessionEndInfo(
        status=api_pb2.Status.Value(SESSION_STATUS.get(status, "STATUS_FAILURE")),
        end_time_secs=now,
    )
    data = plugin_data_pb2.HParamsPluginData(session_end_info=end)
    _write_summaries(log_dir, now, [(metadata.SESSION_END_INFO_TAG, data)])


def _data_type(value: bool | int | float | str) -> int:
    from tensorboard.plugins.hparams import api_pb2

    if isinstance(value, bool):
        return int(api_pb2.DATA_TYPE_BOOL)
    if isinstance(value, (int, float)):
        return int(api_pb2.DATA_TYPE_FLOAT64)
    return int(api_pb2.DATA_TYPE_STRING)


def _write_summaries(log_dir: Path, wall_time: float, items: list[tuple[str, Any]]) -> None:
    """One new event file in `log_dir` holding an hparams-plugin summary per (tag, data)."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams import metadata
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    summary = summary_pb2.Summary()
    for tag, data in items:
        summary.value.add(
            tag=tag,
            metadata=metadata.create_summary_metadata(data),
            tensor=metadata.NULL_TENSOR,
        )
    log_dir.mkdir(parents=True, exist_ok=True)
    writer = EventFileWriter(str(log_dir), filename_suffix=HPARAMS_SUFFIX)
    try:
        writer.add_event(event_pb2.Event(wall_time=wall_time, step=0, summary=summary))
    finally:
        writer.close()


class ProgressBar(TrainerCallback):
    """A tqdm bar over optimizer steps, with the latest losses and dev score."""

    def __init__(self) -> None:
        self.bar: Any = None  # a tqdm bar (tqdm has no type information) from on_train_start on
        self.last_dev: float | None = None

    def on_train_start(self, trainer: MultitaskTrainer) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=trainer.total_steps, initial=trainer.step, unit="step", dynamic_ncols=True
        )

    def on_step_end(self, trainer: MultitaskTrainer, logs: dict[str, Any]) -> None:
        post = {k[5:]: f"{v:.3f}" for k, v in logs.items() if k.startswith("loss_")}
        if self.last_dev is not None:
            post["dev"] = f"{self.last_dev:.3f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def on_evaluate(
        self, trainer: MultitaskTrainer, metrics: dict[str, Any], checkpoint: Path | None
    ) -> None:
        self.last_dev = metrics.get("dev_overall")

    def on_train_end(self, trainer: MultitaskTrainer, summary: dict[str, Any]) -> None:
        self.bar.close()
