"""Training-loop throughput: the hpsearch pipeline against a CS224N-starter-style pipeline.

    .venv/bin/python benchmarks/bench_throughput.py --data-dir /work/shared/data/cs224n --steps 20

Both pipelines train the same MultitaskBert (same initial weights, dropout, losses) on the same
training examples, one batch of every task (sst, para, sts) per step, `--batch-size` examples
per task:

    A "starter-style"  raw texts tokenised at every step (the starter's collate_fn), batches
                       drawn at random (a shuffled pass cut in order) and padded to their
                       longest item, fp32, plain torch.optim.AdamW, one backward of the summed
                       loss.
    B "hpsearch"       token ids tokenised once and cached (`load_multitask_data`), length-
                       bucketed batches (`EncodedSplit.batches` through the trainer's
                       `TaskStream`; siamese pairs as 2B length-grouped sentences), the
                       trainer's step: a DeepSpeed engine from `build_engine` and
                       `optimizer_step` with `SumGradients` (also one backward of the summed
                       loss), bf16 only where the hardware has it (`train.deepspeed.precision`
                       "auto", as in a trial), fp32 otherwise.

`--variants` adds variants of B, each one change against B (`VARIANTS`): "sides" (siamese pairs
as two widened sides, the layout before), "frozen" (model.freeze_word_embeddings), "unfused"
(torch AdamW's for-loop update, the engine before it asked for fused=True), "fp32" (precision
fp32), "noallreduce" (DeepSpeed's gradient allreduce skipped, exact in a world of one). Every
pipeline starts from the same weights and sees the same examples in the same batches.

The pipelines take turns in blocks of `--block` steps (A B v1 v2, v2 v1 B A, ...), after
`--warmup` untimed steps each, so that load from other processes hits all alike; after each
round a short torch.matmul loop measures the GEMM rate at the same thread count. A step's time
includes building its batches (tokenising, for A). Reported: median examples/s over the blocks
of each pipeline and the ratios, the padding share on each task over one full shuffled pass, the
time A spends tokenising, and each pipeline's achieved GFLOP/s against the GEMM peak (the
matmul FLOPs the step computed, padding included: `step_flops`). `--set key=value` passes
trial-config overrides (e.g. `--set model.checkpoint=random` for a tiny smoke run).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from trainables.errors import ConfigError  # noqa: E402
from trainables.minbert.batching import (  # noqa: E402
    Batch,
    EncodedSplit,
    PairLayout,
    batch_indices,
    computed_positions,
    padding_share,
)
from trainables.minbert.config import TrialConfig, load_trial_config  # noqa: E402
from trainables.minbert.data import (  # noqa: E402
    TASKS,
    MultitaskData,
    held_out_count,
    load_multitask_data,
    split_order,
)
from trainables.minbert.encoder import build_encoder  # noqa: E402
from trainables.minbert.engine import (  # noqa: E402
    build_engine,
    hardware_has_bf16,
    optimizer_step,
    use_bf16,
)
from trainables.minbert.extensions.pair_similarity import make_pair_similarity  # noqa: E402
from trainables.minbert.extensions.surgery import SumGradients  # noqa: E402
from trainables.minbert.multitask import MultitaskBert  # noqa: E402
from trainables.minbert.streams import TaskStream  # noqa: E402
from trainables.minbert.task_files import read_task_file, task_files  # noqa: E402
from trainables.minbert.tokenizer import WordPieceTokenizer  # noqa: E402

INPUT_KEYS = ("inputs", "inputs_a", "inputs_b", "sentences")

# The variants of B `--variants` may name: what each changes against B.
VARIANTS = {
    "sides": "siamese pairs as two sides widened to one width (the pair layout before)",
    "frozen": "model.freeze_word_embeddings=true",
    "unfused": "torch AdamW's for-loop update (fused=False, the engine before f47f3a4)",
    "fp32": "train.deepspeed.precision=fp32",
    "noallreduce": "DeepSpeed's gradient allreduce off (one rank: it copies every gradient "
    "into one flat buffer and back for an allreduce over one process; it also gives "
    "parameters no loss reached a zero gradient, which AdamW then decays)",
}
DEFAULT_VARIANTS = "sides,frozen,unfused,fp32,noallreduce"


# ---------------------------------------------------------------------------------------------
# What one step measured


@dataclass
class StepRecord:
    examples: int  # examples in this step, over the three tasks
    seconds: float  # wall time of the whole step, batch building included
    cpu_seconds: float  # this process's CPU time in the step (time.process_time)
    data_seconds: float  # building the step's batches (tokenising and padding, for A)
    positions: int  # token positions the encoder computed (siamese sides widened alike)
    pad_positions: int  # of which padding
    flops: float  # matmul FLOPs of the step's forward and backward (`step_flops`)


def batch_positions(batch: Batch) -> tuple[int, int, int, int]:
    """(positions, pads) per input as `padding_share` counts them, then (positions, pads) as
    the encoder computes them (`computed_positions`: siamese sides widened to the wider one,
    sentence groups each at its own width)."""
    total = pads = 0
    for key in ("inputs", "inputs_a", "inputs_b"):
        if key in batch:
            mask = batch[key]["attention_mask"]
            total += mask.numel()
            pads += int((mask == 0).sum())
    computed, computed_pads = computed_positions(batch)
    if "sentences" in batch:
        total, pads = computed, computed_pads
    return total, pads, computed, computed_pads


def encoder_passes(batch: Batch) -> list[tuple[int, int]]:
    """(rows, width) of every encoder pass the model makes for `batch`: the padded batch, each
    sentence group, or both siamese sides widened to one (2B, T) pass."""
    if "sentences" in batch:
        return [(rows, width) for rows, width in batch["sentence_groups"]]
    if "inputs_a" in batch:
        a, b = batch["inputs_a"]["input_ids"], batch["inputs_b"]["input_ids"]
        return [(2 * a.shape[0], max(a.shape[1], b.shape[1]))]
    rows, width = batch["inputs"]["input_ids"].shape
    return [(rows, width)]


def step_flops(model: MultitaskBert, batch: Batch) -> float:
    """The matmul FLOPs of one training forward + backward of `model.loss(batch)`, padding
    included (2 per multiply-add).

    Per encoder pass of n rows of width w (N = n w positions), L layers, hidden H, FFN I:
    forward 2 N L (4 H^2 + 2 H I) for the qkv, attention-output and two FFN weights, plus
    4 L n w^2 H for the two attention products (q k^T and a v); the backward computes twice
    the forward (the input and the weight gradient of every matmul). The pooler's H x H matmul
    on the n first tokens counts three times with CLS pooling and not at all under mean
    pooling (BertModel.encode and encode_packed leave it to the caller). Each head's nn.Linear counts
    3 x 2 B in out. Embedding lookups, LayerNorm, GELU, softmax and dropout are not matmuls.
    `tests/benchmarks/test_bench_throughput.py` checks this against
    torch.utils.flop_counter.FlopCounterMode.
    """
    cfg = model.encoder.config
    hid, ffn, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    pooler = 3 if model.pooling == "cls" else 0
    total = 0.0
    for n, w in encoder_passes(batch):
        forward = 2 * n * w * layers * (4 * hid * hid + 2 * hid * ffn)
        forward += 4 * layers * n * w * w * hid
        total += 3 * forward + pooler * 2 * n * hid * hid
    task = batch["task"]
    head = (
        model.sst_head if task == "sst" else model.para_head if task == "para" else model.sts_head
    )
    rows = len(batch["ids"])
    for module in head.modules():
        if isinstance(module, torch.nn.Linear):
            total += 3 * 2 * rows * module.in_features * module.out_features
    return total


# ---------------------------------------------------------------------------------------------
# Pipeline A: starter-style


@dataclass
class RawSplit:
    """The normalised raw texts of one task's training split, in the EncodedSplit's order."""

    task: str
    ids: list[str]
    texts: list[tuple[str, ...]]  # one text (sst) or two (pairs) per example
    labels: torch.Tensor


def load_raw_train(data: MultitaskData, task: str, cfg: TrialConfig) -> RawSplit:
    """Read the train file as the starter does (normalised strings, no tokens), keeping exactly
    the rows of `data.train[task]`: the same held-out split, order and cap."""
    assert data.data_dir is not None
    train_path, _, _ = task_files(data.data_dir, task)
    parsed = read_task_file(train_path, task)
    order = split_order(parsed.ids, cfg.data.split_seed, f"{task}/heldout")
    rows = order[held_out_count(len(order), cfg.data.test_fraction) :]
    rows = rows[: len(data.train[task])]
    raw = RawSplit(
        task,
        [parsed.ids[i] for i in rows],
        [parsed.texts[i] for i in rows],
        data.train[task].labels,
    )
    if raw.ids != data.train[task].ids:
        raise RuntimeError(
            f"{task}: the raw rows differ from data.py's train split; update "
            "load_raw_train to follow load_multitask_data"
        )
    return raw


class StarterPipeline:
    """Tokenise every batch from raw strings, random batches padded to their longest item,
    fp32, torch AdamW, one backward of the summed task losses."""

    name = "A starter-style"

    def __init__(
        self,
        model: MultitaskBert,
        raw: dict[str, RawSplit],
        sort_keys: dict[str, list[int]],
        tokenizer: WordPieceTokenizer,
        cfg: TrialConfig,
        seeds: dict[str, int],
    ) -> None:
        self.model, self.raw, self.tokenizer, self.cfg = model, raw, tokenizer, cfg
        t = cfg.train
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=t.lr, weight_decay=t.weight_decay
        )
        self._iters = {task: self._indices(sort_keys[task], seeds[task]) for task in raw}
        self.records: list[StepRecord] = []

    def _indices(self, sort_keys: list[int], seed: int) -> Iterator[list[int]]:
        # A DataLoader(shuffle=True): every pass a fresh permutation, cut in order (no bucketing).
        gen = torch.Generator().manual_seed(seed)
        while True:
            yield from batch_indices(sort_keys, self.cfg.train.batch_size, True, gen, bucket=False)

    def make_batch(self, task: str, idx: Sequence[int]) -> Batch:
        """Tokenise and pad the raw texts of examples `idx`, as the starter's collate_fn does."""
        raw, tok, max_len = self.raw[task], self.tokenizer, self.cfg.data.max_length
        batch: Batch = {
            "task": task,
            "ids": [raw.ids[i] for i in idx],
            "labels": raw.labels[torch.as_tensor(list(idx), dtype=torch.long)],
        }
        first = [raw.texts[i][0] for i in idx]
        if task == "sst":
            batch["inputs"] = tok.pad(tok.encode(first, max_len))
        elif self.model.pair_encoding == "siamese":
            second = [raw.texts[i][1] for i in idx]
            batch["inputs_a"] = tok.pad(tok.encode(first, max_len))
            batch["inputs_b"] = tok.pad(tok.encode(second, max_len))
        else:
            second = [raw.texts[i][1] for i in idx]
            batch["inputs"] = tok.pad(*tok.encode_pairs(first, second, max_len))
        return batch

    def step(self) -> StepRecord:
        self.model.train()
        t0, c0 = time.perf_counter(), time.process_time()
        batches = {t: self.make_batch(t, next(self._iters[t])) for t in TASKS}
        t_data = time.perf_counter() - t0
        losses = {t: self.model.loss(b) for t, b in batches.items()}
        self.optimizer.zero_grad(set_to_none=True)
        sum(losses[t] for t in sorted(losses)).backward()
        self.optimizer.step()
        _check_finite(losses)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        return _record(self.model, batches, seconds, cpu, t_data)


# ---------------------------------------------------------------------------------------------
# Pipeline B: hpsearch


class HpsearchPipeline:
    """Cached token ids, length-bucketed `TaskStream`s, the trainer's DeepSpeed step.

    `pair_layout`, `fused_adamw` and `allreduce` make the variants: pair batches as two
    widened sides; torch AdamW's for-loop update in place of its fused kernel (set on the
    engine's optimizer before its first step; torch reads the flag at every step); and
    DeepSpeed's post-backward gradient allreduce skipped, which changes nothing in a world of
    one process (`engine.enable_backward_allreduce`).
    """

    def __init__(
        self,
        model: MultitaskBert,
        data: MultitaskData,
        tokenizer: WordPieceTokenizer,
        cfg: TrialConfig,
        seeds: dict[str, int],
        name: str = "B hpsearch",
        pair_layout: PairLayout = "sentences",
        fused_adamw: bool = True,
        allreduce: bool = True,
    ) -> None:
        self.name = name
        self.engine = build_engine(model, cfg.train)
        self.model: MultitaskBert = self.engine.module
        self.shared = self.model.shared_parameters()
        self.surgery = SumGradients()
        if not fused_adamw:
            for group in self.engine.basic_optimizer.param_groups:
                group["fused"], group["foreach"] = False, False
        if not allreduce:
            if self.engine.dp_world_size != 1:
                raise ConfigError("the noallreduce variant needs a world of one process")
            self.engine.enable_backward_allreduce = False
        self.bf16 = use_bf16(cfg.train.deepspeed.precision)
        self.streams = {
            t: TaskStream(
                data.train[t], cfg.train.batch_size, tokenizer, seeds[t], pair_layout=pair_layout
            )
            for t in TASKS
        }
        self.records: list[StepRecord] = []

    def step(self) -> StepRecord:
        # MultitaskTrainer._train_step, minus the logging dict.
        self.model.train()
        t0, c0 = time.perf_counter(), time.process_time()
        batches = {t: self.streams[t].next() for t in TASKS}
        t_data = time.perf_counter() - t0
        losses = {t: self.model.loss(b) for t, b in batches.items()}
        optimizer_step(self.engine, losses, self.shared, self.surgery)
        _check_finite(losses)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        return _record(self.model, batches, seconds, cpu, t_data)


def _check_finite(losses: dict[str, torch.Tensor]) -> None:
    for task, loss in losses.items():
        value = loss.item()  # both loops read the losses back, as a training loop logs them
        if not math.isfinite(value):
            raise RuntimeError(f"non-finite {task} loss ({value}): lower the learning rate")


def _record(
    model: MultitaskBert,
    batches: dict[str, Batch],
    seconds: float,
    cpu_seconds: float,
    data_seconds: float,
) -> StepRecord:
    examples = sum(len(b["ids"]) for b in batches.values())
    computed = [computed_positions(b) for b in batches.values()]
    return StepRecord(
        examples,
        seconds,
        cpu_seconds,
        data_seconds,
        sum(c[0] for c in computed),
        sum(c[1] for c in computed),
        sum(step_flops(model, b) for b in batches.values()),
    )


# ---------------------------------------------------------------------------------------------
# Padding over a full pass


@dataclass
class PassPadding:
    share: float  # pads / positions per input (`padding_share`'s measure)
    computed_share: float  # pads / positions the encoder computes (siamese sides widened)
    positions_per_batch: float  # computed positions per batch
    pads_per_batch: float


def pass_padding(
    split: EncodedSplit,
    batch_size: int,
    tokenizer: WordPieceTokenizer,
    bucketed: bool,
    seed: int = 0,
    pair_layout: PairLayout = "sentences",
) -> PassPadding:
    """Padding of one shuffled pass of training batches, bucketed (B) or not (A), siamese
    pairs in `pair_layout` (A: "sides", as the starter's two padded tensors).

    A's batches hold the same token ids as B's (same tokenizer, same truncation), so cutting the
    cached ids the way A cuts its examples gives A's padding exactly.
    """
    gen = torch.Generator().manual_seed(seed)
    sums = [0, 0, 0, 0]
    batches = batch_indices(split.sort_keys, batch_size, True, gen, bucket=bucketed)
    for idx in batches:
        batch = split.make_batch(idx, tokenizer, pair_layout)
        for k, v in enumerate(batch_positions(batch)):
            sums[k] += v
    total, pads, computed, computed_pads = sums
    return PassPadding(
        pads / total,
        computed_pads / computed,
        computed / len(batches),
        computed_pads / len(batches),
    )


def pair_floor(split: EncodedSplit) -> float:
    """Computed padding that stays in the "sides" layout with perfect length sorting: each
    pair's shorter side padded to its longer side (0 for single sentences; the "sentences"
    layout has no such floor)."""
    if not split.is_siamese:
        return 0.0
    assert split.tokens_a is not None and split.tokens_b is not None
    longer = sum(max(len(a), len(b)) for a, b in zip(split.tokens_a, split.tokens_b, strict=True))
    gap = sum(abs(len(a) - len(b)) for a, b in zip(split.tokens_a, split.tokens_b, strict=True))
    return gap / (2 * longer)


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class PipelineResult:
    name: str
    steps: int
    examples: int
    seconds: float
    median_examples_per_s: float  # median over blocks of (block examples / block seconds)
    aggregate_examples_per_s: float  # all examples / all seconds
    median_step_ms: float
    data_ms_per_step: float  # mean time building a step's batches
    data_share: float  # of the step time
    positions_per_step: float  # computed token positions per step
    computed_pad_share: float  # padding among the computed positions of the timed steps
    gflop_per_step: float  # matmul GFLOP per step, forward + backward (`step_flops`)
    gflop_per_s: float  # all FLOPs / all seconds
    dtype: str  # of the matmuls: "bf16" or "fp32"
    # Median over rounds of (block FLOPs / block CPU seconds) / (that round's GEMM FLOPs / its
    # CPU seconds): the achieved fraction of the GEMM peak, whatever share of a core the
    # process got; `..._wall` the same on wall-clock time.
    median_peak_fraction: float
    median_peak_fraction_wall: float
    median_step_cpu_ms: float
    cpu_examples_per_s: float  # all examples / all CPU seconds of the process
    block_rates: list[float] = field(default_factory=list)
    block_cpu_rates: list[float] = field(default_factory=list)  # examples per CPU second
    block_gflop_per_s: list[float] = field(default_factory=list)


def summarise(
    name: str,
    records: list[StepRecord],
    blocks: list[list[StepRecord]],
    dtype: str,
    peaks: dict[str, list[float]],
) -> PipelineResult:
    """One pipeline's figures; `peaks` the GEMM peak of each round, "wall" and "cpu"."""
    seconds = sum(r.seconds for r in records)
    cpu_seconds = sum(r.cpu_seconds for r in records)
    examples = sum(r.examples for r in records)
    rates = [sum(r.examples for r in b) / sum(r.seconds for r in b) for b in blocks]
    cpu_rates = [sum(r.examples for r in b) / sum(r.cpu_seconds for r in b) for b in blocks]
    gflops = [sum(r.flops for r in b) / sum(r.seconds for r in b) / 1e9 for b in blocks]
    cpu_gflops = [sum(r.flops for r in b) / sum(r.cpu_seconds for r in b) / 1e9 for b in blocks]
    data_s = sum(r.data_seconds for r in records)
    positions = sum(r.positions for r in records)

    def fraction(achieved: list[float], peak: list[float]) -> float:
        return statistics.median(g / p for g, p in zip(achieved, peak, strict=True))

    return PipelineResult(
        name=name,
        steps=len(records),
        examples=examples,
        seconds=seconds,
        median_examples_per_s=statistics.median(rates),
        aggregate_examples_per_s=examples / seconds,
        median_step_ms=1e3 * statistics.median(r.seconds for r in records),
        data_ms_per_step=1e3 * data_s / len(records),
        data_share=data_s / seconds,
        positions_per_step=positions / len(records),
        computed_pad_share=sum(r.pad_positions for r in records) / positions,
        gflop_per_step=sum(r.flops for r in records) / len(records) / 1e9,
        gflop_per_s=sum(r.flops for r in records) / seconds / 1e9,
        dtype=dtype,
        median_peak_fraction=fraction(cpu_gflops, peaks["cpu"]),
        median_peak_fraction_wall=fraction(gflops, peaks["wall"]),
        median_step_cpu_ms=1e3 * statistics.median(r.cpu_seconds for r in records),
        cpu_examples_per_s=examples / cpu_seconds,
        block_rates=rates,
        block_cpu_rates=cpu_rates,
        block_gflop_per_s=gflops,
    )


# ---------------------------------------------------------------------------------------------
# The GEMM peak


def gemm_shapes(hidden: int, intermediate: int, rows: int = 1024) -> list[tuple[int, int, int]]:
    """(M, K, N) of the encoder's weight matmuls at `rows` token positions: qkv, FFN in, FFN
    out (the attention output is qkv's K with a third of its N)."""
    return [(rows, hidden, 3 * hidden), (rows, hidden, intermediate), (rows, intermediate, hidden)]


def gemm_rate(
    dtype: torch.dtype, shapes: list[tuple[int, int, int]], seconds: float = 0.15
) -> tuple[float, float]:
    """The best GFLOP/s of a torch.matmul loop over `shapes` at torch's current thread count,
    per wall-clock second and per CPU second of this process: for each shape, `a @ b`
    repeated for about `seconds` after one untimed call; the best shape's rates. What these
    matmuls reach in this process is the step's ceiling."""
    best_wall = best_cpu = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        out = torch.empty(m, n, dtype=dtype)
        torch.matmul(a, b, out=out)
        calls, t0, c0 = 0, time.perf_counter(), time.process_time()
        while (elapsed := time.perf_counter() - t0) < seconds or calls < 2:
            torch.matmul(a, b, out=out)
            calls += 1
        cpu = max(time.process_time() - c0, 1e-9)
        best_wall = max(best_wall, 2 * m * k * n * calls / elapsed / 1e9)
        best_cpu = max(best_cpu, 2 * m * k * n * calls / cpu / 1e9)
    return best_wall, best_cpu


# ---------------------------------------------------------------------------------------------
# The run


def build_config(args: argparse.Namespace) -> TrialConfig:
    overrides = [
        f"data.max_length={args.max_length}",
        f"train.batch_size={args.batch_size}",
        f"train.seed={args.seed}",
        f"train.deepspeed.precision={args.precision}",
        f"model.checkpoint={args.checkpoint}",
        f"model.pair_encoding={args.pair_encoding}",
    ]
    if args.data_dir is not None:
        overrides.append(f"data.data_dir={args.data_dir}")
    return load_trial_config(None, overrides + list(args.set))


def parse_variants(text: str) -> list[str]:
    """`--variants`: names from VARIANTS, comma-separated; "" or "none" for none."""
    if text.strip().lower() in ("", "none"):
        return []
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise ConfigError(
            f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}"
        )
    return list(dict.fromkeys(names))


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> float | None:
    """The 1-minute load average (None where the OS has none): other processes' demand."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _variant_pipeline(
    variant: str,
    model: MultitaskBert,
    data: MultitaskData,
    tokenizer: WordPieceTokenizer,
    cfg: TrialConfig,
    seeds: dict[str, int],
) -> HpsearchPipeline:
    """B with one change (`VARIANTS`), from a copy of `model` (the same initial weights)."""
    model = copy.deepcopy(model)
    name = f"B {variant}"
    if variant == "sides":
        return HpsearchPipeline(model, data, tokenizer, cfg, seeds, name, pair_layout="sides")
    if variant == "frozen":
        model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
        return HpsearchPipeline(model, data, tokenizer, cfg, seeds, name)
    if variant == "unfused":
        return HpsearchPipeline(model, data, tokenizer, cfg, seeds, name, fused_adamw=False)
    if variant == "noallreduce":
        return HpsearchPipeline(model, data, tokenizer, cfg, seeds, name, allreduce=False)
    assert variant == "fp32"
    fp32 = cfg.model_copy(deep=True)
    fp32.train.deepspeed.precision = "fp32"
    return HpsearchPipeline(model, data, tokenizer, fp32, seeds, name)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.steps < 1 or args.block < 1 or args.warmup < 0:
        raise ConfigError("--steps and --block must be at least 1 and --warmup at least 0")
    variants = parse_variants(args.variants)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = build_config(args)
    load_before = _load_average()
    torch.manual_seed(cfg.train.seed)
    tokenizer, encoder = build_encoder(cfg)

    t0 = time.perf_counter()
    data = load_multitask_data(cfg.data, tokenizer, cfg.model.pair_encoding)
    load_s = time.perf_counter() - t0
    raw = {t: load_raw_train(data, t, cfg) for t in TASKS}
    # What the cache saves at every later run: tokenising every training text once.
    t0 = time.perf_counter()
    for split in raw.values():
        for column in zip(*split.texts, strict=True):
            tokenizer.encode(column, cfg.data.max_length)
    tokenise_all_s = time.perf_counter() - t0

    m = cfg.model
    sts_head = make_pair_similarity(cfg, encoder.config.hidden_size)
    model_a = MultitaskBert(
        copy.deepcopy(encoder),
        m.dropout,
        m.pair_encoding,
        m.pooling,
        sts_head,
        freeze_word_embeddings=m.freeze_word_embeddings,
    )
    initial = copy.deepcopy(model_a)  # same initial weights for every pipeline, heads included
    # The trainer's per-task stream seeds for multitask epoch 0; A uses the same seeds.
    seeds = {t: cfg.train.seed * 7919 + 104729 + i for i, t in enumerate(TASKS)}
    pipes: dict[str, StarterPipeline | HpsearchPipeline] = {
        "A": StarterPipeline(
            model_a, raw, {t: data.train[t].sort_keys for t in TASKS}, tokenizer, cfg, seeds
        ),
        "B": HpsearchPipeline(copy.deepcopy(initial), data, tokenizer, cfg, seeds),
    }
    for variant in variants:
        pipes[variant] = _variant_pipeline(variant, initial, data, tokenizer, cfg, seeds)
    dtypes = {
        key: "bf16" if isinstance(p, HpsearchPipeline) and p.bf16 else "fp32"
        for key, p in pipes.items()
    }
    torch_dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    shapes = gemm_shapes(encoder.config.hidden_size, encoder.config.intermediate_size)

    for _ in range(args.warmup):
        for pipe in pipes.values():
            pipe.step()
    keys = list(pipes)
    blocks: dict[str, list[list[StepRecord]]] = {key: [] for key in keys}
    peaks: dict[str, dict[str, list[float]]] = {
        d: {"wall": [], "cpu": []} for d in sorted(set(dtypes.values()))
    }
    done, k = 0, 0
    while done < args.steps:
        n = min(args.block, args.steps - done)
        for key in keys if k % 2 == 0 else keys[::-1]:  # A B v.., then ..v B A
            blocks[key].append([pipes[key].step() for _ in range(n)])
        for d, peak in peaks.items():  # this round's GEMM peak, under this round's load
            wall, cpu = gemm_rate(torch_dtypes[d], shapes)
            peak["wall"].append(wall)
            peak["cpu"].append(cpu)
        done, k = done + n, k + 1
    res = {
        key: summarise(
            pipes[key].name,
            [r for b in blocks[key] for r in b],
            blocks[key],
            dtypes[key],
            peaks[dtypes[key]],
        )
        for key in keys
    }

    def paired(key: str, base: str, cpu: bool = False) -> float:
        x, b = (
            (res[key].block_cpu_rates, res[base].block_cpu_rates)
            if cpu
            else (
                res[key].block_rates,
                res[base].block_rates,
            )
        )
        return statistics.median(p / q for p, q in zip(x, b, strict=True))

    bs = cfg.train.batch_size
    padding: dict[str, dict[str, float]] = {}
    layouts: dict[str, tuple[bool, PairLayout]] = {
        "A": (False, "sides"),
        "B": (True, "sentences"),
        "B_sides": (True, "sides"),
    }
    per_batch = {key: [0.0, 0.0] for key in layouts}  # computed (pads, positions) per step
    for task in TASKS:
        train = data.train[task]
        padding[task] = {
            "A": padding_share(train, bs, tokenizer, False, cfg.train.seed, "sides"),
            "B": padding_share(train, bs, tokenizer, True, cfg.train.seed, "sentences"),
            "floor_computed": pair_floor(train),
        }
        for key, (bucketed, layout) in layouts.items():
            p = pass_padding(train, bs, tokenizer, bucketed, cfg.train.seed, layout)
            padding[task][f"{key}_computed"] = p.computed_share
            per_batch[key][0] += p.pads_per_batch
            per_batch[key][1] += p.positions_per_batch
    # A step takes one batch of every task (cycle sampling): pool the tasks batch-weighted.
    padding["step"] = {f"{key}_computed": pads / pos for key, (pads, pos) in per_batch.items()}

    hw_bf16 = hardware_has_bf16()
    bf16 = dtypes["B"] == "bf16"
    if bf16:
        precision_b = "bf16" + ("" if hw_bf16 else " (emulated: this CPU has no bf16 units)")
    elif hw_bf16:
        precision_b = "fp32 (precision forced to fp32)"
    else:
        precision_b = (
            "fp32 (this CPU has no avx512_bf16/AMX, so 'auto' stays fp32; bf16 "
            "would be emulated and slower)"
        )
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if args.record_argv else None,
        "machine": {
            "cpu": cpu_model_name(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": sys.version.split()[0],
            "hardware_bf16": hw_bf16,
            "load_average": [load_before, _load_average()],
        },
        "setup": {
            "data_dir": str(data.data_dir),
            "checkpoint": m.checkpoint,
            "train_sizes": {t: len(data.train[t]) for t in TASKS},
            "batch_size": bs,
            "max_length": cfg.data.max_length,
            "pair_encoding": m.pair_encoding,
            "steps": args.steps,
            "block": args.block,
            "warmup": args.warmup,
            "seed": cfg.train.seed,
            "precision_a": "fp32",
            "precision_b": precision_b,
            "variants": {v: VARIANTS[v] for v in variants},
        },
        "A": asdict(res["A"]),
        "B": asdict(res["B"]),
        "variants": {v: asdict(res[v]) for v in variants},
        "ratio_b_over_a": res["B"].median_examples_per_s / res["A"].median_examples_per_s,
        "paired_block_ratio_median": paired("B", "A"),
        "paired_block_cpu_ratio_median": paired("B", "A", cpu=True),
        "variant_over_b_paired": {v: paired(v, "B") for v in variants},
        "variant_over_b_paired_cpu": {v: paired(v, "B", cpu=True) for v in variants},
        "variant_over_a_paired": {v: paired(v, "A") for v in variants},
        "gemm_peak_gflop_per_s": {
            d: {
                clock: {"median": statistics.median(p[clock]), "max": max(p[clock])}
                | {"rounds": p[clock]}
                for clock in ("wall", "cpu")
            }
            for d, p in peaks.items()
        },
        "gemm_shapes": shapes,
        "padding": padding,
        "tokenisation": {
            "a_ms_per_step": res["A"].data_ms_per_step,
            "a_share_of_step": res["A"].data_share,
            "b_batch_ms_per_step": res["B"].data_ms_per_step,
            "b_one_off_all_train_s": tokenise_all_s,
            "b_cached_load_s": load_s,
        },
    }


def report(r: dict[str, Any]) -> str:
    mach, setup, a, b = r["machine"], r["setup"], r["A"], r["B"]
    variants = r["variants"]
    lines = [
        f"machine: {mach['cpu']}, {mach['cores']} cores, torch {mach['torch']}, "
        f"threads {mach['threads']}, python {mach['python']}",
        *_load_note(mach),
        f"data: {setup['data_dir']} (train "
        + ", ".join(f"{t} {n}" for t, n in setup["train_sizes"].items())
        + f"); checkpoint "
        f"{setup['checkpoint']}; batch {setup['batch_size']} per task, max_length "
        f"{setup['max_length']}, {setup['pair_encoding']} pairs",
        f"precision: A fp32; B {setup['precision_b']}",
        *(f"variant B {v}: {what}" for v, what in setup["variants"].items()),
        f"timed: {setup['steps']} steps per pipeline in blocks of {setup['block']} "
        f"(A B ..., ... B A), after {setup['warmup']} warm-up steps each",
        "",
        f"{'pipeline':<18}{'ex/s median':>12}{'ex/s all':>10}{'ms/step':>10}{'cpu ms':>9}"
        f"{'data ms':>9}{'tokens/step':>13}{'pad (run)':>11}{'GFLOP/step':>12}{'GFLOP/s':>9}"
        f"{'of peak':>9}",
    ]
    for p in (a, b, *variants.values()):
        lines.append(
            f"{p['name']:<18}{p['median_examples_per_s']:>12.1f}"
            f"{p['aggregate_examples_per_s']:>10.1f}{p['median_step_ms']:>10.0f}"
            f"{p['median_step_cpu_ms']:>9.0f}"
            f"{p['data_ms_per_step']:>9.1f}{p['positions_per_step']:>13.0f}"
            f"{p['computed_pad_share']:>11.1%}{p['gflop_per_step']:>12.1f}"
            f"{p['gflop_per_s']:>9.1f}{p['median_peak_fraction']:>9.2f}"
        )
    lines.append(
        f"ratio B/A {r['ratio_b_over_a']:.2f}x (medians; median of paired blocks "
        f"{r['paired_block_ratio_median']:.2f}x; per CPU second "
        f"{r['paired_block_cpu_ratio_median']:.2f}x)"
    )
    for v in variants:
        lines.append(
            f"B {v}: {r['variant_over_b_paired'][v]:.3f}x B's examples/s "
            f"({r['variant_over_b_paired_cpu'][v]:.3f}x per CPU second), "
            f"{r['variant_over_a_paired'][v]:.2f}x A's (medians of paired blocks)"
        )
    peak = r["gemm_peak_gflop_per_s"]
    m, k, n = r["gemm_shapes"][0]
    lines += [
        "GEMM peak (torch.matmul, same threads, best of the encoder's weight shapes at "
        f"{m} rows, after each round): "
        + "; ".join(
            f"{d} median {p['cpu']['median']:.1f} GFLOP per CPU second (max "
            f"{p['cpu']['max']:.1f}), {p['wall']['median']:.1f} per wall second"
            for d, p in peak.items()
        ),
        "  GFLOP: the matmuls of forward + backward as computed, padding included "
        "(step_flops); of peak: median over rounds of the pipeline's GFLOP per CPU second "
        "over the round's GEMM peak per CPU second, in its own dtype (on wall-clock time: "
        "B " + f"{b['median_peak_fraction_wall']:.2f}" + ")",
        "",
        "padding share, one full shuffled pass:",
        f"{'task':<6}{'A':>8}{'B':>8}{'A comp':>9}{'B comp':>9}{'sides':>8}{'floor':>8}",
    ]
    pad = r["padding"]
    for task in TASKS:
        p = pad[task]
        lines.append(
            f"{task:<6}{p['A']:>8.1%}{p['B']:>8.1%}{p['A_computed']:>9.1%}"
            f"{p['B_computed']:>9.1%}{p['B_sides_computed']:>8.1%}{p['floor_computed']:>8.1%}"
        )
    lines.append(
        f"{'step':<6}{'':>8}{'':>8}{pad['step']['A_computed']:>9.1%}"
        f"{pad['step']['B_computed']:>9.1%}{pad['step']['B_sides_computed']:>8.1%}"
    )
    lines.append(
        "  A/B: padded positions per padded tensor (trainables.minbert.batching.padding_share); "
        "comp: as the encoder computes them (A and sides: both siamese sides widened to the "
        "wider; B: each sentence group at its own width); sides: B's batches in the sides "
        "layout; floor: what perfect sorting leaves in the sides layout (a pair's shorter side)"
    )
    tok = r["tokenisation"]
    lines += [
        "",
        f"tokenising: A {tok['a_ms_per_step']:.1f} ms/step ({tok['a_share_of_step']:.1%} of its "
        f"step); B pads cached ids in {tok['b_batch_ms_per_step']:.1f} ms/step; tokenising all "
        f"training texts once takes {tok['b_one_off_all_train_s']:.1f} s (cached: loaded in "
        f"{tok['b_cached_load_s']:.1f} s)",
        summary_line(r),
    ]
    return "\n".join(lines)


def _load_note(machine: dict[str, Any]) -> list[str]:
    loads = [x for x in machine["load_average"] if x is not None]
    if not loads:
        return []
    line = f"load average (1 min) at start / end: {' / '.join(f'{x:.1f}' for x in loads)}"
    if machine["threads"] > 1 and max(loads) > (machine["cores"] or 1):
        line += (
            f"; more demand than {machine['cores']} cores: torch's {machine['threads']} "
            "threads wait on each other, use --threads 1 for stable figures"
        )
    return [line]


def summary_line(r: dict[str, Any]) -> str:
    ratio, step_pad = r["ratio_b_over_a"], r["padding"]["step"]
    fraction = r["B"]["median_peak_fraction"]
    return (
        f"summary: hpsearch trains {ratio:.2f}x the examples/s of the starter-style loop "
        f"(target 2x: {'reached' if ratio >= 2 else 'not reached'}); padding per step "
        f"{step_pad['B_computed']:.1%} vs {step_pad['A_computed']:.1%} "
        f"(target <5%: {'reached' if step_pad['B_computed'] < 0.05 else 'not reached'}); "
        f"B runs at {fraction:.2f} of the {r['B']['dtype']} GEMM peak "
        f"(aim 0.8: {'reached' if fraction >= 0.8 else 'not reached'})"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--data-dir", default=None, help="CS224N files (default: the built-in synthetic set)"
    )
    parser.add_argument(
        "--checkpoint",
        default="minilm",
        help="'minilm', a BERT folder, or 'random' (model.* sizes via --set)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="examples per task per step")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--pair-encoding", default="siamese", choices=["siamese", "cross"])
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="B's train.deepspeed.precision (A is always fp32)",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps per pipeline")
    parser.add_argument("--block", type=int, default=2, help="steps per alternating block")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per pipeline")
    parser.add_argument("--seed", type=int, default=11711)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help="variants of B measured beside it, comma-separated, or none: "
        + "; ".join(f"{k}: {v}" for k, v in VARIANTS.items()),
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="trial-config override, e.g. model.checkpoint=random (repeatable)",
    )
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the figures here")
    args = parser.parse_args(argv)
    args.record_argv = argv is None
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        result = run(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(report(result))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
