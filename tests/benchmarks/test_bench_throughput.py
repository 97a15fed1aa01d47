"""The throughput benchmark on a tiny random model and the synthetic set: both pipelines see the
same examples and tokens, padding is counted as `padding_share` counts it, the FLOP count is
what torch's FlopCounterMode counts, and the report holds together.

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
        cached = data.train[task].make_batch(idx, tokenizer, "sides")  # as the starter pads
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
            for layout in ("sides", "sentences"):
                p = bench.pass_padding(split, 8, tokenizer, bucketed, 3, layout)
                share = padding_share(split, 8, tokenizer, bucketed, 3, layout)
                assert p.share == pytest.approx(share)
                assert 0.0 <= p.share <= p.computed_share < 1.0
                assert p.pads_per_batch <= p.positions_per_batch
            grouped = bench.pass_padding(split, 8, tokenizer, bucketed, 3, "sentences")
            sides = bench.pass_padding(split, 8, tokenizer, bucketed, 3, "sides")
            assert grouped.positions_per_batch <= sides.positions_per_batch
            if task == "sst":  # single sentences: the layout does not apply
                assert grouped == sides
        floor = bench.pair_floor(split)
        assert (floor == 0.0) == (task == "sst")
        sides = bench.pass_padding(split, 8, tokenizer, True, 0, "sides")
        assert floor <= sides.computed_share + 1e-12


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


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_step_flops_is_what_torch_counts(bench, setup, pooling):
    from torch.utils.flop_counter import FlopCounterMode

    _, cfg, tokenizer, encoder, data, _ = setup
    model = bench.MultitaskBert(encoder, 0.1, pooling=pooling)
    model.train()  # dropout on: attention as written-out matmuls, as in training
    for task in TASKS:
        split = data.train[task]
        for layout in ("sentences", "sides"):
            batch = split.make_batch([5, 0, 17, 3, 9], tokenizer, layout)
            counter = FlopCounterMode(display=False)
            with counter:
                model.loss(batch).backward()
            model.zero_grad(set_to_none=True)
            assert bench.step_flops(model, batch) == counter.get_total_flops(), (task, layout)


def test_gemm_rate_and_shapes(bench):
    shapes = bench.gemm_shapes(32, 64, rows=64)
    assert shapes == [(64, 32, 96), (64, 32, 64), (64, 64, 32)]
    wall, cpu = bench.gemm_rate(torch.float32, shapes, seconds=0.01)
    assert wall > 0 and cpu > 0


def test_variants_that_change_no_math_train_alike(bench, setup):
    """noallreduce (one process) and unfused AdamW give B's weights after two steps, up to
    float rounding."""
    _, cfg, tokenizer, encoder, data, _ = setup
    fp32 = cfg.model_copy(deep=True)
    fp32.train.deepspeed.precision = "fp32"
    initial = bench.MultitaskBert(encoder, 0.1)
    seeds = {t: 4 for t in TASKS}
    pipes = {
        "B": bench.HpsearchPipeline(bench.copy.deepcopy(initial), data, tokenizer, fp32, seeds)
    }
    for variant in ("noallreduce", "unfused"):
        pipes[variant] = bench._variant_pipeline(variant, initial, data, tokenizer, fp32, seeds)
    for pipe in pipes.values():
        torch.manual_seed(0)  # the same dropout masks in every pipeline's two steps
        pipe.step()
        pipe.step()
    weights = {k: dict(p.model.named_parameters()) for k, p in pipes.items()}
    for name, w in weights["B"].items():
        torch.testing.assert_close(weights["noallreduce"][name], w, rtol=0, atol=1e-6, msg=name)
        torch.testing.assert_close(weights["unfused"][name], w, rtol=0, atol=1e-6, msg=name)
    assert all(p.streams["sts"].consumed == 2 for p in pipes.values())
    for pipe in pipes.values():
        pipe.engine.destroy()


def test_unknown_variant_is_a_one_line_error(bench, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main([*TINY, "--variants", "sides,turbo", "--steps", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "turbo" in err and len(err.splitlines()) == 1
    assert bench.parse_variants("none") == [] and bench.parse_variants("fp32,fp32") == ["fp32"]


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
            "--precision",
            "fp32",
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "ratio B/A" in printed and printed.rstrip().splitlines()[-1].startswith("summary:")
    assert "GEMM peak" in printed and "of the fp32 GEMM peak" in printed.splitlines()[-1]
    saved = json.loads(out.read_text())
    assert saved["ratio_b_over_a"] == pytest.approx(result["ratio_b_over_a"])
    a, b = saved["A"], saved["B"]
    variants = saved["variants"]
    assert list(variants) == ["sides", "frozen", "unfused", "fp32", "noallreduce"]  # default
    for p in (a, b, *variants.values()):
        assert p["steps"] == 3
        assert len(p["block_rates"]) == len(p["block_gflop_per_s"]) == 2  # blocks of 2 and 1
        assert p["examples"] == 3 * 3 * 8  # full batches: 64 examples per task, batch 8
        assert p["median_examples_per_s"] > 0 and p["aggregate_examples_per_s"] > 0
        assert 0.0 <= p["computed_pad_share"] < 1.0
        assert p["gflop_per_step"] > 0 and p["gflop_per_s"] > 0 and p["median_peak_fraction"] > 0
        assert p["median_step_cpu_ms"] > 0 and len(p["block_cpu_rates"]) == 2
        assert p["dtype"] == "fp32"  # --precision fp32 below
    # the same batches: B and its variants compute the same examples; sides pads more
    assert variants["frozen"]["positions_per_step"] == b["positions_per_step"]
    assert variants["sides"]["positions_per_step"] >= b["positions_per_step"]
    assert saved["ratio_b_over_a"] == pytest.approx(
        b["median_examples_per_s"] / a["median_examples_per_s"]
    )
    assert set(saved["variant_over_b_paired"]) == set(variants)
    for clock in ("wall", "cpu"):
        peak = saved["gemm_peak_gflop_per_s"]["fp32"][clock]
        assert len(peak["rounds"]) == 2 and peak["max"] >= peak["median"] > 0
    pad = saved["padding"]
    for task in TASKS:
        assert 0.0 <= pad[task]["B"] <= pad[task]["A"] < 1.0  # bucketing never pads more here
        assert pad[task]["B_computed"] <= pad[task]["B_sides_computed"] + 1e-12
    assert pad["step"]["B_computed"] < pad["step"]["A_computed"]
    assert saved["setup"]["precision_b"].startswith(("fp32", "bf16"))
    assert saved["tokenisation"]["a_ms_per_step"] > 0


def test_bad_data_dir_is_a_one_line_error(bench, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main([*TINY, "--data-dir", str(tmp_path / "nope"), "--steps", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nope" in err and len(err.splitlines()) == 1
