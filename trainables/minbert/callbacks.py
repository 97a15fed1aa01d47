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

import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainables.atomic import write_json_atomic, write_text_atomic
from trainables.errors import TimeLimitExceeded

if TYPE_CHECKING:
    from torch import Tensor
    from torch.utils.tensorboard import SummaryWriter

    from trainables.minbert.trainer import MultitaskTrainer


class TrainerCallback:
    """No-op hooks; override the ones you need. Steps are 1-based, counted over all phases."""

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
    """Per-step task losses, learning rate, PCGrad statistics, dev metrics, and HParams."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._writer: SummaryWriter | None = None

    @property
    def writer(self) -> SummaryWriter:
        """The open event writer (from on_train_start on)."""
        if self._writer is None:
            raise RuntimeError("TensorBoardLogger: on_train_start has not been called")
        return self._writer

    def on_train_start(self, trainer: MultitaskTrainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

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
        hparams = {
            k: v
            for k, v in trainer.cfg.to_flat_dict().items()
            if isinstance(v, (int, float, str, bool))
        }
        final = {
            f"hparam/{k}": v
            for k, v in summary.items()
            if k.startswith(("dev_", "test_")) and isinstance(v, float) and math.isfinite(v)
        }
        self.writer.add_hparams(hparams, final, run_name="hparams")
        self.writer.close()


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
