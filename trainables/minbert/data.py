"""CS224N multitask data: every split of the three tasks, tokenised, capped, held out.

    data = load_multitask_data(cfg.data, tokenizer, pair_encoding="siamese")
    for batch in data.train["sst"].batches(16, tokenizer, shuffle=True, generator=g): ...

Files are parsed as the official starter parses them (`task_files.py`), tokenised once and
cached (`token_cache.py`), and batched with length bucketing (`batching.py`). The official
test files carry no labels, so a seeded share of each train file is held out as the "test"
split; see docs/DATA.md. `data_dir=None` loads the built-in synthetic set (synthetic.py)
through the same code.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainables.errors import ConfigError
from trainables.minbert.batching import Batch, EncodedSplit
from trainables.minbert.config import DataConfig
from trainables.minbert.synthetic import ensure_synthetic_dataset
from trainables.minbert.task_files import ParsedFile, read_task_file, task_files
from trainables.minbert.token_cache import (
    CACHE_FORMAT,
    cache_key,
    default_cache_root,
    pack_tokens,
    read_cache,
    unpack_splits,
    write_cache,
)
from trainables.minbert.tokenizer import WordPieceTokenizer

__all__ = [
    "PAIR_ENCODINGS",
    "SPLITS",
    "TASKS",
    "Batch",
    "EncodedSplit",
    "MultitaskData",
    "held_out_count",
    "load_multitask_data",
    "split_order",
]

log = logging.getLogger(__name__)

TASKS = ("sst", "para", "sts")
SPLITS = ("train", "dev", "test", "train_eval")
PAIR_ENCODINGS = ("siamese", "cross")


# ---------------------------------------------------------------------------------------------
# The held-out split


def split_order(ids: Sequence[str], seed: int, salt: str) -> list[int]:
    """A seeded shuffle of row indices that depends only on (seed, salt, each row's id)."""

    def key(i: int) -> tuple[bytes, int]:
        return hashlib.sha256(f"{seed}\0{salt}\0{ids[i]}".encode()).digest(), i

    return sorted(range(len(ids)), key=key)


def held_out_count(n: int, fraction: float) -> int:
    """Rows of an n-row train file that go to the "test" split (at least 1, never all)."""
    if n < 2:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


# ---------------------------------------------------------------------------------------------
# Loading everything, through the token cache


@dataclass
class MultitaskData:
    """All splits of the three tasks, tokenised, plus what the loader dropped and noticed."""

    train: dict[str, EncodedSplit]
    dev: dict[str, EncodedSplit]
    test: dict[str, EncodedSplit]  # seeded held-out share of each train file
    train_eval: dict[str, EncodedSplit]  # first train_eval_examples of train, for train metrics
    dropped: dict[str, dict[str, int]]  # file name -> reason -> count
    notes: list[str]  # e.g. that quora train is the 10% partial prefix
    data_dir: Path | None = None  # the folder actually read (the synthetic one when unset)

    def split(self, name: str) -> dict[str, EncodedSplit]:
        if name not in SPLITS:
            raise ValueError(f"unknown split '{name}': choose one of {', '.join(SPLITS)}")
        splits: dict[str, EncodedSplit] = getattr(self, name)
        return splits

    def sizes(self) -> dict[str, dict[str, int]]:
        """{"train": {"sst": 7690, ...}, ...}: for logs and result tables."""
        return {s: {t: len(d) for t, d in self.split(s).items()} for s in SPLITS}


def load_multitask_data(
    cfg: DataConfig, tokenizer: WordPieceTokenizer, pair_encoding: str
) -> MultitaskData:
    """Parse, split, tokenise (or read the token cache) and cap the three tasks.

    Args:
        cfg: data section of the trial config. `data_dir=None` uses the synthetic set,
            materialised once under the cache root.
        tokenizer: encodes the text; its fingerprint is part of the cache key.
        pair_encoding: "siamese" (each sentence of a pair on its own) or "cross" (packed).

    Raises:
        ConfigError: a missing folder or file, a malformed file, an unknown pair encoding.
    """
    if pair_encoding not in PAIR_ENCODINGS:
        raise ConfigError(
            f"pair encoding '{pair_encoding}' is unknown: "
            f"set model.pair_encoding to one of {', '.join(PAIR_ENCODINGS)}"
        )
    cache_root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_root()
    if cfg.data_dir is None:
        data_dir = ensure_synthetic_dataset(cache_root)
    else:
        data_dir = Path(cfg.data_dir).expanduser()
        if not data_dir.is_dir():
            raise ConfigError(
                f"data.data_dir {data_dir} is not a folder: download the CS224N "
                "files there (`hpsearch data download --dest DIR`), or unset it "
                "to use the synthetic set"
            )
    data = MultitaskData({}, {}, {}, {}, {}, [], data_dir)
    if cfg.data_dir is None:
        data.notes.append(f"synthetic data set at {data_dir} (data.data_dir is unset)")
    for task in TASKS:
        full, payload = _load_task(
            task, data_dir, cfg, tokenizer, pair_encoding, cache_root / "tokens"
        )
        train = full["train"].head(cfg.max_train_examples)
        data.train[task] = train
        data.dev[task] = full["dev"].head(cfg.max_eval_examples)
        data.test[task] = full["test"].head(cfg.max_eval_examples)
        data.train_eval[task] = train.select(
            range(min(len(train), cfg.train_eval_examples)), split="train_eval"
        )
        data.dropped.update(payload["dropped"])
        data.notes.extend(payload["notes"])
    for note in data.notes:
        log.info("data: %s", note)
    return data


def _load_task(
    task: str,
    data_dir: Path,
    cfg: DataConfig,
    tokenizer: WordPieceTokenizer,
    pair_encoding: str,
    cache_dir: Path,
) -> tuple[dict[str, EncodedSplit], dict[str, Any]]:
    """The full (uncapped) train/dev/test splits of one task, and the cache payload."""
    train_path, dev_path, notes = task_files(data_dir, task)
    if not dev_path.is_file():
        raise ConfigError(
            f"{dev_path} is missing: put the CS224N files there "
            "(`hpsearch data download --dest DIR`, see docs/DATA.md)"
        )
    key = cache_key(task, train_path, dev_path, cfg, tokenizer, pair_encoding)
    cache_file = cache_dir / f"{task}-{key[:40]}.pt"
    cached = read_cache(task, cache_file, key)
    if cached is not None:
        return cached
    train_file = read_task_file(train_path, task)
    dev_file = read_task_file(dev_path, task)
    order = split_order(train_file.ids, cfg.split_seed, f"{task}/heldout")
    n_test = held_out_count(len(order), cfg.test_fraction)
    dev_order = split_order(dev_file.ids, cfg.split_seed, f"{task}/dev")  # capping takes prefixes
    mode = "single" if task == "sst" else pair_encoding
    payload = {
        "format": CACHE_FORMAT,
        "key": key,
        "splits": {
            "train": _encode(task, train_file, order[n_test:], tokenizer, cfg.max_length, mode),
            "test": _encode(task, train_file, order[:n_test], tokenizer, cfg.max_length, mode),
            "dev": _encode(task, dev_file, dev_order, tokenizer, cfg.max_length, mode),
        },
        "dropped": {train_path.name: train_file.dropped, dev_path.name: dev_file.dropped},
        "notes": notes,
    }
    write_cache(cache_file, payload)
    return unpack_splits(task, payload), payload


def _encode(
    task: str,
    parsed: ParsedFile,
    order: list[int],
    tokenizer: WordPieceTokenizer,
    max_length: int,
    mode: str,
) -> dict[str, Any]:
    """Tokenise the rows `order` of a parsed file into the plain cache form of one split."""
    dtype = torch.float32 if task == "sts" else torch.long
    out: dict[str, Any] = {
        "ids": [parsed.ids[i] for i in order],
        "labels": torch.tensor([parsed.labels[i] for i in order], dtype=dtype),
    }
    first = [parsed.texts[i][0] for i in order]
    if mode == "single":
        out["tokens"] = pack_tokens(tokenizer.encode(first, max_length))
    elif mode == "siamese":
        second = [parsed.texts[i][1] for i in order]
        out["tokens_a"] = pack_tokens(tokenizer.encode(first, max_length))
        out["tokens_b"] = pack_tokens(tokenizer.encode(second, max_length))
    else:
        second = [parsed.texts[i][1] for i in order]
        tokens, type_ids = tokenizer.encode_pairs(first, second, max_length)
        out["tokens"] = pack_tokens(tokens)
        out["type_ids"] = pack_tokens(type_ids)
    return out
