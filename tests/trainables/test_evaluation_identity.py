"""The cached evaluation (`predict_splits`: every distinct sequence encoded once, length-sorted
batches, inference mode) gives the predictions and scores of the per-batch path it replaced
(`predict_per_batch` here: each batch through `MultitaskBert.forward`, as evaluation ran before).

Class predictions (SST argmax, paraphrase logit > 0) must match exactly; raw logits and STS
scores within 1e-5 (relative, above 1). They are not bitwise equal because a sequence meets different neighbours
and a different padded width: padding itself changes nothing (attention and pooling mask it
out), but the matmul shapes change, and with them the blocking and so the last bits of the
float sums (and a batch without padding takes the unmasked attention kernel).

    .venv/bin/python -m pytest tests/trainables/test_evaluation_identity.py -q
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainables.minbert.batching import EncodedSplit
from trainables.minbert.config import load_trial_config
from trainables.minbert.data import TASKS, load_multitask_data
from trainables.minbert.encoder import build_encoder
from trainables.minbert.evaluation import (
    Predictions,
    SequencePool,
    evaluate,
    predict_splits,
    score_predictions,
    to_device,
)
from trainables.minbert.extensions.pair_similarity import make_pair_similarity
from trainables.minbert.extensions.task_layers import make_task_layers
from trainables.minbert.metrics import read_submission
from trainables.minbert.multitask import MultitaskBert
from trainables.minbert.task_files import read_task_file, task_files

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CPU = torch.device("cpu")
TOLERANCE = 1e-5
OLD_BATCH = 64  # the evaluation batch size before the cache (pairs per batch)
TINY = [
    "model.checkpoint=random",
    "model.hidden_size=32",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.intermediate_size=64",
    "model.dropout=0.3",  # high, so that any dropout left on would show
    "data.max_length=32",
]


@torch.no_grad()
def predict_per_batch(
    model: MultitaskBert, split: EncodedSplit, tokenizer, batch_size: int, device: torch.device
) -> Predictions:
    """The reference: each evaluation batch of `split` (`EncodedSplit.batches`, longest first,
    `batch_size` examples) through `MultitaskBert.forward` in eval mode, nothing cached, as
    evaluation ran before `predict_splits`. Predictions come in batch order."""
    model.eval()
    ids: list[str] = []
    preds, labels = [], []
    for batch in split.batches(batch_size, tokenizer, shuffle=False):
        batch = to_device(batch, device)
        ids.extend(batch["ids"])
        preds.append(model(batch).float().cpu())
        labels.append(batch["labels"].cpu())
    return Predictions(ids, torch.cat(preds), torch.cat(labels))


def build_model(cfg) -> tuple[object, MultitaskBert]:
    """The trial's tokenizer and model, its head weights drawn from N(0, 1 / fan_in), and a
    random encoder's from N(0, 0.2): with BERT's 0.02 init every sentence of a random encoder
    gets nearly the same embedding (CLS pooling most of all), and a tiny untrained head puts
    every prediction a hair from the same value, where rounding alone decides a class.
    Per-task layers (extensions.task_layers) are drawn anew for each task, so that a
    sentence's embedding differs by task."""
    torch.manual_seed(cfg.train.seed)
    tokenizer, encoder = build_encoder(cfg)
    m = cfg.model
    sts_head = make_pair_similarity(cfg, encoder.config.hidden_size)
    model = MultitaskBert(
        encoder, m.dropout, m.pair_encoding, m.pooling, sts_head, task_layers=make_task_layers(cfg)
    )
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        if m.checkpoint == "random":
            for module in encoder.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    module.weight.normal_(0.0, 0.2, generator=gen)
        if model.task_layers is not None:
            for module in model.task_layers.modules():
                if isinstance(module, nn.Linear):
                    module.weight.add_(torch.randn(module.weight.shape, generator=gen) * 0.2)
        for head in (model.sst_head, model.para_head, model.sts_head):
            for name, p in head.named_parameters():
                if "weight" in name:
                    p.normal_(0.0, p.shape[1] ** -0.5, generator=gen)
                else:
                    p.zero_()
    return tokenizer, model


def center_heads(model: MultitaskBert, splits, tokenizer) -> None:
    """Shift the SST and paraphrase biases so that every SST class and both paraphrase answers
    occur: the sentence embeddings of a random encoder share a large common part, which would
    otherwise give one class to all."""
    with torch.no_grad():
        sst = predict_per_batch(model, splits["sst"], tokenizer, OLD_BATCH, CPU).preds
        model.sst_head.bias -= sst.mean(dim=0)
        para = predict_per_batch(model, splits["para"], tokenizer, OLD_BATCH, CPU).preds
        model.para_head.out.bias -= para.mean()


def by_id(p: Predictions) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {i: (pred, label) for i, pred, label in zip(p.ids, p.preds, p.labels, strict=True)}


def assert_same(task: str, new: Predictions, old: Predictions, split: EncodedSplit) -> None:
    assert new.ids == split.ids, "predictions come back in the split's own order"
    assert sorted(old.ids) == sorted(new.ids)
    ref = by_id(old)
    old_preds = torch.stack([ref[i][0] for i in new.ids])
    old_labels = torch.stack([ref[i][1] for i in new.ids])
    assert torch.equal(new.labels, old_labels)
    assert new.preds.shape == old_preds.shape
    # float32 rounding is relative: 1e-5 of the value, and 1e-5 below 1
    diff = ((new.preds - old_preds).abs() / old_preds.abs().clamp(min=1.0)).max().item()
    assert diff <= TOLERANCE, f"{task}: largest relative difference {diff:.2e}"
    if task == "sst":
        classes = new.preds.argmax(-1)
        assert torch.equal(classes, old_preds.argmax(-1))
        assert classes.unique().numel() > 1, "a test where every prediction is one class is weak"
    elif task == "para":
        assert torch.equal(new.preds > 0, old_preds > 0)
        assert (new.preds > 0).any() and (new.preds <= 0).any()


def compare(model, splits, tokenizer, new_batch: int) -> tuple[dict, dict]:
    model.train()  # evaluation must switch dropout off by itself ...
    new = predict_splits(model, splits, tokenizer, new_batch, CPU)
    assert model.training  # ... and leave the model as it found it
    old = {t: predict_per_batch(model, splits[t], tokenizer, OLD_BATCH, CPU) for t in TASKS}
    for task in TASKS:
        assert_same(task, new[task], old[task], splits[task])
    # Pearson's r is only as stable as the scores' spread is wide against their rounding.
    assert new["sts"].preds.std() > 1e3 * TOLERANCE, "near-constant STS scores"
    new_scores, old_scores = score_predictions(new), score_predictions(old)
    assert new_scores["sst_acc"] == old_scores["sst_acc"]
    assert new_scores["para_acc"] == old_scores["para_acc"]
    # Pearson's r of scores within 1e-5 of each other (sums in float64, in another order)
    assert new_scores["sts_r"] == pytest.approx(old_scores["sts_r"], abs=1e-6)
    assert new_scores["overall"] == pytest.approx(old_scores["overall"], abs=1e-6)
    return new_scores, old_scores


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tokens")


@pytest.mark.parametrize(
    ("extra", "new_batch"),
    [
        ([], 256),
        ([], 7),  # batches of another composition, a ragged last one
        (["extensions.cosine_sts=true"], 256),
        (["model.pooling=cls"], 256),
        (["model.pair_encoding=cross"], 256),
        (["model.pair_encoding=cross", "model.pooling=cls"], 5),
        (["extensions.task_layers=true"], 256),
        (
            ["extensions.task_layers=true", "extensions.task_layers_count=2", "model.pooling=cls"],
            7,
        ),
        (["extensions.task_layers=true", "extensions.cosine_sts=true"], 7),
        (["extensions.task_layers=true", "model.pair_encoding=cross", "model.pooling=cls"], 5),
    ],
    ids=[
        "siamese",
        "siamese-batch7",
        "siamese-cosine",
        "siamese-cls",
        "cross",
        "cross-cls",
        "tasklayers",
        "tasklayers-all-cls-batch7",
        "tasklayers-cosine-batch7",
        "tasklayers-cross-cls",
    ],
)
def test_synthetic_dev_predictions_and_scores_match_the_per_batch_path(
    extra, new_batch, cache_dir
):
    cfg = load_trial_config(None, [*TINY, f"data.cache_dir={cache_dir}", *extra])
    tokenizer, model = build_model(cfg)
    data = load_multitask_data(cfg.data, tokenizer, cfg.model.pair_encoding)
    center_heads(model, data.dev, tokenizer)
    compare(model, data.dev, tokenizer, new_batch)
    compare(model, data.test, tokenizer, new_batch)


def test_each_distinct_sentence_is_encoded_once_per_evaluation(cache_dir, tmp_path):
    cfg = load_trial_config(None, [*TINY, f"data.cache_dir={cache_dir}"])
    tokenizer, model = build_model(cfg)
    data = load_multitask_data(cfg.data, tokenizer, "siamese")
    sentences = [
        tuple(seq)
        for t in TASKS
        for column in (
            [data.dev[t].tokens]
            if data.dev[t].tokens is not None
            else [data.dev[t].tokens_a, data.dev[t].tokens_b]
        )
        for seq in column or []
    ]
    distinct = set(sentences)
    assert len(distinct) < len(sentences), "the synthetic dev set repeats sentences"
    calls: list[tuple[int, int]] = []  # (rows, width) of every encoder call

    def count(module: nn.Module, args: tuple) -> None:
        calls.append(tuple(args[0].shape))  # input_ids (B, T) of a padded encoder pass

    handle = model.encoder.embeddings.register_forward_pre_hook(count)
    try:
        scores = evaluate(model, data.dev, "dev", tokenizer, 64, CPU, predictions_dir=tmp_path)
        new_calls, calls = calls, []
        old = {t: predict_per_batch(model, data.dev[t], tokenizer, OLD_BATCH, CPU) for t in TASKS}
    finally:
        handle.remove()
    assert sum(rows for rows, _ in new_calls) == len(distinct)
    widths = [width for _, width in new_calls]
    assert widths == sorted(widths, reverse=True), "longest first, across all three tasks"
    positions = {"new": sum(r * w for r, w in new_calls), "old": sum(r * w for r, w in calls)}
    assert positions["new"] < positions["old"], positions
    assert set(scores) == {f"dev_{k}" for k in ("sst_acc", "para_acc", "sts_r", "overall")}
    # The submission files hold every id once, in the split's order, with the old values.
    for task in TASKS:
        text = (tmp_path / f"{task}-dev-output.csv").read_text().splitlines()
        assert [line.split(",")[0].strip() for line in text[1:]] == data.dev[task].ids
        _, values = read_submission(tmp_path / f"{task}-dev-output.csv")
        ref = by_id(old[task])
        for i, value in values.items():
            pred = ref[i][0]
            if task == "sst":
                assert value == int(pred.argmax())
            elif task == "para":
                assert value == int(pred > 0)
            else:
                assert math.isclose(float(value), float(pred), abs_tol=TOLERANCE)


def test_with_task_layers_the_shared_layers_run_once_per_sentence_and_each_top_per_task(
    cache_dir,
):
    """The cache holds the shared layers' output: every distinct sentence passes the shared
    bottom once, and each task's own top layers once per distinct sentence of that task. The
    STS split here takes its first sentences from SST's, so that two tasks share sentences
    (whose embeddings then differ by task), and predictions still match the per-batch path."""
    cfg = load_trial_config(
        None, [*TINY, f"data.cache_dir={cache_dir}", "extensions.task_layers=true"]
    )
    tokenizer, model = build_model(cfg)
    data = load_multitask_data(cfg.data, tokenizer, "siamese")
    dev = dict(data.dev)
    sst, sts = dev["sst"], dev["sts"]
    assert sst.tokens is not None and sts.tokens_b is not None
    k = min(len(sst), len(sts))
    dev["sts"] = EncodedSplit(
        "sts",
        "dev",
        sts.ids[:k],
        sts.labels[:k],
        tokens_a=sst.tokens[:k],
        tokens_b=sts.tokens_b[:k],
    )
    of_task = {
        t: {
            tuple(seq)
            for column in (
                [dev[t].tokens]
                if dev[t].tokens is not None
                else [dev[t].tokens_a, dev[t].tokens_b]
            )
            for seq in column or []
        }
        for t in TASKS
    }
    distinct = set().union(*of_task.values())
    assert sum(len(s) for s in of_task.values()) > len(distinct), "tasks share sentences"
    shared_rows: list[int] = []
    top_rows: dict[str, list[int]] = {t: [] for t in TASKS}
    assert model.task_layers is not None
    handles = [
        model.encoder.embeddings.register_forward_pre_hook(
            lambda m, a: shared_rows.append(a[0].shape[0])  # input_ids (B, T)
        )
    ]
    for t in TASKS:
        first = model.task_layers.layers[t][0]
        handles.append(
            first.register_forward_pre_hook(lambda m, a, t=t: top_rows[t].append(a[0].shape[0]))
        )
    try:
        evaluate(model, dev, "dev", tokenizer, 64, CPU)
    finally:
        for handle in handles:
            handle.remove()
    assert sum(shared_rows) == len(distinct)
    assert {t: sum(rows) for t, rows in top_rows.items()} == {
        t: len(s) for t, s in of_task.items()
    }
    center_heads(model, dev, tokenizer)
    compare(model, dev, tokenizer, 64)


def test_sequence_pool_keys_on_tokens_and_token_types():
    pool = SequencePool()
    first = pool.add([[1, 2], [3], [1, 2]])
    assert first.tolist() == [0, 1, 0]
    packed = pool.add([[1, 2], [1, 2]], [[0, 1], [0, 1]])  # same tokens, other types
    assert packed.tolist() == [2, 2]
    assert len(pool) == 3


def real_dev_slice(data_dir, tokenizer, pair_encoding: str, n: int) -> dict[str, EncodedSplit]:
    """The first n rows of each real dev file, tokenised here (no token cache written)."""
    out = {}
    for task in TASKS:
        _, dev_path, _ = task_files(data_dir, task)
        parsed = read_task_file(dev_path, task)
        rows = range(min(n, len(parsed.ids)))
        ids = [parsed.ids[i] for i in rows]
        dtype = torch.float32 if task == "sts" else torch.long
        labels = torch.tensor([parsed.labels[i] for i in rows], dtype=dtype)
        first = [parsed.texts[i][0] for i in rows]
        if task == "sst":
            out[task] = EncodedSplit(task, "dev", ids, labels, tokenizer.encode(first, 128))
        elif pair_encoding == "siamese":
            second = [parsed.texts[i][1] for i in rows]
            out[task] = EncodedSplit(
                task,
                "dev",
                ids,
                labels,
                tokens_a=tokenizer.encode(first, 128),
                tokens_b=tokenizer.encode(second, 128),
            )
        else:
            second = [parsed.texts[i][1] for i in rows]
            tokens, types = tokenizer.encode_pairs(first, second, 128)
            out[task] = EncodedSplit(task, "dev", ids, labels, tokens, types)
    return out


@pytest.mark.parametrize(
    "pair_encoding", ["siamese", pytest.param("cross", marks=pytest.mark.slow)]
)
def test_real_dev_slice_with_minilm_matches_the_per_batch_path(pair_encoding, cs224n_path):
    """MiniLM (the default checkpoint) on the first 64 rows of each real dev file."""
    if cs224n_path is None:
        pytest.skip("CS224N data folder not present")
    cfg = load_trial_config(None, [f"model.pair_encoding={pair_encoding}"])
    tokenizer, model = build_model(cfg)
    splits = real_dev_slice(cs224n_path, tokenizer, pair_encoding, 64)
    center_heads(model, splits, tokenizer)
    compare(model, splits, tokenizer, 256)
