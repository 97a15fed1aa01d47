"""The multitask training loop: one trial configuration, trained through a DeepSpeed engine.

    hpsearch train configs/run.yaml train.lr=2e-5 --out runs/lr2e-5

Lifecycle (torchtune's recipe shape): `setup` builds tokenizer, data, model and engine;
`train` walks the epochs of the trial's phases (the multitask loop, and whatever the phase
plan puts around it); `save_checkpoint` / `load_checkpoint` capture everything needed to
continue exactly (weights, optimizer, step, position in the epoch, random states); `cleanup`
frees the engine. What happens around the loop (metric files, TensorBoard, Ray reports,
progress bars, the reliability tests' faults) hangs off callbacks.

The run directory holds:
    config.json            the resolved trial configuration
    data_report.json       rows dropped per file and why, data notes
    metrics.jsonl          one line per dev evaluation
    summary.json           final dev / train-subset / held-out test scores, time, memory; with
                           train.select_best_dev those of the best dev evaluation's weights
                           (selected_step, selected_eval; the last one's dev as last_dev_*)
    predictions/           CS224N submission files ({sst,para,sts}-{dev,test}-output.csv),
                           of the same weights as summary.json's scores
    checkpoints/<tag>/     DeepSpeed checkpoints, each sealed by a MANIFEST.json (with the
                           best dev evaluation's weights, best_weights.pt, if it came before)
    tb/                    TensorBoard events
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trainables.atomic import write_json_atomic
from trainables.errors import NonFiniteLossError
from trainables.minbert import faults, run_checkpoint
from trainables.minbert.callbacks import MetricsFileWriter, TensorBoardLogger, TrainerCallback
from trainables.minbert.config import TrialConfig
from trainables.minbert.data import TASKS, EncodedSplit, load_multitask_data
from trainables.minbert.encoder import build_encoder
from trainables.minbert.engine import build_engine, optimizer_step
from trainables.minbert.evaluation import evaluate, to_device
from trainables.minbert.extensions.loss_terms import make_loss_terms
from trainables.minbert.extensions.optimization import make_lr_schedule, make_param_groups
from trainables.minbert.extensions.pair_similarity import make_pair_similarity
from trainables.minbert.extensions.phases import make_phases
from trainables.minbert.extensions.surgery import make_surgery
from trainables.minbert.extensions.task_layers import make_task_layers
from trainables.minbert.multitask import MultitaskBert
from trainables.minbert.runtime import (
    barrier,
    dist_backend,
    dist_rank_and_size,
    peak_memory_mb,
    release_device_memory,
    release_host_memory,
    reset_peak_memory,
    seed_everything,
)
from trainables.minbert.schedule import ScheduledEpoch, build_schedule
from trainables.minbert.streams import TaskStream, open_streams

__all__ = ["MultitaskTrainer", "train_trial"]

DEV_SCORES = ("dev_sst_acc", "dev_para_acc", "dev_sts_r", "dev_overall")


class MultitaskTrainer:
    """One trial's training: set up, train (resumably), evaluate, checkpoint, clean up."""

    def __init__(
        self,
        cfg: TrialConfig,
        out_dir: str | Path,
        callbacks: Sequence[TrainerCallback] = (),
        resume_from: str | Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.rank, self.world_size = dist_rank_and_size()
        self._tensorboard = TensorBoardLogger(self.out_dir / "tb")
        own = [MetricsFileWriter(self.out_dir), self._tensorboard]
        armed = faults.armed()  # the reliability tests' faults; none in real runs
        injector = [faults.FaultInjector(armed)] if armed else []
        self.callbacks: list[TrainerCallback] = [
            *(own if self.rank == 0 else []),
            *callbacks,
            *injector,
        ]
        self.resume_from = Path(resume_from) if resume_from else None
        self.step = 0  # optimizer steps taken, over every phase
        self.evals_done = 0
        # Where the run stands: phase name, epoch, steps done in it, batches drawn per task.
        self.position: dict[str, Any] = {"phase": "", "epoch": 0, "index": 0, "consumed": {}}
        self.train_time_s = 0.0
        self.setup_time_s = 0.0
        self.resumed_from_step = 0  # the step of the checkpoint this run continued from
        self.best = run_checkpoint.BestCheckpoint()  # the best dev evaluation and its weights
        self._recent: list[dict[str, Any]] = []  # step logs since the last evaluation
        self.first_step_at: float | None = None

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        t0 = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "predictions").mkdir(exist_ok=True)
        if self.rank == 0:
            write_json_atomic(self.out_dir / "config.json", cfg.model_dump())
        for cb in self.callbacks:
            cb.on_setup(self)
        reset_peak_memory()  # this trial's peak, not an earlier trial's in the same process
        seed_everything(cfg.train.seed)
        self.tokenizer, encoder = build_encoder(cfg)
        self.data = load_multitask_data(cfg.data, self.tokenizer, cfg.model.pair_encoding)
        if self.rank == 0:
            self._write_data_report()
        sts_head = make_pair_similarity(cfg, encoder.config.hidden_size)
        model = MultitaskBert(
            encoder,
            cfg.model.dropout,
            cfg.model.pair_encoding,
            cfg.model.pooling,
            sts_head,
            task_layers=make_task_layers(cfg),  # None unless extensions.task_layers
            freeze_word_embeddings=cfg.model.freeze_word_embeddings,
        )
        self.phases = make_phases(cfg, TASKS)
        self.surgery = make_surgery(cfg)
        self.loss_terms = make_loss_terms(cfg)  # extra terms of the task losses; often none
        self.schedule = build_schedule(self.phases, self._batches_per_task, cfg.train.max_steps)
        self.total_steps = sum(len(epoch.steps) for epoch in self.schedule)
        self.engine = build_engine(
            model,
            cfg.train,
            total_steps=self.total_steps,
            param_groups=make_param_groups(cfg),
            lr_schedule=make_lr_schedule(cfg),
        )
        self.model: MultitaskBert = self.engine.module
        self.shared_params = self.model.shared_parameters()
        if self.resume_from is not None:
            self.load_checkpoint(self.resume_from)
            self.resumed_from_step = self.step
        self.setup_time_s = time.perf_counter() - t0

    def _write_data_report(self) -> None:
        report = {
            "dropped": self.data.dropped,
            "notes": self.data.notes,
            "sizes": self.data.sizes(),
        }
        write_json_atomic(self.out_dir / "data_report.json", report)

    def _batches_per_task(self, task: str) -> int:
        """Batches in one pass over the task's training set, for this rank (at least 1)."""
        per_pass = self.data.train[task].num_batches(self.cfg.train.batch_size)
        return max(1, per_pass // self.world_size)

    # ------------------------------------------------------------------ train
    def train(self) -> dict[str, Any]:
        """Run the remaining steps; evaluate, checkpoint and report on the way; summarise."""
        for cb in self.callbacks:
            cb.on_train_start(self)
        t0 = time.perf_counter() - self.train_time_s
        scheduled = [epoch.key for epoch in self.schedule]  # every epoch, done or not
        here = (self.position["phase"], self.position["epoch"])
        resume_at = scheduled.index(here) if here in scheduled else 0
        last_epoch = self.schedule[-1]
        phase_name, epoch_progress = last_epoch.phase.name, float(last_epoch.epoch + 1)
        for k, epoch in enumerate(self.schedule):
            if k < resume_at:  # finished before the checkpoint we resumed from
                continue
            phase_name = epoch.phase.name
            start = int(self.position["index"]) if k == resume_at else 0
            streams = self._open_streams(epoch, self.position["consumed"] if start else {})
            evals_at = epoch.eval_points()
            for index in range(start, len(epoch.steps)):
                logs = self._train_step(epoch.steps[index], streams)
                self.position = {
                    "phase": phase_name,
                    "epoch": epoch.epoch,
                    "index": index + 1,
                    "consumed": {t: s.consumed for t, s in streams.items()},
                }
                for cb in self.callbacks:
                    cb.on_step_end(self, logs)
                epoch_progress = epoch.epoch + (index + 1) / epoch.full_length
                last = k == len(self.schedule) - 1 and index + 1 == len(epoch.steps)
                if index + 1 in evals_at and not last:  # the last evaluation is the final one
                    self.train_time_s = time.perf_counter() - t0
                    self._evaluate_and_report(phase_name, epoch_progress)
        self.train_time_s = time.perf_counter() - t0
        summary = self._evaluate_and_report(phase_name, epoch_progress, final=True)
        for cb in self.callbacks:
            cb.on_train_end(self, summary)
        return summary

    def _open_streams(
        self, epoch: ScheduledEpoch, consumed: dict[str, int]
    ) -> dict[str, TaskStream]:
        return open_streams(
            epoch.phase,
            epoch.epoch,
            self.data.train,
            self.cfg.train.batch_size,
            self.tokenizer,
            self.cfg.train.seed,
            consumed,
            self.rank,
            self.world_size,
        )

    def _train_step(
        self, tasks: tuple[str, ...], streams: dict[str, TaskStream]
    ) -> dict[str, Any]:
        """One optimizer step: a batch per task, per-task losses, combined gradients, update."""
        step = self.step + 1
        for cb in self.callbacks:
            cb.on_step_begin(self, step)
        self.model.train()
        # Batches are built on the CPU; the engine's module lives on its device (a GPU).
        batches = {t: to_device(streams[t].next(), self.engine.device) for t in tasks}
        term_values: dict[str, torch.Tensor] = {}  # "<term>_<task>": a loss term's value
        losses = {t: self.model.loss(b, self.loss_terms, term_values) for t, b in batches.items()}
        for cb in self.callbacks:
            losses = cb.on_losses(self, step, losses)
        for task, loss in losses.items():
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite loss at step {step} (task {task}: {loss.item()})"
                )
        stats = optimizer_step(self.engine, losses, self.shared_params, self.surgery)
        self.step = step
        if self.first_step_at is None:
            self.first_step_at = time.time()  # wall clock: sweep overhead is measured to here
        logs: dict[str, Any] = {"step": self.step, "lr": self.engine.get_lr()[0]}
        logs.update({f"loss_{t}": loss.item() for t, loss in losses.items()})
        logs.update({f"loss_{k}": v.item() for k, v in term_values.items()})
        logs.update({f"pcgrad_{k.replace('/', '_')}": v for k, v in stats.items()})
        self._recent.append(logs)
        return logs

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self, splits: dict[str, EncodedSplit], prefix: str, write_predictions: bool = False
    ) -> dict[str, float]:
        """Scores of `splits` ("<prefix>_sst_acc", ...); rank 0 may write submission files."""
        predictions = (
            self.out_dir / "predictions" if write_predictions and self.rank == 0 else None
        )
        return evaluate(
            self.model,
            splits,
            prefix,
            self.tokenizer,
            self.cfg.train.eval_batch_size,
            self.engine.device,
            predictions,
        )

    def _evaluate_and_report(
        self, phase: str, epoch: float, final: bool = False
    ) -> dict[str, Any]:
        """Dev metrics (and, at the end, train-subset and held-out test metrics too), a
        checkpoint, and the callbacks. The final evaluation is one report, not two.

        With `train.select_best_dev` each evaluation is offered to `self.best`, and the
        final one's dev, train and test scores (and prediction files) are those of the best
        dev evaluation's weights, loaded after the final checkpoint is saved; the last
        evaluation's dev scores stay as "last_dev_*". Every evaluation before the final is
        reported as it was measured.
        """
        recent, self._recent = self._recent, []
        t0 = time.perf_counter()
        metrics: dict[str, Any] = {
            "step": self.step,
            "epoch": round(epoch, 4),
            "phase": phase,
            "time_s": round(self.train_time_s, 3),
        }
        metrics.update(self.evaluate(self.data.dev, "dev", write_predictions=final))
        for task in TASKS:
            vals = [r[f"loss_{task}"] for r in recent if f"loss_{task}" in r]
            metrics[f"loss_{task}"] = sum(vals) / len(vals) if vals else None
        rates = [r["pcgrad_conflict_rate"] for r in recent if "pcgrad_conflict_rate" in r]
        metrics["pcgrad_conflict_rate"] = sum(rates) / len(rates) if rates else None
        self.evals_done += 1
        if self.cfg.train.select_best_dev:
            record = {"eval": self.evals_done, **metrics}
            record = {k: record[k] for k in ("step", "eval", "epoch", "phase", *DEV_SCORES)}
            self.best.offer(record, lambda: run_checkpoint.module_weights(self.engine))
        every = self.cfg.train.checkpoint_every_evals
        checkpoint, save_s = None, 0.0
        if final or (every and self.evals_done % every == 0):
            t_save = time.perf_counter()
            checkpoint = self.save_checkpoint()  # before the final swaps in the best weights
            save_s = time.perf_counter() - t_save
        if final:
            metrics.update(self._select_for_final(metrics))
            metrics.update(self.evaluate(self.data.train_eval, "train"))
            metrics.update(self.evaluate(self.data.test, "test", write_predictions=True))
            metrics.update(
                {
                    "final": True,
                    "status": "finished",
                    "steps": self.step,
                    # train_time_s stops before this last evaluation; this is its time
                    "final_eval_s": round(time.perf_counter() - t0 - save_s, 3),
                    "epochs": self.cfg.train.epochs,
                    "world_size": self.world_size,
                    "device": str(self.engine.device),  # "cuda:0", "cpu"
                    "dist_backend": dist_backend(),  # "nccl" on GPUs, "gloo" on CPUs
                    "train_time_s": round(self.train_time_s, 3),
                    "setup_time_s": round(self.setup_time_s, 3),
                    "first_step_at": self.first_step_at,
                    "resumed_from_step": self.resumed_from_step,
                    "peak_mem_mb": peak_memory_mb(),
                }
            )
        for cb in self.callbacks:
            cb.on_evaluate(self, metrics, checkpoint)
        return metrics

    def _select_for_final(self, last: dict[str, Any]) -> dict[str, Any]:
        """The final evaluation's selection: the last evaluation's dev scores as "last_dev_*",
        which evaluation was selected ("selected_step", "selected_eval", ...), and, when that
        is an earlier one, its weights loaded and its dev scores (and dev prediction files)
        in place of the last's. Without selection, or without a finite dev score, the last."""
        out: dict[str, Any] = {f"last_{k}": last[k] for k in DEV_SCORES}
        best = self.best.record if self.cfg.train.select_best_dev else None
        chosen = best if best is not None else {"eval": self.evals_done, **last}
        out.update({f"selected_{k}": chosen[k] for k in ("step", "eval", "epoch", "phase")})
        out["select_best_dev"] = self.cfg.train.select_best_dev
        if best is not None and best["step"] != self.step and self.best.weights is not None:
            run_checkpoint.load_module_weights(self.engine, self.best.weights)
            out.update(self.evaluate(self.data.dev, "dev", write_predictions=True))
        return out

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write a checkpoint and seal it; returns its folder. Half-written ones never look whole."""
        root = self.out_dir / "checkpoints"
        tag = run_checkpoint.tag_of(self.step)
        staging = run_checkpoint.stage(root, self.step, clean=self.rank == 0)
        barrier()
        self.engine.save_checkpoint(str(staging), tag=tag, save_latest=False)
        for cb in self.callbacks:
            cb.on_checkpoint_staged(self, self.step, staging)
        barrier()
        if self.rank != 0:
            return root / tag
        return run_checkpoint.seal(
            staging,
            root,
            self.step,
            self._trainer_state(),
            keep=self.cfg.train.keep_checkpoints,
            extra_files=self.best.files(self.step),  # the best's weights, if from before
        )

    def _trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "evals_done": self.evals_done,
            "position": json.dumps(self.position),
            "train_time_s": self.train_time_s,
            **run_checkpoint.random_states(),
            "surgery": self.surgery.state_dict(),
            "best_dev": self.best.state_text(),
        }

    def load_checkpoint(self, path: Path) -> None:
        """Restore weights, optimizer, step, epoch position and random states from `path`.

        `path` is a checkpoint folder or a run folder (its newest sound checkpoint is used).
        """
        folder = run_checkpoint.find_checkpoint(path)
        state = run_checkpoint.load(self.engine, folder)
        self.step = int(state["step"])
        self.evals_done = int(state["evals_done"])
        self.position = json.loads(state["position"])
        self.train_time_s = float(state["train_time_s"])
        run_checkpoint.restore_random_states(state)
        self.surgery.load_state_dict(state["surgery"])
        self.best.restore(
            state.get("best_dev"),
            folder,
            self.step,
            lambda: run_checkpoint.module_weights(self.engine),
        )

    def cleanup(self) -> None:
        """Free the engine and every reference to the model's tensors, then the GPU memory
        they held: the trainer may outlive the trial (a traceback, a reused Ray worker)."""
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.destroy()
        self.engine = None
        for name in ("model", "shared_params"):  # the encoder's parameters, on its device
            self.__dict__.pop(name, None)
        self.best = run_checkpoint.BestCheckpoint()  # its CPU copy of the weights
        # A run stopped before its end (a scheduler's stop, an error) never reached
        # on_train_end: its event writer, with its thread and file, ends here.
        with contextlib.suppress(RuntimeError):  # never opened
            self._tensorboard.writer.close()
        release_device_memory()
        release_host_memory()


def train_trial(
    cfg: TrialConfig,
    out_dir: str | Path,
    callbacks: Sequence[TrainerCallback] = (),
    resume_from: str | Path | None = None,
) -> dict[str, Any]:
    """Set up, train, evaluate and clean up one trial; returns its summary."""
    trainer = MultitaskTrainer(cfg, out_dir, callbacks, resume_from)
    try:
        trainer.setup()
        return trainer.train()
    finally:
        trainer.cleanup()
