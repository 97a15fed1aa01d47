"""The CS224N multitask scores and submission files, exactly as the course computes them.

Source of the rules: the starter's `evaluation.py` and `multitask_classifier.py` (see
/work/shared/data/cs224n/PROVENANCE.md, sections 5-6):

    sst = sst_accuracy(sst_logits, sst_labels)          # argmax over 5 logits
    para = para_accuracy(para_logits, para_labels)      # one logit per pair, > 0 means paraphrase
    sts = sts_pearson(sts_preds, sts_labels)            # Pearson r of raw scores
    overall_score(sst, para, sts)                       # the leaderboard's single number
    write_submission("sst-dev-output.csv", "sst", ids, sst_logits.argmax(-1))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from trainables.atomic import write_text_atomic

__all__ = [
    "SUBMISSION_HEADERS",
    "overall_score",
    "para_accuracy",
    "read_submission",
    "sst_accuracy",
    "sts_pearson",
    "write_submission",
]

# The starter's header lines, including the spaces around the tab and the course's typo.
SUBMISSION_HEADERS = {
    "sst": "id \t Predicted_Sentiment ",
    "para": "id \t Predicted_Is_Paraphrase ",
    "sts": "id \t Predicted_Similiary ",
}
_SST_CLASSES = 5


def _to_numpy(values: Any) -> np.ndarray:
    """A numpy array from a list, a numpy array or a torch tensor (any device, any dtype)."""
    if hasattr(values, "detach"):  # a torch.Tensor, without importing torch here
        values = values.detach().cpu()
        if values.is_floating_point():
            values = values.float()  # numpy has no bfloat16
        values = values.numpy()
    return np.asarray(values)


def _array(values: Any, name: str) -> np.ndarray:
    array = _to_numpy(values)
    if array.size == 0:
        raise ValueError(f"{name} is empty: there is nothing to score")
    return array


def _same_length(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{what}: {a.shape[0]} predictions but {b.shape[0]} labels")


def sst_accuracy(logits: Any, labels: Any) -> float:
    """Share of examples whose argmax over the 5 sentiment logits equals the label.

    Args:
        logits: (N, 5) scores, one row per sentence (softmax is not needed: argmax ignores it).
        labels: (N,) gold classes 0-4.
    """
    logits, labels = _array(logits, "sst logits"), _array(labels, "sst labels").reshape(-1)
    if logits.ndim != 2 or logits.shape[1] != _SST_CLASSES:
        raise ValueError(f"sst logits must have shape (N, {_SST_CLASSES}), got {logits.shape}")
    _same_length(logits, labels, "sst")
    return float(np.mean(logits.argmax(axis=-1) == labels))


def para_accuracy(logits: Any, labels: Any) -> float:
    """Share of pairs where the prediction sigmoid(logit).round() equals the 0/1 label.

    sigmoid(logit) > 0.5 exactly when logit > 0, and round(0.5) is 0, so the prediction is
    `logit > 0`; comparing the logit itself avoids sigmoid's saturation in low precision.

    Args:
        logits: (N,) or (N, 1) raw paraphrase logits.
        labels: (N,) gold 0/1 labels.
    """
    logits = _array(logits, "para logits").reshape(-1)
    labels = _array(labels, "para labels").reshape(-1)
    _same_length(logits, labels, "para")
    return float(np.mean((logits > 0).astype(np.int64) == labels))


def sts_pearson(preds: Any, labels: Any) -> float:
    """Pearson correlation of raw similarity scores with the gold 0-5 similarities.

    As the starter: `np.corrcoef(preds, labels)[1][0]` in float64; scale and offset of the
    predictions do not matter. When either side is constant (e.g. a collapsed model predicting
    one value) or there is a single pair, the correlation is undefined; this returns 0.0 (no
    linear relation) instead of NaN, so sweeps can still rank the trial.

    Args:
        preds: (N,) or (N, 1) predicted similarities.
        labels: (N,) gold similarities.
    """
    preds = _array(preds, "sts predictions").astype(np.float64).reshape(-1)
    labels = _array(labels, "sts labels").astype(np.float64).reshape(-1)
    _same_length(preds, labels, "sts")
    if preds.shape[0] < 2 or np.ptp(preds) == 0 or np.ptp(labels) == 0:
        return 0.0
    r = float(np.corrcoef(preds, labels)[1][0])
    return r if np.isfinite(r) else 0.0


def overall_score(sst_acc: float, para_acc: float, sts_r: float) -> float:
    """The leaderboard score: (SST acc + Quora acc + (STS r + 1) / 2) / 3, in [0, 1]."""
    return (sst_acc + para_acc + (sts_r + 1.0) / 2.0) / 3.0


def _format_pred(task: str, pred: Any) -> str:
    value = pred.item() if hasattr(pred, "item") else pred
    if task == "sst":
        if float(value) != int(value) or not 0 <= int(value) < _SST_CLASSES:
            raise ValueError(f"sst prediction {value!r} is not a class 0-4 (pass argmax(logits))")
        return str(int(value))
    if task == "para":
        # The starter writes sigmoid(logit).round() as a float: "0.0" or "1.0".
        if float(value) not in (0.0, 1.0):
            raise ValueError(f"para prediction {value!r} is not 0 or 1 (pass (logits > 0))")
        return str(float(value))
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"sts prediction {value!r} is not a finite number")
    return repr(value)


def write_submission(path: str | os.PathLike[str], task: str, ids: Any, preds: Any) -> Path:
    """Write one CS224N prediction file (e.g. sst-dev-output.csv) in the official format.

    Line 1 is the task's header from `SUBMISSION_HEADERS`; each further line is
    `f"{id} , {pred} "`. Predictions are written as the starter writes them: SST class as an
    int ("3"), paraphrase as a float ("1.0"), similarity as the shortest round-tripping float.
    The file appears atomically (written beside it, then renamed), so a reader never sees
    half of it.

    Args:
        path: destination file; its folder must exist.
        task: "sst", "para" or "sts".
        ids: the examples' ids, as the data files give them.
        preds: one prediction per id (class index, 0/1, or raw similarity score).

    Returns:
        The path written.
    """
    if task not in SUBMISSION_HEADERS:
        raise ValueError(f"unknown task '{task}': use one of {', '.join(SUBMISSION_HEADERS)}")
    ids = [str(i) for i in ids]
    preds = list(_to_numpy(preds).reshape(-1))
    if len(ids) != len(preds):
        raise ValueError(f"{task}: {len(ids)} ids but {len(preds)} predictions")
    lines = [SUBMISSION_HEADERS[task]]
    lines += [f"{i} , {_format_pred(task, p)} " for i, p in zip(ids, preds, strict=True)]
    path = Path(path)
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def read_submission(path: str | os.PathLike[str]) -> tuple[str, dict[str, float]]:
    """Read a file written by `write_submission` (or the starter): (task, {id: prediction})."""
    text = Path(path).read_text(encoding="utf-8")
    header, *rows = text.split("\n")
    by_header = {h: t for t, h in SUBMISSION_HEADERS.items()}
    if header not in by_header:
        raise ValueError(f"{path}: unknown header line {header!r}")
    preds: dict[str, float] = {}
    for number, row in enumerate(rows, start=2):
        if not row:
            continue
        key, sep, value = row.partition(" , ")
        if not sep:
            raise ValueError(f"{path}: line {number} is not of the form 'id , prediction '")
        preds[key] = float(value)
    return by_header[header], preds
