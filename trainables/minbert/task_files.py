"""Reading the CS224N files exactly as the official starter reads them.

Tab-separated, `"` quoting, `csv.DictReader`; SST text `.lower().strip()`, Quora/STS
`preprocess_string`; except that unusable rows are counted per file and reason instead of
being skipped silently.

    train_path, dev_path, notes = task_files(data_dir, "para")
    parsed = read_task_file(train_path, "para")   # ids, texts, labels, dropped counts
"""

from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainables.errors import ConfigError

__all__ = ["QUORA_PARTIAL", "ParsedFile", "preprocess_string", "read_task_file", "task_files"]

log = logging.getLogger(__name__)

QUORA_PARTIAL = "quora-train-partial-first14139.csv"


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
        raise ConfigError(f"unknown task '{task}': choose one of {', '.join(_FILES)}")
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
