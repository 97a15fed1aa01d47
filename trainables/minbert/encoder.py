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
    model_cfg = cfg.model
    tokenizer = tokenizer_for(model_cfg)
    if model_cfg.checkpoint == "random":
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=model_cfg.hidden_size,
            num_layers=model_cfg.num_layers,
            num_heads=model_cfg.num_heads,
            intermediate_size=model_cfg.intermediate_size,
            hidden_dropout=model_cfg.dropout,
            attention_dropout=model_cfg.dropout,
            max_position_embeddings=max(512, cfg.data.max_length),
        )
        return tokenizer, BertModel.from_config(config, seed=cfg.train.seed)
    return tokenizer, BertModel.from_pretrained(
        resolve_checkpoint_dir(model_cfg.checkpoint), hidden_dropout=model_cfg.dropout
    )
