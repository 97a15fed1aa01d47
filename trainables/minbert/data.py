"""CS224N multitask data: parsing, the held-out split, tokenise-once caching, length bucketing.

    data = load_multitask_data(cfg.data, tokenizer, pair_encoding="siamese")
    for batch in data.train["sst"].batches(16, tokenizer, shuffle=True, generator=g): ...

Files are read exactly as the official starter reads them (tab-separated, `"` quoting,
`csv.DictReader`; SST text `.lower().strip()`, Quora/STS `preprocess_string`), except that
unusable rows are counted per file and reason instead of being skipped silently. The official
test files carry no labels, so a seeded share of each train file is held out as the "test"
split; see docs/DATA.md. `data_dir=None` loads the built-in synthetic set (synthetic.py)
through the same code.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainables.errors import ConfigError
from trainables.minbert.config import DataConfig
from trainables.minbert.synthetic import ensure_synthetic_dataset
from trainables.minbert.tokenizer import WordPieceTokenizer

log = logging.getLogger(__name__)

TASKS = ("sst", "para", "sts")
SPLITS = ("train", "dev", "test", "train_eval")
PAIR_ENCODINGS = ("siamese", "cross")
QUORA_PARTIAL = "quora-train-partial-first14139.csv"
CHUNK_BATCHES = 50  # length bucketing sorts within shuffled chunks of this many batches
_CACHE_FORMAT = 1  # bump when the cache payload layout changes

Batch = dict[str, Any]


@dataclass(frozen=True)
class _TaskFiles:
    train: tuple[str, ...]  # candidates, first existing wins
    dev: str
    texts: tuple[str, ...]  # one column (single sentence) or two (pair)
    label: str


_FILES = {
    "sst": _TaskFiles(("ids-sst-train.csv",), "ids-sst-dev.csv", ("sentence",), "sentiment"),
    "para": _TaskFiles(
        ("quora-train.csv", QUORA_PARTIAL),
        "quora-dev.csv",
        ("sentence1", "sentence2"),
        "is_duplicate",
    ),
    "sts": _TaskFiles(("sts-train.csv",), "sts-dev.csv", ("sentence1", "sentence2"), "similarity"),
}


# ---------------------------------------------------------------------------------------------
# Parsing


def preprocess_string(s: str) -> str:
    """The starter's Quora/STS normalisation: lowercase, split off . ? , ' and squeeze spaces."""
    s = s.lower().replace(".", " .").replace("?", " ?").replace(",", " ,").replace("'", " '")
    return " ".join(s.split())


@dataclass
class ParsedFile:
    """The usable rows of one labelled CS224N file, and what was dropped and why."""

    path: Path
    ids: list[str]
    texts: list[tuple[str, ...]]  # one normalised text per text column
    labels: list[int] | list[float]
    dropped: dict[str, int]  # reason -> count

    def __len__(self) -> int:
        return len(self.ids)


def _parse_label(task: str, raw: str | None) -> tuple[int | float | None, str | None]:
    """(label, None) or (None, reason the row is unusable)."""
    if raw is None or not raw.strip():
        return None, "empty label"
    try:
        value = float(raw) if task != "sst" else int(raw.strip())
    except ValueError:
        return None, "unparsable label"
    if task == "sst":
        return (value, None) if 0 <= value <= 4 else (None, "label out of range")
    if task == "para":
        # The starter takes int(float(x)); a value other than 0 or 1 is a broken row, not a label.
        return (int(value), None) if value in (0.0, 1.0) else (None, "label out of range")
    if not math.isfinite(value) or not 0.0 <= value <= 5.0:
        return None, "label out of range"
    return value, None


def read_task_file(path: str | Path, task: str) -> ParsedFile:
    """Parse one labelled CS224N file (train or dev) of `task` ("sst", "para" or "sts").

    Raises:
        ConfigError: the file is missing, unreadable, empty, lacks a needed column, or has
            no usable row.
    """
    if task not in _FILES:
        raise ConfigError(f"unknown task '{task}': choose one of {', '.join(TASKS)}")
    spec = _FILES[task]
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path} is missing: put the CS224N files there "
            "(`hpsearch data download --dest DIR`, see docs/DATA.md)"
        )
    ids: list[str] = []
    texts: list[tuple[str, ...]] = []
    labels: list[Any] = []
    dropped: Counter[str] = Counter()
    try:
        with path.open(encoding="utf-8", newline="") as fp:
            reader = csv.DictReader(fp, delimiter="\t")
            header = reader.fieldnames
            if not header:
                raise ConfigError(
                    f"{path} is empty: expected a tab-separated header line "
                    f"with columns id, {', '.join(spec.texts)}, {spec.label}"
                )
            missing = [c for c in ("id", *spec.texts, spec.label) if c not in header]
            if missing:
                hint = (
                    " (test-student files carry no labels: use the train/dev file)"
                    if missing == [spec.label]
                    else " (is it tab-separated, and the right file for this task?)"
                )
                raise ConfigError(
                    f"{path}: missing column(s) {', '.join(missing)}; header has "
                    f"{', '.join(repr(h) for h in header)}{hint}"
                )
            for row in reader:
                reason = None
                label = None
                if None in row:  # more fields than the header: a stray unquoted tab
                    reason = "too many fields"
                else:
                    label, reason = _parse_label(task, row[spec.label])
                if reason is None:
                    norm = [_normalise(task, row[c]) for c in spec.texts]
                    row_id = (row["id"] or "").lower().strip()
                    if not all(norm):
                        reason = "empty sentence"
                    elif not row_id:
                        reason = "empty id"
                if reason is not None:
                    dropped[reason] += 1
                    continue
                ids.append(row_id)
                texts.append(tuple(norm))
                labels.append(label)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): "
            "use the original CS224N file"
        ) from None
    except csv.Error as exc:
        raise ConfigError(f"{path}: unreadable CSV at line {reader.line_num}: {exc}") from None
    if not ids:
        why = ", ".join(f"{n} {r}" for r, n in sorted(dropped.items())) or "no data rows"
        raise ConfigError(
            f"{path} has no usable rows ({why}): check that it is the CS224N {task} file"
        )
    if dropped:
        log.info("%s: dropped %s", path.name, dict(dropped))
    return ParsedFile(path, ids, texts, labels, dict(sorted(dropped.items())))


def _normalise(task: str, text: str | None) -> str:
    text = text or ""
    return text.lower().strip() if task == "sst" else preprocess_string(text)


def task_files(data_dir: Path, task: str) -> tuple[Path, Path, list[str]]:
    """(train file, dev file, notes) of `task` under data_dir; falls back to the partial Quora."""
    spec = _FILES[task]
    notes: list[str] = []
    for name in spec.train:
        if (data_dir / name).is_file():
            train = data_dir / name
            break
    else:
        names = " or ".join(spec.train)
        raise ConfigError(
            f"{data_dir} has no {names}: put the CS224N files there "
            "(`hpsearch data download --dest DIR`, see docs/DATA.md), or unset "
            "data.data_dir to use the synthetic set"
        )
    if train.name == QUORA_PARTIAL:
        notes.append(
            f"quora train is {QUORA_PARTIAL}, the first 10% of the official "
            "quora-train.csv: paraphrase scores will be below published numbers"
        )
    return train, data_dir / spec.dev, notes


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
# Encoded splits and batching


@dataclass
class EncodedSplit:
    """One task's split, tokenised: single sentences (`tokens`), siamese pairs (`tokens_a`,
    `tokens_b`) or packed cross pairs (`tokens` + `type_ids`)."""

    task: str
    split: str
    ids: list[str]
    labels: torch.Tensor  # (N,) long for sst/para, float32 for sts
    tokens: list[list[int]] | None = None
    type_ids: list[list[int]] | None = None
    tokens_a: list[list[int]] | None = None
    tokens_b: list[list[int]] | None = None
    sort_keys: list[int] = field(init=False, repr=False)  # length bucketing sorts by these

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.tokens_a is not None or self.tokens_b is not None:
            if self.tokens_a is None or self.tokens_b is None or self.tokens is not None:
                raise ValueError("siamese splits need tokens_a and tokens_b and no tokens")
            seqs = [self.tokens_a, self.tokens_b]
        elif self.tokens is not None:
            seqs = [self.tokens] + ([self.type_ids] if self.type_ids is not None else [])
        else:
            raise ValueError("an EncodedSplit needs tokens, or tokens_a and tokens_b")
        if any(len(s) != n for s in seqs) or self.labels.shape != (n,):
            raise ValueError(f"{self.task}/{self.split}: ids, labels and tokens differ in length")
        if self.tokens_a is not None and self.tokens_b is not None:
            # Both sentences are padded separately: sorting by the longer one, then by the
            # first, keeps both paddings small (measured on Quora train: 15% vs 26% for a+b).
            self.sort_keys = [
                max(len(a), len(b)) * 1024 + len(a)
                for a, b in zip(self.tokens_a, self.tokens_b, strict=True)
            ]
        else:
            self.sort_keys = [len(t) for t in seqs[0]]

    @property
    def is_siamese(self) -> bool:
        return self.tokens_a is not None

    def __len__(self) -> int:
        return len(self.ids)

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def head(self, n: int | None) -> EncodedSplit:
        """The first n examples (all if n is None or larger), under the same split name."""
        return self.select(range(min(len(self), n if n is not None else len(self))))

    def select(self, indices: Sequence[int], split: str | None = None) -> EncodedSplit:
        idx = list(indices)

        def pick(seqs: list[list[int]] | None) -> list[list[int]] | None:
            return None if seqs is None else [seqs[i] for i in idx]

        return EncodedSplit(
            self.task,
            split or self.split,
            [self.ids[i] for i in idx],
            self.labels[torch.as_tensor(idx, dtype=torch.long)],
            pick(self.tokens),
            pick(self.type_ids),
            pick(self.tokens_a),
            pick(self.tokens_b),
        )

    def batches(
        self,
        batch_size: int,
        tokenizer: WordPieceTokenizer,
        shuffle: bool,
        generator: torch.Generator | None = None,
    ) -> Iterator[Batch]:
        """Yield padded batches covering every example exactly once.

        Args:
            batch_size: examples per batch (the last one may be smaller).
            tokenizer: pads each batch to its longest item.
            shuffle: training order: length-bucketed batches in a shuffled order. False:
                evaluation order, longest first, no randomness.
            generator: seeds the shuffle; None uses torch's global generator.

        Yields:
            {"task", "ids", "labels", "inputs"} for single sequences (sst, cross pairs) or
            {"task", "ids", "labels", "inputs_a", "inputs_b"} for siamese pairs; inputs are
            dicts of (B, T) tensors input_ids / attention_mask / token_type_ids.
        """
        for idx in batch_indices(self.sort_keys, batch_size, shuffle, generator):
            yield self.make_batch(idx, tokenizer)

    def make_batch(self, idx: Sequence[int], tokenizer: WordPieceTokenizer) -> Batch:
        batch: Batch = {
            "task": self.task,
            "ids": [self.ids[i] for i in idx],
            "labels": self.labels[torch.as_tensor(list(idx), dtype=torch.long)],
        }
        if self.tokens_a is not None and self.tokens_b is not None:
            batch["inputs_a"] = tokenizer.pad([self.tokens_a[i] for i in idx])
            batch["inputs_b"] = tokenizer.pad([self.tokens_b[i] for i in idx])
        else:
            assert self.tokens is not None
            types = None if self.type_ids is None else [self.type_ids[i] for i in idx]
            batch["inputs"] = tokenizer.pad([self.tokens[i] for i in idx], types)
        return batch


def batch_indices(
    sort_keys: Sequence[int],
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    bucket: bool = True,
    chunk_batches: int = CHUNK_BATCHES,
) -> list[list[int]]:
    """Cut example indices 0..len(sort_keys)-1 into batches; each appears exactly once.

    shuffle=True: shuffle, sort by key (length) inside chunks of `chunk_batches` batches (so a
    batch holds similar lengths and little padding), cut, then shuffle the batch order. With
    bucket=False the shuffled order is cut as is. shuffle=False: sorted longest first.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(sort_keys)
    if not shuffle:
        order = sorted(range(n), key=lambda i: -sort_keys[i])
        return [order[s : s + batch_size] for s in range(0, n, batch_size)]
    perm = torch.randperm(n, generator=generator).tolist()
    if not bucket:
        return [perm[s : s + batch_size] for s in range(0, n, batch_size)]
    chunk = batch_size * chunk_batches
    batches: list[list[int]] = []
    for start in range(0, n, chunk):
        part = sorted(perm[start : start + chunk], key=sort_keys.__getitem__)
        batches.extend(part[s : s + batch_size] for s in range(0, len(part), batch_size))
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def padding_share(
    split: EncodedSplit,
    batch_size: int,
    tokenizer: WordPieceTokenizer,
    bucketed: bool,
    seed: int = 0,
) -> float:
    """Share of padded positions over all positions of one shuffled pass of training batches."""
    gen = torch.Generator().manual_seed(seed)
    pads = total = 0
    for idx in batch_indices(split.sort_keys, batch_size, True, gen, bucket=bucketed):
        batch = split.make_batch(idx, tokenizer)
        for key in ("inputs", "inputs_a", "inputs_b"):
            if key in batch:
                mask = batch[key]["attention_mask"]
                pads += int((mask == 0).sum())
                total += mask.numel()
    return pads / total if total else 0.0


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
        return getattr(self, name)

    def sizes(self) -> dict[str, dict[str, int]]:
        """{"train": {"sst": 7690, ...}, ...}: for logs and result tables."""
        return {s: {t: len(d) for t, d in self.split(s).items()} for s in SPLITS}


def default_cache_root() -> Path:
    """$XDG_CACHE_HOME/hpsearch, or ~/.cache/hpsearch."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "hpsearch"


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
    key = _cache_key(task, train_path, dev_path, cfg, tokenizer, pair_encoding)
    cache_file = cache_dir / f"{task}-{key[:40]}.pt"
    cached = _read_cache(task, cache_file, key)
    if cached is not None:
        return cached
    train_file = read_task_file(train_path, task)
    dev_file = read_task_file(dev_path, task)
    order = split_order(train_file.ids, cfg.split_seed, f"{task}/heldout")
    n_test = held_out_count(len(order), cfg.test_fraction)
    dev_order = split_order(dev_file.ids, cfg.split_seed, f"{task}/dev")  # capping takes prefixes
    mode = "single" if task == "sst" else pair_encoding
    payload = {
        "format": _CACHE_FORMAT,
        "key": key,
        "splits": {
            "train": _encode(task, train_file, order[n_test:], tokenizer, cfg.max_length, mode),
            "test": _encode(task, train_file, order[:n_test], tokenizer, cfg.max_length, mode),
            "dev": _encode(task, dev_file, dev_order, tokenizer, cfg.max_length, mode),
        },
        "dropped": {train_path.name: train_file.dropped, dev_path.name: dev_file.dropped},
        "notes": notes,
    }
    _write_cache(cache_file, payload)
    return _unpack_splits(task, payload), payload


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
        out["tokens"] = _pack(tokenizer.encode(first, max_length))
    elif mode == "siamese":
        second = [parsed.texts[i][1] for i in order]
        out["tokens_a"] = _pack(tokenizer.encode(first, max_length))
        out["tokens_b"] = _pack(tokenizer.encode(second, max_length))
    else:
        second = [parsed.texts[i][1] for i in order]
        tokens, type_ids = tokenizer.encode_pairs(first, second, max_length)
        out["tokens"] = _pack(tokens)
        out["type_ids"] = _pack(type_ids)
    return out


def _pack(seqs: list[list[int]]) -> dict[str, torch.Tensor]:
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


def _unpack_splits(task: str, payload: dict[str, Any]) -> dict[str, EncodedSplit]:
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

    from trainables.minbert import tokenizer as tokenizer_module

    digest = hashlib.sha256(f"{_CACHE_FORMAT}:{tokenizers.__version__}".encode())
    for module_file in (__file__, tokenizer_module.__file__):
        digest.update(Path(module_file).read_bytes())
    return digest.hexdigest()[:16]


def _cache_key(
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


def _read_cache(
    task: str, path: Path, key: str
) -> tuple[dict[str, EncodedSplit], dict[str, Any]] | None:
    """The cached splits and payload, or None when absent; a damaged file is reported."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, weights_only=True)
        if payload.get("format") != _CACHE_FORMAT or payload.get("key") != key:
            raise ValueError("format or key differs")
        # Building the splits validates them: lengths of ids, labels and tokens must agree.
        splits = _unpack_splits(task, payload)
        if not isinstance(payload["dropped"], dict) or not isinstance(payload["notes"], list):
            raise ValueError("dropped counts or notes are missing")
        return splits, payload
    except Exception as exc:  # torch/pickle/zip raise many types on a damaged file
        warnings.warn(
            f"token cache {path} is unreadable ({type(exc).__name__}: {exc}); re-tokenising",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def _write_cache(path: Path, payload: dict[str, Any]) -> None:
    """torch.save to a temp file in the same folder, then os.replace: readers never see a
    partial file, and concurrent writers of the same key write identical content."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        warnings.warn(
            f"token cache folder {path.parent} is not writable ({exc}); "
            "continuing without a cache",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    try:
        with os.fdopen(fd, "wb") as fp:
            torch.save(payload, fp)
        os.replace(tmp, path)
    except OSError as exc:  # a full disk must not fail the trial: it only loses the cache
        Path(tmp).unlink(missing_ok=True)
        warnings.warn(
            f"could not write token cache {path} ({exc}); continuing without it",
            RuntimeWarning,
            stacklevel=3,
        )
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
