"""Scoring a model on whole splits: predictions, the CS224N scores, submission files.

scores = evaluate(model, data.dev, "dev", tokenizer, batch_size=64, device=engine.device)
# {"dev_sst_acc": ..., "dev_para_acc": ..., "dev_sts_r": ..., "dev_overall": ...}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trainables.minbert import metrics
from trainables.minbert.batching import Batch, EncodedSplit
from trainables.minbert.data import TASKS
from trainables.minbert.multitask import MultitaskBert
from trainables.minbert.tokenizer import WordPieceTokenizer

__all__ = ["evaluate", "predict", "submission_values", "to_device"]


@torch.no_grad()
def predict(
    model: MultitaskBert,
    split: EncodedSplit,
    tokenizer: WordPieceTokenizer,
    batch_size: int,
    device: torch.device,
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(ids, raw predictions, labels) of a whole split, in eval mode."""
    model.eval()
    ids: list[str] = []
    preds, labels = [], []
    for batch in split.batches(batch_size, tokenizer, shuffle=False):
        batch = to_device(batch, device)
        ids.extend(batch["ids"])
        preds.append(model(batch).float().cpu())
        labels.append(batch["labels"].cpu())
    return ids, torch.cat(preds), torch.cat(labels)


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

    With `predictions_dir`, each task's predictions are also written there as the CS224N
    submission file "<task>-<prefix>-output.csv".
    """
    scores: dict[str, float] = {}
    outputs = {}
    for task in TASKS:
        ids, preds, labels = predict(model, splits[task], tokenizer, batch_size, device)
        outputs[task] = (ids, preds)
        if task == "sst":
            scores["sst_acc"] = metrics.sst_accuracy(preds, labels)
        elif task == "para":
            scores["para_acc"] = metrics.para_accuracy(preds, labels)
        else:
            scores["sts_r"] = metrics.sts_pearson(preds, labels)
    scores["overall"] = metrics.overall_score(
        scores["sst_acc"], scores["para_acc"], scores["sts_r"]
    )
    if predictions_dir is not None:
        for task, (ids, preds) in outputs.items():
            path = predictions_dir / f"{task}-{prefix}-output.csv"
            metrics.write_submission(path, task, ids, submission_values(task, preds))
    return {f"{prefix}_{k}": float(v) for k, v in scores.items()}


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
