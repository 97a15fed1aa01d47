"""CS224N parsing, the held-out split, the token cache, length bucketing and the synthetic set.

.venv/bin/python -m pytest tests/trainables/test_data.py -q
"""

from __future__ import annotations

import csv
import math
import random
import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch

from trainables.errors import ConfigError
from trainables.minbert import data as data_module
from trainables.minbert.batching import EncodedSplit, padding_share
from trainables.minbert.config import DataConfig
from trainables.minbert.data import TASKS, MultitaskData, load_multitask_data
from trainables.minbert.hf_folder import minilm_dir
from trainables.minbert.synthetic import (
    FILE_NAMES,
    HEADERS,
    ensure_synthetic_dataset,
    write_synthetic_dataset,
)
from trainables.minbert.task_files import preprocess_string, read_task_file, task_files
from trainables.minbert.tokenizer import WordPieceTokenizer

REAL_DIR = Path("/work/shared/data/cs224n")


def cs224n_dir() -> Path | None:
    """The real CS224N files when this machine has them (never copied into the repo)."""
    return REAL_DIR if (REAL_DIR / "quora-dev.csv").is_file() else None


needs_real = pytest.mark.skipif(cs224n_dir() is None, reason="CS224N data folder not present")


@pytest.fixture(scope="module")
def tokenizer() -> WordPieceTokenizer:
    return WordPieceTokenizer.from_checkpoint(minilm_dir())


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), seed=0)


@pytest.fixture(scope="module")
def synth_data(
    synth_dir: Path, tokenizer: WordPieceTokenizer, tmp_path_factory: pytest.TempPathFactory
) -> MultitaskData:
    cache = tmp_path_factory.mktemp("cache")
    return load_multitask_data(
        DataConfig(data_dir=str(synth_dir), cache_dir=str(cache)), tokenizer, "siamese"
    )


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --- parsing ----------------------------------------------------------------------------------


def test_quoted_fields_are_unquoted(tmp_path: Path) -> None:
    sst = _write(
        tmp_path / "sst.csv",
        [
            "\tid\tsentence\tsentiment",
            '0\tABC\t"A ""Quoted"" Word , here"\t3',
            "1\tdef\t plain text \t0",
        ],
    )
    parsed = read_task_file(sst, "sst")
    assert parsed.texts == [('a "quoted" word , here',), ("plain text",)]
    assert parsed.ids == ["abc", "def"]
    assert parsed.labels == [3, 0]

    quora = _write(
        tmp_path / "quora.csv",
        [
            "\tid\tsentence1\tsentence2\tis_duplicate",
            '5\tx1\t"What does ""hygge"" mean?"\tIt\'s cozy, right.\t1.0',
        ],
    )
    parsed = read_task_file(quora, "para")
    assert parsed.texts == [('what does "hygge" mean ?', "it 's cozy , right .")]
    assert parsed.labels == [1]


def test_preprocess_string_is_the_starter_formula() -> None:
    text = "  Why isn't it  fine,Mr. Smith?? "
    expected = " ".join(
        text.lower()
        .replace(".", " .")
        .replace("?", " ?")
        .replace(",", " ,")
        .replace("'", " '")
        .split()
    )
    assert preprocess_string(text) == expected == "why isn 't it fine ,mr . smith ? ?"


def test_unusable_rows_are_counted_by_reason(tmp_path: Path) -> None:
    quora = _write(
        tmp_path / "q.csv",
        [
            "\tid\tsentence1\tsentence2\tis_duplicate",
            "1\ta\tok one?\tok two?\t0.0",
            "2\tb\tempty label?\tx\t",
            "3\tc\tbad label?\tx\tyes",
            "4\td\tout of range?\tx\t2.0",
            "5\te\tempty sentence?\t \t1.0",
            "6\t\tno id?\tx\t1.0",
            "7\tg\ttoo\tmany\tfields\t1",
            "8\th\ttoo few",
            "9\ti\tfine?\talso fine?\t1",
        ],
    )
    parsed = read_task_file(quora, "para")
    assert parsed.ids == ["a", "i"] and parsed.labels == [0, 1]
    assert parsed.dropped == {
        "empty label": 2,
        "unparsable label": 1,
        "label out of range": 1,
        "empty sentence": 1,
        "empty id": 1,
        "too many fields": 1,
    }

    sts = _write(
        tmp_path / "s.csv",
        [
            "\tid\tsentence1\tsentence2\tsimilarity",
            "1\ta\tx\ty\t4.2",
            "2\tb\tx\ty\t5.5",
            "3\tc\tx\ty\tnan",
            "4\td\tx\ty\t-0.1",
        ],
    )
    parsed = read_task_file(sts, "sts")
    assert parsed.labels == [4.2] and parsed.dropped == {"label out of range": 3}

    sst = _write(
        tmp_path / "t.csv",
        [
            "\tid\tsentence\tsentiment",
            "0\ta\tgood\t4",
            "1\tb\tbad\t5",
            "2\tc\tmeh\t2.0",
        ],
    )
    parsed = read_task_file(sst, "sst")
    assert parsed.labels == [4] and parsed.dropped == {
        "label out of range": 1,
        "unparsable label": 1,
    }


@pytest.mark.parametrize(
    "lines, content, needle",
    [
        (None, None, "is missing"),
        ([], "", "is empty"),
        (["0\t\tid\tsentence", "0\t0.0\tx\thello"], None, "missing column(s) sentiment"),
        (["a,b,c", "1,2,3"], None, "is it tab-separated"),
        (["\tid\tsentence\tsentiment", "0\tx\thello\t9", "1\ty\t\t1"], None, "no usable rows"),
        (None, b"\tid\tsentence\tsentiment\n0\tx\t\xff\xfe\t1\n", "not UTF-8"),
    ],
)
def test_bad_files_raise_one_line_config_errors(
    tmp_path: Path, lines: list[str] | None, content: str | bytes | None, needle: str
) -> None:
    path = tmp_path / "ids-sst-train.csv"
    if lines is not None:
        _write(path, lines)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        read_task_file(path, "sst")
    message = str(info.value)
    assert needle in message and str(path) in message and "\n" not in message


def test_missing_folder_file_and_bad_pair_encoding(
    tmp_path: Path, synth_dir: Path, tokenizer: WordPieceTokenizer
) -> None:
    with pytest.raises(ConfigError, match="is not a folder"):
        load_multitask_data(DataConfig(data_dir=str(tmp_path / "nope")), tokenizer, "siamese")
    partial = tmp_path / "partial"
    shutil.copytree(synth_dir, partial)
    (partial / "sts-dev.csv").unlink()
    with pytest.raises(ConfigError, match="sts-dev.csv is missing"):
        load_multitask_data(
            DataConfig(data_dir=str(partial), cache_dir=str(tmp_path / "c")), tokenizer, "siamese"
        )
    (partial / "quora-train.csv").unlink()
    with pytest.raises(ConfigError, match="quora-train.csv or quora-train-partial"):
        task_files(partial, "para")
    with pytest.raises(ConfigError, match="pair encoding 'packed'"):
        load_multitask_data(DataConfig(data_dir=str(synth_dir)), tokenizer, "packed")


@needs_real
def test_real_quora_dev_has_20212_usable_rows() -> None:
    real = cs224n_dir()
    assert real is not None
    dev = read_task_file(real / "quora-dev.csv", "para")
    assert len(dev) == 20212
    assert dev.dropped == {"empty label": 2}
    # The two malformed rows: index 65479 (unbalanced quote), 264614 (empty sentence2).
    assert {"ad118c967d683c93883bf072d", "9054345d02cd6c5642a4904dc"}.isdisjoint(dev.ids)
    assert Counter(dev.labels) == {0: 12627, 1: 7585}
    # Quoted fields lose their quotes: the second data row starts with a quoted question.
    assert dev.texts[1][0].startswith('"which is correct grammar')
    train, _, notes = task_files(real, "para")
    assert train.name == "quora-train-partial-first14139.csv" and "10%" in notes[0]
    assert len(read_task_file(train, "para")) == 14137


# --- held-out split, caps, cache ---------------------------------------------------------------


def test_heldout_split_is_seeded_disjoint_and_order_free(
    tmp_path: Path, synth_dir: Path, synth_data: MultitaskData, tokenizer: WordPieceTokenizer
) -> None:
    for task, name in (
        ("sst", "ids-sst-train.csv"),
        ("para", "quora-train.csv"),
        ("sts", "sts-train.csv"),
    ):
        all_ids = read_task_file(synth_dir / name, task).ids
        train, test = synth_data.train[task].ids, synth_data.test[task].ids
        assert not set(train) & set(test)
        assert sorted(train + test) == sorted(all_ids)
        assert len(test) == round(0.1 * len(all_ids))

    # Shuffled rows, another cache folder: the same held-out ids (the split hashes ids).
    shuffled = tmp_path / "shuffled"
    shutil.copytree(synth_dir, shuffled)
    lines = (shuffled / "sts-train.csv").read_text().splitlines(keepends=True)
    body = lines[1:]
    random.Random(1).shuffle(body)
    (shuffled / "sts-train.csv").write_text("".join([lines[0], *body]))
    again = load_multitask_data(
        DataConfig(data_dir=str(shuffled), cache_dir=str(tmp_path / "c")), tokenizer, "siamese"
    )
    assert again.test["sts"].ids == synth_data.test["sts"].ids
    assert again.train["sts"].ids == synth_data.train["sts"].ids

    other = load_multitask_data(
        DataConfig(data_dir=str(synth_dir), split_seed=7, cache_dir=str(tmp_path / "c")),
        tokenizer,
        "siamese",
    )
    assert set(other.test["sst"].ids) != set(synth_data.test["sst"].ids)
    assert len(other.test["sst"]) == len(synth_data.test["sst"])


def test_caps_take_prefixes(
    tmp_path: Path, synth_dir: Path, synth_data: MultitaskData, tokenizer: WordPieceTokenizer
) -> None:
    cfg = DataConfig(
        data_dir=str(synth_dir),
        cache_dir=str(tmp_path),
        max_train_examples=50,
        max_eval_examples=20,
        train_eval_examples=10,
    )
    capped = load_multitask_data(cfg, tokenizer, "siamese")
    for task in TASKS:
        assert capped.train[task].ids == synth_data.train[task].ids[:50]
        assert capped.dev[task].ids == synth_data.dev[task].ids[:20]
        assert capped.test[task].ids == synth_data.test[task].ids[:20]
        assert capped.train_eval[task].ids == synth_data.train[task].ids[:10]
        assert capped.train_eval[task].split == "train_eval"
        assert torch.equal(capped.train[task].labels, synth_data.train[task].labels[:50])


def test_second_load_reads_the_cache(
    tmp_path: Path, synth_dir: Path, tokenizer: WordPieceTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = DataConfig(data_dir=str(synth_dir), cache_dir=str(tmp_path))
    first = load_multitask_data(cfg, tokenizer, "cross")
    files = sorted((tmp_path / "tokens").glob("*.pt"))
    assert [f.name.split("-")[0] for f in files] == ["para", "sst", "sts"]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("re-tokenised or re-parsed despite a warm cache")

    monkeypatch.setattr(tokenizer, "encode", refuse)
    monkeypatch.setattr(tokenizer, "encode_pairs", refuse)
    monkeypatch.setattr(data_module, "read_task_file", refuse)
    second = load_multitask_data(cfg, tokenizer, "cross")
    _assert_same(first, second)
    assert (
        second.dropped
        == first.dropped
        == {
            "ids-sst-train.csv": {},
            "ids-sst-dev.csv": {},
            "quora-train.csv": {"empty label": 2},
            "quora-dev.csv": {"empty label": 2},
            "sts-train.csv": {},
            "sts-dev.csv": {},
        }
    )
    assert second.train["para"].type_ids is not None

    # Another max_length is another key; sst does not depend on the pair encoding.
    monkeypatch.undo()
    load_multitask_data(cfg, tokenizer, "siamese")
    load_multitask_data(cfg.model_copy(update={"max_length": 16}), tokenizer, "cross")
    names = Counter(f.name.split("-")[0] for f in (tmp_path / "tokens").glob("*.pt"))
    assert names == {"sst": 2, "para": 3, "sts": 3}


def test_corrupt_cache_is_detected_and_rebuilt(
    tmp_path: Path, synth_dir: Path, tokenizer: WordPieceTokenizer
) -> None:
    cfg = DataConfig(data_dir=str(synth_dir), cache_dir=str(tmp_path))
    first = load_multitask_data(cfg, tokenizer, "siamese")
    files = sorted((tmp_path / "tokens").glob("*.pt"))
    files[0].write_bytes(files[0].read_bytes()[:200])  # truncated
    files[1].write_bytes(b"not a torch file")
    torch.save({"format": 1, "key": "stale"}, files[2])  # wrong content, valid file
    with pytest.warns(RuntimeWarning, match="re-tokenising") as record:
        second = load_multitask_data(cfg, tokenizer, "siamese")
    assert len([w for w in record if "re-tokenising" in str(w.message)]) == 3
    _assert_same(first, second)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt files are valid again
        _assert_same(first, load_multitask_data(cfg, tokenizer, "siamese"))
    assert not list((tmp_path / "tokens").glob(".*tmp"))  # no temp files left


def _assert_same(a: MultitaskData, b: MultitaskData) -> None:
    for split in ("train", "dev", "test", "train_eval"):
        for task in TASKS:
            x, y = a.split(split)[task], b.split(split)[task]
            assert x.ids == y.ids and torch.equal(x.labels, y.labels)
            assert (x.tokens, x.type_ids, x.tokens_a, x.tokens_b) == (
                y.tokens,
                y.type_ids,
                y.tokens_a,
                y.tokens_b,
            )


# --- batching ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pair_encoding", ["siamese", "cross"])
def test_batches_cover_every_example_once(
    tmp_path: Path, synth_dir: Path, tokenizer: WordPieceTokenizer, pair_encoding: str
) -> None:
    data = load_multitask_data(
        DataConfig(data_dir=str(synth_dir), cache_dir=str(tmp_path)), tokenizer, pair_encoding
    )
    for task in TASKS:
        split = data.train[task]
        label_of = dict(zip(split.ids, split.labels.tolist(), strict=True))
        assert len(label_of) == len(split)  # synthetic ids are unique
        for shuffle in (True, False):
            seen: list[str] = []
            batches = list(split.batches(7, tokenizer, shuffle, torch.Generator().manual_seed(3)))
            assert len(batches) == split.num_batches(7) == math.ceil(len(split) / 7)
            for batch in batches:
                assert batch["task"] == task and 1 <= len(batch["ids"]) <= 7
                assert batch["labels"].dtype == (torch.float32 if task == "sts" else torch.long)
                assert batch["labels"].tolist() == [label_of[i] for i in batch["ids"]]
                keys = (
                    ["inputs_a", "inputs_b"]
                    if (task != "sst" and pair_encoding == "siamese")
                    else ["inputs"]
                )
                assert sorted(k for k in batch if k.startswith("inputs")) == keys
                for key in keys:
                    inputs = batch[key]
                    assert inputs["input_ids"].shape == inputs["attention_mask"].shape
                    assert inputs["input_ids"].shape[0] == len(batch["ids"])
                    # padded to the longest item: some row has no padding at all
                    assert bool(inputs["attention_mask"][:, -1].any())
                if task != "sst" and pair_encoding == "cross":
                    assert bool((batch["inputs"]["token_type_ids"] == 1).any())
                seen.extend(batch["ids"])
            assert sorted(seen) == sorted(split.ids)


def test_shuffle_follows_the_generator_and_eval_is_sorted(
    synth_data: MultitaskData, tokenizer: WordPieceTokenizer
) -> None:
    split = synth_data.train["sst"]

    def order(seed: int) -> list[str]:
        gen = torch.Generator().manual_seed(seed)
        return [i for b in split.batches(16, tokenizer, True, gen) for i in b["ids"]]

    assert order(1) == order(1) and order(1) != order(2)
    evals = [b for b in split.batches(16, tokenizer, False)]
    widths = [b["inputs"]["input_ids"].shape[1] for b in evals]
    assert widths == sorted(widths, reverse=True)
    assert [b["ids"] for b in evals] == [b["ids"] for b in split.batches(16, tokenizer, False)]


def test_bucketing_cuts_padding(tokenizer: WordPieceTokenizer, synth_dir: Path) -> None:
    real = cs224n_dir()
    path = real / "ids-sst-train.csv" if real else synth_dir / "ids-sst-train.csv"
    parsed = read_task_file(path, "sst")
    split = EncodedSplit(
        "sst",
        "train",
        parsed.ids,
        torch.tensor(parsed.labels, dtype=torch.long),
        tokens=tokenizer.encode([t[0] for t in parsed.texts], 128),
    )
    bucketed = padding_share(split, 16, tokenizer, bucketed=True)
    unsorted = padding_share(split, 16, tokenizer, bucketed=False)
    assert bucketed < 0.05 and unsorted > bucketed
    if real:  # SST lengths vary a lot: unsorted batches are about half padding
        assert unsorted > 0.3


def test_siamese_bucketing_cuts_padding(
    synth_data: MultitaskData, tokenizer: WordPieceTokenizer
) -> None:
    for task in ("para", "sts"):
        split = synth_data.train[task]
        assert padding_share(split, 16, tokenizer, True) < padding_share(
            split, 16, tokenizer, False
        )


# --- the synthetic set ---------------------------------------------------------------------------


def test_synthetic_files_have_the_cs224n_format(synth_dir: Path, tmp_path: Path) -> None:
    for task, names in FILE_NAMES.items():
        for name in names:
            text = (synth_dir / name).read_text(encoding="utf-8")
            assert text.splitlines()[0] == "\t".join(HEADERS[task])
            with (synth_dir / name).open(newline="", encoding="utf-8") as fp:
                rows = list(csv.DictReader(fp, delimiter="\t"))
            assert all(re.fullmatch(r"[0-9a-f]{25}", r["id"]) for r in rows)
            assert all(r[""].isdigit() for r in rows)
            assert len({r[""] for r in rows}) == len(rows)
    quora = (synth_dir / "quora-train.csv").read_text(encoding="utf-8")
    assert '""' in quora  # quoted fields with doubled quotes
    assert (synth_dir / "ids-sst-train.csv").read_text().splitlines()[1].split("\t")[2][0] == " "
    # Deterministic in the seed.
    again = write_synthetic_dataset(tmp_path / "again", seed=0)
    other = write_synthetic_dataset(tmp_path / "other", seed=1)
    for name in FILE_NAMES["sts"]:
        assert (again / name).read_bytes() == (synth_dir / name).read_bytes()
        assert (other / name).read_bytes() != (synth_dir / name).read_bytes()


def test_synthetic_set_round_trips_with_expected_sizes(synth_data: MultitaskData) -> None:
    assert synth_data.sizes() == {
        "train": {"sst": 540, "para": 720, "sts": 540},
        "dev": {"sst": 150, "para": 200, "sts": 150},
        "test": {"sst": 60, "para": 80, "sts": 60},
        "train_eval": {"sst": 540, "para": 720, "sts": 540},
    }
    assert synth_data.dropped["quora-train.csv"] == {"empty label": 2}
    assert synth_data.dropped["quora-dev.csv"] == {"empty label": 2}
    assert set(synth_data.train["sst"].labels.tolist()) == {0, 1, 2, 3, 4}
    assert set(synth_data.train["para"].labels.tolist()) == {0, 1}
    sts = synth_data.train["sts"].labels
    assert sts.dtype == torch.float32 and 0.0 <= sts.min() and sts.max() <= 5.0
    # dev never repeats a train sentence
    assert not set(synth_data.train["sst"].ids) & set(synth_data.dev["sst"].ids)


def test_synthetic_set_carries_learnable_signal(synth_dir: Path) -> None:
    # SST: a word-count naive Bayes trained on train is far above chance (0.2) on dev.
    train = read_task_file(synth_dir / "ids-sst-train.csv", "sst")
    dev = read_task_file(synth_dir / "ids-sst-dev.csv", "sst")
    counts: dict[str, Counter[int]] = defaultdict(Counter)
    prior = Counter(train.labels)
    for (text,), label in zip(train.texts, train.labels, strict=True):
        for word in set(text.split()):
            counts[word][label] += 1

    def predict(text: str) -> int:
        return max(
            range(5),
            key=lambda y: (
                math.log(prior[y])
                + sum(
                    math.log((counts[w][y] + 1) / (prior[y] + 2))
                    for w in set(text.split())
                    if w in counts
                )
            ),
        )

    hits = sum(predict(t) == y for (t,), y in zip(dev.texts, dev.labels, strict=True))
    accuracy = hits / len(dev)
    assert accuracy > 0.6
    # STS and Quora: word overlap tracks the label.
    for name, task, floor in (("sts-dev.csv", "sts", 0.5), ("quora-dev.csv", "para", 0.2)):
        parsed = read_task_file(synth_dir / name, task)
        overlap = torch.tensor(
            [
                len(set(a.split()) & set(b.split())) / len(set(a.split()) | set(b.split()))
                for a, b in parsed.texts
            ]
        )
        labels = torch.tensor(parsed.labels, dtype=torch.float32)
        assert torch.corrcoef(torch.stack([overlap, labels]))[0, 1] > floor


def test_unset_data_dir_materialises_the_synthetic_set_once(
    tmp_path: Path, tokenizer: WordPieceTokenizer
) -> None:
    cfg = DataConfig(data_dir=None, cache_dir=str(tmp_path), max_train_examples=5)
    data = load_multitask_data(cfg, tokenizer, "siamese")
    assert data.data_dir == tmp_path / "synthetic-v1-seed0"
    assert any("synthetic" in n for n in data.notes)
    assert len(data.train["sst"]) == 5 and len(data.dev["para"]) == 200
    stamp = (data.data_dir / "sts-dev.csv").stat().st_mtime_ns
    assert ensure_synthetic_dataset(tmp_path) == data.data_dir  # reused, not rewritten
    assert (data.data_dir / "sts-dev.csv").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic-v1-seed0", "tokens"]
