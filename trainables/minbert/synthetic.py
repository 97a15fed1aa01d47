"""A small multitask data set generated from a seed, in exactly the CS224N file format.

    python -c "from pathlib import Path; from trainables.minbert.synthetic import \
write_synthetic_dataset as w; print(w(Path('/tmp/synth')))"

It lets every test and smoke run exercise the real parsing code without the CS224N files,
and it carries learnable signal:

* SST: movie-review sentences from templates whose adjectives come from five graded word lists
  (0 very negative ... 4 very positive); contrast ("dull at first, but ultimately superb") and
  negation templates make the label depend on more than one word.
* Quora: questions about a dozen topics. Duplicates swap synonyms and reorder clauses;
  non-duplicates change the topic, the object or the action, or add a negation.
* STS: scene descriptions (who, does what, to what, where). The similarity falls with each
  element that differs; synonyms keep the meaning (and the score) while lowering word overlap.

Files: ids-sst-{train,dev}.csv, quora-{train,dev}.csv, sts-{train,dev}.csv, tab-separated with
the official headers, `"` quoting, 25-hex ids and an index column. Each Quora file also holds
two malformed rows copied in form from the real quora-dev.csv (empty label, stray quote, empty
second sentence), so the loader's drop counting always runs. Sizes at scale 1.0 (usable rows):
train SST 600, Quora 800, STS 600; dev 150, 200, 150.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainables.atomic import atomic_path
from trainables.minbert.synthetic_text import para_example, sst_example, sts_example

SYNTHETIC_VERSION = "v1"  # bump when the generated content changes
SIZES = {"sst": (600, 150), "para": (800, 200), "sts": (600, 150)}  # (train, dev) at scale 1
FILE_NAMES = {
    "sst": ("ids-sst-train.csv", "ids-sst-dev.csv"),
    "para": ("quora-train.csv", "quora-dev.csv"),
    "sts": ("sts-train.csv", "sts-dev.csv"),
}
HEADERS = {
    "sst": ["", "id", "sentence", "sentiment"],
    "para": ["", "id", "sentence1", "sentence2", "is_duplicate"],
    "sts": ["", "id", "sentence1", "sentence2", "similarity"],
}

# ---------------------------------------------------------------------------------------------
# Writing the files

_MALFORMED_QUORA = [  # the two kinds of broken rows in the real quora-dev.csv, verbatim in form
    '{index}\t{id}\tWhat is the best way to learn to cook?\t"""Where can I find a recipe '
    'I saw last night? I took a picture of it."\t\n',
    '{index}\t{id}\t"""Given two calendars, how do I find a free hour for both people?"\t\t\n',
]


def _hex_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(100):025x}"


Example = tuple[Any, ...]  # texts, then the label


def _generate(
    rng: random.Random,
    make: Callable[[random.Random], Example],
    count: int,
    seen: set[Example],
) -> list[Example]:
    """`count` examples whose texts were not generated before (so dev never repeats train)."""
    rows: list[Example] = []
    attempts = 0
    while len(rows) < count:
        example = make(rng)
        attempts += 1
        if example[:-1] in seen and attempts < 50 * count:
            continue
        seen.add(example[:-1])
        rows.append(example)
    return rows


def write_synthetic_dataset(dest: Path, seed: int = 0, scale: float = 1.0) -> Path:
    """Write the six labelled CS224N-format files into `dest` (created if needed).

    Args:
        dest: output folder; existing files of the same names are overwritten.
        seed: the same seed (and scale) always gives byte-identical files.
        scale: multiplies every size in SIZES (at least 2 usable rows per file).

    Returns:
        dest.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    makers = {"sst": sst_example, "para": para_example, "sts": sts_example}
    for task, maker in makers.items():
        rng = random.Random(f"synthetic-{SYNTHETIC_VERSION}:{seed}:{task}")
        sizes = [max(2, round(n * scale)) for n in SIZES[task]]
        seen: set[Example] = set()
        splits = [_generate(rng, maker, n, seen) for n in sizes]
        indices = rng.sample(range(404_300 if task == "para" else sum(sizes) + 4), sum(sizes) + 4)
        for name, rows in zip(FILE_NAMES[task], splits, strict=True):
            _write_file(dest / name, task, rows, rng, indices)
    return dest


def _write_file(
    path: Path, task: str, rows: list[Example], rng: random.Random, indices: list[int]
) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as fp:
        writer = csv.writer(fp, delimiter="\t", lineterminator="\n")
        writer.writerow(HEADERS[task])
        malformed = {len(rows) // 3: 0, (2 * len(rows)) // 3: 1} if task == "para" else {}
        for i, row in enumerate(rows):
            if i in malformed:  # written raw: csv.writer would quote these correctly
                fp.write(
                    _MALFORMED_QUORA[malformed[i]].format(index=indices.pop(), id=_hex_id(rng))
                )
            label = row[-1]
            label_text = f"{float(label):.1f}" if task == "para" else str(label)
            writer.writerow([indices.pop(), _hex_id(rng), *row[:-1], label_text])


def ensure_synthetic_dataset(root: Path, seed: int = 0, scale: float = 1.0) -> Path:
    """The synthetic set under root (e.g. ~/.cache/hpsearch), generated on first use.

    It is written to a temporary folder and renamed into place, so concurrent trials either
    see the whole set or none of it; a process that loses the race keeps the winner's copy.
    """
    suffix = "" if scale == 1.0 else f"-scale{scale:g}"
    final = Path(root) / f"synthetic-{SYNTHETIC_VERSION}-seed{seed}{suffix}"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        write_synthetic_dataset(tmp, seed=seed, scale=scale)
        tmp.chmod(0o755)  # mkdtemp makes it private; the set is shared by every trial
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
