"""The throughput benchmark on a tiny random model and the synthetic set: both pipelines see the
same examples and tokens, padding is counted as `padding_share` counts it, and the report holds
together.

    .venv/bin/python -m pytest tests/benchmarks/test_bench_throughput.py -q
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from trainables.minbert.batching import batch_indices, padding_share
from trainables.minbert.data import TASKS

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_throughput.py"
TINY = [
    "--checkpoint",
    "random",
    "--max-length",
    "32",
    "--batch-size",
    "8",
    "--threads",
    "1",
    "--set",
    "model.hidden_size=32",
    "--set",
    "model.num_layers=2",
    "--set",
    "model.num_heads=2",
    "--set",
    "model.intermediate_size=64",
    "--set",
    "data.max_train_examples=64",
]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_throughput"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_throughput", None)


@pytest.fixture(scope="module")
def setup(bench, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    args = bench.parse_args([*TINY, "--set", f"data.cache_dir={cache}"])
    cfg = bench.build_config(args)
    tokenizer, encoder = bench.build_encoder(cfg)
    data = bench.load_multitask_data(cfg.data, tokenizer, cfg.model.pair_encoding)
    return args, cfg, tokenizer, encoder, data, cache


def test_starter_batches_hold_the_cached_tokens(bench, setup):
    _, cfg, tokenizer, encoder, data, _ = setup
    raw = {t: bench.load_raw_train(data, t, cfg) for t in TASKS}
    model = bench.MultitaskBert(encoder, 0.1)
    pipe = bench.StarterPipeline(
        model,
        raw,
        {t: data.train[t].sort_keys for t in TASKS},
        tokenizer,
        cfg,
        {t: 1 for t in TASKS},
    )
    for task in TASKS:
        assert raw[task].ids == data.train[task].ids
        idx = [5, 0, 17, 3]
        ours = pipe.make_batch(task, idx)
        cached = data.train[task].make_batch(idx, tokenizer)
        assert ours["ids"] == cached["ids"]
        torch.testing.assert_close(ours["labels"], cached["labels"])
        keys = [k for k in bench.INPUT_KEYS if k in cached]
        assert keys == [k for k in bench.INPUT_KEYS if k in ours]
        for key in keys:
            for name, tensor in cached[key].items():
                torch.testing.assert_close(ours[key][name], tensor, rtol=0, atol=0)


def test_starter_batches_are_unsorted_passes(bench, setup):
    _, cfg, tokenizer, encoder, data, _ = setup
    raw = {t: bench.load_raw_train(data, t, cfg) for t in TASKS}
    pipe = bench.StarterPipeline(
        bench.MultitaskBert(encoder, 0.1),
        raw,
        {t: data.train[t].sort_keys for t in TASKS},
        tokenizer,
        cfg,
        {t: 7 for t in TASKS},
    )
    split = data.train["sst"]
    n_batches = split.num_batches(cfg.train.batch_size)
    first_pass = [next(pipe._iters["sst"]) for _ in range(n_batches)]
    assert sorted(i for b in first_pass for i in b) == list(range(len(split)))
    gen = torch.Generator().manual_seed(7)
    assert first_pass == batch_indices(
        split.sort_keys, cfg.train.batch_size, True, gen, bucket=False
    )


def test_pass_padding_counts_as_padding_share(bench, setup):
    _, cfg, tokenizer, _, data, _ = setup
    for task in TASKS:
        split = data.train[task]
        for bucketed in (False, True):
            p = bench.pass_padding(split, 8, tokenizer, bucketed, seed=3)
            assert p.share == pytest.approx(padding_share(split, 8, tokenizer, bucketed, seed=3))
            assert 0.0 <= p.share <= p.computed_share < 1.0
            assert p.pads_per_batch <= p.positions_per_batch
        floor = bench.pair_floor(split)
        assert (floor == 0.0) == (task == "sst")
        assert floor <= bench.pass_padding(split, 8, tokenizer, True).computed_share + 1e-12


def test_pair_floor_and_positions_by_hand(bench):
    from trainables.minbert.batching import EncodedSplit

    split = EncodedSplit(
        "sts",
        "train",
        ["a", "b"],
        torch.tensor([1.0, 2.0]),
        tokens_a=[[1, 2, 3], [1, 2]],
        tokens_b=[[1], [1, 2, 3, 4]],
    )
    # pair 1: 3 vs 1 -> 2 padded of 6; pair 2: 2 vs 4 -> 2 padded of 8
    assert bench.pair_floor(split) == pytest.approx(4 / 14)
    mask_a = torch.tensor([[1, 1, 1], [1, 1, 0]])
    mask_b = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]])
    batch = {"inputs_a": {"attention_mask": mask_a}, "inputs_b": {"attention_mask": mask_b}}
    # per input: 6 + 8 positions, 1 + 3 pads; computed: both widened to 4 -> 16, 16 - 10 pads
    assert bench.batch_positions(batch) == (14, 4, 16, 6)


def test_end_to_end_report_and_json(bench, setup, tmp_path, capsys):
    *_, cache = setup
    out = tmp_path / "bench.json"
    result = bench.main(
        [
            *TINY,
            "--set",
            f"data.cache_dir={cache}",
            "--steps",
            "3",
            "--block",
            "2",
            "--warmup",
            "1",
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "ratio B/A" in printed and printed.rstrip().splitlines()[-1].startswith("summary:")
    saved = json.loads(out.read_text())
    assert saved["ratio_b_over_a"] == pytest.approx(result["ratio_b_over_a"])
    a, b = saved["A"], saved["B"]
    for p in (a, b):
        assert p["steps"] == 3
        assert len(p["block_rates"]) == 2  # blocks of 2 and 1 steps
        assert p["examples"] == 3 * 3 * 8  # full batches: 64 examples per task, batch 8
        assert p["median_examples_per_s"] > 0 and p["aggregate_examples_per_s"] > 0
        assert 0.0 <= p["computed_pad_share"] < 1.0
    assert saved["ratio_b_over_a"] == pytest.approx(
        b["median_examples_per_s"] / a["median_examples_per_s"]
    )
    pad = saved["padding"]
    for task in TASKS:
        assert 0.0 <= pad[task]["B"] <= pad[task]["A"] < 1.0  # bucketing never pads more here
    assert pad["step"]["B_computed"] < pad["step"]["A_computed"]
    assert saved["setup"]["precision_b"].startswith(("fp32", "bf16"))
    assert saved["tokenisation"]["a_ms_per_step"] > 0


def test_bad_data_dir_is_a_one_line_error(bench, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main([*TINY, "--data-dir", str(tmp_path / "nope"), "--steps", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nope" in err and len(err.splitlines()) == 1
