"""Sentence-BERT STS (the `cosine_sts` toggle): the cosine of the two sentence embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from trainables.minbert.extensions.pair_similarity import PairSimilarity

if TYPE_CHECKING:
    from trainables.minbert.config import TrialConfig

__all__ = ["STS_SCALE", "CosineSimilarity"]

STS_SCALE = 5.0  # STS labels lie in [0, 5]; the head predicts 5 * cos(u, v)


class CosineSimilarity(PairSimilarity):
    """Sentence-BERT STS (Reimers & Gurevych 2019): score = 5 * cos(u, v), trained with MSE.

    Equivalent to Sentence-BERT's CosineSimilarityLoss on labels divided by 5. It has no
    parameters: all learning happens in the encoder, which is the point of the extension, and
    no dropout before it (`dropout_before` False). It needs siamese pair encoding, which the
    registry entry requires.
    """

    dropout_before = False

    def __init__(self, cfg: TrialConfig | None = None) -> None:
        super().__init__()

    def forward(self, u: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        if v is None:
            raise ValueError("cosine similarity compares two sentence embeddings (siamese)")
        return STS_SCALE * F.cosine_similarity(u, v, dim=-1, eps=1e-8)
