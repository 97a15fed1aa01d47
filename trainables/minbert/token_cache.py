"""The token cache: each task's splits tokenised once, keyed by everything that shapes them.

The key hashes the code that turns files into tokens, the files' contents, the tokenizer, the
maximum length, the pair encoding and the held-out split; a damaged or stale file is
re-tokenised with a warning, and a cache that cannot be written only costs time.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
from pathlib import Path
from typing import Any

import torch

from trainables.atomic import atomic_path
from trainables.minbert.batching import EncodedSplit
from trainables.minbert.config import DataConfig
from trainables.minbert.tokenizer import WordPieceTokenizer

__all__ = [
    "CACHE_FORMAT",
    "cache_key",
    "code_version",
    "default_cache_root",
    "forget_recent",
    "pack_tokens",
    "read_cache",
    "unpack_splits",
    "write_cache",
]

CACHE_FORMAT = 1  # bump when the cache payload layout changes
# task -> ((file, key, file stamp), splits, payload) of the cache file this process read last
_recent: dict[
    str, tuple[tuple[Path, str, tuple[int, ...]], dict[str, EncodedSplit], dict[str, Any]]
] = {}
# The modules whose code turns files into tokens: editing one invalidates the cache.
_TOKENISING_MODULES = ("data.py", "task_files.py", "batching.py", "token_cache.py", "tokenizer.py")


def default_cache_root() -> Path:
    """$XDG_CACHE_HOME/hpsearch, or ~/.cache/hpsearch."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "hpsearch"


def pack_tokens(seqs: list[list[int]]) -> dict[str, torch.Tensor]:
    """Ragged int lists as one flat tensor plus offsets: compact and fast to torch.load."""
    offsets = torch.zeros(len(seqs) + 1, dtype=torch.long)
    if seqs:
        offsets[1:] = torch.tensor([len(s) for s in seqs], dtype=torch.long).cumsum(0)
    flat = torch.tensor([t for s in seqs for t in s], dtype=torch.int32)
    return {"flat": flat, "offsets": offsets}


def _unpack(packed: dict[str, torch.Tensor]) -> list[list[int]]:
    flat = packed["flat"].tolist()
    offsets = packed["offsets"].tolist()
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def _unpack_split(task: str, split: str, plain: dict[str, Any]) -> EncodedSplit:
    seqs = {
        k: _unpack(plain[k]) for k in ("tokens", "type_ids", "tokens_a", "tokens_b") if k in plain
    }
    return EncodedSplit(task, split, list(plain["ids"]), plain["labels"], **seqs)


def unpack_splits(task: str, payload: dict[str, Any]) -> dict[str, EncodedSplit]:
    return {s: _unpack_split(task, s, payload["splits"][s]) for s in ("train", "dev", "test")}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fp:
        for block in iter(lambda: fp.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_version() -> str:
    """Hash of the code that turns files into tokens: editing it invalidates the cache."""
    import tokenizers

    digest = hashlib.sha256(f"{CACHE_FORMAT}:{tokenizers.__version__}".encode())
    for name in _TOKENISING_MODULES:
        digest.update(Path(__file__).with_name(name).read_bytes())
    return digest.hexdigest()[:16]


def cache_key(
    task: str,
    train_path: Path,
    dev_path: Path,
    cfg: DataConfig,
    tokenizer: WordPieceTokenizer,
    pair_encoding: str,
) -> str:
    material = {
        "code": code_version(),
        "task": task,
        "train": [train_path.name, _file_sha256(train_path)],
        "dev": [dev_path.name, _file_sha256(dev_path)],
        "tokenizer": tokenizer.fingerprint,
        "max_length": cfg.max_length,
        "pair_encoding": None if task == "sst" else pair_encoding,
        "split": [cfg.split_seed, cfg.test_fraction],
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def read_cache(
    task: str, path: Path, key: str
) -> tuple[dict[str, EncodedSplit], dict[str, Any]] | None:
    """The cached splits and payload, or None when absent; a damaged file is reported.

    The splits this process read last for `task` are kept in memory (`_recent`) and handed
    out again for the same file, key and file state (size, mtime, inode): a Ray worker that runs trial after trial unpacks a
    task once, not per trial (about 2 s for the real CS224N files). Callers must not change
    the splits in place (they take `head`/`select` copies). The payload handed back holds
    only what the loader reads of it: "dropped" and "notes" (not the packed tokens).
    """
    stamp = _file_stamp(path)
    if stamp is None:
        return None
    recent = _recent.get(task)
    if recent is not None and recent[0] == (path, key, stamp):
        return dict(recent[1]), dict(recent[2])
    try:
        payload = torch.load(path, weights_only=True)
        if payload.get("format") != CACHE_FORMAT or payload.get("key") != key:
            raise ValueError("format or key differs")
        # Building the splits validates them: lengths of ids, labels and tokens must agree.
        splits = unpack_splits(task, payload)
        if not isinstance(payload["dropped"], dict) or not isinstance(payload["notes"], list):
            raise ValueError("dropped counts or notes are missing")
        slim = {k: payload[k] for k in ("format", "key", "dropped", "notes")}
        _recent[task] = ((path, key, stamp), splits, slim)  # one per task: memory bounded
        return dict(splits), dict(slim)
    except Exception as exc:  # torch/pickle/zip raise many types on a damaged file
        warnings.warn(
            f"token cache {path} is unreadable ({type(exc).__name__}: {exc}); re-tokenising",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def write_cache(path: Path, payload: dict[str, Any]) -> None:
    """Write the cache file atomically (`trainables.atomic`): readers never see a partial
    file, and concurrent writers of the same key write identical content."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        warnings.warn(
            f"token cache folder {path.parent} is not writable ({exc}); "
            "continuing without a cache",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except OSError as exc:  # a full disk must not fail the trial: it only loses the cache
        warnings.warn(
            f"could not write token cache {path} ({exc}); continuing without it",
            RuntimeWarning,
            stacklevel=3,
        )


def _file_stamp(path: Path) -> tuple[int, ...] | None:
    """(size, mtime in ns, inode) of a regular file, or None when there is none."""
    try:
        st = path.stat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def forget_recent() -> None:
    """Drop the splits `read_cache` keeps in memory (tests; a process short of memory)."""
    _recent.clear()
