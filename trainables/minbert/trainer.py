"""The multitask training loop: one trial configuration, trained through a DeepSpeed engine.

    hpsearch train configs/run.yaml train.lr=2e-5 --out runs/lr2e-5

Lifecycle (torchtune's recipe shape): `setup` builds tokenizer, data, model and engine;
`train` runs the optional STS-only phase and then the multitask loop; `save_checkpoint` /
`load_checkpoint` capture everything needed to continue exactly (weights, optimizer, step,
position in the epoch, random states); `cleanup` frees the engine. What happens around the
loop (metric files, TensorBoard, Ray reports, progress bars) hangs off callbacks.

The run directory holds:
    config.json            the resolved trial configuration
    data_report.json       rows dropped per file and why, data notes
    metrics.jsonl          one line per dev evaluation
    summary.json           final dev / train-subset / held-out test scores, time, memory
    predictions/           CS224N submission files ({sst,para,sts}-{dev,test}-output.csv)
    checkpoints/<tag>/     DeepSpeed checkpoints, each sealed by a MANIFEST.json
    tb/                    TensorBoard events
"""

from __future__ import annotations

import json
import os
import random
import resource
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from trainables.atomic import write_json_atomic
from trainables.errors import NonFiniteLossError
from trainables.minbert import faults, run_checkpoint
from trainables.minbert import metrics as M
from trainables.minbert.callbacks import (
    MetricsFileWriter,
    TensorBoardLogger,
    TrainerCallback,
)
from trainables.minbert.config import TrialConfig
from trainables.minbert.data import TASKS, EncodedSplit, load_multitask_data
from trainables.minbert.engine import build_engine, surgery_step
from trainables.minbert.extensions import make_sampler, make_surgery
from trainables.minbert.hf_folder import resolve_checkpoint_dir
from trainables.minbert.model import BertConfig, BertModel
from trainables.minbert.multitask import MultitaskBert
from trainables.minbert.tokenizer import WordPieceTokenizer, tokenizer_for


class TaskStream:
    """Endless length-bucketed batches of one task within one epoch; restarts when exhausted.

    Every pass is shuffled by its own seeded generator, so a resumed run that skips the
    batches it already consumed sees exactly the batches the interrupted run would have.
    """

    def __init__(
        self,
        split: EncodedSplit,
        batch_size: int,
        tokenizer: WordPieceTokenizer,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.split, self.batch_size, self.tokenizer, self.seed = split, batch_size, tokenizer, seed
        self.rank, self.world_size = rank, world_size
        self.consumed = 0
        self._it = self._passes()

    def _passes(self) -> Iterator[dict]:
        for pass_index in range(10**9):
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + pass_index)
            batches = self.split.batches(
                self.batch_size, self.tokenizer, shuffle=True, generator=gen
            )
            for i, batch in enumerate(batches):  # data parallel: each rank its share of batches
                if i % self.world_size == self.rank:
                    yield batch

    def next(self) -> dict:
        self.consumed += 1
        return next(self._it)

    def skip(self, n: int) -> None:
        for _ in range(n):
            self.next()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


class MultitaskTrainer:
    def __init__(
        self,
        cfg: TrialConfig,
        out_dir: str | Path,
        callbacks: Sequence[TrainerCallback] = (),
        resume_from: str | Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.rank, self.world_size = _dist_rank_and_size()
        own = [MetricsFileWriter(self.out_dir), TensorBoardLogger(self.out_dir / "tb")]
        armed = faults.armed()  # the reliability tests' faults; none in real runs
        injector = [faults.FaultInjector(armed)] if armed else []
        self.callbacks: list[TrainerCallback] = [
            *(own if self.rank == 0 else []),
            *callbacks,
            *injector,
        ]
        self.resume_from = Path(resume_from) if resume_from else None
        self.step = 0  # optimizer steps taken, over both phases
        self.evals_done = 0
        self.position = {"phase": "sequential", "epoch": 0, "index": 0, "consumed": {}}
        self.train_time_s = 0.0
        self.resumed_from_step = 0  # the step of the checkpoint this run continued from
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
        seed_everything(cfg.train.seed)
        self.tokenizer, encoder = build_encoder(cfg)
        self.data = load_multitask_data(cfg.data, self.tokenizer, cfg.model.pair_encoding)
        if self.rank == 0:
            write_json_atomic(
                self.out_dir / "data_report.json",
                {
                    "dropped": self.data.dropped,
                    "notes": self.data.notes,
                    "sizes": {
                        s: {t: len(getattr(self.data, s)[t]) for t in TASKS}
                        for s in ("train", "dev", "test", "train_eval")
                    },
                },
            )
        model = MultitaskBert(
            encoder,
            cfg.model.dropout,
            cfg.model.pair_encoding,
            cfg.model.pooling,
            cfg.extensions.cosine_sts,
        )
        self.sampler = make_sampler(cfg.extensions.task_sampling)
        self.surgery = make_surgery(cfg.extensions.pcgrad, seed=cfg.train.seed)
        self.total_steps = self._count_steps()
        self.engine = build_engine(model, cfg.train, total_steps=self.total_steps)
        self.model: MultitaskBert = self.engine.module
        self.shared_params = self.model.shared_parameters()
        if self.resume_from is not None:
            self.load_checkpoint(self.resume_from)
            self.resumed_from_step = self.step
        self.setup_time_s = time.perf_counter() - t0

    def _epoch_plan(self, phase: str, epoch: int) -> list[tuple[str, ...]]:
        bs = self.cfg.train.batch_size

        def batches(task: str) -> int:  # per rank, when data parallel
            return max(1, self.data.train[task].num_batches(bs) // self.world_size)

        if phase == "sequential":
            return [("sts",)] * batches("sts")
        sizes = {t: batches(t) for t in TASKS}
        return self.sampler.epoch(sizes, random.Random(f"{self.cfg.train.seed}-{phase}-{epoch}"))

    def _phases(self) -> list[tuple[str, int]]:
        ext, epochs = self.cfg.extensions, self.cfg.train.epochs
        seq = (
            [("sequential", e) for e in range(ext.sequential_sts_epochs)]
            if ext.sequential_sts
            else []
        )
        return seq + [("multitask", e) for e in range(epochs)]

    def _schedule(self) -> list[tuple[str, int, list[tuple[str, ...]], int]]:
        """(phase, epoch, steps, full epoch length) of every epoch, cut at train.max_steps."""
        schedule, budget = [], self.cfg.train.max_steps
        for phase, epoch in self._phases():
            plan = self._epoch_plan(phase, epoch)
            full = len(plan)
            if phase == "multitask" and budget is not None:
                plan, budget = plan[:budget], budget - min(budget, len(plan))
            if plan:
                schedule.append((phase, epoch, plan, full))
        return schedule

    def _count_steps(self) -> int:
        return sum(len(plan) for _, _, plan, _ in self._schedule())

    # ------------------------------------------------------------------ train
    def train(self) -> dict[str, Any]:
        """Run the remaining steps; evaluate, checkpoint and report on the way; summarise."""
        for cb in self.callbacks:
            cb.on_train_start(self)
        t0 = time.perf_counter() - self.train_time_s
        schedule = self._schedule()
        done_epochs = [(ph, ep) for ph, ep, _, _ in schedule]
        here = (self.position["phase"], self.position["epoch"])
        resume_at = done_epochs.index(here) if here in done_epochs else 0
        phase, epoch_progress = schedule[-1][0], float(schedule[-1][1] + 1)
        for k, (phase, epoch, plan, full) in enumerate(schedule):
            if k < resume_at:  # finished before the checkpoint we resumed from
                continue
            start = self.position["index"] if k == resume_at else 0
            streams = self._streams(phase, epoch, self.position["consumed"] if start else {})
            evals_at = self._eval_points(phase, full) | {len(plan)}
            for index in range(start, len(plan)):
                logs = self._train_step(plan[index], streams)
                self.position = {
                    "phase": phase,
                    "epoch": epoch,
                    "index": index + 1,
                    "consumed": {t: s.consumed for t, s in streams.items()},
                }
                for cb in self.callbacks:
                    cb.on_step_end(self, logs)
                epoch_progress = epoch + (index + 1) / full
                last = k == len(schedule) - 1 and index + 1 == len(plan)
                if index + 1 in evals_at and not last:  # the last evaluation is the final one
                    self.train_time_s = time.perf_counter() - t0
                    self._evaluate_and_report(phase, epoch_progress)
        self.train_time_s = time.perf_counter() - t0
        summary = self._evaluate_and_report(phase, epoch_progress, final=True)
        for cb in self.callbacks:
            cb.on_train_end(self, summary)
        return summary

    def _streams(self, phase: str, epoch: int, consumed: dict[str, int]) -> dict[str, TaskStream]:
        tasks = ("sts",) if phase == "sequential" else TASKS
        streams = {}
        for i, task in enumerate(tasks):
            seed = self.cfg.train.seed * 7919 + (phase == "multitask") * 104729 + epoch * 1009 + i
            streams[task] = TaskStream(
                self.data.train[task],
                self.cfg.train.batch_size,
                self.tokenizer,
                seed,
                self.rank,
                self.world_size,
            )
            streams[task].skip(consumed.get(task, 0))
        return streams

    def _eval_points(self, phase: str, n: int) -> set[int]:
        if phase == "sequential":
            return {n}
        k = self.cfg.train.evals_per_epoch
        return {max(1, round(n * (i + 1) / k)) for i in range(k)}

    def _train_step(
        self, tasks: tuple[str, ...], streams: dict[str, TaskStream]
    ) -> dict[str, Any]:
        """One optimizer step: a batch per task, per-task losses, combined gradients, update."""
        step = self.step + 1
        for cb in self.callbacks:
            cb.on_step_begin(self, step)
        self.model.train()
        batches = {t: streams[t].next() for t in tasks}
        losses = {t: self.model.loss(b) for t, b in batches.items()}
        for cb in self.callbacks:
            losses = cb.on_losses(self, step, losses)
        for task, loss in losses.items():
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite loss at step {self.step + 1} (task {task}: {loss.item()})"
                )
        stats = surgery_step(self.engine, losses, self.shared_params, self.surgery)
        self.step += 1
        if self.first_step_at is None:
            self.first_step_at = time.time()  # wall clock: sweep overhead is measured to here
        logs: dict[str, Any] = {"step": self.step, "lr": self.engine.get_lr()[0]}
        logs.update({f"loss_{t}": loss.item() for t, loss in losses.items()})
        logs.update({f"pcgrad_{k.replace('/', '_')}": v for k, v in stats.items()})
        self._recent.append(logs)
        return logs

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, split: EncodedSplit) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """(ids, raw predictions, labels) of a whole split, in eval mode."""
        self.model.eval()
        ids, preds, labels = [], [], []
        for batch in split.batches(self.cfg.train.eval_batch_size, self.tokenizer, shuffle=False):
            batch = _to_device(batch, self.engine.device)
            ids.extend(batch["ids"])
            preds.append(self.model(batch).float().cpu())
            labels.append(batch["labels"].cpu())
        return ids, torch.cat(preds), torch.cat(labels)

    def evaluate(
        self, splits: dict[str, EncodedSplit], prefix: str, write_predictions: bool = False
    ) -> dict[str, float]:
        scores, outputs = {}, {}
        for task in TASKS:
            ids, preds, labels = self.predict(splits[task])
            outputs[task] = (ids, preds)
            if task == "sst":
                scores["sst_acc"] = M.sst_accuracy(preds, labels)
            elif task == "para":
                scores["para_acc"] = M.para_accuracy(preds, labels)
            else:
                scores["sts_r"] = M.sts_pearson(preds, labels)
        scores["overall"] = M.overall_score(scores["sst_acc"], scores["para_acc"], scores["sts_r"])
        if write_predictions and self.rank == 0:
            for task, (ids, preds) in outputs.items():
                name = {"sst": "sst", "para": "para", "sts": "sts"}[task]
                path = self.out_dir / "predictions" / f"{name}-{prefix}-output.csv"
                M.write_submission(path, task, ids, _submission_values(task, preds))
        return {f"{prefix}_{k}": float(v) for k, v in scores.items()}

    def _evaluate_and_report(
        self, phase: str, epoch: float, final: bool = False
    ) -> dict[str, Any]:
        """Dev metrics (and, at the end, train-subset and held-out test metrics too), a
        checkpoint, and the callbacks. The final evaluation is one report, not two."""
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
        if final:
            metrics.update(self.evaluate(self.data.train_eval, "train"))
            metrics.update(self.evaluate(self.data.test, "test", write_predictions=True))
            metrics.update(
                {
                    "final": True,
                    "status": "finished",
                    "steps": self.step,
                    # train_time_s stops before this last evaluation; this is its time
                    "final_eval_s": round(time.perf_counter() - t0, 3),
                    "epochs": self.cfg.train.epochs,
                    "world_size": self.world_size,
                    "train_time_s": round(self.train_time_s, 3),
                    "setup_time_s": round(getattr(self, "setup_time_s", 0.0), 3),
                    "first_step_at": self.first_step_at,
                    "resumed_from_step": self.resumed_from_step,
                    "peak_mem_mb": peak_memory_mb(),
                }
            )
        self.evals_done += 1
        every = self.cfg.train.checkpoint_every_evals
        checkpoint = None
        if final or (every and self.evals_done % every == 0):
            checkpoint = self.save_checkpoint()
        for cb in self.callbacks:
            cb.on_evaluate(self, metrics, checkpoint)
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write a checkpoint and seal it; returns its folder. Half-written ones never look whole."""
        root = self.out_dir / "checkpoints"
        staging = run_checkpoint.stage(root, self.step, clean=self.rank == 0)
        _barrier()
        self.engine.save_checkpoint(
            str(staging), tag=run_checkpoint.tag_of(self.step), save_latest=False
        )
        for cb in self.callbacks:
            cb.on_checkpoint_staged(self, self.step, staging)
        _barrier()
        if self.rank != 0:
            return root / run_checkpoint.tag_of(self.step)
        return run_checkpoint.seal(
            staging, root, self.step, self._trainer_state(), keep=self.cfg.train.keep_checkpoints
        )

    def _trainer_state(self) -> dict[str, Any]:
        state = {
            "step": self.step,
            "evals_done": self.evals_done,
            "position": json.dumps(self.position),
            "train_time_s": self.train_time_s,
            "torch_rng": torch.get_rng_state(),
            "python_rng": json.dumps(random.getstate()),
            "surgery": self.surgery.state_dict(),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

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
        torch.set_rng_state(state["torch_rng"])
        py = json.loads(state["python_rng"])
        random.setstate((py[0], tuple(py[1]), py[2]))
        self.surgery.load_state_dict(state["surgery"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def cleanup(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.destroy()
        self.engine = None
        self.model = None


def build_encoder(cfg: TrialConfig) -> tuple[WordPieceTokenizer, BertModel]:
    """The trial's tokenizer and encoder: random weights shaped by model.* (tiny test models,
    MiniLM's vocabulary unless model.vocab_file), or a pretrained checkpoint folder."""
    m = cfg.model
    tokenizer = tokenizer_for(m)
    if m.checkpoint == "random":
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=m.hidden_size,
            num_layers=m.num_layers,
            num_heads=m.num_heads,
            intermediate_size=m.intermediate_size,
            hidden_dropout=m.dropout,
            attention_dropout=m.dropout,
            max_position_embeddings=max(512, cfg.data.max_length),
        )
        return tokenizer, BertModel.from_config(config, seed=cfg.train.seed)
    return tokenizer, BertModel.from_pretrained(
        resolve_checkpoint_dir(m.checkpoint), hidden_dropout=m.dropout
    )


def _dist_rank_and_size() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) unless launched data parallel."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _to_device(batch: dict, device: torch.device) -> dict:
    if device.type == "cpu":
        return batch
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, dict):
            out[k] = {kk: vv.to(device, non_blocking=True) for kk, vv in v.items()}
        else:
            out[k] = v
    return out


def _submission_values(task: str, preds: torch.Tensor) -> list:
    if task == "sst":
        return preds.argmax(dim=-1).tolist()
    if task == "para":
        return (preds > 0).long().tolist()
    return preds.tolist()


def peak_memory_mb() -> float:
    """Peak resident memory of this process (MB); on a GPU, the peak allocated device memory."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


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


__all__ = ["MultitaskTrainer", "TaskStream", "build_encoder", "train_trial"]
