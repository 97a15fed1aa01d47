"""Scoring a model on whole splits: predictions, the CS224N scores, submission files.

scores = evaluate(model, data.dev, "dev", tokenizer, batch_size=64, device=engine.device)
# {"dev_sst_acc": ..., "dev_para_acc": ..., "dev_sts_r": ..., "dev_overall": ...}

An evaluation encodes every distinct sequence of its splits once (`encode_sequences`): in
siamese mode the SST sentences and both sides of every Quora and STS pair are pooled, so a
sentence that appears in several pairs or tasks costs one encoder pass; in cross mode the
packed pairs cannot share anything, but they still pass through the same cache. The pool is
sorted by length and cut into batches of `batch_size` sequences, so a batch holds sequences
of nearly one length (little padding, often none, and then no attention mask at all). The task
heads then run on the cached embeddings, and predictions come back in each split's own order.

With per-task top layers (the task_layers toggle) a sentence's embedding differs by task:
the cache then holds what the tasks share, the shared layers' output, which each batch of
the pool computes once; each task's own layers then run on the rows of that batch its splits
use, and every task gets its own embedding matrix. A sentence used by two tasks costs the
shared layers once and each task's top layers once.

With dropout off (eval mode) a sequence's embedding does not depend on what else is in its
batch: padding is masked out of attention and pooling. Only float rounding may differ, since
the matmul shapes change; `tests/trainables/test_evaluation_identity.py` checks predictions
and scores against each batch through `MultitaskBert.forward` (how this module worked before),
and `benchmarks/bench_eval.py` times both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from trainables.minbert import metrics
from trainables.minbert.batching import Batch, EncodedSplit
from trainables.minbert.data import TASKS
from trainables.minbert.multitask import MultitaskBert
from trainables.minbert.tokenizer import WordPieceTokenizer

__all__ = [
    "Predictions",
    "SequencePool",
    "encode_sequences",
    "evaluate",
    "predict_splits",
    "score_predictions",
    "submission_values",
    "to_device",
]

# One sequence to encode: its token ids and, for packed cross pairs, its token type ids.
SequenceKey = tuple[tuple[int, ...], tuple[int, ...] | None]


class Predictions(NamedTuple):
    """A split's ids, raw predictions (SST logits (N, 5), Quora logits (N,), STS scores (N,))
    and labels, all in the same order."""

    ids: list[str]
    preds: torch.Tensor
    labels: torch.Tensor


class SequencePool:
    """The distinct sequences of an evaluation, each with one row in the embedding matrix.

    `add` returns the rows of a column of sequences; a sequence seen before (the same tokens
    and token types) gets its earlier row. `tasks_of[row]` names the tasks that use a row.
    """

    def __init__(self) -> None:
        self.row_of: dict[SequenceKey, int] = {}
        self.tokens: list[list[int]] = []
        self.type_ids: list[list[int] | None] = []
        self.tasks_of: list[set[str]] = []

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def tasks(self) -> list[str]:
        """Every task that uses a row, sorted."""
        return sorted(set().union(*self.tasks_of))

    def add(
        self,
        tokens: Sequence[list[int]],
        type_ids: Sequence[list[int]] | None = None,
        task: str | None = None,
    ) -> torch.Tensor:
        """The embedding rows (N,) of `tokens` (and their `type_ids`), new ones appended;
        `task` (when given) is recorded as a user of each row."""
        rows = []
        for i, seq in enumerate(tokens):
            types = None if type_ids is None else type_ids[i]
            key = (tuple(seq), None if types is None else tuple(types))
            row = self.row_of.get(key)
            if row is None:
                row = self.row_of[key] = len(self.tokens)
                self.tokens.append(seq)
                self.type_ids.append(types)
                self.tasks_of.append(set())
            if task is not None:
                self.tasks_of[row].add(task)
            rows.append(row)
        return torch.tensor(rows, dtype=torch.long)


def encode_sequences(
    model: MultitaskBert,
    pool: SequencePool,
    tokenizer: WordPieceTokenizer,
    batch_size: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Embeddings (len(pool), H) of the sequences in `pool`, on `device`, in pool order, for
    each task of `pool.tasks`.

    Without per-task layers every task gets the same matrix, of every row. With them each
    task gets its own, whose rows of sequences the task does not use stay zero: a batch's
    shared layers run once (`MultitaskBert.shared_states`), then each task's layers on the
    batch's rows that task uses (`MultitaskBert.task_embedding`).

    Sequences are encoded longest first (the memory peak comes at once, not at the end) in
    batches of `batch_size`; equal lengths keep their pool order, so the batches do not
    depend on anything but the pool.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if model.task_layers is not None:
        return _encode_per_task(model, pool, tokenizer, batch_size, device)
    order = sorted(range(len(pool)), key=lambda i: -len(pool.tokens[i]))
    out: torch.Tensor | None = None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        emb = model.embed(_pad_rows(pool, idx, tokenizer, device))
        if out is None:
            out = emb.new_empty((len(pool), emb.shape[1]))
        out[torch.as_tensor(idx, device=emb.device)] = emb
    if out is None:
        raise ValueError("nothing to encode: the splits are empty")
    return dict.fromkeys(pool.tasks, out)


def _pad_rows(
    pool: SequencePool, idx: list[int], tokenizer: WordPieceTokenizer, device: torch.device
) -> dict[str, torch.Tensor]:
    """The padded encoder inputs of pool rows `idx`, on `device`."""
    tokens = [pool.tokens[i] for i in idx]
    types = [pool.type_ids[i] for i in idx]
    inputs = tokenizer.pad(
        tokens,
        None
        if all(t is None for t in types)
        else [[0] * len(tok) if t is None else t for tok, t in zip(tokens, types, strict=True)],
    )
    return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}


def _encode_per_task(
    model: MultitaskBert,
    pool: SequencePool,
    tokenizer: WordPieceTokenizer,
    batch_size: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """`encode_sequences` with per-task layers: the shared layers once per batch of rows,
    each task's layers on the rows of the batch that task uses."""
    order = sorted(range(len(pool)), key=lambda i: -len(pool.tokens[i]))
    tasks = pool.tasks
    out: dict[str, torch.Tensor] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        inputs = _pad_rows(pool, idx, tokenizer, device)
        hidden = model.shared_states(inputs)  # (B, T, H)
        for task in tasks:
            picked = [k for k, row in enumerate(idx) if task in pool.tasks_of[row]]
            if not picked:
                continue
            sel = torch.as_tensor(picked, device=hidden.device)
            emb = model.task_embedding(task, hidden[sel], {k: v[sel] for k, v in inputs.items()})
            if task not in out:
                out[task] = emb.new_zeros((len(pool), emb.shape[1]))
            out[task][torch.as_tensor([idx[k] for k in picked], device=emb.device)] = emb
    if not out:
        raise ValueError("nothing to encode: the splits are empty")
    return out


def _task_rows(
    split: EncodedSplit, pool: SequencePool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The pool rows of a split's sequences: (rows, None) for single sequences and packed
    pairs, (rows of side a, rows of side b) for siamese pairs."""
    task = split.task
    if split.tokens_a is not None and split.tokens_b is not None:
        return pool.add(split.tokens_a, task=task), pool.add(split.tokens_b, task=task)
    if split.tokens is None:
        raise ValueError(f"{split.task}/{split.split} holds no tokens")
    return pool.add(split.tokens, split.type_ids, task=task), None


def _head_outputs(
    model: MultitaskBert, task: str, u: torch.Tensor, v: torch.Tensor | None
) -> torch.Tensor:
    """What `MultitaskBert.forward` returns for embeddings u (and v) in eval mode (where its
    dropout before a head is the identity)."""
    if task == "sst":
        logits: torch.Tensor = model.sst_head(u)
        return logits
    head = model.para_head if task == "para" else model.sts_head
    scores: torch.Tensor = head(u, v)
    return scores


def predict_splits(
    model: MultitaskBert,
    splits: dict[str, EncodedSplit],
    tokenizer: WordPieceTokenizer,
    batch_size: int,
    device: torch.device,
) -> dict[str, Predictions]:
    """Predictions of every split in `splits` (task -> split), each in the split's order.

    Every distinct sequence is encoded once (`encode_sequences`, `batch_size` sequences per
    encoder call), then each task's head runs on the cached embeddings, `batch_size` rows at
    a time. Runs in eval mode under `torch.inference_mode`; the model's train/eval mode is
    restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            pool = SequencePool()
            rows = {task: _task_rows(split, pool) for task, split in splits.items()}
            embeddings = encode_sequences(model, pool, tokenizer, batch_size, device)
            out = {}
            for task, split in splits.items():
                rows_u, rows_v = rows[task]
                emb = embeddings[split.task]
                parts = []
                for s in range(0, len(split), batch_size):
                    u = emb[rows_u[s : s + batch_size].to(emb.device)]
                    v = None if rows_v is None else emb[rows_v[s : s + batch_size].to(emb.device)]
                    parts.append(_head_outputs(model, task, u, v).float().cpu())
                preds = torch.cat(parts) if parts else torch.empty(0)
                out[task] = Predictions(list(split.ids), preds, split.labels.clone())
            return out
    finally:
        model.train(was_training)


def score_predictions(outputs: dict[str, Predictions]) -> dict[str, float]:
    """The three task scores and their overall score: sst_acc, para_acc, sts_r, overall."""
    scores = {
        "sst_acc": metrics.sst_accuracy(outputs["sst"].preds, outputs["sst"].labels),
        "para_acc": metrics.para_accuracy(outputs["para"].preds, outputs["para"].labels),
        "sts_r": metrics.sts_pearson(outputs["sts"].preds, outputs["sts"].labels),
    }
    scores["overall"] = metrics.overall_score(
        scores["sst_acc"], scores["para_acc"], scores["sts_r"]
    )
    return {k: float(v) for k, v in scores.items()}


def evaluate(
    model: MultitaskBert,
    splits: dict[str, EncodedSplit],
    prefix: str,
    tokenizer: WordPieceTokenizer,
    batch_size: int,
    device: torch.device,
    predictions_dir: Path | None = None,
) -> dict[str, float]:
    """The three task scores and the overall score of `splits`, keyed "<prefix>_<score>".

    `batch_size` counts sequences per encoder call (`predict_splits`). With
    `predictions_dir`, each task's predictions are also written there as the CS224N
    submission file "<task>-<prefix>-output.csv", in the split's order.
    """
    outputs = predict_splits(model, {t: splits[t] for t in TASKS}, tokenizer, batch_size, device)
    if predictions_dir is not None:
        for task, (ids, preds, _) in outputs.items():
            path = predictions_dir / f"{task}-{prefix}-output.csv"
            metrics.write_submission(path, task, ids, submission_values(task, preds))
    return {f"{prefix}_{k}": v for k, v in score_predictions(outputs).items()}


def submission_values(task: str, preds: torch.Tensor) -> list[Any]:
    """What a submission file holds for raw predictions: SST class, paraphrase 0/1, STS score."""
    if task == "sst":
        return list(preds.argmax(dim=-1).tolist())
    if task == "para":
        return list((preds > 0).long().tolist())
    return list(preds.tolist())


def to_device(batch: Batch, device: torch.device) -> Batch:
    """`batch` with its tensors (and the tensors of its nested inputs) on `device`."""
    if device.type == "cpu":
        return batch
    out: Batch = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, dict):
            out[k] = {kk: vv.to(device, non_blocking=True) for kk, vv in v.items()}
        else:
            out[k] = v
    return out
