"""Multitask minBERT: one shared encoder, three task heads, three losses.

    sst   5-way sentiment        logits (B, 5)  cross-entropy
    para  paraphrase (Quora)     logit  (B,)    binary cross-entropy on the logit
    sts   similarity 0..5        score  (B,)    mean squared error

Sentence pairs enter either as two encodings ("siamese", the CS224N starter's way) whose
embeddings u, v meet in the head as [u, v, |u - v|, u * v] (Sentence-BERT's classifier
input), or as one packed sequence [CLS] a [SEP] b [SEP] ("cross"). The STS head is a
`PairSimilarity` given by the trial's extensions (`make_pair_similarity`): a linear head by
default, Sentence-BERT's scaled cosine with cosine_sts.

A siamese batch arrives in one of two layouts (`trainables.minbert.batching.Batch`): the 2B
sentences in length-sorted groups ("sentences", one encoder pass per group, each at its own
width), or side a and side b ("sides", widened to one width and encoded in one pass). Padding
is masked out of attention and of mean pooling, so both give the same embeddings up to float
rounding; the first computes far less padding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainables.minbert.batching import Batch
from trainables.minbert.data import TASKS
from trainables.minbert.extensions.loss_terms import LossTerm, RandomState, TaskOutput
from trainables.minbert.extensions.pair_similarity import PairHead, PairSimilarity
from trainables.minbert.extensions.task_layers import TaskLayers
from trainables.minbert.model import BertModel, additive_mask, mean_pool

NUM_SENTIMENT_CLASSES = 5


class MultitaskBert(nn.Module):
    """The shared encoder and the three task heads.

    Args:
        encoder: the sentence encoder every task shares.
        dropout: dropout on the sentence embeddings before each head (that wants it).
        pair_encoding: "siamese" (two encodings per pair) or "cross" (one packed sequence).
        pooling: "mean" of the token states or the "cls" pooler output.
        sts_head: the STS pair head (`make_pair_similarity`); None: a linear `PairHead`.
        freeze_word_embeddings: keep the encoder's word-embedding matrix fixed
            (`model.freeze_word_embeddings`): it gets no gradient and no optimizer update.
        task_layers: per-task layers (`make_task_layers`, the task_layers toggle), attached
            here: they take the encoder's top layers, one copy per task, and the encoder
            keeps what every task shares. None: the whole encoder is shared.
    """

    def __init__(
        self,
        encoder: BertModel,
        dropout: float,
        pair_encoding: str = "siamese",
        pooling: str = "mean",
        sts_head: PairSimilarity | None = None,
        freeze_word_embeddings: bool = False,
        task_layers: TaskLayers | None = None,
    ) -> None:
        super().__init__()
        hidden = encoder.config.hidden_size
        self.encoder = encoder
        if task_layers is not None:
            task_layers.attach(encoder, TASKS)  # before anything reads the encoder's parameters
        self.task_layers = task_layers
        if freeze_word_embeddings:
            # About half of MiniLM's parameters; build_engine optimises only parameters that
            # require a gradient, so neither the embedding backward nor AdamW touches them.
            encoder.embeddings.word_embeddings.weight.requires_grad_(False)
        self.pair_encoding = pair_encoding
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        siamese = pair_encoding == "siamese"
        self.sst_head = nn.Linear(hidden, NUM_SENTIMENT_CLASSES)
        self.para_head = PairHead(hidden, siamese)
        self.sts_head = sts_head if sts_head is not None else PairHead(hidden, siamese)
        std = encoder.config.initializer_range
        nn.init.normal_(self.sst_head.weight, std=std)
        nn.init.zeros_(self.sst_head.bias)
        self.para_head.init_weights(std)
        self.sts_head.init_weights(std)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The encoder's parameters: the ones gradient surgery operates on. With per-task
        layers these are only what every task shares (the copies left the encoder)."""
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def embed(self, inputs: dict[str, torch.Tensor], task: str | None = None) -> torch.Tensor:
        """Sentence embeddings (B, H) of a padded batch (for `task`, needed with per-task
        layers: a sentence's embedding then differs by task)."""
        return self.task_embedding(task, self.shared_states(inputs), inputs)

    def shared_states(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The shared encoder's token states (B, T, H) of a padded batch: every layer's
        without per-task layers, the shared bottom's with them."""
        return self.encoder.encode(**inputs)  # no pooler: task_embedding runs it when read

    def task_embedding(
        self, task: str | None, hidden: torch.Tensor, inputs: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Sentence embeddings (B, H) for `task` from `shared_states` of the padded batch
        `inputs` (or the same rows of both): through the task's own layers, then pooled."""
        mask = inputs["attention_mask"]
        if self.task_layers is not None:
            hidden = self.task_layers(_needed(task), hidden, additive_mask(mask, hidden.dtype))
        if self.pooling == "mean":
            return mean_pool(hidden, mask)
        pooled: torch.Tensor = self.encoder.pooler(hidden)
        return pooled

    def embed_packed(
        self,
        inputs: dict[str, torch.Tensor],
        groups: list[tuple[int, int]],
        task: str | None = None,
    ) -> torch.Tensor:
        """Sentence embeddings (rows of all groups, H) of groups of sentences laid out flat,
        group after group (`BertModel.forward_packed`), in that order (for `task`, needed
        with per-task layers)."""
        hidden, layout, firsts = self.encoder.encode_packed(
            inputs["input_ids"], inputs["attention_mask"], groups
        )
        if self.task_layers is not None:  # on the encoder's own layout, not a rebuilt one
            hidden = self.task_layers(_needed(task), hidden, layout)
        if self.pooling != "mean":
            cls_pooled: torch.Tensor = self.encoder.pooler(hidden[firsts].unsqueeze(1))
            return cls_pooled
        sizes = [rows * width for rows, width in groups]
        parts = [
            mean_pool(h.view(rows, width, -1), m.view(rows, width))
            for h, m, (rows, width) in zip(
                torch.split(hidden, sizes),
                torch.split(inputs["attention_mask"], sizes),
                groups,
                strict=True,
            )
        ]
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _embed_pair(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The embeddings u, v (B, H) of a siamese batch's sides, in either layout."""
        if "sentences" in batch:
            emb = self.embed_packed(  # (2B, H)
                batch["sentences"], batch["sentence_groups"], batch["task"]
            )
            u, v = emb[batch["sentence_index"]].chunk(2)  # back to a_0.., then b_0..
            return u, v
        # "sides": one encoder call over both: (2B, T) is faster than two calls of (B, T).
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
        emb = self.embed(both, batch["task"])  # (2B, H)
        u, v = torch.split(emb, a["input_ids"].shape[0])
        return u, v

    def forward(self, batch: Batch) -> torch.Tensor:
        """Predictions of the batch's task: SST logits (B, 5), Quora logits (B,), STS scores (B,)."""
        return self.forward_with_embeddings(batch)[0]

    def forward_with_embeddings(
        self, batch: Batch
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The predictions and the sentence embeddings the head was given, before its dropout:
        (u, v) of a siamese pair batch, (u,) of SST or a packed pair (what loss terms use)."""
        task = batch["task"]
        if task == "sst":
            emb = self.embed(batch["inputs"], task)
            logits: torch.Tensor = self.sst_head(self.dropout(emb))
            return logits, (emb,)
        head = self.para_head if task == "para" else self.sts_head
        if "sentences" in batch or "inputs_a" in batch:
            u, v = self._embed_pair(batch)
            if head.dropout_before:
                pair_scores: torch.Tensor = head(self.dropout(u), self.dropout(v))
            else:
                pair_scores = head(u, v)
            return pair_scores, (u, v)
        packed = self.embed(batch["inputs"], task)
        scores: torch.Tensor = head(self.dropout(packed) if head.dropout_before else packed)
        return scores, (packed,)

    def forward_perturbed(
        self,
        batch: Batch,
        perturb: Callable[[torch.Tensor], torch.Tensor],
        random_state: RandomState | None = None,
    ) -> torch.Tensor:
        """`forward(batch)` with `perturb` applied to the encoder's embedding-layer output
        (SMART's x + delta), under the random draws of `random_state` when given (the clean
        forward's dropout masks). The hook lives for this call only: `forward` has none."""
        hook = self.encoder.embeddings.register_forward_hook(lambda _m, _i, out: perturb(out))
        try:
            with random_state.replay() if random_state is not None else contextlib.nullcontext():
                preds: torch.Tensor = self(batch)
        finally:
            hook.remove()
        return preds

    def loss(
        self,
        batch: Batch,
        terms: Sequence[LossTerm] = (),
        term_values: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The task's training loss on a batch, plus every loss term of `terms` that applies
        to its task; each term's value also goes (detached) to `term_values` as
        "<term>_<task>". With no term for the task this is the plain loss, computed as ever."""
        task = batch["task"]
        applicable = [t for t in terms if task in t.tasks]
        if not applicable:
            return task_loss(batch, self(batch))
        device = batch["labels"].device
        replay = any(t.replays_dropout for t in applicable)
        random_state = RandomState(device) if replay else None  # before the forward draws
        preds, embeddings = self.forward_with_embeddings(batch)
        out = TaskOutput(batch, preds, embeddings, random_state)
        total = task_loss(batch, preds)
        for term in applicable:
            value = term(self, out)
            if value is not None:
                total = total + value
                if term_values is not None:
                    term_values[f"{term.name}_{task}"] = value.detach()
        return total


def _needed(task: str | None) -> str:
    if task is None:
        raise ValueError("with per-task layers a sentence embedding needs its task")
    return task


def task_loss(batch: Batch, preds: torch.Tensor) -> torch.Tensor:
    """The task's own loss of its predictions: cross-entropy (SST), binary cross-entropy on the
    logit (Quora), mean squared error (STS)."""
    labels = batch["labels"]
    if batch["task"] == "sst":
        return F.cross_entropy(preds, labels)
    if batch["task"] == "para":
        return F.binary_cross_entropy_with_logits(preds, labels.to(preds.dtype))
    return F.mse_loss(preds, labels.to(preds.dtype))
