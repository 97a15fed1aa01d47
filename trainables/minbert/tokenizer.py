"""WordPiece tokenisation from a checkpoint's `vocab.txt`, through the `tokenizers` library.

Single sentences become `[CLS] a [SEP]`, pairs `[CLS] a [SEP] b [SEP]` with token types
0 then 1. Truncation happens at encode time; padding happens per batch (`pad`), to the
longest item in that batch, so that length-bucketed batches carry almost no padding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tokenizers import BertWordPieceTokenizer

from trainables.errors import ConfigError
from trainables.minbert.hf_folder import resolve_checkpoint_dir

if TYPE_CHECKING:
    from trainables.minbert.config import ModelConfig


class WordPieceTokenizer:
    def __init__(self, vocab_file: str | Path, lowercase: bool = True) -> None:
        vocab_file = Path(vocab_file)
        if not vocab_file.is_file():
            raise ConfigError(
                f"{vocab_file} is missing: a BERT checkpoint folder needs its vocab.txt"
            )
        raw = vocab_file.read_bytes()
        try:
            self._tok = BertWordPieceTokenizer(str(vocab_file), lowercase=lowercase)
        except Exception as exc:  # the Rust side raises plain Exceptions
            raise ConfigError(f"{vocab_file} is not a WordPiece vocabulary: {exc}") from None
        for special in ("[PAD]", "[CLS]", "[SEP]", "[UNK]"):
            if self._tok.token_to_id(special) is None:
                raise ConfigError(f"{vocab_file} has no {special} token: is it a BERT vocab.txt?")
        self.pad_id: int = self._tok.token_to_id("[PAD]")
        self.vocab_size: int = self._tok.get_vocab_size()
        # Identifies the tokeniser in cache keys: same vocabulary and casing -> same ids.
        self.fingerprint: str = hashlib.sha256(
            raw + f"lowercase={lowercase}".encode()
        ).hexdigest()[:16]

    @classmethod
    def from_checkpoint(cls, folder: str | Path) -> WordPieceTokenizer:
        return cls(Path(folder) / "vocab.txt")

    def _configure(self, max_length: int) -> None:
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_length)

    def encode(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        """Token ids of single sentences, truncated to max_length (special tokens included)."""
        self._configure(max_length)
        return [e.ids for e in self._tok.encode_batch(list(texts))]

    def encode_pairs(
        self, first: Sequence[str], second: Sequence[str], max_length: int
    ) -> tuple[list[list[int]], list[list[int]]]:
        """Packed pairs: (ids, token type ids), longest-first truncation to max_length."""
        self._configure(max_length)
        encs = self._tok.encode_batch(list(zip(first, second, strict=True)))
        return [e.ids for e in encs], [e.type_ids for e in encs]

    def pad(
        self, ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]] | None = None
    ) -> dict[str, torch.Tensor]:
        """Pad a batch to its longest item: input_ids, attention_mask, token_type_ids (B, T)."""
        width = max(len(x) for x in ids)
        batch = len(ids)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        token_type_ids = torch.zeros((batch, width), dtype=torch.long)
        for i, row in enumerate(ids):
            n = len(row)
            input_ids[i, :n] = torch.as_tensor(row, dtype=torch.long)
            attention_mask[i, :n] = 1
            if type_ids is not None:
                token_type_ids[i, :n] = torch.as_tensor(type_ids[i], dtype=torch.long)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
        }


def tokenizer_for(model: ModelConfig) -> WordPieceTokenizer:
    """The tokenizer of a model config: its checkpoint's vocab.txt; for random init,
    model.vocab_file or else MiniLM's (bert-base-uncased) vocabulary."""
    if model.checkpoint == "random":
        return WordPieceTokenizer(
            Path(model.vocab_file)
            if model.vocab_file
            else resolve_checkpoint_dir("minilm") / "vocab.txt"
        )
    return WordPieceTokenizer.from_checkpoint(resolve_checkpoint_dir(model.checkpoint))
