"""Training-step throughput and model FLOP utilisation (MFU) of minBERT on a GPU, beside
transformers' BertModel, against the GPU's dense bf16 matmul rate measured in the same run.

    python benchmarks/bench_gpu.py --out bench_gpu.json                # a CUDA machine
    python benchmarks/bench_gpu.py --device cpu --smoke --steps 2     # the CPU plumbing check

Shapes (random initialisation, sequence 128, no padding, dropout 0.1 as in training):
    bert-base   12 layers, hidden 768, 12 heads, intermediate 3072 (110M parameters)
    minilm      the MiniLM default of trainables.minbert.model.BertConfig (6 x 384, 22.7M)
    smoke       2 layers, hidden 64 (with --smoke: a seconds-long run on any device)

Implementations, each one training step = forward, loss = mean of the last hidden states,
backward, AdamW step (torch's fused kernel), gradients zeroed:
    minbert        trainables.minbert.model.BertModel, fp32 weights, bf16 autocast
    transformers   transformers' BertModel (sdpa attention) holding the same weights, same
                   autocast: the reference
    deepspeed-z0   minBERT inside the DeepSpeed engine as trials train it (bf16 weights and
    deepspeed-z2   gradients, fp32 master weights in the optimizer), ZeRO stage 0 and 2

The implementations alternate step by step (the order rotating), each step timed with CUDA
events (wall clock on the CPU). The headline ratio is the median over repetitions of the
paired ratio transformers_time / minbert_time.

FLOPs counted per training step (the usual 6 x parameters x tokens of dense layers, plus the
attention products, which have no parameters):
    dense      6 * L * (4 H^2 + 2 H I) * B * s     (QKV and output projections, FFN in and out;
               plus 6 * H^2 * B for the pooler, which sees one token per sequence)
    attention  12 * L * s^2 * H * B                (Q K^T and A V: 4 s^2 H per layer and sequence
               forward, three times that with the backward)
Not counted: embedding lookups, biases, LayerNorm, GELU, softmax, dropout and the optimizer
(their time is in the step; their FLOPs are not, as is usual for MFU).
MFU = counted FLOPs per second / the dense bf16 matmul rate this run measured on this device
(torch.matmul of two N x N bf16 matrices, N = 8192 by default, timed with CUDA events).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from trainables.minbert.model import BertConfig, BertModel  # noqa: E402

SHAPES: dict[str, BertConfig] = {
    "bert-base": BertConfig(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "minilm": BertConfig(),
    "smoke": BertConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128),
}
IMPLS = ("minbert", "transformers", "deepspeed-z0", "deepspeed-z2")
LR = 1e-4

Inputs = dict[str, torch.Tensor]
Step = Callable[[Inputs], None]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", default="bert-base,minilm", help=f"of {', '.join(SHAPES)}")
    parser.add_argument("--impls", default=",".join(IMPLS), help=f"of {', '.join(IMPLS)}")
    parser.add_argument("--batch", type=int, default=64, help="sequences per step")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per implementation")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per implementation")
    parser.add_argument("--matmul-size", type=int, default=8192, help="N of the N x N matmul")
    parser.add_argument("--matmul-reps", type=int, default=20)
    parser.add_argument("--fp32", action="store_true", help="no bf16 anywhere (a CPU check)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the plain models")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny everything (shape smoke, batch 4, seq 16, matmul 256): checks the plumbing",
    )
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    if args.smoke:
        args.shapes, args.batch, args.seq = "smoke", 4, 16
        args.matmul_size, args.matmul_reps, args.warmup = 256, 3, 1
    args.shapes = [s for s in args.shapes.split(",") if s]
    args.impls = [i for i in args.impls.split(",") if i]
    for name in args.shapes:
        if name not in SHAPES:
            parser.error(f"unknown shape {name!r}: use {', '.join(SHAPES)}")
    for name in args.impls:
        if name not in IMPLS:
            parser.error(f"unknown implementation {name!r}: use {', '.join(IMPLS)}")
    if "minbert" not in args.impls:
        parser.error("--impls must include minbert (the ratios are to it)")
    return args


# ---------------------------------------------------------------------------- counting
def matmul_params_per_token(cfg: BertConfig) -> int:
    """Weights every token multiplies through in the encoder layers (no embeddings)."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    return cfg.num_layers * (4 * h * h + 2 * h * i)


def step_flops(cfg: BertConfig, batch: int, seq: int) -> dict[str, int]:
    """FLOPs of one training step, as the module docstring counts them."""
    h = cfg.hidden_size
    dense = 6 * (matmul_params_per_token(cfg) * batch * seq + h * h * batch)
    attention = 12 * cfg.num_layers * seq * seq * h * batch
    return {"dense": dense, "attention": attention, "total": dense + attention}


# ---------------------------------------------------------------------------- timing
class Timer:
    """Step timings: CUDA events on a GPU (read after one synchronize), else wall clock."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[Any, Any]] = []
        self.wall: list[float] = []

    def time(self, fn: Step, inputs: Inputs) -> None:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(inputs)
            end.record()
            self.pending.append((start, end))
        else:
            t0 = time.perf_counter()
            fn(inputs)
            self.wall.append(time.perf_counter() - t0)

    def seconds(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [s.elapsed_time(e) / 1e3 for s, e in self.pending]
        return list(self.wall)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device: torch.device, n: int, reps: int, dtype: torch.dtype) -> dict[str, Any]:
    """Dense matmul FLOP/s of this device: `reps` back-to-back N x N products after three."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b, out=out)
    sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            torch.matmul(a, b, out=out)
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1e3
    else:
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b, out=out)
        seconds = time.perf_counter() - t0
    flops = 2 * n**3 * reps
    return {"n": n, "reps": reps, "dtype": str(dtype).removeprefix("torch."),
            "seconds": seconds, "tflops": flops / seconds / 1e12}  # fmt: skip


# ---------------------------------------------------------------------------- the steps
def make_inputs(cfg: BertConfig, batch: int, seq: int, device: torch.device) -> Inputs:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, cfg.vocab_size, (batch, seq), generator=gen)
    ids[:, 0] = 101  # [CLS]
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones(batch, seq, dtype=torch.long, device=device),
        "token_type_ids": torch.zeros(batch, seq, dtype=torch.long, device=device),
    }


def plain_step(
    model: torch.nn.Module,
    forward: Callable[[Inputs], torch.Tensor],
    device: torch.device,
    bf16: bool,
) -> Step:
    """Autocast forward, loss, backward, fused AdamW, zeroed gradients."""
    opt = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)

    def step(inputs: Inputs) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = forward(inputs).float().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def minbert_forward(model: torch.nn.Module) -> Callable[[Inputs], torch.Tensor]:
    """Last hidden states of minBERT (positional inputs; the mask is passed as a trial does)."""

    def forward(x: Inputs) -> torch.Tensor:
        hidden, _ = model(x["input_ids"], x["attention_mask"], x["token_type_ids"])
        return hidden

    return forward


def transformers_forward(model: torch.nn.Module) -> Callable[[Inputs], torch.Tensor]:
    """Last hidden states of transformers' BertModel (keyword inputs)."""

    def forward(x: Inputs) -> torch.Tensor:
        hidden: torch.Tensor = model(**x).last_hidden_state
        return hidden

    return forward


def transformers_model(ours: BertModel, device: torch.device) -> torch.nn.Module:
    """transformers' BertModel (sdpa attention) with minBERT's weights, in train mode."""
    from transformers import BertConfig as HFConfig
    from transformers import BertModel as HFBertModel

    settings = ours.config.to_hf_dict()
    settings.pop("model_type", None)
    model = HFBertModel(HFConfig(**settings, attn_implementation="sdpa"))
    missing, unexpected = model.load_state_dict(ours.hf_state_dict(), strict=False)
    buffers = {name for name, _ in model.named_buffers()}
    assert not unexpected and set(missing) <= buffers, (missing, unexpected)
    return model.to(device).train()


def deepspeed_step(model: BertModel, zero_stage: int, batch: int, bf16: bool) -> Step:
    """minBERT in the DeepSpeed engine a trial trains through (trainables.minbert.engine)."""
    from trainables.minbert.config import TrainConfig
    from trainables.minbert.engine import build_engine

    precision = "bf16" if bf16 else "fp32"
    train = TrainConfig(
        batch_size=batch,
        lr=LR,
        grad_clip=1.0,
        deepspeed={"zero_stage": zero_stage, "precision": precision},
    )
    engine = build_engine(model, train)
    forward = minbert_forward(engine.module)

    def step(inputs: Inputs) -> None:
        loss = forward(inputs).float().mean()
        engine.backward(loss)
        engine.step()

    return step


def build_steps(
    impls: list[str], cfg: BertConfig, args: argparse.Namespace, device: torch.device
) -> dict[str, tuple[Step, int]]:
    """Each implementation's step and its parameter count, all from one random init."""
    bf16 = not args.fp32
    torch.manual_seed(0)
    ours = BertModel.from_config(cfg, seed=0).train()
    steps: dict[str, tuple[Step, int]] = {}
    n_params = sum(p.numel() for p in ours.parameters())
    for impl in impls:
        if impl.startswith("deepspeed-z"):
            stage = int(impl.removeprefix("deepspeed-z"))
            steps[impl] = (deepspeed_step(copy.deepcopy(ours), stage, args.batch, bf16), n_params)
            continue
        if impl == "transformers":
            model = transformers_model(ours, device)
            make_forward = transformers_forward
        else:
            model = copy.deepcopy(ours).to(device)
            make_forward = minbert_forward
        forward = make_forward(torch.compile(model) if args.compile else model)
        count = sum(p.numel() for p in model.parameters())
        steps[impl] = (plain_step(model, forward, device, bf16), count)
    return steps


# ---------------------------------------------------------------------------- one shape
def bench_shape(name: str, args: argparse.Namespace, device: torch.device, peak: float) -> dict:
    cfg = replace(SHAPES[name], max_position_embeddings=max(512, args.seq))
    inputs = make_inputs(cfg, args.batch, args.seq, device)
    steps = build_steps(args.impls, cfg, args, device)
    peak_mib: dict[str, float] = {}
    for impl, (step, _) in steps.items():  # warm-up, one implementation at a time
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.warmup):
            step(inputs)
        sync(device)
        if device.type == "cuda":
            peak_mib[impl] = torch.cuda.max_memory_allocated() / 2**20
    timers = {impl: Timer(device) for impl in steps}
    order = list(steps)
    for i in range(args.steps):  # alternate, rotating which goes first
        for impl in order[i % len(order) :] + order[: i % len(order)]:
            timers[impl].time(steps[impl][0], inputs)
    times = {impl: timers[impl].seconds() for impl in steps}
    flops = step_flops(cfg, args.batch, args.seq)
    rows = []
    for impl, seconds in times.items():
        median = statistics.median(seconds)
        deciles = statistics.quantiles(seconds, n=10) if len(seconds) >= 2 else [median] * 9
        rows.append(
            {
                "shape": name,
                "impl": impl,
                "params": steps[impl][1],
                "matmul_params_per_token": matmul_params_per_token(cfg),
                "batch": args.batch,
                "seq": args.seq,
                "tokens_per_step": args.batch * args.seq,
                "flops_per_step": flops,
                "step_ms": {
                    "median": median * 1e3,
                    "p10": deciles[0] * 1e3,
                    "p90": deciles[-1] * 1e3,
                    "mean": statistics.fmean(seconds) * 1e3,
                },
                "tokens_per_s": args.batch * args.seq / median,
                "tflops": flops["total"] / median / 1e12,
                "mfu": flops["total"] / median / peak,
                "peak_mem_mib": peak_mib.get(impl),
            }
        )
    ratios = {}
    base = times["minbert"]
    for impl, seconds in times.items():
        if impl != "minbert":
            paired = [t / m for t, m in zip(seconds, base, strict=True)]
            ratios[f"{impl}/minbert"] = statistics.median(paired)
    return {"shape": name, "config": asdict(cfg), "rows": rows, "time_ratios": ratios}


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def print_table(report: dict[str, Any]) -> None:
    mm = report["matmul"]
    print(f"dense {mm['dtype']} matmul ({mm['n']}^3 x {mm['reps']}): {mm['tflops']:.4g} TFLOP/s")
    head = (
        f"{'shape':<10}{'impl':<14}{'ms/step':>10}{'p10':>10}{'p90':>10}"
        f"{'tokens/s':>11}{'TFLOP/s':>9}{'MFU':>7}{'MiB':>8}"
    )
    print(head)
    print("-" * len(head))
    for shape in report["shapes"]:
        for r in shape["rows"]:
            ms = r["step_ms"]
            mem = "" if r["peak_mem_mib"] is None else f"{r['peak_mem_mib']:.0f}"
            print(
                f"{r['shape']:<10}{r['impl']:<14}{ms['median']:>10.4g}{ms['p10']:>10.4g}"
                f"{ms['p90']:>10.4g} {r['tokens_per_s']:>10.4g} {r['tflops']:>8.4g}"
                f"{r['mfu']:>7.1%}{mem:>8}"
            )
        for key, value in shape["time_ratios"].items():
            print(f"{'':<10}step time {key}: {value:.3f} (median of paired steps)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA device: pass --device cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dtype = torch.float32 if args.fp32 else torch.bfloat16
    mm = matmul_rate(device, args.matmul_size, args.matmul_reps, dtype)
    peak = mm["tflops"] * 1e12
    report: dict[str, Any] = {
        "benchmark": "benchmarks/bench_gpu.py",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "machine": machine(device),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "precision": "fp32" if args.fp32 else "bf16 autocast (deepspeed: bf16 weights)",
        "matmul": mm,
        "flops": {
            "dense": "6 * L * (4 H^2 + 2 H I) * B * s + 6 * H^2 * B (pooler)",
            "attention": "12 * L * s^2 * H * B",
            "not_counted": "embeddings, biases, LayerNorm, GELU, softmax, dropout, optimizer",
            "mfu": "counted FLOPs per second / the matmul rate above",
        },
        "shapes": [],
    }
    for name in args.shapes:
        report["shapes"].append(bench_shape(name, args, device, peak))
    print_table(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
