"""Multiple-negatives ranking loss (the `mnrl` toggle) for the paraphrase and STS pairs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from trainables.minbert.extensions.loss_terms import LossTerm, TaskOutput

if TYPE_CHECKING:
    from trainables.minbert.config import TrialConfig
    from trainables.minbert.multitask import MultitaskBert

__all__ = ["MultipleNegativesRanking", "positive_pairs"]


def positive_pairs(task: str, labels: torch.Tensor, sts_threshold: float) -> torch.Tensor:
    """Indices (P,) of a batch's positive pairs: Quora duplicates (label 1), STS pairs scored
    at least `sts_threshold` on the 0-5 scale."""
    if task == "para":
        return (labels == 1).nonzero().squeeze(1)
    return (labels >= sts_threshold).nonzero().squeeze(1)


class MultipleNegativesRanking(LossTerm):
    """Multiple-negatives ranking loss (Henderson et al. 2017, "Efficient Natural Language
    Response Suggestion for Smart Reply"; sentence-transformers' MultipleNegativesRankingLoss).

    For each positive pair i of a siamese batch, its first sentence a_i should be closer to
    its own second sentence b_i than to every other second sentence b_j of the batch (the
    in-batch negatives):

        term = weight * mean_i CE(scale * [cos(u_i, v_0), ..., cos(u_i, v_{B-1})], target i)

    over the positive pairs i, with u, v the sentence embeddings the head sees (before its
    dropout). Every b_j of the batch is a candidate, including those of non-positive pairs. A
    sentence repeated in a batch counts as a negative of itself, as in sentence-transformers
    without its no-duplicates loader. A batch without positives gives a zero term.

    Args:
        cfg: the trial's configuration: `extensions.mnrl_weight`, `mnrl_scale` (the inverse
            temperature; 20 as in sentence-transformers), `mnrl_sts_threshold`.
    """

    name = "mnrl"

    def __init__(self, cfg: TrialConfig) -> None:
        super().__init__(frozenset({"para", "sts"}))
        ext = cfg.extensions
        self.weight = float(ext.option("mnrl_weight"))
        self.scale = float(ext.option("mnrl_scale"))
        self.sts_threshold = float(ext.option("mnrl_sts_threshold"))

    def __call__(self, model: MultitaskBert, out: TaskOutput) -> torch.Tensor | None:
        task = out.batch["task"]
        if task not in self.tasks:
            return None
        if len(out.embeddings) != 2:
            raise ValueError("multiple-negatives ranking needs siamese pair embeddings (u, v)")
        u, v = out.embeddings  # (B, H) each
        anchors = positive_pairs(task, out.batch["labels"], self.sts_threshold)  # (P,)
        if anchors.numel() == 0:
            return u.new_zeros((), dtype=torch.float32)
        cosines = F.normalize(u[anchors], dim=-1) @ F.normalize(v, dim=-1).T  # (P, B)
        logits = self.scale * cosines.to(torch.promote_types(cosines.dtype, torch.float32))
        return self.weight * F.cross_entropy(logits, anchors)
