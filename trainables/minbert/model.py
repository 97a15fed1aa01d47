"""minBERT: a compact BERT encoder in plain torch, loadable from Hugging Face BERT folders.

    model = BertModel.from_pretrained(minilm_dir())        # or BertModel.from_config(cfg, seed=0)
    hidden, pooled = model(input_ids, attention_mask)        # (B, T, H), (B, H)

Read top to bottom: config, embeddings, self-attention, layer, encoder, pooler, model, loading.
Submodules carry the checkpoint's names (`encoder.layer.0.attention.output.LayerNorm`), so
loading is a key copy, with one exception: the query/key/value projections are fused into one
`qkv` Linear (one matmul instead of three, forward and backward), concatenated at load time
and split again by `hf_state_dict()`. Outputs match transformers' BertModel within 1e-5 in fp32
(the rounding noise between its own eager and sdpa paths) and within 1e-10 in fp64.

Training speed on CPU comes from three things, measured in benchmarks/bench_model.py: the fused
qkv projection, a cheaper dropout mask (`dropout`), and attention written out when dropout is on
(torch's fused CPU kernels refuse dropout, and its fallback pays extra passes). No mask at all
is passed when a batch has no padding.
`forward_packed` encodes groups of sequences, each padded to its own width, one after another
(`Packed`): attention runs group by group, every other layer once over all groups.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.errors import ConfigError
from trainables.minbert.hf_folder import check_checkpoint_dir, hf_to_minbert, load_state_dict

# Fields a config.json must give (the others have BERT's defaults); fields that must be > 0.
_REQUIRED_FIELDS = "vocab_size hidden_size num_layers num_heads intermediate_size".split()
_POSITIVE_FIELDS = [*_REQUIRED_FIELDS, "max_position_embeddings", "type_vocab_size"]


@dataclass
class BertConfig:
    vocab_size: int = 30522  # WordPiece vocabulary (bert-base-uncased)
    hidden_size: int = 384  # H: width of every token vector
    num_layers: int = 6
    num_heads: int = 12  # H must divide evenly into heads
    intermediate_size: int = 1536  # width of the feed-forward block
    hidden_dropout: float = 0.1  # after embeddings, attention output and feed-forward
    attention_dropout: float = 0.1  # on the attention probabilities
    max_position_embeddings: int = 512  # longest sequence the model accepts
    type_vocab_size: int = 2  # token types (segments A and B)
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0  # its embedding gets no gradient
    initializer_range: float = 0.02  # std of the normal init (random models only)

    # HF config.json name of each field (the names are the same where absent).
    _HF_NAMES = {
        "num_layers": "num_hidden_layers",
        "num_heads": "num_attention_heads",
        "hidden_dropout": "hidden_dropout_prob",
        "attention_dropout": "attention_probs_dropout_prob",
    }

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            integer = f.type == "int"  # a float field accepts 1 for 1.0
            if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
                raise ConfigError(
                    f"BertConfig.{f.name} must be "
                    f"{'an integer' if integer else 'a number'} (got {value!r})"
                )
        for name in _POSITIVE_FIELDS:
            if (value := getattr(self, name)) <= 0:
                raise ConfigError(f"BertConfig.{name} must be positive (got {value})")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= (value := getattr(self, name)) < 1.0:
                raise ConfigError(f"BertConfig.{name} must be in [0, 1) (got {value})")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"BertConfig.hidden_size ({self.hidden_size}) must be divisible by num_heads "
                f"({self.num_heads}): pick a head count that divides it"
            )
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(
                f"BertConfig.pad_token_id ({self.pad_token_id}) must be in [0, vocab_size)"
            )

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        """Read a Hugging Face BERT `config.json`, refusing what this encoder does not do."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"{path} is missing: a BERT checkpoint folder needs config.json"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path} is corrupt or not JSON ({exc}): re-download it") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a JSON object of BERT settings")
        if raw.get("model_type", "bert") != "bert":
            raise ConfigError(
                f"{path}: model_type is {raw['model_type']!r}, only 'bert' is supported"
            )
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ConfigError(
                f"{path}: hidden_act {raw['hidden_act']!r} is not supported (only 'gelu')"
            )
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(
                f"{path}: position_embedding_type "
                f"{raw['position_embedding_type']!r} is not supported "
                "(only 'absolute')"
            )
        kwargs = {}
        for f in fields(cls):
            hf_name = cls._HF_NAMES.get(f.name, f.name)
            if hf_name in raw and raw[hf_name] is not None:
                kwargs[f.name] = raw[hf_name]
            elif f.name in _REQUIRED_FIELDS:
                raise ConfigError(f"{path} has no '{hf_name}': is it a BERT config.json?")
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json content transformers' BertModel reads back."""
        out = {self._HF_NAMES.get(k, k): v for k, v in asdict(self).items()}
        out.update(
            model_type="bert",
            architectures=["BertModel"],
            hidden_act="gelu",
            position_embedding_type="absolute",
        )
        return out


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout, as F.dropout, with a ~3x cheaper random mask on CPU.

    torch's CPU dropout draws each element through bernoulli_ (~8 ns per element here, ~15% of
    a MiniLM training step). Drawing raw 64-bit words and comparing each 32-bit half with
    round(p * 2**32) gives the same distribution (P(drop) = p within 2**-32) at ~2 ns, and is
    seeded by torch.manual_seed like any torch RNG.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    n = x.numel()
    words = torch.empty((n + 1) // 2, dtype=torch.int64).random_(-(2**63), None)  # all 64 bits
    bits = words.view(torch.int32)[:n].view(x.shape)  # uniform over [-2**31, 2**31)
    keep = torch.empty(x.shape, dtype=x.dtype)  # 1.0 with probability 1 - p, else 0.0:
    torch.ge(bits, -(2**31) + min(round(p * 2**32), 2**32 - 1), out=keep)  # no bool detour
    if x.dtype in (torch.float32, torch.float64):
        return x * keep.mul_(1.0 / (1.0 - p))  # scale folded into the mask: one pass fewer
    return (x * keep).mul_(1.0 / (1.0 - p))  # bf16/fp16: scale in fp32 math, rounded once


class Dropout(nn.Module):
    """nn.Dropout on `dropout` above."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        H = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, H, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, H)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, H)
        self.LayerNorm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout)

    def forward(
        self, input_ids: Tensor, token_type_ids: Tensor | None, positions: Tensor | None = None
    ) -> Tensor:
        T = input_ids.size(1) if positions is None else int(positions.max()) + 1
        if T > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"sequence length {T} exceeds max_position_embeddings "
                f"{self.position_embeddings.num_embeddings}: truncate the input"
            )
        x, table = self.word_embeddings(input_ids), self.position_embeddings  # (B, T, H)
        # Positions 0..T-1 in every row: a slice of the table, no index; packed (N,): a lookup.
        x = x + (table.weight[:T] if positions is None else table(positions))
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]  # all segment A
        else:
            x = x + self.token_type_embeddings(token_type_ids)  # (B, T, H)
        embedded: Tensor = self.dropout(self.LayerNorm(x))
        return embedded


class Packed(NamedTuple):
    """How `forward_packed` lays out groups of sequences: group g holds `shapes[g]` = (rows,
    width), rows * width consecutive positions (row-major, each row padded to the width), and
    `masks[g]` is its additive attention mask (rows, 1, 1, width), None without padding."""

    shapes: list[tuple[int, int]]
    masks: list[Tensor | None]


class BertSelfAttention(nn.Module):
    """Multi-head self-attention with fused Q/K/V, on torch's scaled_dot_product_attention."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)  # [query; key; value]
        self.dropout_p = config.attention_dropout

    def forward(self, x: Tensor, mask: Tensor | Packed | None) -> Tensor:
        if not isinstance(mask, Packed):
            return self._attend(self.qkv(x), mask)
        # One matmul for every group; split, not sliced: its backward is one cat, where each
        # slice's backward would fill a zero gradient of the whole (N, 3H).
        parts = torch.split(self.qkv(x), [rows * width for rows, width in mask.shapes])
        outs = [
            self._attend(part.view(rows, width, -1), group_mask).view(rows * width, -1)
            for part, (rows, width), group_mask in zip(parts, mask.shapes, mask.masks, strict=True)
        ]
        return torch.cat(outs) if len(outs) > 1 else outs[0]  # (N, H)

    def _attend(self, qkv: Tensor, mask: Tensor | None) -> Tensor:
        B, T, H = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3  # batch, length, hidden size
        qkv = qkv.view(B, T, 3, self.num_heads, H // self.num_heads)  # (B, T, 3, nh, hs)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, T, hs), views, no copy
        p = self.dropout_p if self.training else 0.0
        if p > 0.0 and qkv.device.type == "cpu":
            # torch's fused CPU kernels refuse dropout, and its fallback spends extra passes on
            # fully-masked rows (which BERT never has): the same math, written out, is faster.
            att = (q * q.size(-1) ** -0.5) @ k.transpose(-2, -1)  # (B, nh, T, T)
            if mask is not None:
                att = att.add_(mask)  # (B, nh, T, T) + (B, 1, 1, T)
            y = dropout(att.softmax(dim=-1), p, training=True) @ v  # (B, nh, T, hs)
        else:  # no mask (no padding) takes torch's fastest kernel
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out: Tensor = y.transpose(1, 2).reshape(B, T, H)  # (B, nh, T, hs) -> (B, T, H)
        return out


class BertAddNorm(nn.Module):
    """dense -> dropout -> add the residual -> LayerNorm (HF's BertSelfOutput and BertOutput)."""

    def __init__(self, d_in: int, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        out: Tensor = self.LayerNorm(self.dropout(self.dense(x)) + residual)  # (B, T, H)
        return out


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)  # named as in the checkpoint: attention.self.*
        self.output = BertAddNorm(config.hidden_size, config)

    def forward(self, x: Tensor, mask: Tensor | Packed | None) -> Tensor:
        out: Tensor = self.output(self.self(x, mask), x)
        return out


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))  # (B, T, I), exact (erf) GELU as in BERT


class BertLayer(nn.Module):
    """Post-LayerNorm transformer block: attention, then feed-forward, each with add & norm."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertAddNorm(config.intermediate_size, config)

    def forward(self, x: Tensor, mask: Tensor | Packed | None) -> Tensor:
        x = self.attention(x, mask)  # (B, T, H)
        out: Tensor = self.output(self.intermediate(x), x)  # (B, T, H)
        return out


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_layers))

    def forward(self, x: Tensor, mask: Tensor | Packed | None) -> Tensor:
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # [CLS] vector: (B, H)


class BertModel(nn.Module):
    """BERT encoder: `forward` returns (last hidden states (B, T, H), pooler output (B, H))."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """input_ids, attention_mask (1 = real token, 0 = padding), token_type_ids: (B, T)."""
        hidden = self.encode(input_ids, attention_mask, token_type_ids)
        return hidden, self.pooler(hidden)

    def encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """`forward`'s last hidden states (B, T, H) alone: the pooler is the caller's."""
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        hidden: Tensor = self.encoder(x, additive_mask(attention_mask, x.dtype))  # (B, T, H)
        return hidden

    def encode_packed(
        self, input_ids: Tensor, attention_mask: Tensor, shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Packed, Tensor]:
        """Groups of sequences, flat (`Packed`): input_ids, attention_mask (N,), group g
        `shapes[g]` = (rows, width). Returns the hidden states (N, H) in the same layout, the
        layout itself (for layers that run on after the encoder) and the flat positions
        (sum of rows,) of every row's first token, where the [CLS] pooler reads."""
        dev = input_ids.device
        positions = torch.cat([torch.arange(w, device=dev).repeat(n) for n, w in shapes])
        x = self.embeddings(input_ids, None, positions)  # (N, H); token type 0 throughout
        layout, firsts = packed_layout(attention_mask, shapes, x.dtype)
        return self.encoder(x, layout), layout, firsts  # (N, H)

    def forward_packed(
        self, input_ids: Tensor, attention_mask: Tensor, shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """`encode_packed`'s hidden states (N, H) and the pooler output (sum of rows, H),
        group after group."""
        hidden, _, firsts = self.encode_packed(input_ids, attention_mask, shapes)
        return hidden, self.pooler(hidden[firsts].unsqueeze(1))

    @classmethod
    def from_config(cls, config: BertConfig, seed: int | None = None) -> BertModel:
        """Random weights as BERT initialises them: normal(0, initializer_range), LayerNorm 1/0."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        model = cls(config)
        std = config.initializer_range
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    module.weight.normal_(0.0, std, generator=generator)
                if isinstance(module, nn.Linear):
                    module.bias.zero_()
                elif isinstance(module, nn.Embedding) and module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
                elif isinstance(module, nn.LayerNorm):
                    module.weight.fill_(1.0)
                    module.bias.zero_()
        return model

    @classmethod
    def from_pretrained(cls, folder: str | Path, hidden_dropout: float | None = None) -> BertModel:
        """Load a Hugging Face BERT folder (config.json, model.safetensors or pytorch_model.bin).

        Keys may carry a `bert.` prefix; MLM/NSP heads (`cls.*`) and `position_ids` are ignored,
        and a missing pooler is initialised as BERT would. `hidden_dropout` replaces the
        checkpoint's hidden_dropout_prob. Returns the model in eval mode.

        Raises:
            ConfigError: one line naming the file (or key) and the fix, for anything missing,
                corrupt or inconsistent.
        """
        folder = check_checkpoint_dir(folder)
        config = BertConfig.from_json(folder / "config.json")
        if hidden_dropout is not None:
            config = replace(config, hidden_dropout=hidden_dropout)  # validated again
        weights_file, raw = load_state_dict(folder)
        with torch.device("meta"):  # no wasted random init: every tensor comes from the file
            model = cls(config)
        weights = hf_to_minbert(raw, model.state_dict(), config, weights_file)
        model.load_state_dict(weights, assign=True)
        return model.eval()

    def hf_state_dict(self) -> dict[str, Tensor]:
        """Weights under transformers' BertModel key names (q/k/v split again)."""
        out: dict[str, Tensor] = {}
        for key, value in self.state_dict().items():
            if ".attention.self.qkv." in key:
                prefix, kind = key.rsplit(".qkv.", 1)
                for name, part in zip(("query", "key", "value"), value.chunk(3), strict=True):
                    out[f"{prefix}.{name}.{kind}"] = part.detach().clone()
            else:
                out[key] = value.detach().clone()
        return out


def additive_mask(attention_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """(B, T) 1/0 -> additive (B, 1, 1, T): 0 to attend, the most negative float at padding (not
    -inf: a row of padding gives a uniform softmax, never NaN); None (no mask) without padding."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


def packed_layout(
    attention_mask: Tensor, shapes: Sequence[tuple[int, int]], dtype: torch.dtype
) -> tuple[Packed, Tensor]:
    """The `Packed` layout of flat groups of sequences (`shapes[g]` = (rows, width)): each
    group's additive mask, and the flat positions (rows,) of every row's first token, where
    the [CLS] pooler reads. Task-specific top layers run on the same layout."""
    masks, firsts, start = [], [], 0
    for rows, width in shapes:
        group = attention_mask[start : start + rows * width].view(rows, width)
        masks.append(additive_mask(group, dtype))
        firsts.append(torch.arange(start, start + rows * width, width, device=group.device))
        start += rows * width
    return Packed(list(shapes), masks), torch.cat(firsts)


def mean_pool(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Average of the token vectors that are not padding: (B, T, H), (B, T) -> (B, H)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


__all__ = [
    "BertConfig",
    "BertModel",
    "Packed",
    "additive_mask",
    "dropout",
    "mean_pool",
    "packed_layout",
]
