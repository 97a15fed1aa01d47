"""The trial's tokenizer and sentence encoder, from its `model.*` settings."""

from __future__ import annotations

from trainables.minbert.config import TrialConfig
from trainables.minbert.hf_folder import resolve_checkpoint_dir
from trainables.minbert.model import BertConfig, BertModel
from trainables.minbert.tokenizer import WordPieceTokenizer, tokenizer_for

__all__ = ["build_encoder"]


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
