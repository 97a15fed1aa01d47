"""Multitask minBERT: one shared encoder, three task heads, three losses.

    sst   5-way sentiment        logits (B, 5)  cross-entropy
    para  paraphrase (Quora)     logit  (B,)    binary cross-entropy on the logit
    sts   similarity 0..5        score  (B,)    mean squared error

Sentence pairs enter either as two encodings ("siamese", the CS224N starter's way) whose
embeddings u, v meet in the head as [u, v, |u - v|, u * v] (Sentence-BERT's classifier
input), or as one packed sequence [CLS] a [SEP] b [SEP] ("cross"). With the cosine_sts
extension the STS head is replaced by Sentence-BERT's regression objective: the cosine of
the two embeddings, scaled by 5 so that it lives on the labels' scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.minbert.model import BertModel, mean_pool

NUM_SENTIMENT_CLASSES = 5
STS_SCALE = 5.0  # STS labels lie in [0, 5]; cosine_sts predicts 5 * cos(u, v)


class CosineSimilarityHead(nn.Module):
    """Sentence-BERT STS (Reimers & Gurevych 2019): score = 5 * cos(u, v), trained with MSE.

    Equivalent to Sentence-BERT's CosineSimilarityLoss on labels divided by 5. It has no
    parameters: all learning happens in the encoder, which is the point of the extension.
    """

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return STS_SCALE * F.cosine_similarity(u, v, dim=-1, eps=1e-8)


class PairHead(nn.Module):
    """One output from a sentence pair: siamese [u, v, |u-v|, u*v] or a packed embedding."""

    def __init__(self, hidden: int, siamese: bool) -> None:
        super().__init__()
        self.siamese = siamese
        self.out = nn.Linear(4 * hidden if siamese else hidden, 1)

    def forward(self, u: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        if self.siamese:
            u = torch.cat([u, v, (u - v).abs(), u * v], dim=-1)  # (B, 4H)
        return self.out(u).squeeze(-1)  # (B,)


class MultitaskBert(nn.Module):
    def __init__(
        self,
        encoder: BertModel,
        dropout: float,
        pair_encoding: str = "siamese",
        pooling: str = "mean",
        cosine_sts: bool = False,
    ) -> None:
        super().__init__()
        hidden = encoder.config.hidden_size
        self.encoder = encoder
        self.pair_encoding = pair_encoding
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        siamese = pair_encoding == "siamese"
        self.sst_head = nn.Linear(hidden, NUM_SENTIMENT_CLASSES)
        self.para_head = PairHead(hidden, siamese)
        self.sts_head: nn.Module = (
            CosineSimilarityHead() if cosine_sts else PairHead(hidden, siamese)
        )
        self._cosine_sts = cosine_sts
        for head in (self.sst_head, self.para_head.out):
            nn.init.normal_(head.weight, std=encoder.config.initializer_range)
            nn.init.zeros_(head.bias)
        if not cosine_sts:
            nn.init.normal_(self.sts_head.out.weight, std=encoder.config.initializer_range)
            nn.init.zeros_(self.sts_head.out.bias)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The encoder's parameters: the ones gradient surgery operates on."""
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sentence embeddings (B, H) of a padded batch."""
        hidden, pooled = self.encoder(**inputs)  # (B, T, H), (B, H)
        if self.pooling == "mean":
            return mean_pool(hidden, inputs["attention_mask"])
        return pooled

    def _embed_pair(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        # One encoder call over both sides: (2B, T) is faster than two calls of (B, T).
        a, b = batch["inputs_a"], batch["inputs_b"]
        width = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
        pad_id = self.encoder.config.pad_token_id

        def widen(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            extra = width - x["input_ids"].shape[1]
            if extra == 0:
                return x
            return {
                k: F.pad(t, (0, extra), value=pad_id if k == "input_ids" else 0)
                for k, t in x.items()
            }

        a, b = widen(a), widen(b)
        both = {k: torch.cat([a[k], b[k]]) for k in a}
        emb = self.embed(both)  # (2B, H)
        return emb.split(a["input_ids"].shape[0])

    def forward(self, batch: dict) -> torch.Tensor:
        """Predictions of the batch's task: SST logits (B, 5), Quora logits (B,), STS scores (B,)."""
        task = batch["task"]
        if task == "sst":
            return self.sst_head(self.dropout(self.embed(batch["inputs"])))
        head = self.para_head if task == "para" else self.sts_head
        if "inputs_a" in batch:
            u, v = self._embed_pair(batch)
            if task == "sts" and self._cosine_sts:
                return head(u, v)  # no dropout on the cosine: it has no parameters to regularise
            return head(self.dropout(u), self.dropout(v))
        return head(self.dropout(self.embed(batch["inputs"])))

    def loss(self, batch: dict) -> torch.Tensor:
        """The task's training loss on a batch."""
        preds = self(batch)
        labels = batch["labels"]
        if batch["task"] == "sst":
            return F.cross_entropy(preds, labels)
        if batch["task"] == "para":
            return F.binary_cross_entropy_with_logits(preds, labels.to(preds.dtype))
        return F.mse_loss(preds, labels.to(preds.dtype))
