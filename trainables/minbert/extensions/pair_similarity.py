"""Pair heads: how a sentence pair's embeddings become one score per pair.

The paraphrase head and, by default, the STS head are `PairHead`s; a `sts_head` toggle
(cosine_sts) replaces the STS one. `MultitaskBert` applies its dropout to the embeddings
before a head only when the head's `dropout_before` says so.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

import torch
from torch import nn

from trainables.minbert.extensions.registry import build_active

if TYPE_CHECKING:
    from trainables.minbert.config import TrialConfig

__all__ = ["PairHead", "PairSimilarity", "make_pair_similarity"]


class PairSimilarity(nn.Module, abc.ABC):
    """One score per sentence pair, shape (B,).

    Called with the two sentence embeddings u, v (B, H) when pairs are encoded separately
    (`model.pair_encoding=siamese`), or with the packed pair's embedding u and v None
    ("cross").

    Attributes:
        dropout_before: whether the model's dropout applies to the embeddings first; a head
            without parameters has nothing for it to regularise.
    """

    dropout_before: bool = True

    @abc.abstractmethod
    def forward(self, u: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B,) of the pairs."""

    def init_weights(self, std: float) -> None:
        """Initialise the head's parameters as BERT does its heads (none: nothing to do)."""


class PairHead(PairSimilarity):
    """A linear score of the siamese features [u, v, |u-v|, u*v] or of a packed embedding."""

    def __init__(self, hidden: int, siamese: bool) -> None:
        super().__init__()
        self.siamese = siamese
        self.out = nn.Linear(4 * hidden if siamese else hidden, 1)

    def forward(self, u: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        if self.siamese:
            if v is None:
                raise ValueError("a siamese pair head needs both sentence embeddings")
            u = torch.cat([u, v, (u - v).abs(), u * v], dim=-1)  # (B, 4H)
        scores: torch.Tensor = self.out(u).squeeze(-1)  # (B,)
        return scores

    def init_weights(self, std: float) -> None:
        nn.init.normal_(self.out.weight, std=std)
        nn.init.zeros_(self.out.bias)


def make_pair_similarity(cfg: TrialConfig, hidden: int) -> PairSimilarity:
    """The trial's STS head: the `sts_head` toggle that is on (cosine_sts), or a `PairHead`
    over embeddings of width `hidden`."""
    built = build_active("sts_head", cfg, PairSimilarity)
    if isinstance(built, PairSimilarity):
        return built
    return PairHead(hidden, siamese=cfg.model.pair_encoding == "siamese")
